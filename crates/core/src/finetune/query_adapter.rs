//! Retrieval adapter: a learned linear map applied to query embeddings before search,
//!
//! ```text
//! q' = normalize(q + R q)
//! ```
//!
//! with R `[d, d]` starting at zero, the identity map. Passage embeddings, and the index
//! over them, stay as they are: only queries move, towards the passages that answer them.
//! A full matrix rather than a low-rank one: at d = 384 it is 147,456 parameters (576 KiB)
//! and d*d multiply-adds per query, negligible beside embedding the query, and it can undo
//! distortions of the whole space that a low-rank correction cannot; weight decay pulls it
//! back towards the identity map where the training pairs say nothing.
//!
//! Trained on (query, relevant passage) pairs with in-batch negatives: each query's
//! softmax over its cosine similarities, divided by a temperature, to the distinct
//! passages of its batch, and cross-entropy against its own (InfoNCE). Two queries of a
//! batch that share a passage share its column, so neither counts the other's answer as
//! a wrong one.

use std::collections::HashMap;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::format::{AdapterKind, Reader, Writer};
use super::train::{shuffled_batches, softmax_cross_entropy, AdamW, EpochReport, LossTotal, TrainingOptions};
use crate::error::{Error, ErrorKind};
use crate::rng::Rng;

/// A common temperature for contrastive training of sentence embeddings (SimCSE's).
pub const DEFAULT_TEMPERATURE: f32 = 0.05;

/// Dimensions beyond this would make the matrix unreasonably large (64 MiB at the limit).
const MAX_DIMENSIONS: usize = 4096;

fn data_error(message: String) -> Error {
    Error::new(ErrorKind::DataException, message)
}

fn row_norms(rows: ArrayView2<'_, f32>) -> Array1<f32> {
    rows.map_axis(Axis(1), |row| row.dot(&row).sqrt())
}

/// Training or evaluation pairs: each query embedding and the index of its relevant
/// passage among `passages`. A query with several relevant passages appears once per
/// passage.
#[derive(Clone, Copy)]
pub struct QueryExamples<'a> {
    queries: ArrayView2<'a, f32>,
    passages: ArrayView2<'a, f32>,
    positives: &'a [u32],
    /// Per query, passages to score it against besides the batch's (hard negatives:
    /// near misses from the corpus it will be searched in).
    negatives: Option<&'a [Vec<u32>]>,
}

impl<'a> QueryExamples<'a> {
    /// `queries` `[n, d]`, `passages` `[m, d]`, `positives` n indices below m; every
    /// embedding finite and not zero.
    pub fn new(
        queries: ArrayView2<'a, f32>,
        passages: ArrayView2<'a, f32>,
        positives: &'a [u32],
    ) -> Result<Self, Error> {
        if queries.ncols() != passages.ncols() {
            return Err(data_error(format!(
                "queries have {} dimensions, passages {}",
                queries.ncols(),
                passages.ncols()
            )));
        }
        if positives.len() != queries.nrows() {
            return Err(data_error(format!("{} queries but {} relevant passages", queries.nrows(), positives.len())));
        }
        if let Some(&passage) = positives.iter().find(|&&p| p as usize >= passages.nrows()) {
            return Err(data_error(format!(
                "relevant passage {passage} is not among the {} passages",
                passages.nrows()
            )));
        }
        for (what, rows) in [("query", queries), ("passage", passages)] {
            let norms = row_norms(rows);
            if let Some(row) = norms.iter().position(|n| !n.is_finite() || *n == 0.0) {
                return Err(data_error(format!("{what} embedding {row} is zero or not finite")));
            }
        }
        Ok(Self { queries, passages, positives, negatives: None })
    }

