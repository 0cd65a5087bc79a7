//! The bookkeeping around training epochs: which rows validate (in key order), what
//! validation measures and which epoch is kept, and stacking the examples of many rows.

use ndarray::Array2;

use super::copy_head::CopyCandidates;
use super::output_adapter::TokenExamples;
use crate::error::Error;

/// Recall@k that validation of a retrieval adapter measures.
pub const RECALL_K: usize = 5;

/// An example of one row, with its row's key (the order rows are trained in) and
/// whether the row validates.
pub struct Held<T> {
    pub key: u64,
    pub validation: bool,
    pub item: T,
}

/// The training and the validation examples, each in key order.
pub fn split<T>(mut held: Vec<Held<T>>) -> (Vec<T>, Vec<T>) {
    held.sort_by_key(|h| h.key);
    let (validation, train): (Vec<_>, Vec<_>) = held.into_iter().partition(|h| h.validation);
    (train.into_iter().map(|h| h.item).collect(), validation.into_iter().map(|h| h.item).collect())
}

/// What validation measures after each epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Mean NLL per target token (lower is better).
    Loss,
    /// Recall@RECALL_K (higher is better).
    Recall,
}

impl Measure {
    /// The key of the figure in each epoch's report.
    pub fn key(self) -> &'static str {
        match self {
            Measure::Loss => "validation_loss",
            Measure::Recall => "validation_recall_at_5",
        }
    }

    /// Whether `value` is at least as good as `best` for keeping a later epoch: a lower
    /// loss; a recall no lower (recall over a few rows ties often, and the later
    /// epoch has learned more).
    pub fn keeps(self, value: f64, best: f64) -> bool {
        match self {
            Measure::Loss => value < best,
            Measure::Recall => value >= best,
        }
    }

    pub fn show(self, value: f64) -> String {
        match self {
            Measure::Loss => format!("validation loss {value:.4}"),
            Measure::Recall => format!("validation recall@{RECALL_K} {value:.3}"),
        }
    }
}

/// The epoch a run keeps: the one with the best validation figure, or the last one
/// when there are no validation rows.
pub struct BestEpoch<A> {
    measure: Measure,
    kept: Option<(usize, Option<f64>, A)>,
}

impl<A> BestEpoch<A> {
    pub fn new(measure: Measure) -> Self {
        Self { measure, kept: None }
    }

    /// Offers epoch `number` (validation figure `validation`, the adapter after it).
    pub fn offer(&mut self, number: usize, validation: Option<f64>, adapter: A) {
        let better = match (validation, self.kept.as_ref().and_then(|k| k.1)) {
            (Some(value), Some(best)) => self.measure.keeps(value, best),
            _ => true,
        };
        if better {
            self.kept = Some((number, validation, adapter));
        }
    }

    /// The kept epoch's number, figure and adapter; None when nothing was offered.
    pub fn kept(self) -> Option<(usize, Option<f64>, A)> {
        self.kept
    }
}

/// One row's completion positions: final hidden states (`targets.len()` rows of the
/// hidden width, flat), next tokens, and what a copy head could quote at each.
pub struct RowPositions {
    pub hidden: Vec<f32>,
    pub targets: Vec<u32>,
    pub copies: Vec<CopyCandidates>,
}

/// The completion positions of many rows, stacked for training.
pub struct Positions {
    pub hidden: Array2<f32>,
    pub targets: Vec<u32>,
    pub copies: Vec<CopyCandidates>,
}

impl Positions {
    /// Stacks rows in order; every row's hidden states are `width` wide.
    pub fn stack(rows: Vec<RowPositions>, width: usize) -> Self {
        let targets: Vec<u32> = rows.iter().flat_map(|r| r.targets.iter().copied()).collect();
        let mut values = Vec::with_capacity(targets.len() * width);
        let mut copies = Vec::with_capacity(targets.len());
        for row in rows {
            values.extend(row.hidden);
            copies.extend(row.copies);
        }
        let hidden = Array2::from_shape_vec((targets.len(), width), values).expect("one row per target");
        Self { hidden, targets, copies }
    }

    pub fn examples(&self) -> Result<TokenExamples<'_>, Error> {
        TokenExamples::new(self.hidden.view(), &self.targets, None)?.with_copies(&self.copies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_key_order_in_both_parts() {
        let held = [(5, false, 'a'), (1, true, 'b'), (3, false, 'c'), (2, true, 'd'), (4, false, 'e')]
            .map(|(key, validation, item)| Held { key, validation, item });
        assert_eq!(split(held.into_iter().collect()), (vec!['c', 'e', 'a'], vec!['b', 'd']));
    }

    #[test]
    fn the_best_epoch_is_kept_and_ties_go_by_measure() {
        let mut loss = BestEpoch::new(Measure::Loss);
        for (number, value) in [(1, 2.0), (2, 1.5), (3, 1.5), (4, 1.8)] {
            loss.offer(number, Some(value), number * 10);
        }
        assert_eq!(loss.kept(), Some((2, Some(1.5), 20)), "a loss tie keeps the earlier epoch");
        let mut recall = BestEpoch::new(Measure::Recall);
        for (number, value) in [(1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6)] {
            recall.offer(number, Some(value), number);
        }
        assert_eq!(recall.kept(), Some((3, Some(0.7), 3)), "a recall tie keeps the later epoch");
        let mut unvalidated = BestEpoch::new(Measure::Loss);
        for number in 1..=3 {
            unvalidated.offer(number, None, number);
        }
        assert_eq!(unvalidated.kept(), Some((3, None, 3)));
        assert!(BestEpoch::<()>::new(Measure::Loss).kept().is_none());
        assert_eq!(Measure::Recall.show(0.25), "validation recall@5 0.250");
        assert_eq!(Measure::Loss.key(), "validation_loss");
    }

    #[test]
    fn stacking_concatenates_rows_in_order() {
        let rows = vec![
            RowPositions { hidden: vec![1.0, 2.0, 3.0, 4.0], targets: vec![7, 8], copies: vec![CopyCandidates::default(), CopyCandidates::default()] },
            RowPositions { hidden: vec![5.0, 6.0], targets: vec![9], copies: vec![CopyCandidates::default()] },
        ];
        let stacked = Positions::stack(rows, 2);
        assert_eq!(stacked.hidden, ndarray::array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]);
        assert_eq!(stacked.targets, vec![7, 8, 9]);
        assert_eq!(stacked.copies.len(), 3);
    }
}
