//! What a RAG answer asks the generator: the system message, the numbered passages cut to
//! a token budget and laid out in the chosen order, and the question; the answer when no
//! passage qualifies; and the one-line snippets of the source list.

use crate::error::{Error, ErrorKind};
use crate::finetune::AdapterKind;
use crate::models::Tokenizer;

/// The system message rag_answer() uses unless given one.
pub const RAG_SYSTEM: &str = "Answer the question with the help of the sources below. After the answer, cite the \
sources you used like [1].";

// The defaults of retrieve(), rag_answer(), rag_answer_json() and rag_prompt(). sql/rag.sql
// declares them (so that \df shows them); these apply to an explicit NULL, and a test
// checks that the two agree. The answer settings are the best of bench/rag_quality.sh
// --sweep on its dev questions: two passages of at most 120 tokens, best first.
pub const DEFAULT_RETRIEVE_K: i32 = 5;
pub const DEFAULT_K: i32 = 2;
pub const DEFAULT_MAX_TOKENS: i32 = 128;
pub const DEFAULT_PASSAGE_TOKENS: i32 = 120;
pub const DEFAULT_MIN_SCORE: f64 = 0.35;
pub const DEFAULT_PASSAGE_ORDER: &str = "best_first";

/// How the passages are laid out in the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassageOrder {
    /// The best passage first, as [1].
    BestFirst,
    /// The best passage last, next to the question (still numbered [1]).
    BestLast,
}

impl PassageOrder {
    /// `passage_order` as SQL spells it.
    pub fn parse(order: &str) -> Result<Self, Error> {
        match order {
            "best_first" => Ok(Self::BestFirst),
            "best_last" => Ok(Self::BestLast),
            other => {
                Err(Error::new(ErrorKind::InvalidParameterValue, format!("passage_order must be best_first or best_last, not \"{other}\"")))
            }
        }
    }
}

/// The first `budget` tokens of `text`, cut back to a boundary (`at_boundary`): a passage
/// that stops mid-sentence invites an answer that does.
pub fn first_tokens(tokenizer: &Tokenizer, text: &str, budget: usize) -> Result<String, Error> {
    let ids = tokenizer.encode_plain(text)?;
    if ids.len() <= budget {
        return Ok(text.to_string());
    }
    let prefix = tokenizer.decode(&ids[..budget])?;
    // Decoding may normalise spaces: the next character is known only for an exact prefix.
    let next = text.strip_prefix(prefix.as_str()).and_then(|rest| rest.chars().next());
    Ok(at_boundary(&prefix, next).to_string())
}

/// `prefix`, the start of a longer text whose next character is `next` (None: unknown), up
/// to its last sentence end or line break where that keeps at least half of it, else up to
/// its last complete word; never mid-word, unless it is one word. Trailing spaces trimmed.
pub fn at_boundary(prefix: &str, next: Option<char>) -> &str {
    let half = prefix.len() / 2;
    let chars: Vec<(usize, char)> = prefix.char_indices().collect();
    // A boundary at byte `at`: a line break there, or a sentence end (., ! or ?, with a
    // closing quote or bracket after it) before whitespace there.
    let is_sentence_end = |i: usize| {
        let before = |back: usize| i.checked_sub(back).map(|j| chars[j].1);
        matches!(before(1), Some('.' | '!' | '?'))
            || (matches!(before(1), Some('"' | '\'' | ')' | ']')) && matches!(before(2), Some('.' | '!' | '?')))
    };
    let sentence = (1..chars.len())
        .rev()
        .take_while(|&i| chars[i].0 >= half)
        .find(|&i| chars[i].1 == '\n' || (chars[i].1.is_whitespace() && is_sentence_end(i)))
        .map(|i| chars[i].0)
        .or_else(|| (next.is_some_and(char::is_whitespace) && !chars.is_empty() && is_sentence_end(chars.len())).then_some(prefix.len()));
    if let Some(at) = sentence {
        return prefix[..at].trim_end();
    }
    if next.is_some_and(char::is_whitespace) {
        return prefix.trim_end();
    }
    match prefix.trim_end().rfind(char::is_whitespace) {
        Some(at) if prefix.len() == prefix.trim_end().len() => prefix[..at].trim_end(),
        // The prefix ended in whitespace: its last word is complete.
        _ if prefix.len() != prefix.trim_end().len() => prefix.trim_end(),
        _ => prefix,
    }
}

