//! Markup to plain text for passages (`clean_text(text, format)`): the words and the code
//! of reStructuredText, Markdown and HTML documents without their markup, so that a
//! retrieved passage reads as prose and an answer that quotes it quotes no markup; a
//! generated answer read the same way (Markdown) shows none of its own (`ragtune.answer_format`).
//!
//! A prose paragraph comes out as one line, a code line as it was (dedented), blocks
//! apart by a blank line: every line break of the output is a real boundary, where a
//! passage may be cut (`rag::prompt::at_boundary`) or a chunk end (`chunk`).

use super::cancel::{check, CancelCheck};
use crate::error::{Error, ErrorKind};
use std::collections::HashSet;

/// The largest text cleaned in one call: the output and the line index are allocated up
/// front, fallibly, from the input's size.
pub const MAX_INPUT_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Rst,
    Markdown,
    Html,
}

impl Format {
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name.to_ascii_lowercase().as_str() {
            "rst" | "restructuredtext" => Ok(Self::Rst),
            "markdown" | "md" => Ok(Self::Markdown),
            "html" => Ok(Self::Html),
            _ => Err(Error::new(ErrorKind::InvalidParameterValue, format!("format must be rst, markdown or html, not \"{name}\""))),
        }
    }
}

/// `text` in `format` as plain text (see the module documentation).
pub fn clean(text: &str, format: Format, cancel: CancelCheck<'_>) -> Result<String, Error> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(Error::new(
            ErrorKind::ProgramLimitExceeded,
            format!("clean_text takes at most {} MB of text, not {} bytes", MAX_INPUT_BYTES >> 20, text.len()),
        ));
    }
    let text = text.replace("\r\n", "\n");
    let mut out = Output::new(text.len(), format, cancel)?;
    match format {
        Format::Html => html(&text, &mut out)?,
        Format::Rst | Format::Markdown => {
            let mut lines = Vec::new();
            lines.try_reserve_exact(text.bytes().filter(|&b| b == b'\n').count() + 1).map_err(|_| out_of_memory())?;
            lines.extend(text.split('\n').map(|line| line.trim_end()));
            if format == Format::Rst {
                rst(&lines, &mut out, 0)?;
            } else {
                markdown(&lines, &mut out)?;
            }
        }
    }
    out.finish()
}

fn out_of_memory() -> Error {
    Error::new(ErrorKind::OutOfMemory, "out of memory cleaning a text")
}

/// Lines (or characters) between checks for cancellation.
const CHECK_EVERY: usize = 4096;

/// How far inline markup looks for its closing delimiter, in characters: a span is short,
/// and a bound keeps hostile text linear.
const SPAN: usize = 1024;

/// How deep directives (reST) or emphasis and links (Markdown) nest before their content
/// is taken as plain text: a bound on recursion.
const MAX_DEPTH: usize = 8;

/// The output being written: prose gathers into a paragraph, flushed (with its inline
/// markup removed) when a block ends.
struct Output<'c> {
    text: String,
    paragraph: String,
    format: Format,
    cancel: CancelCheck<'c>,
    /// Markdown: the labels of the document's link reference definitions (normalized by
    /// [`reference_label`]); `[text][label]` is a link only when its label is defined.
    references: HashSet<String>,
    /// A block ended since the last line written: the next one starts after a blank line.
    break_pending: bool,
}

impl<'c> Output<'c> {
    fn new(input: usize, format: Format, cancel: CancelCheck<'c>) -> Result<Self, Error> {
        let mut text = String::new();
        // Expansions ("New in version") are bounded by the markup they replace.
        text.try_reserve(input + input / 2 + 16).map_err(|_| out_of_memory())?;
        Ok(Self { text, paragraph: String::new(), format, cancel, references: HashSet::new(), break_pending: false })
    }

    fn push(target: &mut String, piece: &str) -> Result<(), Error> {
        target.try_reserve(piece.len()).map_err(|_| out_of_memory())
            .map(|()| target.push_str(piece))
    }

    /// A line of prose: its words join the paragraph.
    fn prose(&mut self, line: &str) -> Result<(), Error> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if !self.paragraph.is_empty() {
            Self::push(&mut self.paragraph, " ")?;
        }
        Self::push(&mut self.paragraph, line.trim())
    }

    /// Text of an HTML text node: it joins the paragraph as it is (inline elements split
    /// words without spaces between them).
    fn run(&mut self, text: &str) -> Result<(), Error> {
        Self::push(&mut self.paragraph, text)
    }

    /// A line written as it is (code, a table row, a heading), on a line of its own.
    fn line(&mut self, line: &str) -> Result<(), Error> {
        self.flush()?;
        self.write(line.trim_end())
    }

    /// Ends the current block.
    fn block_end(&mut self) -> Result<(), Error> {
        self.flush()?;
        self.break_pending = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.paragraph.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.paragraph);
        let text = match self.format {
            Format::Rst => rst_inline(&raw, self.cancel)?,
            Format::Markdown => markdown_inline(&raw, &self.references, self.cancel, 0)?,
            Format::Html => raw,
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        self.write(&text)
    }

    fn write(&mut self, line: &str) -> Result<(), Error> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if !self.text.is_empty() {
            Self::push(&mut self.text, if self.break_pending { "\n\n" } else { "\n" })?;
        }
        self.break_pending = false;
        Self::push(&mut self.text, line)
    }

    fn finish(mut self) -> Result<String, Error> {
        self.flush()?;
        Ok(self.text)
    }
}

/// Leading spaces and tabs, in bytes (ASCII only, so that slicing there is safe).
fn indent(line: &str) -> usize {
    line.bytes().take_while(|&b| b == b' ' || b == b'\t').count()
}