    /// Adds hard negatives: for each query, indices of passages that must score below
    /// its own. A query's own passage among them is not a negative.
    pub fn with_negatives(mut self, negatives: &'a [Vec<u32>]) -> Result<Self, Error> {
        if negatives.len() != self.positives.len() {
            return Err(data_error(format!("{} queries but {} lists of negatives", self.positives.len(), negatives.len())));
        }
        if let Some(&passage) = negatives.iter().flatten().find(|&&p| p as usize >= self.passages.nrows()) {
            return Err(data_error(format!("negative passage {passage} is not among the {} passages", self.passages.nrows())));
        }
        self.negatives = Some(negatives);
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.positives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positives.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryAdapter {
    dimensions: usize,
    /// R: the map is q + R q.
    residual: Array2<f32>,
}

impl QueryAdapter {
    /// The identity map on `dimensions`-dimensional embeddings.
    pub fn new(dimensions: usize) -> Result<Self, Error> {
        if dimensions == 0 || dimensions > MAX_DIMENSIONS {
            return Err(Error::new(
                ErrorKind::ProgramLimitExceeded,
                format!("a query adapter takes 1 to {MAX_DIMENSIONS} dimensions, not {dimensions}"),
            ));
        }
        Ok(Self { dimensions, residual: Array2::zeros((dimensions, dimensions)) })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn check_dimensions(&self, dimensions: usize) -> Result<(), Error> {
        if dimensions != self.dimensions {
            return Err(data_error(format!(
                "adapter is for {}-dimensional embeddings, not {dimensions}-dimensional ones",
                self.dimensions
            )));
        }
        Ok(())
    }

    /// `q + R q` for each row, not normalized.
    fn transform(&self, queries: ArrayView2<'_, f32>) -> Array2<f32> {
        &queries + &queries.dot(&self.residual.t())
    }

    /// The adapted query, unit length, to search with.
    pub fn apply(&self, query: &[f32]) -> Result<Vec<f32>, Error> {
        self.check_dimensions(query.len())?;
        let query = ArrayView1::from(query);
        let mapped = &query + &self.residual.dot(&query);
        let norm = mapped.dot(&mapped).sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return Err(data_error("query embedding is not finite or maps to zero".into()));
        }
        Ok(mapped.iter().map(|x| x / norm).collect())
    }

    /// The cross-entropy of one batch (indices into `examples`) and its gradient with
    /// respect to R. Each query is scored against the batch's passages and the batch's
    /// hard negatives, each passage once.
    fn loss_and_gradient(&self, examples: &QueryExamples<'_>, batch: &[usize], temperature: f32) -> (f64, Array2<f32>) {
        let mut columns = HashMap::new();
        let mut candidates = Vec::new();
        let mut column = |passage: u32| {
            *columns.entry(passage).or_insert_with(|| {
                candidates.push(passage as usize);
                candidates.len() - 1
            })
        };
        let labels: Vec<usize> = batch.iter().map(|&i| column(examples.positives[i])).collect();
        if let Some(negatives) = examples.negatives {
            batch.iter().flat_map(|&i| &negatives[i]).for_each(|&p| {
                column(p);
            });
        }
        let queries = examples.queries.select(Axis(0), batch);
        let mut passages = examples.passages.select(Axis(0), &candidates);
        let passage_norms = row_norms(passages.view());
        passages /= &passage_norms.insert_axis(Axis(1));

        let mapped = self.transform(queries.view());
        let norms = row_norms(mapped.view()).insert_axis(Axis(1));
        let unit = &mapped / &norms;
        let mut scores = unit.dot(&passages.t()) / temperature;
        let share = 1.0 / batch.len() as f32;
        // From here on `scores` holds the gradient of the mean loss with respect to them.
        let nll = softmax_cross_entropy(scores.view_mut(), &labels, &vec![share; batch.len()]);
        let grad_unit = scores.dot(&passages) / temperature;
        // Through the normalization: d(x/|x|) = (I - u u^T) / |x|.
        let along = (&grad_unit * &unit).sum_axis(Axis(1)).insert_axis(Axis(1));
        let grad_mapped = (&grad_unit - &(&unit * &along)) / &norms;
        let gradient = grad_mapped.t().dot(&queries);
        (nll.iter().sum::<f64>() / batch.len() as f64, gradient)
    }

    /// The adapter in the layout of [`super::format`], kind 2. Fields after the header:
    /// u32 dimensions, then f32 R `[dimensions, dimensions]`, row-major.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::new(AdapterKind::Retrieval, 4 + 4 * self.residual.len());
        writer.u32(self.dimensions as u32);
        writer.f32s(self.residual.as_slice().unwrap());
        writer.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(bytes, AdapterKind::Retrieval)?;
        let dimensions = reader.u32()? as usize;
        if dimensions == 0 || dimensions > MAX_DIMENSIONS {
            return Err(Error::new(
                ErrorKind::InvalidBinaryRepresentation,
                format!("adapter header is inconsistent: {dimensions} dimensions"),
            ));
        }
        let residual = reader.f32s(dimensions * dimensions, "matrix")?;
        reader.finish()?;
        let residual = Array2::from_shape_vec((dimensions, dimensions), residual).expect("length read for the shape");
        Ok(Self { dimensions, residual })
    }
}

/// Trains a [`QueryAdapter`] with AdamW; deterministic for a given adapter, options,
/// temperature and random generator (which orders the pairs of each epoch, and so
/// decides which passages are each other's negatives).
pub struct QueryTrainer {
    adapter: QueryAdapter,
    optimizer: AdamW,
    batch_size: usize,
    temperature: f32,
    rng: Rng,
}

impl QueryTrainer {
    pub fn new(adapter: QueryAdapter, options: &TrainingOptions, temperature: f32, rng: Rng) -> Result<Self, Error> {
        options.validate()?;
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::new(
                ErrorKind::InvalidParameterValue,
                format!("temperature must be positive, not {temperature}"),
            ));
        }
        let optimizer = AdamW::new(options, &[adapter.residual.len()]);
        Ok(Self { adapter, optimizer, batch_size: options.batch_size, temperature, rng })
    }

    pub fn adapter(&self) -> &QueryAdapter {
        &self.adapter
    }

    pub fn into_adapter(self) -> QueryAdapter {
        self.adapter
    }

    /// One pass over `examples` in a newly shuffled order, an AdamW step per batch,
    /// checking for interrupts between batches.
    pub fn train_epoch(
        &mut self,
        examples: &QueryExamples<'_>,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<EpochReport, Error> {
        self.adapter.check_dimensions(examples.queries.ncols())?;
        let mut total = LossTotal::default();
        for batch in shuffled_batches(examples.len(), self.batch_size, &mut self.rng) {
            interrupt()?;
            let (loss, mut gradient) = self.adapter.loss_and_gradient(examples, &batch, self.temperature);
            self.optimizer
                .step(&mut [self.adapter.residual.as_slice_mut().unwrap()], &mut [gradient.as_slice_mut().unwrap()]);
            total.add(loss, batch.len() as f64, batch.len());
        }
        Ok(total.report())
    }
}

