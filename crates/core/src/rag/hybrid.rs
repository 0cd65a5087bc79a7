//! Hybrid retrieval: a full-text leg beside the vector leg, fused by reciprocal rank fusion
//! (Cormack, Clarke and Büttcher, SIGIR 2009): a row's score is the sum over the legs that
//! return it of 1 / (RRF_K + its rank there), so agreement between the legs counts and
//! neither leg's raw score scale matters.
//!
//! The text leg ranks the rows holding any lexeme of the question by the sum of those
//! lexemes' BM25 inverse document frequencies (BM25 with binary term frequency: passages
//! are short): a rare word of the question counts for more than one most rows hold.

use std::collections::HashMap;
use std::hash::Hash;

use crate::error::{Error, ErrorKind};

/// The constant of reciprocal rank fusion. Its paper and most systems use 60; 5 weighs each
/// leg's first rows more and retrieved better on both of bench/retrieve_recall.sh's sets
/// (dev samples; 1, 2, 5, 10, 20 and 60 tried: recall@1 0.919 -> 0.948 on the FAQ, 0.754 -> 0.771 on
/// SQuAD; recall@2 0.971 -> 0.977 and 0.870 -> 0.894).
pub const RRF_K: f64 = 5.0;

/// The fewest rows each leg of a hybrid retrieval returns to the fusion.
pub const MIN_CANDIDATES: i32 = 50;

/// How retrieval ranks rows: by embedding, by full-text match, or both fused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrievalMode {
    Vector,
    Text,
    Hybrid,
}

impl RetrievalMode {
    /// `mode` as given to retrieve() and rag_answer(); None means the source's default:
    /// hybrid where it has text search, else vector.
    pub fn parse(mode: Option<&str>, has_text_search: bool) -> Result<Self, Error> {
        let mode = match mode {
            None => return Ok(if has_text_search { Self::Hybrid } else { Self::Vector }),
            Some("vector") => Self::Vector,
            Some("text") => Self::Text,
            Some("hybrid") => Self::Hybrid,
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::InvalidParameterValue,
                    format!("mode must be vector, text or hybrid, not \"{other}\""),
                ))
            }
        };
        if mode != Self::Vector && !has_text_search {
            return Err(Error::new(
                ErrorKind::InvalidParameterValue,
                format!("mode {} needs a RAG source with text search", mode.name()),
            )
            .with_hint("Register the source with text_search => 'english' (a text search configuration)."));
        }
        Ok(mode)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vector => "vector",
            Self::Text => "text",
            Self::Hybrid => "hybrid",
        }
    }

    pub fn uses_vectors(self) -> bool {
        self != Self::Text
    }

    pub fn uses_text(self) -> bool {
        self != Self::Vector
    }
}

/// How many rows each leg returns for a retrieval of `k` rows in `mode`: k alone, or for
/// the fusion at least MIN_CANDIDATES (at most `max`).
pub fn leg_rows(mode: RetrievalMode, k: i32, max: i32) -> i32 {
    match mode {
        RetrievalMode::Hybrid => k.max(MIN_CANDIDATES).min(max),
        _ => k,
    }
}

/// BM25's inverse document frequency of a lexeme that `df` of `n` rows hold.
pub fn idf(n: f64, df: f64) -> f64 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// The text leg's terms: the lexemes the rows hold, each with its idf, and those a row
/// must hold one of to be a candidate (all but the lexemes more than half the rows hold,
/// which would make most rows candidates for little weight; all when that leaves none).
#[derive(Debug, PartialEq)]
pub struct TextTerms {
    pub lexemes: Vec<String>,
    pub weights: Vec<f64>,
    pub matched: Vec<String>,
}