/// The lines of a block that starts after line `from` and holds the lines indented more
/// than `base` (blank lines inside included, trailing ones not): its end.
fn indented_block_end(lines: &[&str], from: usize, base: usize) -> usize {
    let mut end = from;
    let mut i = from;
    while i < lines.len() && (lines[i].is_empty() || indent(lines[i]) > base) {
        i += 1;
        if !lines[i - 1].is_empty() {
            end = i;
        }
    }
    end
}

/// Writes `lines` as code, dedented by their common indent.
fn code_block(lines: &[&str], out: &mut Output<'_>) -> Result<(), Error> {
    let common = lines.iter().filter(|l| !l.is_empty()).map(|l| indent(l)).min().unwrap_or(0);
    out.block_end()?;
    for line in lines {
        if line.is_empty() {
            out.block_end()?;
        } else {
            out.line(&line[common..])?;
        }
    }
    out.block_end()
}

// ---------------------------------------------------------------------------------------
// reStructuredText (with Sphinx's directives and roles)

/// Directives whose content is not text a reader sees.
const RST_DROPPED: &[&str] = &[
    "index", "toctree", "highlight", "highlightlang", "module", "currentmodule", "moduleauthor", "sectionauthor",
    "codeauthor", "testsetup", "testcleanup", "image", "figure", "raw", "include", "literalinclude", "contents",
    "tabularcolumns", "cssclass", "rst-class", "meta", "default-role", "role", "program", "audit-event",
    "audit-event-table", "autosummary", "automodule", "sectnum", "target-notes", "header", "footer", "c:namespace",
    "c:namespace-push", "c:namespace-pop", "opcode", "pdbcommand", "limited-api-list",
];
/// Directives whose content is code.
const RST_CODE: &[&str] =
    &["code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "productionlist", "parsed-literal"];
/// Directives that describe an object: their arguments are its signature.
const RST_OBJECTS: &[&str] = &[
    "function", "method", "class", "attribute", "data", "exception", "decorator", "decoratormethod", "classmethod",
    "staticmethod", "coroutinefunction", "coroutinemethod", "abstractmethod", "awaitablefunction", "describe", "object",
    "option", "cmdoption", "envvar", "property", "type", "macro", "member", "var", "var-name", "enum", "enumerator",
];

/// Finds `pattern` in `chars` from `from`, looking at most SPAN characters ahead.
fn find_near(chars: &[char], from: usize, pattern: &[char]) -> Option<usize> {
    let last = chars.len().saturating_sub(pattern.len() - 1).min(from.saturating_add(SPAN));
    (from..last).find(|&j| chars[j..j + pattern.len()] == *pattern)
}

/// Line `i` of a block-structured format (reST, Markdown), after the periodic cancel
/// check; a blank line ends the current block and gives None, with `i` moved past it.
fn content_line<'a>(lines: &[&'a str], i: &mut usize, out: &mut Output<'_>) -> Result<Option<&'a str>, Error> {
    if *i % CHECK_EVERY == 0 {
        check(out.cancel)?;
    }
    let line = lines[*i];
    if line.trim_start().is_empty() {
        out.block_end()?;
        *i += 1;
        return Ok(None);
    }
    Ok(Some(line))
}

fn rst(lines: &[&str], out: &mut Output<'_>, depth: usize) -> Result<(), Error> {
    let mut i = 0;
    // The indent of a paragraph that ended with "::": an indented block after it is literal.
    let mut literal_after: Option<usize> = None;
    let mut in_simple_table = false;
    while i < lines.len() {
        let Some(line) = content_line(lines, &mut i, out)? else { continue };
        let body = line.trim_start();
        let base = indent(line);
        if let Some(literal) = literal_after.take() {
            if base > literal {
                let end = indented_block_end(lines, i, literal);
                code_block(&lines[i..end], out)?;
                i = end;
                continue;
            }
        }
        if let Some(rest) = body.strip_prefix("..") {
            if rest.is_empty() || rest.starts_with(' ') {
                i = rst_explicit(lines, i, rest.trim_start(), base, out, depth)?;
                continue;
            }
        }
        if body.starts_with(">>>") {
            // A doctest block runs to the next blank line.
            let end = (i..lines.len()).find(|&j| lines[j].is_empty()).unwrap_or(lines.len());
            code_block(&lines[i..end], out)?;
            i = end;
            continue;
        }
        if is_adornment(body) {
            // A section title's over- or underline, or a transition: the title stands alone.
            out.block_end()?;
            i += 1;
            continue;
        }
        if is_simple_table_rule(body) {
            // The rules open the table, close its header and close it.
            let opens = !in_simple_table;
            let closes = in_simple_table && lines.get(i + 1).is_none_or(|next| next.is_empty());
            in_simple_table = !closes;
            if opens || closes {
                out.block_end()?;
            }
            i += 1;
            continue;
        }
        if body.starts_with('+') && body.chars().all(|c| matches!(c, '+' | '-' | '=' | ':' | ' ')) {
            i += 1; // a grid table's border
            continue;
        }
        if body.starts_with('|') && body.len() > 1 && body.ends_with('|') {
            // A grid table's row: its cells, apart.
            out.line(&rst_cells(body[1..body.len() - 1].split('|'), out.cancel)?)?;
            i += 1;
            continue;
        }
        if in_simple_table {
            out.line(&rst_cells(body.split("  "), out.cancel)?)?;
            i += 1;
            continue;
        }
        let mut text = body;
        if let Some(rest) = text.strip_prefix("| ") {
            text = rest; // a line block's line
        }
        if starts_item(text) {
            out.flush()?; // a list item or a field starts a paragraph of its own
        }
        // "text::" reads "text:" and "text ::" or a lone "::" reads nothing; a literal block follows.
        if let Some(before) = text.strip_suffix("::") {
            literal_after = Some(base);
            let before = before.trim_end();
            let keep = if text.ends_with(" ::") || before.is_empty() { before.to_string() } else { format!("{before}:") };
            out.prose(&field_name(&keep))?;
        } else {
            out.prose(&field_name(text))?;
        }
        i += 1;
    }
    Ok(())
}