/// The fraction of `examples` whose relevant passage is among the `k` passages most
/// cosine-similar to the query, adapted by `adapter` if given (ties count in the
/// query's favour). Scores blocks of queries against all passages, one matrix product
/// per block of at most 4M scores, checking for interrupts between blocks.
pub fn recall_at_k(
    examples: &QueryExamples<'_>,
    adapter: Option<&QueryAdapter>,
    k: usize,
    interrupt: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    if k == 0 {
        return Err(Error::new(ErrorKind::InvalidParameterValue, "k must be at least 1"));
    }
    if let Some(adapter) = adapter {
        adapter.check_dimensions(examples.queries.ncols())?;
    }
    if examples.is_empty() {
        return Ok(0.0);
    }
    let passage_norms = row_norms(examples.passages);
    let block_rows = ((4 << 20) / examples.passages.nrows()).max(1);
    let mut hits = 0usize;
    for start in (0..examples.len()).step_by(block_rows) {
        interrupt()?;
        let end = (start + block_rows).min(examples.len());
        let queries = examples.queries.slice(ndarray::s![start..end, ..]);
        let queries = adapter.map_or_else(|| queries.to_owned(), |a| a.transform(queries));
        let mut scores = queries.dot(&examples.passages.t());
        scores /= &passage_norms;
        for (row, &positive) in scores.outer_iter().zip(&examples.positives[start..end]) {
            let own = row[positive as usize];
            hits += usize::from(row.iter().filter(|&&s| s > own).count() < k);
        }
    }
    Ok(hits as f64 / examples.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_interrupt() -> Result<(), Error> {
        Ok(())
    }

    fn random_matrix(rng: &mut Rng, rows: usize, columns: usize, deviation: f64) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, columns), || (rng.normal() * deviation) as f32)
    }

    /// The analytic gradient of the batch loss against central differences, per entry of R.
    fn assert_gradient_matches(adapter: &QueryAdapter, examples: &QueryExamples<'_>, batch: &[usize], temperature: f32) -> Array2<f32> {
        let (_, gradient) = adapter.loss_and_gradient(examples, batch, temperature);
        let step = 1e-3;
        for index in 0..gradient.len() {
            let nudged = |delta: f32| {
                let mut changed = adapter.clone();
                changed.residual.as_slice_mut().unwrap()[index] += delta;
                changed.loss_and_gradient(examples, batch, temperature).0
            };
            let numeric = (nudged(step) - nudged(-step)) / (2.0 * f64::from(step));
            let analytic = f64::from(gradient.as_slice().unwrap()[index]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 1e-2 * analytic.abs(),
                "value {index}: numeric {numeric}, analytic {analytic}"
            );
        }
        gradient
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(4);
        let d = 5;
        let queries = random_matrix(&mut rng, 4, d, 1.0);
        let passages = random_matrix(&mut rng, 6, d, 1.0);
        // Queries 1 and 3 share a passage; passages 0, 4 and 5 are nobody's.
        let positives = [2, 1, 3, 1];
        let examples = QueryExamples::new(queries.view(), passages.view(), &positives).unwrap();
        let mut adapter = QueryAdapter::new(d).unwrap();
        adapter.residual = random_matrix(&mut rng, d, d, 0.3);
        let gradient = assert_gradient_matches(&adapter, &examples, &[0, 1, 2, 3], 0.5);
        assert!(gradient.iter().any(|&g| g.abs() > 1e-2));
    }

    #[test]
    fn gradient_with_hard_negatives_matches_finite_differences() {
        let mut rng = Rng::new(5);
        let d = 4;
        let queries = random_matrix(&mut rng, 3, d, 1.0);
        let passages = random_matrix(&mut rng, 7, d, 1.0);
        let positives = [0, 1, 2];
        // Query 1 lists its own passage and another query's: neither adds a column.
        let negatives = vec![vec![3, 4], vec![1, 2, 5], vec![6]];
        let examples = QueryExamples::new(queries.view(), passages.view(), &positives).unwrap().with_negatives(&negatives).unwrap();
        let mut adapter = QueryAdapter::new(d).unwrap();
        adapter.residual = random_matrix(&mut rng, d, d, 0.3);
        let batch = [0, 1, 2];
        let (loss, _) = adapter.loss_and_gradient(&examples, &batch, 0.5);
        let (loss_without, _) = adapter.loss_and_gradient(&QueryExamples::new(queries.view(), passages.view(), &positives).unwrap(), &batch, 0.5);
        assert!(loss > loss_without, "more negatives, higher loss: {loss} vs {loss_without}");
        assert_gradient_matches(&adapter, &examples, &batch, 0.5);
        let wrong = vec![vec![0]];
        assert!(QueryExamples::new(queries.view(), passages.view(), &positives).unwrap().with_negatives(&wrong).is_err());
        let outside = vec![vec![], vec![7], vec![]];
        assert!(QueryExamples::new(queries.view(), passages.view(), &positives).unwrap().with_negatives(&outside).is_err());
    }

    #[test]
    fn shared_passages_are_not_negatives() {
        let passages = ndarray::array![[1.0f32, 0.0], [0.0, 1.0]];
        let queries = ndarray::array![[1.0f32, 0.1], [1.0, -0.1]];
        let examples = QueryExamples::new(queries.view(), passages.view(), &[0, 0]).unwrap();
        let (loss, gradient) = QueryAdapter::new(2).unwrap().loss_and_gradient(&examples, &[0, 1], 0.05);
        assert_eq!((loss, gradient.iter().all(|&g| g == 0.0)), (0.0, true));
    }

    /// Queries that are a fixed linear distortion (a random rotation, stretched) of their
    /// passages, plus a little noise.
    fn distorted(seed: u64, d: usize, pairs: usize) -> (Array2<f32>, Array2<f32>) {
        let mut rng = Rng::new(seed);
        let mut rotation = random_matrix(&mut rng, d, d, 1.0);
        for i in 0..d {
            for j in 0..i {
                let projection = rotation.row(i).dot(&rotation.row(j));
                let earlier = rotation.row(j).to_owned();
                rotation.row_mut(i).scaled_add(-projection, &earlier);
            }
            let norm = rotation.row(i).dot(&rotation.row(i)).sqrt();
            rotation.row_mut(i).mapv_inplace(|x| x / norm);
        }
        let stretch = Array1::from_shape_fn(d, |i| 0.5 + 1.5 * i as f32 / d as f32);
        let distortion = rotation * &stretch.insert_axis(Axis(0));
        let passages = random_matrix(&mut rng, pairs, d, 1.0);
        let queries = passages.dot(&distortion.t()) + random_matrix(&mut rng, pairs, d, 0.05);
        (queries, passages)
    }

    fn train(queries: &Array2<f32>, passages: &Array2<f32>, seed: u64) -> QueryAdapter {
        let positives: Vec<u32> = (0..200).collect();
        let examples = QueryExamples::new(queries.slice(ndarray::s![..200, ..]), passages.view(), &positives).unwrap();
        let options = TrainingOptions { learning_rate: 1e-2, batch_size: 32, ..TrainingOptions::default() };
        let mut trainer = QueryTrainer::new(QueryAdapter::new(16).unwrap(), &options, 0.1, Rng::new(seed)).unwrap();
        for _ in 0..30 {
            trainer.train_epoch(&examples, &mut no_interrupt).unwrap();
        }
        trainer.into_adapter()
    }

    #[test]
    fn training_raises_recall_on_held_out_queries_and_repeats_exactly() {
        let (queries, passages) = distorted(9, 16, 300);
        let adapter = train(&queries, &passages, 1);
        let positives: Vec<u32> = (200..300).collect();
        let held_out = QueryExamples::new(queries.slice(ndarray::s![200.., ..]), passages.view(), &positives).unwrap();
        let before = recall_at_k(&held_out, None, 5, &mut no_interrupt).unwrap();
        let after = recall_at_k(&held_out, Some(&adapter), 5, &mut no_interrupt).unwrap();
        assert!(before < 0.3 && after > 0.9, "recall@5 {before} -> {after}");

        assert_eq!(train(&queries, &passages, 1).to_bytes(), adapter.to_bytes());
        assert_ne!(train(&queries, &passages, 2).to_bytes(), adapter.to_bytes());
    }

    #[test]
    fn apply_gives_unit_vectors_in_the_adapted_direction() {
        let mut adapter = QueryAdapter::new(3).unwrap();
        assert_eq!(adapter.apply(&[0.0, 3.0, 4.0]).unwrap(), [0.0, 0.6, 0.8]);
        adapter.residual[[0, 1]] = 1.0;
        let adapted = adapter.apply(&[0.0, 1.0, 0.0]).unwrap();
        let half = std::f32::consts::FRAC_1_SQRT_2;
        assert!((adapted[0] - half).abs() < 1e-6 && (adapted[1] - half).abs() < 1e-6 && adapted[2] == 0.0);
        assert_eq!(
            adapter.apply(&[1.0, 0.0]).unwrap_err().message,
            "adapter is for 3-dimensional embeddings, not 2-dimensional ones"
        );
        assert_eq!(adapter.apply(&[0.0; 3]).unwrap_err().message, "query embedding is not finite or maps to zero");
    }

    #[test]
    fn recall_counts_ties_for_the_query() {
        let passages = ndarray::array![[1.0f32, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 1.0]];
        let queries = ndarray::array![[0.0f32, 1.0], [1.0, 0.0]];
        let examples = QueryExamples::new(queries.view(), passages.view(), &[2, 3]).unwrap();
        // Query 0 ties passages 1 and 2 for first place; query 1's passage is second.
        assert_eq!(recall_at_k(&examples, None, 1, &mut no_interrupt).unwrap(), 0.5);
        assert_eq!(recall_at_k(&examples, None, 2, &mut no_interrupt).unwrap(), 1.0);
        assert_eq!(recall_at_k(&examples, None, 0, &mut no_interrupt).unwrap_err().message, "k must be at least 1");
    }

    #[test]
    fn serialization_round_trips_and_rejects_damage() {
        let mut adapter = QueryAdapter::new(6).unwrap();
        adapter.residual = random_matrix(&mut Rng::new(3), 6, 6, 0.1);
        let bytes = adapter.to_bytes();
        assert_eq!(bytes.len(), 16 + 4 + 4 * 36 + 8);
        assert_eq!(QueryAdapter::from_bytes(&bytes).unwrap(), adapter);
        let message = |bytes: &[u8]| QueryAdapter::from_bytes(bytes).unwrap_err().message;
        assert_eq!(message(&bytes[..40]), "adapter data is truncated: 40 bytes, its header says 172");
        let mut flipped = bytes.clone();
        flipped[30] ^= 0x80;
        assert_eq!(message(&flipped), "adapter data is corrupt: its checksum does not match");

        let mut writer = Writer::new(AdapterKind::Retrieval, 4 + 4 * 36);
        writer.u32(7);
        writer.f32s(&[0.0; 36]);
        assert_eq!(message(&writer.finish()), "adapter data is shorter than its shapes say");
        let mut writer = Writer::new(AdapterKind::Retrieval, 4 + 4 * 36);
        writer.u32(5);
        writer.f32s(&[0.0; 36]);
        assert_eq!(message(&writer.finish()), "adapter data has 44 bytes more than its shapes say");
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let queries = Array2::from_elem((2, 3), 1.0f32);
        let passages = Array2::from_elem((4, 3), 1.0f32);
        let error = |queries: &Array2<f32>, passages: &Array2<f32>, positives: &[u32]| {
            QueryExamples::new(queries.view(), passages.view(), positives).err().unwrap().message
        };
        assert_eq!(error(&queries, &Array2::ones((4, 2)), &[0, 1]), "queries have 3 dimensions, passages 2");
        assert_eq!(error(&queries, &passages, &[0]), "2 queries but 1 relevant passages");
        assert_eq!(error(&queries, &passages, &[0, 4]), "relevant passage 4 is not among the 4 passages");
        let mut zero = passages.clone();
        zero.row_mut(2).fill(0.0);
        assert_eq!(error(&queries, &zero, &[0, 1]), "passage embedding 2 is zero or not finite");

        let examples = QueryExamples::new(queries.view(), passages.view(), &[0, 1]).unwrap();
        let other = QueryAdapter::new(4).unwrap();
        let mut trainer = QueryTrainer::new(other.clone(), &TrainingOptions::default(), 0.05, Rng::new(1)).unwrap();
        let message = "adapter is for 4-dimensional embeddings, not 3-dimensional ones";
        assert_eq!(trainer.train_epoch(&examples, &mut no_interrupt).unwrap_err().message, message);
        assert_eq!(recall_at_k(&examples, Some(&other), 1, &mut no_interrupt).unwrap_err().message, message);
        assert_eq!(
            QueryTrainer::new(other, &TrainingOptions::default(), 0.0, Rng::new(1)).err().unwrap().message,
            "temperature must be positive, not 0"
        );
    }
}