/// The terms of `lexemes` (a question's, in order) of which `df` rows each, of `n`.
pub fn text_terms(lexemes: &[String], df: &[i64], n: f64) -> TextTerms {
    let n = n.max(df.iter().copied().max().unwrap_or(0) as f64).max(1.0);
    let held: Vec<(&String, f64)> = lexemes.iter().zip(df).filter(|(_, &d)| d > 0).map(|(l, &d)| (l, d as f64)).collect();
    let rare: Vec<String> = held.iter().filter(|(_, d)| *d <= n / 2.0).map(|(l, _)| (*l).clone()).collect();
    TextTerms {
        lexemes: held.iter().map(|(l, _)| (*l).clone()).collect(),
        weights: held.iter().map(|(_, d)| idf(n, *d)).collect(),
        matched: if rare.is_empty() { held.iter().map(|(l, _)| (*l).clone()).collect() } else { rare },
    }
}

/// The tsquery (in tsquery input syntax) of one lexeme, quoted; None for an empty one.
pub fn lexeme_query(lexeme: &str) -> Option<String> {
    (!lexeme.is_empty()).then(|| format!("'{}'", lexeme.replace('\\', "\\\\").replace('\'', "''")))
}

/// The tsquery matching a row that matches any of `queries`, or None when there is none
/// (a question of stop words only). A question's words are alternatives, not all
/// required: ranking, not matching, prefers rows with more of them.
pub fn any_of(queries: &[String]) -> Option<String> {
    (!queries.is_empty()).then(|| queries.join(" | "))
}