/// A table row's cells, apart.
fn rst_cells<'a>(cells: impl Iterator<Item = &'a str>, cancel: CancelCheck<'_>) -> Result<String, Error> {
    let mut kept = Vec::new();
    for cell in cells {
        let text = rst_inline(cell.trim(), cancel)?;
        if !text.is_empty() {
            kept.push(text);
        }
    }
    Ok(kept.join(" | "))
}

/// A list item ("* ", "- ", "+ ", "#. ", "1. ", "(a) ") or a field (":name: ").
fn starts_item(text: &str) -> bool {
    if text.starts_with("* ") || text.starts_with("- ") || text.starts_with("+ ") || text.starts_with("#. ") {
        return true;
    }
    let marker = text.split(' ').next().unwrap_or("");
    let numbered = marker.len() > 1
        && (marker.ends_with('.') || marker.ends_with(')'))
        && marker.trim_start_matches('(').trim_end_matches(['.', ')']).chars().all(|c| c.is_ascii_digit());
    numbered || (text.starts_with(':') && field_name(text) != text)
}

/// ":param x: text" reads "param x: text".
fn field_name(text: &str) -> String {
    if let Some(rest) = text.strip_prefix(':') {
        if let Some(end) = rest.find(": ").or_else(|| rest.strip_suffix(':').map(|r| r.len())) {
            let name = &rest[..end];
            if !name.is_empty() && !name.contains('`') {
                return format!("{name}:{}", &rest[end + 1..]);
            }
        }
    }
    text.to_string()
}

/// A line of one repeated punctuation character (section adornment, transition).
fn is_adornment(body: &str) -> bool {
    let mut chars = body.chars();
    let Some(first) = chars.next() else { return false };
    "=-`:'\"~^_*+#<>".contains(first) && body.len() >= 3 && chars.all(|c| c == first)
}

/// A simple table's rule: columns of '=' apart by spaces.
fn is_simple_table_rule(body: &str) -> bool {
    body.contains(' ') && body.starts_with('=') && body.chars().all(|c| c == '=' || c == ' ')
}

/// An explicit markup block (a line starting ".. ") at line `i` with `rest` after the
/// "..": a directive, a comment, a target, a substitution or a footnote. Returns the
/// line after it.
fn rst_explicit(lines: &[&str], i: usize, rest: &str, base: usize, out: &mut Output<'_>, depth: usize) -> Result<usize, Error> {
    let end = indented_block_end(lines, i + 1, base);
    let content = &lines[i + 1..end];
    if let Some(footnote) = rest.strip_prefix('[') {
        // ".. [1] text": the footnote's text.
        out.block_end()?;
        out.prose(footnote.split_once(']').map_or("", |(_, text)| text))?;
        for line in content {
            out.prose(line)?;
        }
        out.block_end()?;
        return Ok(end);
    }
    let directive = rest.split_once("::").filter(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
    });
    let Some((name, args)) = directive else {
        return Ok(end); // a comment, a hyperlink target or a substitution definition
    };
    let name = name.to_ascii_lowercase();
    let args = args.trim();
    let short = name.rsplit(':').next().unwrap_or(&name);
    if RST_DROPPED.contains(&name.as_str()) || RST_DROPPED.contains(&short) {
        return Ok(end);
    }
    // Options (":name: value") open the content; the rest is the body, from its first line.
    let mut body_start = 0;
    while body_start < content.len() && is_option(content[body_start]) {
        body_start += 1;
    }
    let body = &content[body_start..];
    out.block_end()?;
    if RST_CODE.contains(&name.as_str()) {
        return code_block(body, out).map(|()| end);
    }
    let (heading, body) = match short {
        _ if RST_OBJECTS.contains(&short) => {
            // The signature, and any more signatures on the lines right after it.
            out.line(args)?;
            let more = body.iter().take_while(|l| !l.is_empty()).count();
            for signature in &body[..more] {
                out.line(signature.trim())?;
            }
            out.block_end()?;
            (String::new(), &body[more..])
        }
        "versionadded" => (version_phrase("New in version", args, "."), body),
        "versionchanged" => (version_phrase("Changed in version", args, ":"), body),
        "deprecated" => (version_phrase("Deprecated since version", args, ":"), body),
        "deprecated-removed" => {
            let mut words = args.splitn(3, ' ');
            let (since, removed, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""), words.next().unwrap_or(""));
            (format!("Deprecated since version {since}, will be removed in version {removed}: {rest}"), body)
        }
        "note" | "warning" | "tip" | "hint" | "important" | "attention" | "caution" | "danger" | "error" => {
            (format!("{}{}: {args}", short[..1].to_ascii_uppercase(), &short[1..]), body)
        }
        "seealso" => (format!("See also: {args}"), body),
        "impl-detail" => (format!("CPython implementation detail: {args}"), body),
        "availability" => (format!("Availability: {args}"), body),
        _ => (args.to_string(), body),
    };
    out.prose(&heading)?;
    let body = &body[body.iter().take_while(|l| l.is_empty()).count()..];
    if depth >= MAX_DEPTH {
        for line in body {
            out.prose(line)?;
        }
        out.block_end()?;
        return Ok(end);
    }
    // The body is reST of its own, dedented.
    let common = body.iter().filter(|l| !l.is_empty()).map(|l| indent(l)).min().unwrap_or(0);
    let dedented: Vec<&str> = body.iter().map(|l| if l.is_empty() { *l } else { &l[common..] }).collect();
    // The heading ("Note:") and the body's first paragraph make one.
    rst(&dedented, out, depth + 1)?;
    out.block_end()?;
    Ok(end)
}

