//! Citation markers for an answer: the model's own `[n]` when it wrote any, or else the
//! passages the answer demonstrably draws on (small generators often answer from the
//! passages without citing them).

use std::collections::HashSet;

/// Who put the markers in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cited {
    /// The model cited at least one of the given passages.
    Model,
    /// Markers were added for the passages the answer shares wording with.
    Overlap,
    /// Neither: no marker.
    None,
}

impl Cited {
    pub fn name(self) -> &'static str {
        match self {
            Cited::Model => "model",
            Cited::Overlap => "overlap",
            Cited::None => "none",
        }
    }
}

/// Consecutive words two texts must share for a passage to count as used: word pairs are
/// specific enough that common words alone do not make a match.
const SHARED_PAIRS: usize = 3;

/// The passage numbers (1-based) cited in `answer` as `[n]`, n in 1..=passages. An
/// index in code (`a[1]`, `f()[2]`, `m[0][1]`) is not a citation: a marker never follows a
/// name or a closing bracket directly, unless that bracket ends a marker (`[1][2]`).
pub fn markers(answer: &str, passages: usize) -> Vec<usize> {
    let mut found = Vec::new();
    for (_, n) in marker_spans(answer, passages) {
        if !found.contains(&n) {
            found.push(n);
        }
    }
    found
}

/// `answer` without its citation markers (of any passage number), for scoring its words.
pub fn without_markers(answer: &str) -> String {
    let mut text = String::with_capacity(answer.len());
    let mut from = 0;
    for (span, _) in marker_spans(answer, usize::MAX) {
        text.push_str(&answer[from..span.start]);
        text.push(' ');
        from = span.end;
    }
    text.push_str(&answer[from..]);
    text
}

/// The byte ranges of the markers of `answer` (see [`markers`]) and their numbers.
fn marker_spans(answer: &str, passages: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut found = Vec::new();
    let mut marker_end = None;
    for (open, _) in answer.match_indices('[') {
        let indexes = answer[..open]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || "_)".contains(c) || (c == ']' && marker_end != Some(open)));
        let rest = &answer[open + 1..];
        let Some(close) = rest.find(']') else { break };
        if indexes {
            continue;
        }
        if let Ok(n) = rest[..close].trim().parse::<usize>() {
            if (1..=passages).contains(&n) {
                let end = open + 1 + close + 1;
                marker_end = Some(end);
                found.push((open..end, n));
            }
        }
    }
    found
}

/// `answer` with citation markers: unchanged when the model cited a passage; otherwise
/// with ` [n]` appended for every passage sharing at least [`SHARED_PAIRS`] consecutive
/// word pairs with it.
pub fn cite(answer: &str, passages: &[&str]) -> (String, Cited) {
    if !markers(answer, passages.len()).is_empty() {
        return (answer.to_string(), Cited::Model);
    }
    let answer_pairs = word_pairs(answer);
    let used: Vec<usize> = passages
        .iter()
        .enumerate()
        .filter(|(_, passage)| word_pairs(passage).intersection(&answer_pairs).count() >= SHARED_PAIRS)
        .map(|(i, _)| i + 1)
        .collect();
    if used.is_empty() {
        return (answer.to_string(), Cited::None);
    }
    let marks: String = used.iter().map(|n| format!("[{n}]")).collect();
    (format!("{answer} {marks}"), Cited::Overlap)
}

fn word_pairs(text: &str) -> HashSet<(String, String)> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.windows(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers_in_range() {
        assert_eq!(markers("Paris [2], see also [1] and [2] and [ 3 ].", 3), vec![2, 1, 3]);
        assert_eq!(markers("a[0] b[4] c[x] d[1", 3), Vec::<usize>::new());
        assert_eq!(markers("list[1:3] and [1]", 2), vec![1]);
        // Indexes in code are not citations.
        assert_eq!(markers("use a[1], f()[2], m[0][1] or x_[1]", 3), Vec::<usize>::new());
        assert_eq!(markers("See [1][2].", 3), vec![1, 2]);
    }

    #[test]
    fn removes_markers_but_not_indexes() {
        assert_eq!(without_markers("Use int() [1][2]. a[1] stays [12]."), "Use int()   . a[1] stays  .");
    }

    #[test]
    fn keeps_the_model_s_citations() {
        let (text, cited) = cite("It is Gustave Eiffel [1].", &["The tower is named after Gustave Eiffel."]);
        assert_eq!((text.as_str(), cited), ("It is Gustave Eiffel [1].", Cited::Model));
    }

    #[test]
    fn adds_markers_for_the_passages_the_answer_uses() {
        let passages = [
            "Bananas are rich in potassium.",
            "The Eiffel Tower is named after the engineer Gustave Eiffel, whose company built it.",
            "Gustave Eiffel was born in Dijon.",
        ];
        let (text, cited) = cite("The tower is named after the engineer Gustave Eiffel.", &passages);
        assert_eq!((text.as_str(), cited), ("The tower is named after the engineer Gustave Eiffel. [2]", Cited::Overlap));
        // Shared single words are not enough.
        let (text, cited) = cite("Eiffel built towers; bananas grow.", &passages);
        assert_eq!((text.as_str(), cited), ("Eiffel built towers; bananas grow.", Cited::None));
    }
}