/// Reciprocal rank fusion of `legs` (each best first, no repeats within a leg): the best
/// `limit` rows with their fused scores, best first. Ties go to the row ranked better in
/// the earliest leg that has it, so the order is deterministic.
pub fn reciprocal_rank_fusion<T: Eq + Hash + Clone>(legs: &[&[T]], limit: usize) -> Vec<(T, f64)> {
    // Per row: its fused score and its rank in each leg (usize::MAX where absent).
    let mut rows: HashMap<&T, (f64, Vec<usize>)> = HashMap::new();
    for (leg, ranked) in legs.iter().enumerate() {
        for (rank, row) in ranked.iter().enumerate() {
            let entry = rows.entry(row).or_insert_with(|| (0.0, vec![usize::MAX; legs.len()]));
            if entry.1[leg] == usize::MAX {
                entry.0 += 1.0 / (RRF_K + (rank + 1) as f64);
                entry.1[leg] = rank;
            }
        }
    }
    let mut fused: Vec<(&T, (f64, Vec<usize>))> = rows.into_iter().collect();
    fused.sort_by(|(_, (a, ranks_a)), (_, (b, ranks_b))| b.total_cmp(a).then_with(|| ranks_a.cmp(ranks_b)));
    fused.into_iter().take(limit).map(|(row, (score, _))| (row.clone(), score)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_sums_reciprocal_ranks() {
        let vector = ["a", "b", "c", "d"];
        let text = ["c", "e", "a"];
        let fused = reciprocal_rank_fusion(&[&vector, &text], 10);
        let score = |row: &str| fused.iter().find(|(r, _)| *r == row).unwrap().1;
        assert_eq!(score("a"), 1.0 / 6.0 + 1.0 / 8.0);
        assert_eq!(score("c"), 1.0 / 8.0 + 1.0 / 6.0);
        assert_eq!(score("b"), 1.0 / 7.0);
        assert_eq!(score("e"), 1.0 / 7.0);
        assert_eq!(score("d"), 1.0 / 9.0);
        // a and c tie to the last bit: a is better in the first leg. b and e tie: b is in
        // the first leg at all.
        let order: Vec<&str> = fused.iter().map(|(r, _)| *r).collect();
        assert_eq!(order, ["a", "c", "b", "e", "d"]);
        assert_eq!(reciprocal_rank_fusion(&[&vector, &text], 2).len(), 2);
    }

    #[test]
    fn fusion_of_one_leg_keeps_its_order() {
        let only = [5, 3, 9, 1];
        let fused: Vec<i32> = reciprocal_rank_fusion(&[&only, &[]], 3).into_iter().map(|(r, _)| r).collect();
        assert_eq!(fused, [5, 3, 9]);
        assert!(reciprocal_rank_fusion::<i32>(&[&[], &[]], 3).is_empty());
    }

    #[test]
    fn fusion_matches_a_brute_force_ranking() {
        // Random legs over 40 ids: the fused order equals sorting every id by the formula.
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..200 {
            let mut ids: Vec<u32> = (0..40).collect();
            let mut leg = |n: usize| {
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.below(i as u64 + 1) as usize);
                }
                ids[..n].to_vec()
            };
            let (a, b) = (leg(25), leg(15));
            let rank = |leg: &[u32], id| leg.iter().position(|x| *x == id);
            let mut expected: Vec<(u32, f64, usize, usize)> = (0..40)
                .filter_map(|id| {
                    let (ra, rb) = (rank(&a, id), rank(&b, id));
                    let s = ra.map_or(0.0, |r| 1.0 / (5.0 + r as f64 + 1.0)) + rb.map_or(0.0, |r| 1.0 / (5.0 + r as f64 + 1.0));
                    (ra.is_some() || rb.is_some()).then(|| (id, s, ra.unwrap_or(usize::MAX), rb.unwrap_or(usize::MAX)))
                })
                .collect();
            expected.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.2.cmp(&y.2)).then(x.3.cmp(&y.3)));
            let got: Vec<u32> = reciprocal_rank_fusion(&[&a, &b], 10).into_iter().map(|(r, _)| r).collect();
            let want: Vec<u32> = expected.iter().take(10).map(|e| e.0).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn text_terms_weigh_rare_lexemes_and_match_on_them() {
        let lexemes: Vec<String> = ["python", "serial", "port", "zzz"].map(String::from).to_vec();
        let terms = text_terms(&lexemes, &[900, 3, 40, 0], 1000.0);
        assert_eq!(terms.lexemes, ["python", "serial", "port"]);
        assert_eq!(terms.matched, ["serial", "port"]);
        assert_eq!(terms.weights[1], (1.0f64 + (1000.0 - 3.0 + 0.5) / 3.5).ln());
        assert!(terms.weights[1] > terms.weights[2] && terms.weights[2] > terms.weights[0] && terms.weights[0] > 0.0);
        // Only frequent lexemes: they are all matched. n below a df (an old estimate) is raised.
        let frequent = text_terms(&lexemes[..1], &[900], 100.0);
        assert_eq!(frequent.matched, ["python"]);
        assert_eq!(frequent.weights, [idf(900.0, 900.0)]);
        assert_eq!(text_terms(&lexemes[3..], &[0], 10.0).lexemes, Vec::<String>::new());
    }

    #[test]
    fn lexeme_queries_quote_and_join() {
        let quoted: Vec<String> = ["serial", "o'neil", "a\\b", ""].iter().filter_map(|l| lexeme_query(l)).collect();
        assert_eq!(quoted, ["'serial'", "'o''neil'", "'a\\\\b'"]);
        assert_eq!(any_of(&quoted[..2]).as_deref(), Some("'serial' | 'o''neil'"));
        assert_eq!(any_of(&[]), None);
    }

    #[test]
    fn modes_parse_against_the_source() {
        assert_eq!(RetrievalMode::parse(None, true).unwrap(), RetrievalMode::Hybrid);
        assert_eq!(RetrievalMode::parse(None, false).unwrap(), RetrievalMode::Vector);
        assert_eq!(RetrievalMode::parse(Some("text"), true).unwrap(), RetrievalMode::Text);
        assert_eq!(RetrievalMode::parse(Some("vector"), true).unwrap(), RetrievalMode::Vector);
        assert!(RetrievalMode::parse(Some("hybrid"), false).is_err());
        assert!(RetrievalMode::parse(Some("bm25"), true).is_err());
        assert_eq!(leg_rows(RetrievalMode::Hybrid, 5, 1000), 50);
        assert_eq!(leg_rows(RetrievalMode::Hybrid, 80, 1000), 80);
        assert_eq!(leg_rows(RetrievalMode::Text, 5, 1000), 5);
    }
}