/// A directive's option line, ":name: value" (not a role such as ":exc:`x`").
fn is_option(line: &str) -> bool {
    line.trim_start().strip_prefix(':').and_then(|rest| rest.split_once(':')).is_some_and(|(name, after)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            && (after.is_empty() || after.starts_with(' '))
    })
}

/// "New in version 3.4." / "Changed in version 3.3: text".
fn version_phrase(phrase: &str, args: &str, after: &str) -> String {
    let (version, rest) = args.split_once(' ').unwrap_or((args, ""));
    format!("{phrase} {version}{after} {rest}")
}

/// reST inline markup as a reader sees it: literals, roles, references, emphasis,
/// substitutions and escapes.
fn rst_inline(text: &str, cancel: CancelCheck<'_>) -> Result<String, Error> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    out.try_reserve(text.len()).map_err(|_| out_of_memory())?;
    let mut i = 0;
    let mut steps = 0usize;
    let starts_word = |i: usize| i == 0 || !chars[i - 1].is_alphanumeric();
    let find = |from: usize, pattern: &[char]| find_near(&chars, from, pattern);
    while i < chars.len() {
        steps += 1;
        if steps % CHECK_EVERY == 0 {
            check(cancel)?;
        }
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                if chars[i + 1] != ' ' {
                    out.push(chars[i + 1]);
                }
                i += 2;
            }
            '`' if chars.get(i + 1) == Some(&'`') => match find(i + 2, &['`', '`']) {
                Some(end) => {
                    out.extend(&chars[i + 2..end]);
                    i = end + 2;
                }
                None => {
                    out.push_str("``");
                    i += 2;
                }
            },
            '`' => match find(i + 1, &['`']) {
                Some(end) => {
                    out.push_str(&reference_text(&chars[i + 1..end].iter().collect::<String>(), None));
                    i = end + 1;
                    while chars.get(i) == Some(&'_') {
                        i += 1;
                    }
                }
                None => {
                    out.push('`');
                    i += 1;
                }
            },
            ':' if starts_word(i) => {
                // :role:`content`
                let name_end = (i + 1..chars.len()).find(|&j| !(chars[j].is_ascii_alphanumeric() || matches!(chars[j], '-' | '_' | '+' | '.' | ':')));
                let role = name_end.filter(|&j| j > i + 2 && chars[j] == '`' && chars[j - 1] == ':');
                match role.and_then(|j| find(j + 1, &['`']).map(|end| (j, end))) {
                    Some((j, end)) => {
                        let role: String = chars[i + 1..j - 1].iter().collect();
                        let content: String = chars[j + 1..end].iter().collect();
                        out.push_str(&reference_text(&content, Some(&role)));
                        i = end + 1;
                    }
                    None => {
                        out.push(':');
                        i += 1;
                    }
                }
            }
            '*' if starts_word(i) => {
                let strong = chars.get(i + 1) == Some(&'*');
                let open = if strong { 2 } else { 1 };
                let close: &[char] = if strong { &['*', '*'] } else { &['*'] };
                let inner_ok = chars.get(i + open).is_some_and(|c| !c.is_whitespace() && *c != '*');
                match find(i + open, close).filter(|&end| inner_ok && end > i + open && !chars[end - 1].is_whitespace()) {
                    Some(end) => {
                        out.extend(&chars[i + open..end]);
                        i = end + close.len();
                    }
                    None => {
                        out.push('*');
                        i += 1;
                    }
                }
            }
            '|' if starts_word(i) => {
                // |substitution|
                match find(i + 1, &['|']).filter(|&end| end > i + 1 && chars[i + 1..end].iter().all(|c| !c.is_whitespace() || *c == ' ') && !chars[i + 1].is_whitespace()) {
                    Some(end) if chars.get(end + 1).is_none_or(|c| !c.is_alphanumeric()) => {
                        out.extend(&chars[i + 1..end]);
                        i = end + 1;
                        while chars.get(i) == Some(&'_') {
                            i += 1;
                        }
                    }
                    _ => {
                        out.push('|');
                        i += 1;
                    }
                }
            }
            '[' => {
                // a footnote or citation reference "[1]_", "[#]_", "[#name]_": dropped
                match find(i + 1, &[']', '_']).filter(|&end| chars[i + 1..end].iter().all(|c| c.is_alphanumeric() || matches!(c, '#' | '-' | '_'))) {
                    Some(end) => {
                        while out.ends_with(' ') {
                            out.pop();
                        }
                        i = end + 2;
                    }
                    None => {
                        out.push('[');
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// What a reader sees of a role's or a reference's content: "title <target>" shows the
/// title, "~a.b.c" the last part, "!x" x; :pep:`8` reads "PEP 8".
fn reference_text(content: &str, role: Option<&str>) -> String {
    let content = content.trim();
    if let Some(title) = content.strip_suffix('>').and_then(|c| c.rsplit_once('<')).map(|(title, _)| title.trim()) {
        if !title.is_empty() {
            return title.to_string();
        }
    }
    let content = content.trim_start_matches('!');
    let role = role.map(|r| r.rsplit(':').next().unwrap_or(r).to_ascii_lowercase());
    match role.as_deref() {
        Some("pep") => format!("PEP {content}"),
        Some("rfc") => format!("RFC {content}"),
        _ => match content.strip_prefix('~') {
            Some(path) => path.rsplit('.').next().unwrap_or(path).to_string(),
            None => content.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Markdown (CommonMark and GitHub's tables)

fn markdown(lines: &[&str], out: &mut Output<'_>) -> Result<(), Error> {
    // A reference may come before its definition: the labels are gathered first.
    for label in lines.iter().filter_map(|line| definition_label(line)) {
        out.references.try_reserve(1).map_err(|_| out_of_memory())?;
        out.references.insert(label);
    }
    let mut i = 0;
    while i < lines.len() {
        let Some(line) = content_line(lines, &mut i, out)? else { continue };
        let body = line.trim_start();
        let fence = ["```", "~~~"].into_iter().find(|f| body.starts_with(f));
        if let Some(fence) = fence {
            let end = (i + 1..lines.len()).find(|&j| lines[j].trim_start().starts_with(fence)).unwrap_or(lines.len());
            code_block(&lines[i + 1..end], out)?;
            i = (end + 1).min(lines.len());
            continue;
        }
        if body.starts_with("<!--") {
            let end = (i..lines.len()).find(|&j| lines[j].contains("-->")).unwrap_or(lines.len() - 1);
            i = end + 1;
            continue;
        }
        // A heading stands alone; a setext underline or a thematic break is dropped.
        if let Some(heading) = body.strip_prefix('#') {
            let text = heading.trim_start_matches('#');
            if text.is_empty() || text.starts_with(' ') {
                out.block_end()?;
                out.prose(text.trim().trim_end_matches('#'))?;
                out.block_end()?;
                i += 1;
                continue;
            }
        }
        let rule = body.replace(' ', "");
        if rule.len() >= 3 && ['-', '=', '*', '_'].iter().any(|&c| rule.chars().all(|r| r == c)) {
            out.block_end()?;
            i += 1;
            continue;
        }
        if definition_label(body).is_some() {
            i += 1;
            continue;
        }
        if body.starts_with('|') || (body.contains(" | ") && lines.get(i + 1).is_some_and(|next| is_table_separator(next))) {
            if !is_table_separator(body) {
                let mut cells = Vec::new();
                for cell in body.trim_matches('|').split('|') {
                    let text = markdown_inline(cell.trim(), &out.references, out.cancel, 0)?;
                    if !text.is_empty() {
                        cells.push(text);
                    }
                }
                out.line(&cells.join(" | "))?;
            }
            i += 1;
            continue;
        }
        if indent(line) >= 4 && lines.get(i.wrapping_sub(1)).is_none_or(|previous| previous.is_empty()) && !starts_md_item(body) {
            // An indented code block (after a blank line, not a list's continuation).
            let end = (i..lines.len()).find(|&j| !lines[j].is_empty() && indent(lines[j]) < 4).unwrap_or(lines.len());
            let end = (i..end).rev().find(|&j| !lines[j].is_empty()).map_or(i + 1, |j| j + 1);
            code_block(&lines[i..end], out)?;
            i = end;
            continue;
        }
        let mut text = body;
        while let Some(rest) = text.strip_prefix('>') {
            text = rest.trim_start(); // a block quote's marker
        }
        if starts_md_item(text) {
            out.flush()?;
            if let Some(rest) = ["* ", "+ "].iter().find_map(|m| text.strip_prefix(m)) {
                out.prose("-")?;
                text = rest;
            }
        }
        // A hard line break ("\" or two spaces at the end) ends nothing here: the paragraph
        // is one line.
        out.prose(text.trim_end_matches('\\'))?;
        i += 1;
    }
    Ok(())
}

/// The label of a link reference definition "[label]: url", normalized.
fn definition_label(line: &str) -> Option<String> {
    let body = line.trim_start().strip_prefix('[')?;
    let end = body.find("]:")?;
    (!body.contains("](") && end > 0).then(|| reference_label(&body[..end]))
}

/// A reference label as CommonMark matches it: case and runs of white space do not count.
fn reference_label(label: &str) -> String {
    label.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn is_table_separator(line: &str) -> bool {
    let body = line.trim();
    body.contains('-') && body.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

fn starts_md_item(text: &str) -> bool {
    if text.starts_with("- ") || text.starts_with("* ") || text.starts_with("+ ") {
        return true;
    }
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && (text[digits..].starts_with(". ") || text[digits..].starts_with(") "))
}

/// Markdown inline markup as a reader sees it: code spans, links, images, emphasis,
/// autolinks, inline HTML, escapes and entities.
fn markdown_inline(text: &str, references: &HashSet<String>, cancel: CancelCheck<'_>, depth: usize) -> Result<String, Error> {
    if depth >= MAX_DEPTH {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    out.try_reserve(text.len()).map_err(|_| out_of_memory())?;
    let mut i = 0;
    let mut steps = 0usize;
    let find = |from: usize, pattern: &[char]| find_near(&chars, from, pattern);
    // The closing bracket of one that opens at `open`, nested brackets allowed.
    let closing = |open: usize, left: char, right: char| -> Option<usize> {
        let mut depth = 0;
        for (j, &c) in chars.iter().enumerate().skip(open).take(SPAN) {
            if c == left {
                depth += 1;
            } else if c == right {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
        }
        None
    };
    while i < chars.len() {
        steps += 1;
        if steps % CHECK_EVERY == 0 {
            check(cancel)?;
        }
        let c = chars[i];
        match c {
            '\\' if chars.get(i + 1).is_some_and(|c| c.is_ascii_punctuation()) => {
                out.push(chars[i + 1]);
                i += 2;
            }
            '`' => {
                let ticks = chars[i..].iter().take_while(|&&c| c == '`').count();
                let fence = vec!['`'; ticks];
                match find(i + ticks, &fence) {
                    Some(end) => {
                        out.push_str(chars[i + ticks..end].iter().collect::<String>().trim());
                        i = end + ticks;
                    }
                    None => {
                        out.extend(&fence);
                        i += ticks;
                    }
                }
            }
            '!' if chars.get(i + 1) == Some(&'[') => {
                i += 1; // an image reads as its alternative text, as a link reads as its text
            }
            '[' => {
                // An inline link "[text](url)", or a reference link "[text][label]",
                // "[text][]" or "[text]" whose label the document defines; any other
                // bracket is text ("[1][2]" citing sources, "a[1]").
                let link = closing(i, '[', ']').and_then(|end| {
                    let defined = |label: &[char]| references.contains(&reference_label(&label.iter().collect::<String>()));
                    match chars.get(end + 1) {
                        Some('(') => Some((end, closing(end + 1, '(', ')').map_or(end + 1, |close| close + 1))),
                        Some('[') => closing(end + 1, '[', ']').filter(|&close| {
                            defined(if close == end + 2 { &chars[i + 1..end] } else { &chars[end + 2..close] })
                        }).map(|close| (end, close + 1)),
                        _ => defined(&chars[i + 1..end]).then_some((end, end + 1)),
                    }
                });
                match link {
                    Some((end, next)) => {
                        let inner: String = chars[i + 1..end].iter().collect();
                        out.push_str(&markdown_inline(&inner, references, cancel, depth + 1)?);
                        i = next;
                    }
                    None => {
                        out.push('[');
                        i += 1;
                    }
                }
            }
            '<' => match find(i + 1, &['>']) {
                Some(end) if end > i + 1 => {
                    let inner: String = chars[i + 1..end].iter().collect();
                    if inner.contains("://") || (inner.contains('@') && !inner.contains(' ')) {
                        out.push_str(&inner); // an autolink
                        i = end + 1;
                    } else if inner.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!') {
                        i = end + 1; // inline HTML
                    } else {
                        out.push('<');
                        i += 1;
                    }
                }
                _ => {
                    out.push('<');
                    i += 1;
                }
            },
            '*' | '_' | '~' => {
                let run = chars[i..].iter().take_while(|&&x| x == c).count();
                let before = i.checked_sub(1).map(|j| chars[j]);
                let after = chars.get(i + run).copied();
                // "_" inside a word (snake_case) is no emphasis; "~" only doubled.
                let opens = after.is_some_and(|a| !a.is_whitespace())
                    && (c != '_' || before.is_none_or(|b| !b.is_alphanumeric()))
                    && (c != '~' || run == 2);
                let close = vec![c; run];
                let end = find(i + run, &close).filter(|&end| {
                    opens
                        && !chars[end - 1].is_whitespace()
                        && (c != '_' || chars.get(end + run).is_none_or(|a| !a.is_alphanumeric()))
                });
                match end {
                    Some(end) => {
                        out.push_str(&markdown_inline(&chars[i + run..end].iter().collect::<String>(), references, cancel, depth + 1)?);
                        i = end + run;
                    }
                    None => {
                        out.extend(&close);
                        i += run;
                    }
                }
            }
            '&' => {
                let (decoded, used) = entity(&chars[i..]);
                out.push_str(&decoded);
                i += used;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// HTML

/// Elements whose content no reader sees as text of the page.
const HTML_DROPPED: &[&str] = &["script", "style", "head", "noscript", "template", "svg", "nav", "iframe", "object"];
/// Elements that start and end a block.
const HTML_BLOCKS: &[&str] = &[
    "p", "div", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "thead",
    "tbody", "tfoot", "caption", "blockquote", "section", "article", "header", "footer", "aside", "main", "figure",
    "figcaption", "form", "fieldset", "address", "details", "summary", "body", "html",
];

fn html(text: &str, out: &mut Output<'_>) -> Result<(), Error> {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let mut i = 0;
    let mut pre = false;
    let mut pre_text = String::new();
    let mut steps = 0usize;
    while i < text.len() {
        steps += 1;
        if steps % CHECK_EVERY == 0 {
            check(out.cancel)?;
        }
        if bytes[i] != b'<' {
            let end = text[i..].find('<').map_or(text.len(), |j| i + j);
            let decoded = decode_entities(&text[i..end]);
            if pre {
                Output::push(&mut pre_text, &decoded)?;
            } else {
                // Sphinx's and MkDocs' permalink anchors.
                out.run(&decoded.replace('¶', " "))?;
            }
            i = end;
            continue;
        }
        let rest = &lower[i..];
        let skip_to = |marker: &str, from: usize| lower[from..].find(marker).map_or(text.len(), |j| from + j + marker.len());
        if rest.starts_with("<!--") {
            i = skip_to("-->", i + 4);
            continue;
        }
        if rest.starts_with("<![cdata[") {
            i = skip_to("]]>", i);
            continue;
        }
        let tag_end = skip_to(">", i);
        let closing = rest.starts_with("</");
        let name: String = rest[if closing { 2 } else { 1 }..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if name.is_empty() {
            if rest.starts_with("<!") || rest.starts_with("<?") || closing {
                i = tag_end; // a doctype, a processing instruction, a stray "</"
            } else {
                out.run("<")?; // a literal "<" in text
                i += 1;
            }
            continue;
        }
        let tag = &lower[i..tag_end];
        let navigation = tag.contains("role=\"navigation\"") || tag.contains("role=\"search\"");
        if !closing && (HTML_DROPPED.contains(&name.as_str()) || navigation) && !tag.ends_with("/>") {
            i = element_end(&lower, tag_end, &name);
            continue;
        }
        if name == "pre" {
            if closing && pre {
                code_block(&pre_text.trim_matches('\n').split('\n').collect::<Vec<_>>(), out)?;
                pre_text.clear();
            }
            pre = !closing;
            out.block_end()?;
        } else if pre {
            // Tags inside <pre> (highlighting spans) are dropped, their text kept.
        } else if HTML_BLOCKS.contains(&name.as_str()) {
            out.block_end()?;
        } else if matches!(name.as_str(), "td" | "th") && !closing {
            out.run(" | ")?;
        }
        i = tag_end;
    }
    if pre && !pre_text.is_empty() {
        code_block(&pre_text.trim_matches('\n').split('\n').collect::<Vec<_>>(), out)?;
    }
    Ok(())
}

/// Where the element `name` whose start tag ends at `from` ends: after its matching end
/// tag, elements of the same name nested inside counted (or the end of the text).
fn element_end(lower: &str, from: usize, name: &str) -> usize {
    let (open, close) = (format!("<{name}"), format!("</{name}"));
    let bounded = |at: usize, tag: &str| {
        lower[at + tag.len()..].chars().next().is_none_or(|c| !c.is_ascii_alphanumeric())
    };
    let mut depth = 1;
    let mut at = from;
    while let Some(found) = lower[at..].find('<').map(|j| at + j) {
        let rest = &lower[found..];
        if rest.starts_with(&close) && bounded(found, &close) {
            depth -= 1;
            at = lower[found..].find('>').map_or(lower.len(), |j| found + j + 1);
            if depth == 0 {
                return at;
            }
        } else {
            if rest.starts_with(&open) && bounded(found, &open) {
                depth += 1;
            }
            at = found + 1;
        }
    }
    lower.len()
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '&' {
            let (decoded, used) = entity(&chars[i..]);
            out.push_str(&decoded);
            i += used;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The character reference at the start of `chars` ("&amp;", "&#39;", "&#x27;") decoded,
/// and how many characters it took; "&" alone when it is none.
fn entity(chars: &[char]) -> (String, usize) {
    let end = chars.iter().take(12).position(|&c| c == ';');
    let Some(end) = end.filter(|&e| e > 1) else { return ("&".to_string(), 1) };
    let name: String = chars[1..end].iter().collect();
    let decoded = match name.strip_prefix('#') {
        Some(number) => {
            let value = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse::<u32>().ok(),
            };
            value.map(|v| char::from_u32(v).unwrap_or('\u{fffd}'))
        }
        None => match name.as_str() {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            "ndash" => Some('–'),
            "mdash" => Some('—'),
            "hellip" => Some('…'),
            "lsquo" => Some('‘'),
            "rsquo" => Some('’'),
            "ldquo" => Some('“'),
            "rdquo" => Some('”'),
            "laquo" => Some('«'),
            "raquo" => Some('»'),
            "copy" => Some('©'),
            "reg" => Some('®'),
            "trade" => Some('™'),
            "deg" => Some('°'),
            "times" => Some('×'),
            "middot" => Some('·'),
            "bull" => Some('•'),
            "para" => Some('¶'),
            "sect" => Some('§'),
            "plusmn" => Some('±'),
            "shy" => Some('\u{ad}'),
            _ => None,
        },
    };
    match decoded {
        Some(c) => (c.to_string(), end + 1),
        None => ("&".to_string(), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    fn rst_text(text: &str) -> String {
        clean(text, Format::Rst, &never).unwrap()
    }

    #[test]
    fn rst_inline_markup_reads_as_text() {
        assert_eq!(
            rst_inline("Use :func:`int` or :meth:`~str.split` on ``'144'``; see `the tutorial <https://x>`_ and :pep:`8`.", &never).unwrap(),
            "Use int or split on '144'; see the tutorial and PEP 8."
        );
        let inline = |text: &str| rst_inline(text, &never).unwrap();
        assert_eq!(inline("*emphasis* and **strong** but 2*3*4 and *args"), "emphasis and strong but 2*3*4 and *args");
        assert_eq!(inline("A note [#]_ and |version| and \\*stars\\*"), "A note and version and *stars*");
        assert_eq!(inline(":ref:`Functions <tut-functions>` and :class:`!Foo`"), "Functions and Foo");
    }

    #[test]
    fn rst_blocks_keep_words_and_code() {
        let text = "Title\n=====\n\n.. index:: single: x\n\n.. _label:\n\nSome text that\nwraps, with a block::\n\n   for i in range(3):\n       print(i)\n\n\
                    .. function:: copy(src, dst)\n\n   Copy *src* to *dst*.\n\n   .. versionadded:: 3.4\n\n.. note::\n   Be careful.\n\n\
                    .. code-block:: python\n\n   x = 1\n\n>>> 1 + 1\n2\n\n* an item\n  that wraps\n* another\n\n.. a comment\n   that goes on\n";
        assert_eq!(
            rst_text(text),
            "Title\n\nSome text that wraps, with a block:\n\nfor i in range(3):\n    print(i)\n\ncopy(src, dst)\n\nCopy src to dst.\n\n\
             New in version 3.4.\n\nNote: Be careful.\n\nx = 1\n\n>>> 1 + 1\n2\n\n* an item that wraps\n* another"
        );
        assert_eq!(rst_text("Text ::\n\n   code\n"), "Text\n\ncode");
        assert_eq!(rst_text(":param x: the value\n:returns: nothing"), "param x: the value\nreturns: nothing");
        assert_eq!(rst_text("=====  =====\nA      B\n=====  =====\n1      2\n=====  =====\n"), "A | B\n1 | 2");
        assert_eq!(rst_text("+---+---+\n| a | b |\n+===+===+\n"), "a | b");
        assert_eq!(rst_text(".. versionchanged:: 3.3\n   Added *x*.\n"), "Changed in version 3.3: Added x.");
    }

    #[test]
    fn markdown_reads_as_text() {
        let md = "# Title\n\nSome **bold** and `code` with a [link](http://x \"t\") and ![img](a.png).\nNext line_with_underscore.\n\n\
                  ```sql\nSELECT 1;\n```\n\n- item *one*\n- item two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[ref]: http://x\n<!-- hidden -->\n> quoted";
        assert_eq!(
            clean(md, Format::Markdown, &never).unwrap(),
            "Title\n\nSome bold and code with a link and img. Next line_with_underscore.\n\nSELECT 1;\n\n- item one\n- item two\n\n\
             a | b\n1 | 2\n\nquoted"
        );
    }

    #[test]
    fn markdown_brackets_are_links_only_where_defined() {
        let md = "Use `f()` [1][2], a[1] and [the docs][docs], [Docs][] or [docs]; not [other][x].\n\n[DOCS]:  http://x";
        assert_eq!(
            clean(md, Format::Markdown, &never).unwrap(),
            "Use f() [1][2], a[1] and the docs, Docs or docs; not [other][x]."
        );
        // A definition that is no link reference definition defines nothing.
        assert_eq!(clean("[a][b] and [b](c): d", Format::Markdown, &never).unwrap(), "[a][b] and b: d");
    }

    #[test]
    fn html_reads_as_text() {
        let page = "<!DOCTYPE html><html><head><title>T</title><style>p{}</style></head><body>\
                    <div role=\"navigation\"><div>index</div> next</div>\
                    <h1>Title<a class=\"headerlink\" href=\"#t\">¶</a></h1><p>Fish &amp; chips &lt;3 &#39;x&#x27;</p>\
                    <script>var x = '<p>';</script><pre><span>def f():</span>\n    return 1</pre><!-- c --><p>End</p></body></html>";
        assert_eq!(clean(page, Format::Html, &never).unwrap(), "Title\n\nFish & chips <3 'x'\n\ndef f():\n    return 1\n\nEnd");
        assert_eq!(clean("a < b and &unknown; &", Format::Html, &never).unwrap(), "a < b and &unknown; &");
    }

    #[test]
    fn formats_bounds_and_cancellation() {
        assert_eq!(Format::parse("Markdown").unwrap(), Format::Markdown);
        assert!(Format::parse("latex").is_err());
        let big = "x".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(clean(&big, Format::Html, &never).unwrap_err().kind, ErrorKind::ProgramLimitExceeded);
        let stop = || true;
        assert_eq!(clean("a\n".repeat(10).as_str(), Format::Rst, &stop).unwrap_err().kind, ErrorKind::QueryCanceled);
        // Hostile nesting and unclosed markup stay bounded.
        let nested: String = (0..5000).map(|i| format!("{}.. note::\n", " ".repeat(i))).collect();
        assert!(clean(&nested, Format::Rst, &never).unwrap().starts_with("Note:"));
        let stars = "**a ".repeat(20_000) + &"[x".repeat(20_000) + &"`".repeat(20_000);
        assert!(clean(&stars, Format::Markdown, &never).unwrap().len() >= 40_000);
        assert!(clean(&stars, Format::Rst, &never).unwrap().len() >= 40_000);
    }

    /// The Python documentation's own files (scripts/setup.sh installs python3.11-doc): no
    /// markup is left, the words and the code are.
    #[test]
    fn real_files_lose_their_markup_only() {
        let docs = std::path::Path::new("/usr/share/doc/python3.11/html");
        let read = |path: &str| std::fs::read_to_string(docs.join(path)).unwrap_or_else(|e| panic!("{path}: {e} (run scripts/setup.sh)"));
        let rst = rst_text(&read("_sources/library/shutil.rst.txt"));
        let around = |text: &str, at: usize| {
            let from = text.floor_char_boundary(at.saturating_sub(120));
            text[from..text.ceil_char_boundary((at + 120).min(text.len()))].to_string()
        };
        for markup in [":func:`", "``", "\n.. ", "::\n", "\n=====", "\n-----", "*src*"] {
            if let Some(at) = rst.find(markup) {
                panic!("{markup:?} left in shutil.rst: {:?}", around(&rst, at));
            }
        }
        for kept in ["copyfile(src, dst, *, follow_symlinks=True)", "Copy the contents (no metadata) of the file named src",
                     "Changed in version 3.3: IOError used to be raised instead of OSError.", "An example that uses the ignore_patterns helper:\n\nfrom shutil import copytree, ignore_patterns\n"] {
            assert!(rst.contains(kept), "{kept:?} lost from shutil.rst");
        }
        let html = clean(&read("library/shutil.html"), Format::Html, &never).unwrap();
        for markup in ["<div", "</", "&amp;", "&lt;", "¶"] {
            if let Some(at) = html.find(markup) {
                panic!("{markup:?} left in shutil.html: {:?}", around(&html, at));
            }
        }
        assert!(html.contains("Copy the contents (no metadata) of the file named src"), "prose lost from shutil.html");
        let readme = clean(include_str!("../../../../README.md"), Format::Markdown, &never).unwrap();
        for markup in ["```", "](", "**", "\n## "] {
            if let Some(at) = readme.find(markup) {
                panic!("{markup:?} left in README.md: {:?}", around(&readme, at));
            }
        }
        assert!(readme.contains("SELECT rag_answer("), "code lost from README.md");
    }
}
