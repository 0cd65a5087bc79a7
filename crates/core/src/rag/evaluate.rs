//! Scoring answers against reference answers and summarizing a strategy's scores, for
//! evaluate_strategies(): SQuAD's normalization, "reference contained", token F1, the
//! held-out split, percentiles and seeded bootstrap intervals.

use std::collections::HashMap;

use super::citations::without_markers;
use crate::finetune::{in_validation, row_key};
use crate::rng::Rng;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 2000;

/// SQuAD's answer normalization: lower case, no ASCII punctuation, no articles, words
/// apart by one space.
pub fn normalize(text: &str) -> String {
    let lower: String = text.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    lower.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// Whether a reference, normalized, is a phrase of the normalized answer or passage (its
/// citation markers are not words).
pub fn contains_reference(answer: &str, references: &[String]) -> bool {
    let text = format!(" {} ", normalize(&without_markers(answer)));
    references.iter().map(|r| normalize(r)).any(|r| !r.is_empty() && text.contains(&format!(" {r} ")))
}

/// Bag-of-words F1 of the answer against its best reference, after normalization.
pub fn token_f1(answer: &str, references: &[String]) -> f64 {
    let predicted = normalize(&without_markers(answer));
    let predicted: Vec<&str> = predicted.split(' ').filter(|w| !w.is_empty()).collect();
    references.iter().map(|r| f1(&predicted, &normalize(r))).fold(0.0, f64::max)
}

fn f1(predicted: &[&str], reference: &str) -> f64 {
    let expected: Vec<&str> = reference.split(' ').filter(|w| !w.is_empty()).collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &expected {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in predicted {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / predicted.len() as f64;
    let recall = common as f64 / expected.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The split key of a question: the split depends on its text and the seed only, so a
/// question asked twice lands on one side, and the table's row order does not matter.
pub fn question_key(seed: u64, question: &str) -> u64 {
    row_key(seed, question, "")
}

/// Whether the question of `key` is held out for scoring (else it may be trained on).
pub fn is_held_out(key: u64, held_out_fraction: f64) -> bool {
    in_validation(key, held_out_fraction)
}

/// The q-quantile (0..=1) of `values` with linear interpolation between the closest
/// ranks, as PostgreSQL's percentile_cont; NaN for none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (below, above) = (at.floor() as usize, at.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (at - below as f64)
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// A mean and its 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// The mean of `values` with a 95% interval from [`RESAMPLES`] resamples drawn with `seed`;
/// NaNs for no values. Paired differences are the bootstrap of the per-question differences.
pub fn bootstrap(values: &[f64], seed: u64) -> Interval {
    if values.is_empty() {
        return Interval { mean: f64::NAN, low: f64::NAN, high: f64::NAN };
    }
    let mut rng = Rng::new(seed);
    let n = values.len();
    let means: Vec<f64> =
        (0..RESAMPLES).map(|_| (0..n).map(|_| values[rng.below(n as u64) as usize]).sum::<f64>() / n as f64).collect();
    Interval { mean: mean(values), low: percentile(&means, 0.025), high: percentile(&means, 0.975) }
}

/// What one strategy's answer to one held-out question scored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuestionScore {
    pub correct: bool,
    pub f1: f64,
    /// Passages the answer cited, and of those the ones that hold the answer (RAG only).
    pub cited: Option<(usize, usize)>,
    /// Whether a passage the answer was given holds the answer (RAG, with passage ids).
    pub gold_retrieved: Option<bool>,
    /// No passage reached min_score: the answer says it does not know (RAG only).
    pub no_passage: bool,
    pub retrieve_ms: f64,
    pub prompt_ms: f64,
    pub generate_ms: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

impl QuestionScore {
    /// Answer time, model loading excluded.
    pub fn total_ms(&self) -> f64 {
        self.retrieve_ms + self.prompt_ms + self.generate_ms
    }

    /// The share of cited passages that hold the answer, for an answer that cites any.
    pub fn citation_precision(&self) -> Option<f64> {
        self.cited.filter(|(cited, _)| *cited > 0).map(|(cited, right)| right as f64 / cited as f64)
    }
}

/// A strategy's figures over its questions.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub questions: usize,
    pub accuracy: Interval,
    pub f1: Interval,
    /// Over the answers that cite a passage.
    pub citation_precision: Interval,
    /// Over the questions with passage ids.
    pub retrieval_recall: Interval,
    pub no_passage: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub retrieve_p50_ms: f64,
    pub prompt_p50_ms: f64,
    pub generate_p50_ms: f64,
    pub mean_prompt_tokens: f64,
    pub mean_generated_tokens: f64,
}

fn indicator(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The figures of `scores`; each interval's resamples are drawn from `seed`.
pub fn summarize(scores: &[QuestionScore], seed: u64) -> Summary {
    let of = |f: fn(&QuestionScore) -> f64| scores.iter().map(f).collect::<Vec<f64>>();
    let precisions: Vec<f64> = scores.iter().filter_map(QuestionScore::citation_precision).collect();
    let recalls: Vec<f64> = scores.iter().filter_map(|s| s.gold_retrieved.map(indicator)).collect();
    Summary {
        questions: scores.len(),
        accuracy: bootstrap(&of(|s| indicator(s.correct)), seed),
        f1: bootstrap(&of(|s| s.f1), seed),
        citation_precision: bootstrap(&precisions, seed),
        retrieval_recall: bootstrap(&recalls, seed),
        no_passage: scores.iter().filter(|s| s.no_passage).count(),
        p50_ms: percentile(&of(QuestionScore::total_ms), 0.5),
        p95_ms: percentile(&of(QuestionScore::total_ms), 0.95),
        retrieve_p50_ms: percentile(&of(|s| s.retrieve_ms), 0.5),
        prompt_p50_ms: percentile(&of(|s| s.prompt_ms), 0.5),
        generate_p50_ms: percentile(&of(|s| s.generate_ms), 0.5),
        mean_prompt_tokens: mean(&of(|s| s.prompt_tokens as f64)),
        mean_generated_tokens: mean(&of(|s| s.generated_tokens as f64)),
    }
}

/// Paired differences of two strategies on the same questions (a minus b): accuracy and F1.
pub fn differences(a: &[QuestionScore], b: &[QuestionScore], seed: u64) -> (Interval, Interval) {
    let paired = |f: fn(&QuestionScore) -> f64| a.iter().zip(b).map(|(x, y)| f(x) - f(y)).collect::<Vec<f64>>();
    (bootstrap(&paired(|s| indicator(s.correct)), seed), bootstrap(&paired(|s| s.f1), seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn normalizes_as_squad() {
        assert_eq!(normalize("The  Eiffel-Tower, in PARIS!"), "eiffeltower in paris");
        assert_eq!(normalize("An apple a day"), "apple day");
        assert_eq!(normalize("théâtre's"), "théâtres");
    }

    #[test]
    fn references_are_phrases_of_the_answer() {
        assert!(contains_reference("It was built by Gustave Eiffel [1].", &refs(&["gustave eiffel"])));
        assert!(contains_reference("Denver Broncos won.", &refs(&["Carolina Panthers", "the Denver Broncos"])));
        // Whole words only, and the marker is not a word.
        assert!(!contains_reference("Eiffelsson built it", &refs(&["Eiffel"])));
        assert!(!contains_reference("It is [1]", &refs(&["1"])));
        assert!(!contains_reference("anything", &refs(&["", "the"])));
    }

    #[test]
    fn token_f1_takes_the_best_reference() {
        // SQuAD's own example: 2 common tokens of 3 predicted and 4 expected.
        let f = token_f1("the big red dog", &refs(&["big dog was here", "cat"]));
        let (p, r) = (2.0 / 3.0, 2.0 / 4.0);
        assert!((f - 2.0 * p * r / (p + r)).abs() < 1e-12);
        assert_eq!(token_f1("", &refs(&["x"])), 0.0);
        assert_eq!(token_f1("a a a", &refs(&["a"])), 0.0);
        // Repeated words count as often as the reference has them.
        let f = token_f1("go go go", &refs(&["go stop"]));
        let (p, r) = (1.0 / 3.0, 1.0 / 2.0);
        assert!((f - 2.0 * p * r / (p + r)).abs() < 1e-12);
    }

    #[test]
    fn percentile_interpolates_like_percentile_cont() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert!((percentile(&v, 0.95) - 3.85).abs() < 1e-12);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn bootstrap_brackets_the_mean_and_repeats() {
        let values: Vec<f64> = (0..100).map(|i| indicator(i % 4 == 0)).collect();
        let a = bootstrap(&values, 7);
        assert_eq!(a, bootstrap(&values, 7));
        assert_eq!(a.mean, 0.25);
        assert!(a.low < 0.25 && a.high > 0.25);
        // The binomial standard error is 0.043: the interval is about +-0.085.
        assert!((a.high - a.low - 0.17).abs() < 0.04, "{a:?}");
        let constant = bootstrap(&[1.0; 10], 1);
        assert_eq!((constant.low, constant.high), (1.0, 1.0));
    }

    #[test]
    fn split_depends_on_text_and_seed_only() {
        let questions: Vec<String> = (0..2000).map(|i| format!("question {i}?")).collect();
        let held: Vec<bool> = questions.iter().map(|q| is_held_out(question_key(3, q), 0.3)).collect();
        let share = held.iter().filter(|h| **h).count() as f64 / held.len() as f64;
        assert!((share - 0.3).abs() < 0.04, "{share}");
        assert_eq!(held, questions.iter().map(|q| is_held_out(question_key(3, q), 0.3)).collect::<Vec<_>>());
        let other: Vec<bool> = questions.iter().map(|q| is_held_out(question_key(4, q), 0.3)).collect();
        assert_ne!(held, other);
    }

    #[test]
    fn summary_and_differences() {
        let score = |correct, f1, cited, retrieved, ms| QuestionScore {
            correct,
            f1,
            cited,
            gold_retrieved: retrieved,
            retrieve_ms: 1.0,
            prompt_ms: ms,
            generate_ms: ms,
            prompt_tokens: 10,
            generated_tokens: 4,
            ..QuestionScore::default()
        };
        let rag = [
            score(true, 1.0, Some((2, 1)), Some(true), 10.0),
            score(false, 0.5, Some((0, 0)), Some(false), 20.0),
            score(true, 0.8, Some((1, 1)), Some(true), 30.0),
        ];
        let s = summarize(&rag, 1);
        assert_eq!(s.questions, 3);
        assert!((s.accuracy.mean - 2.0 / 3.0).abs() < 1e-12);
        // An answer that cites nothing has no citation precision.
        assert_eq!(s.citation_precision.mean, 0.75);
        assert!((s.retrieval_recall.mean - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.p50_ms, 41.0);
        assert_eq!(s.generate_p50_ms, 20.0);
        let closed = [score(false, 0.0, None, None, 5.0), score(false, 0.5, None, None, 5.0), score(true, 0.2, None, None, 5.0)];
        let c = summarize(&closed, 1);
        assert!(c.citation_precision.mean.is_nan() && c.retrieval_recall.mean.is_nan());
        let (accuracy, f1) = differences(&rag, &closed, 1);
        assert!((accuracy.mean - 1.0 / 3.0).abs() < 1e-12);
        assert!((f1.mean - (1.0 + 0.0 + 0.6) / 3.0).abs() < 1e-12);
    }
}