/// An answer that max_tokens cut: up to its last complete sentence (with the closing quotes
/// or brackets and the [n] markers right after it), or all of it when it has none.
pub fn complete_sentences(answer: &str) -> &str {
    let chars: Vec<(usize, char)> = answer.char_indices().collect();
    let mut end = None;
    for (i, &(at, c)) in chars.iter().enumerate() {
        let next = chars.get(i + 1).map(|&(_, n)| n);
        if matches!(c, '.' | '!' | '?') && next.is_none_or(|n| n.is_whitespace() || matches!(n, '"' | '\'' | ')' | ']')) {
            end = Some(at + c.len_utf8());
        }
    }
    let Some(mut end) = end else { return answer };
    // Closers, then " [n]" markers.
    let rest = &answer[end..];
    let closers = rest.len() - rest.trim_start_matches(['"', '\'', ')']).len();
    end += closers;
    loop {
        let rest = &answer[end..];
        let trimmed = rest.trim_start_matches(' ');
        let marker = trimmed.strip_prefix('[').and_then(|r| r.split_once(']')).filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        match marker {
            Some((n, _)) => end += rest.len() - trimmed.len() + n.len() + 2,
            None => break,
        }
    }
    answer[..end].trim_end()
}

/// The user message: the passages (best first in `passages`), numbered [1].. and each
/// cut to `passage_tokens`, in `order`, then the question.
pub fn user_message(
    tokenizer: &Tokenizer,
    passages: &[&str],
    question: &str,
    passage_tokens: usize,
    order: PassageOrder,
) -> Result<String, Error> {
    let mut numbered = passages
        .iter()
        .enumerate()
        .map(|(i, content)| Ok(format!("[{}] {}", i + 1, first_tokens(tokenizer, content, passage_tokens)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    if order == PassageOrder::BestLast {
        numbered.reverse();
    }
    Ok(format!("Sources:\n\n{}\n\nQuestion: {question}", numbered.join("\n\n")))
}

/// The user message of a RAG answer before it is cut to the generator's tokens: made where
/// the generator's tokenizer is (the model service, or the backend running the model).
#[derive(Debug, Clone, PartialEq)]
pub struct Grounding {
    /// Best first.
    pub passages: Vec<String>,
    pub question: String,
    pub passage_tokens: usize,
    pub order: PassageOrder,
}

impl Grounding {
    pub fn user_message(&self, tokenizer: &Tokenizer) -> Result<String, Error> {
        let passages: Vec<&str> = self.passages.iter().map(String::as_str).collect();
        user_message(tokenizer, &passages, &self.question, self.passage_tokens, self.order)
    }
}

/// The answer when no passage reaches `min_score` (`best_score`: the best retrieved,
/// None when retrieval returned no rows); no generation runs.
pub fn no_answer(source: &str, best_score: Option<f64>, min_score: f64) -> String {
    let why = match best_score {
        Some(score) => format!("the closest passage scores {score:.2}, below min_score {min_score}"),
        None => "it returned no rows".to_string(),
    };
    format!("I don't know: nothing in \"{source}\" answers this question ({why}).")
}

/// One line of a passage for a citation list: whitespace collapsed, at most 100
/// characters and "..." after a cut.
pub fn snippet(content: &str) -> String {
    let flat = content.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(100) {
        Some((at, _)) => format!("{}...", &flat[..at]),
        None => flat,
    }
}

/// Seconds as milliseconds with one decimal.
pub fn round_ms(seconds: f64) -> f64 {
    (seconds * 1e4).round() / 10.0
}

/// Which adapter steers generation and which retrieval: `adapter` may name one of either
/// kind (given with its kind), `retrieval_adapter` only one for retrieval.
pub fn split_adapters<'a>(
    adapter: Option<(&'a str, AdapterKind)>,
    retrieval_adapter: Option<&'a str>,
) -> Result<(Option<&'a str>, Option<&'a str>), Error> {
    match adapter {
        Some((name, AdapterKind::Retrieval)) if retrieval_adapter.is_none() => Ok((None, Some(name))),
        Some((_, AdapterKind::Retrieval)) => {
            Err(Error::new(ErrorKind::InvalidParameterValue, "adapter and retrieval_adapter both name retrieval adapters")
                .with_hint("Name the generator adapter as adapter and the retrieval adapter as retrieval_adapter."))
        }
        Some((name, AdapterKind::Generator)) => Ok((Some(name), retrieval_adapter)),
        None => Ok((None, retrieval_adapter)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_files;

    #[test]
    fn passages_are_numbered_cut_and_ordered() {
        let generator = test_files::generator("smollm2-135m-instruct", 1);
        let tokenizer = generator.text().tokenizer();
        let long = "word ".repeat(50);
        let first = user_message(tokenizer, &["Paris is in France.", &long], "Where is Paris?", 5, PassageOrder::BestFirst).unwrap();
        let cut = first_tokens(tokenizer, &long, 5).unwrap();
        assert!(long.starts_with(&cut) && cut.ends_with("word") && cut.split_whitespace().count() <= 5, "{cut:?}");
        assert_eq!(first, format!("Sources:\n\n[1] Paris is in France.\n\n[2] {cut}\n\nQuestion: Where is Paris?"));
        let last = user_message(tokenizer, &["Paris is in France.", &long], "Where is Paris?", 5, PassageOrder::BestLast).unwrap();
        assert_eq!(last, format!("Sources:\n\n[2] {cut}\n\n[1] Paris is in France.\n\nQuestion: Where is Paris?"));
        assert_eq!(first_tokens(tokenizer, "short", 5).unwrap(), "short");
    }

    #[test]
    fn cut_answers_end_with_their_last_sentence() {
        assert_eq!(complete_sentences("Use a set. It keeps one of each [1]. Then sort th"), "Use a set. It keeps one of each [1].");
        assert_eq!(complete_sentences("Call dict.fromkeys(). [2] [1] It keeps the ord"), "Call dict.fromkeys(). [2] [1]");
        assert_eq!(complete_sentences("He said \"stop.\" Then he"), "He said \"stop.\"");
        assert_eq!(complete_sentences("Version 3.11 added tomllib and"), "Version 3.11 added tomllib and");
        assert_eq!(complete_sentences("Done!"), "Done!");
    }

    #[test]
    fn cuts_end_at_sentences_lines_or_words() {
        // The last sentence end in the second half wins.
        assert_eq!(at_boundary("One two three. Four five six. Seven ei", Some('g')), "One two three. Four five six.");
        assert_eq!(at_boundary("He said \"stop.\" Then he wal", Some('k')), "He said \"stop.\"");
        assert_eq!(at_boundary("A list:\n- first item\n- sec", Some('o')), "A list:\n- first item");
        // Too early to keep: the last complete word instead.
        assert_eq!(at_boundary("Short. Then a long run of words without an end unti", Some('l')),
                   "Short. Then a long run of words without an end");
        // The prefix itself ends a sentence or a word.
        assert_eq!(at_boundary("It ends here.", Some(' ')), "It ends here.");
        assert_eq!(at_boundary("It ends here", Some(' ')), "It ends here");
        assert_eq!(at_boundary("It ends here ", None), "It ends here");
        // Unknown next character: the last word may be cut, so it goes.
        assert_eq!(at_boundary("It ends here", None), "It ends");
        // A version number is no sentence end; one word stays whole.
        assert_eq!(at_boundary("Python 3.11 added tomllib to the stan", Some('d')), "Python 3.11 added tomllib to the");
        assert_eq!(at_boundary("Supercalifragilistic", Some('e')), "Supercalifragilistic");
        assert_eq!(at_boundary("", None), "");
    }

    #[test]
    fn settings_words_and_messages() {
        assert_eq!(PassageOrder::parse("best_last").unwrap(), PassageOrder::BestLast);
        assert_eq!(PassageOrder::parse("worst").unwrap_err().message, "passage_order must be best_first or best_last, not \"worst\"");
        assert_eq!(no_answer("docs", Some(0.2), 0.35), "I don't know: nothing in \"docs\" answers this question (the closest passage scores 0.20, below min_score 0.35).");
        assert_eq!(no_answer("docs", None, 0.35), "I don't know: nothing in \"docs\" answers this question (it returned no rows).");
        assert_eq!(snippet("a\n  b\tc"), "a b c");
        let long = "x".repeat(150);
        assert_eq!(snippet(&long), format!("{}...", "x".repeat(100)));
        assert_eq!(round_ms(0.123_456), 123.5);
    }

    #[test]
    fn sql_declares_the_same_defaults() {
        let sql = include_str!("../../../../sql/rag.sql");
        let signature = |function: &str| {
            let start = sql.find(&format!("CREATE FUNCTION {function}(")).unwrap_or_else(|| panic!("{function} in sql/rag.sql"));
            &sql[start..start + sql[start..].find("RETURNS").unwrap()]
        };
        assert!(signature("retrieve").contains(&format!("k integer DEFAULT {DEFAULT_RETRIEVE_K}")));
        for function in ["rag_answer_json", "rag_answer", "rag_prompt"] {
            let signature = signature(function);
            for wanted in [
                format!("k integer DEFAULT {DEFAULT_K}"),
                format!("passage_tokens integer DEFAULT {DEFAULT_PASSAGE_TOKENS}"),
                format!("min_score double precision DEFAULT {DEFAULT_MIN_SCORE}"),
                format!("passage_order text DEFAULT '{DEFAULT_PASSAGE_ORDER}'"),
            ] {
                assert!(signature.contains(&wanted), "{function}: {wanted}");
            }
            if function != "rag_prompt" {
                assert!(signature.contains(&format!("max_tokens integer DEFAULT {DEFAULT_MAX_TOKENS}")), "{function}");
            }
        }
    }

    #[test]
    fn adapters_split_by_kind() {
        assert_eq!(split_adapters(Some(("g", AdapterKind::Generator)), Some("r")).unwrap(), (Some("g"), Some("r")));
        assert_eq!(split_adapters(Some(("r", AdapterKind::Retrieval)), None).unwrap(), (None, Some("r")));
        assert_eq!(split_adapters(None, Some("r")).unwrap(), (None, Some("r")));
        let both = split_adapters(Some(("r", AdapterKind::Retrieval)), Some("r2")).unwrap_err();
        assert_eq!(both.kind, ErrorKind::InvalidParameterValue);
    }
}
