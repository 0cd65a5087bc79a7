//! Generator adapter: a LoRA-style low-rank correction of a causal language model's output
//! projection, learned from the final hidden states of the positions before target tokens.
//!
//! ```text
//! logits = W h + (alpha / rank) * B (A h)
//! ```
//!
//! W `[vocab, hidden]` is the frozen output projection (`lm_head.f16` beside a converted
//! model), h the final-normed hidden state the ONNX graph outputs as `hidden_states`,
//! A `[rank, hidden]` ("down") starts small and random, B `[vocab, rank]` ("up") at zero,
//! so a fresh adapter changes nothing. B is kept transposed, `[rank, vocab]`, so that
//! generation adds `rank` scaled contiguous rows to a logits row.
//!
//! Why only the output projection: hidden states come from the unchanged graph, so they
//! are computed once per training position (one forward pass over each row's tokens) and
//! training never backpropagates through the network; an epoch takes seconds on a CPU.
//! The adapter learns which tokens to produce given the model's reading of the context
//! (vocabulary, phrasing, answers tied to contexts the model already tells apart), not
//! new ways of reading it. A per-token bias would be cheaper but blind to the context; a
//! full correction of W would be vocab*hidden parameters (28M-136M) to learn from a table.
//!
//! Cost per training position: vocab*hidden multiply-adds for W h, computed as one matrix
//! product per block of W's rows per batch, plus about 3*rank*(vocab+hidden) for the
//! adapter and vocab exponentials for the softmax over the full vocabulary. Memory: W
//! stays float16 (2*vocab*hidden bytes: 57 MB for SmolLM2-135M, 272 MB for Qwen2.5-0.5B);
//! each batch converts it to float32 one block of `BLOCK_BYTES` at a time, and holds the
//! batch's logits (4*batch*vocab bytes: 12.6 MB for SmolLM2, 38.9 MB for Qwen at 64 rows).

use half::f16;
use half::slice::HalfFloatSliceExt;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};

use super::copy_head::{CopyCandidates, CopyHead, PromptKeys, TENSORS};
use super::format::{self, AdapterKind, Reader, Writer};
use super::train::{shuffled_batches, softmax_cross_entropy, AdamW, EpochReport, LossTotal, TrainingOptions};
use crate::error::{Error, ErrorKind};
use crate::rng::Rng;
use std::sync::Arc;

/// Float32 bytes of the output projection converted at a time: a block that stays in a
/// core's L2 cache while the matrix product packs it (8 MiB blocks made the product 30%
/// slower at 64 rows per batch; 1 MiB matched multiplying a fully converted W).
const BLOCK_BYTES: usize = 1 << 20;

fn data_error(message: String) -> Error {
    Error::new(ErrorKind::DataException, message)
}

/// The frozen output projection W `[vocab, hidden]`, kept in float16 as shipped.
pub struct LmHead {
    vocab: usize,
    hidden: usize,
    weights: Vec<f16>,
    fingerprint: u64,
    /// Rows of W converted and multiplied at a time.
    block_rows: usize,
}

impl LmHead {
    /// From `lm_head.f16`: little-endian float16, row-major `[vocab, hidden]`. The bytes
    /// may be dropped afterwards (the head keeps its own copy).
    pub fn from_le_bytes(bytes: &[u8], vocab: usize, hidden: usize) -> Result<Self, Error> {
        if vocab == 0 || hidden == 0 || vocab > u32::MAX as usize {
            return Err(Error::new(
                ErrorKind::InvalidParameterValue,
                format!("output projection shape [{vocab}, {hidden}] is not usable"),
            ));
        }
        let expected = vocab.checked_mul(hidden).and_then(|n| n.checked_mul(2));
        if expected != Some(bytes.len()) {
            return Err(data_error(format!(
                "output projection has {} bytes, but vocabulary {vocab} and hidden size {hidden} take {}",
                bytes.len(),
                vocab as u128 * hidden as u128 * 2
            )));
        }
        let weights: Vec<f16> = bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        if let Some(position) = weights.iter().position(|w| !w.is_finite()) {
            return Err(data_error(format!(
                "output projection has a non-finite weight in row {}, column {}",
                position / hidden,
                position % hidden
            )));
        }
        let block_rows = (BLOCK_BYTES / (4 * hidden)).clamp(1, vocab);
        Ok(Self { vocab, hidden, weights, fingerprint: format::fingerprint(bytes), block_rows })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// [`format::fingerprint`] of the float16 bytes: tells apart models of the same shape.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// `logits = hidden W^T` for hidden rows `[n, hidden]` into `[n, vocab]`, one matrix
    /// product per block of W's rows, checking for interrupts before each block.
    fn project_into(
        &self,
        hidden: ArrayView2<'_, f32>,
        mut logits: ArrayViewMut2<'_, f32>,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut block = vec![0f32; self.block_rows * self.hidden];
        for start in (0..self.vocab).step_by(self.block_rows) {
            interrupt()?;
            let end = (start + self.block_rows).min(self.vocab);
            let converted = &mut block[..(end - start) * self.hidden];
            self.weights[start * self.hidden..end * self.hidden].convert_to_f32_slice(converted);
            let weights = ArrayView2::from_shape((end - start, self.hidden), converted).expect("block shape");
            general_mat_mul(1.0, &hidden, &weights.t(), 0.0, &mut logits.slice_mut(s![.., start..end]));
        }
        Ok(())
    }
}

/// Positions to train or evaluate on: the final hidden state before each target token,
/// the token, optionally a weight (default 1) for its share of the loss, and optionally
/// what a copy head could quote there (default: nothing).
#[derive(Clone, Copy)]
pub struct TokenExamples<'a> {
    hidden: ArrayView2<'a, f32>,
    targets: &'a [u32],
    weights: Option<&'a [f32]>,
    copies: Option<&'a [CopyCandidates]>,
}

impl<'a> TokenExamples<'a> {
    /// `hidden` `[n, hidden size]`, `targets` and `weights` of length n; weights are finite
    /// and not negative.
    pub fn new(hidden: ArrayView2<'a, f32>, targets: &'a [u32], weights: Option<&'a [f32]>) -> Result<Self, Error> {
        let rows = hidden.nrows();
        if targets.len() != rows {
            return Err(data_error(format!("{rows} hidden states but {} target tokens", targets.len())));
        }
        if let Some(weights) = weights.filter(|w| w.len() != rows) {
            return Err(data_error(format!("{rows} hidden states but {} weights", weights.len())));
        }
        if let Some((row, _)) = hidden.axis_iter(Axis(0)).enumerate().find(|(_, h)| h.iter().any(|x| !x.is_finite())) {
            return Err(data_error(format!("hidden state {row} has a non-finite value")));
        }
        if let Some(row) = weights.and_then(|w| w.iter().position(|&x| !(x.is_finite() && x >= 0.0))) {
            return Err(data_error(format!("weight {row} is not a finite number >= 0")));
        }
        Ok(Self { hidden, targets, weights, copies: None })
    }

    /// With each position's copy candidates, one per target.
    pub fn with_copies(self, copies: &'a [CopyCandidates]) -> Result<Self, Error> {
        if copies.len() != self.len() {
            return Err(data_error(format!("{} target tokens but {} copy candidate lists", self.len(), copies.len())));
        }
        Ok(Self { copies: Some(copies), ..self })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn weight(&self, row: usize) -> f32 {
        self.weights.map_or(1.0, |w| w[row])
    }

    fn copies(&self, row: usize) -> Option<&CopyCandidates> {
        self.copies.map(|c| &c[row])
    }

    fn rows(&self, start: usize, end: usize) -> TokenExamples<'_> {
        TokenExamples {
            hidden: self.hidden.slice(s![start..end, ..]),
            targets: &self.targets[start..end],
            weights: self.weights.map(|w| &w[start..end]),
            copies: self.copies.map(|c| &c[start..end]),
        }
    }
}

/// Examples gathered in a shuffled order: one batch's own copy.
struct GatheredExamples {
    hidden: Array2<f32>,
    targets: Vec<u32>,
    weights: Option<Vec<f32>>,
    copies: Option<Vec<CopyCandidates>>,
}

impl GatheredExamples {
    fn gather(examples: &TokenExamples<'_>, indices: &[usize]) -> Self {
        Self {
            hidden: examples.hidden.select(Axis(0), indices),
            targets: indices.iter().map(|&i| examples.targets[i]).collect(),
            weights: examples.weights.map(|w| indices.iter().map(|&i| w[i]).collect()),
            copies: examples.copies.map(|c| indices.iter().map(|&i| c[i].clone()).collect()),
        }
    }

    fn view(&self) -> TokenExamples<'_> {
        TokenExamples {
            hidden: self.hidden.view(),
            targets: &self.targets,
            weights: self.weights.as_deref(),
            copies: self.copies.as_deref(),
        }
    }
}

/// Weighted mean negative log-likelihood (natural log) of target tokens over the full
/// vocabulary; perplexity is `mean_nll.exp()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub mean_nll: f64,
    /// The sum of the positions' weights (their count when unweighted).
    pub weight: f64,
    pub positions: usize,
}

/// One training step: the batch's weighted mean loss before the update and the gradient's
/// global norm before clipping.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub mean_loss: f64,
    pub weight: f64,
    pub grad_norm: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputAdapter {
    vocab: usize,
    hidden: usize,
    /// The fingerprint of the output projection it was trained on.
    base_fingerprint: u64,
    rank: usize,
    alpha: f32,
    /// LoRA's A, `[rank, hidden]`.
    down: Array2<f32>,
    /// LoRA's B transposed, `[rank, vocab]`.
    up: Array2<f32>,
    /// Mixes in quotes of the prompt ([`super::copy_head`]), when trained with one.
    copy: Option<CopyHead>,
}

/// The gradients of a batch's mean loss, in the adapter's layout.
struct Gradients {
    down: Array2<f32>,
    up: Array2<f32>,
    /// The copy head's, in [`CopyHead::sizes`] order.
    copy: Option<[Vec<f32>; TENSORS]>,
}

impl OutputAdapter {
    /// A fresh adapter for `head`: A drawn from N(0, 1/hidden), B zero. `alpha / rank`
    /// scales the update, so that changing the rank does not change the step size.
    pub fn new(head: &LmHead, rank: usize, alpha: f32, rng: &mut Rng) -> Result<Self, Error> {
        if rank == 0 || rank > head.hidden {
            return Err(Error::new(
                ErrorKind::InvalidParameterValue,
                format!("rank must be between 1 and the hidden size {}, not {rank}", head.hidden),
            ));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::new(ErrorKind::InvalidParameterValue, format!("alpha must be positive, not {alpha}")));
        }
        let deviation = 1.0 / (head.hidden as f64).sqrt();
        Ok(Self {
            vocab: head.vocab,
            hidden: head.hidden,
            base_fingerprint: head.fingerprint,
            rank,
            alpha,
            down: Array2::from_shape_simple_fn((rank, head.hidden), || (rng.normal() * deviation) as f32),
            up: Array2::zeros((rank, head.vocab)),
            copy: None,
        })
    }

    /// The same adapter with a fresh copy head, which training then fits.
    pub fn with_copy_head(self) -> Self {
        Self { copy: Some(CopyHead::new(self.hidden)), ..self }
    }

    pub fn has_copy_head(&self) -> bool {
        self.copy.is_some()
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn base_fingerprint(&self) -> u64 {
        self.base_fingerprint
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Errors unless `head` is the output projection this adapter was made for.
    pub fn check_base(&self, head: &LmHead) -> Result<(), Error> {
        if (head.vocab, head.hidden) != (self.vocab, self.hidden) {
            return Err(data_error(format!(
                "adapter was trained for a model with vocabulary {} and hidden size {}, not {} and {}",
                self.vocab, self.hidden, head.vocab, head.hidden
            )));
        }
        if head.fingerprint != self.base_fingerprint {
            return Err(data_error("adapter was trained for a different model of the same shape".into()).with_detail(
                format!(
                    "output projection fingerprint {:016x}, the adapter's {:016x}",
                    head.fingerprint, self.base_fingerprint
                ),
            ));
        }
        Ok(())
    }

    /// One generation step's logits, adapted: the low-rank correction, then the copy
    /// head's mixture (making them log-probabilities) given the part of the prompt it
    /// may quote, the pointer's view of it ([`OutputAdapter::prompt_keys`]) and the
    /// tokens generated so far.
    pub fn adapt_logits(
        &self,
        hidden: &[f32],
        quotable: &[u32],
        pointer: &Arc<PromptKeys>,
        generated: &[u32],
        logits: &mut [f32],
    ) -> Result<(), Error> {
        self.add_delta_logits(hidden, logits)?;
        if let Some(copy) = &self.copy {
            copy.mix_into_logits(&CopyCandidates::find_or_point(quotable, generated, pointer), hidden, logits);
        }
        Ok(())
    }

    /// The copy head's pointer view of `tokens[from..]`, given the final hidden state of
    /// every token (`[tokens, hidden]` row-major); empty without a copy head.
    pub fn prompt_keys(&self, tokens: &[u32], from: usize, states: &[f32]) -> PromptKeys {
        self.copy.as_ref().map_or_else(PromptKeys::default, |copy| copy.prompt_keys(tokens, from, states))
    }

    /// Adds the low-rank correction to one position's logits, given the final hidden
    /// state the logits were computed from: rank*(hidden+vocab) work.
    pub fn add_delta_logits(&self, hidden: &[f32], logits: &mut [f32]) -> Result<(), Error> {
        if hidden.len() != self.hidden || logits.len() != self.vocab {
            return Err(data_error(format!(
                "adapter expects hidden states of {} values and {} logits, not {} and {}",
                self.hidden,
                self.vocab,
                hidden.len(),
                logits.len()
            )));
        }
        for (down, up) in self.down.outer_iter().zip(self.up.outer_iter()) {
            let coefficient = self.scale() * crate::kernels::dot(down.as_slice().unwrap(), hidden);
            logits.iter_mut().zip(up).for_each(|(logit, &u)| *logit += coefficient * u);
        }
        Ok(())
    }

    fn check_examples(&self, head: &LmHead, examples: &TokenExamples<'_>) -> Result<(), Error> {
        self.check_base(head)?;
        if examples.hidden.ncols() != self.hidden {
            return Err(data_error(format!(
                "hidden states have {} values, the model's hidden size is {}",
                examples.hidden.ncols(),
                self.hidden
            )));
        }
        if let Some(&token) = examples.targets.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(data_error(format!("target token {token} is outside the vocabulary of {}", self.vocab)));
        }
        Ok(())
    }

    /// The adapted model's logits `[n, vocab]` for hidden rows, and the rows' projection
    /// `A h` `[n, rank]` that the gradient needs.
    fn logits(
        &self,
        head: &LmHead,
        hidden: ArrayView2<'_, f32>,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<(Array2<f32>, Array2<f32>), Error> {
        let mut logits = Array2::zeros((hidden.nrows(), self.vocab));
        head.project_into(hidden, logits.view_mut(), interrupt)?;
        let projected = hidden.dot(&self.down.t());
        general_mat_mul(self.scale(), &projected, &self.up, 1.0, &mut logits);
        Ok((logits, projected))
    }

    /// Turns the model's NLL per row into the copy head's mixture NLL (when there is a
    /// head), scaling each row of `gradient` (the softmax gradient) by the model's share
    /// and adding the gate's gradient, `scale[i]` times row i's, to `copy_gradient`.
    fn mix_copies(
        &self,
        batch: &TokenExamples<'_>,
        nll: &mut [f64],
        mut gradient: Option<(ArrayViewMut2<'_, f32>, &[f32], &mut [Vec<f32>; TENSORS])>,
    ) {
        let Some(copy) = &self.copy else {
            return;
        };
        for (row, nll) in nll.iter_mut().enumerate() {
            let Some(candidates) = batch.copies(row) else {
                continue;
            };
            let hidden = batch.hidden.row(row);
            let hidden = hidden.as_slice().expect("hidden rows are contiguous");
            let target = batch.targets[row];
            let mixed = match gradient.as_mut() {
                Some((logits, scale, copy_gradient)) => {
                    let mixed = copy.mixed_loss_with_gradients(candidates, hidden, target, *nll, scale[row], copy_gradient);
                    logits.row_mut(row).iter_mut().for_each(|g| *g *= mixed.model_share as f32);
                    mixed
                }
                None => copy.mixed_loss(candidates, hidden, target, *nll),
            };
            *nll = mixed.nll;
        }
    }

    /// The batch's weighted mean cross-entropy, its total weight, and the gradients of
    /// the mean.
    fn loss_and_gradients(
        &self,
        head: &LmHead,
        batch: &TokenExamples<'_>,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<(f64, f64, Gradients), Error> {
        let (mut logits, projected) = self.logits(head, batch.hidden, interrupt)?;
        let weights: Vec<f32> = (0..batch.len()).map(|i| batch.weight(i)).collect();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut gradients = Gradients {
            down: Array2::zeros(self.down.raw_dim()),
            up: Array2::zeros(self.up.raw_dim()),
            copy: self.copy.as_ref().map(|c| c.sizes().map(|n| vec![0.0; n])),
        };
        if total == 0.0 {
            return Ok((0.0, 0.0, gradients));
        }
        let shares: Vec<f32> = weights.iter().map(|&w| (f64::from(w) / total) as f32).collect();
        let targets: Vec<usize> = batch.targets.iter().map(|&t| t as usize).collect();
        // From here on `logits` holds the gradient of the mean loss with respect to them.
        let mut nll = softmax_cross_entropy(logits.view_mut(), &targets, &shares);
        if let Some(copy_gradient) = gradients.copy.as_mut() {
            self.mix_copies(batch, &mut nll, Some((logits.view_mut(), &shares, copy_gradient)));
        }
        let mean = nll.iter().zip(&weights).map(|(l, &w)| l * f64::from(w)).sum::<f64>() / total;

        general_mat_mul(self.scale(), &projected.t(), &logits, 0.0, &mut gradients.up);
        let grad_projected = logits.dot(&self.up.t()) * self.scale();
        gradients.down = grad_projected.t().dot(&batch.hidden);
        Ok((mean, total, gradients))
    }

    /// Weighted mean NLL of `examples` under the adapted model (a fresh adapter gives the
    /// base model's), `batch_size` positions per matrix product.
    pub fn evaluate(
        &self,
        head: &LmHead,
        examples: &TokenExamples<'_>,
        batch_size: usize,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Evaluation, Error> {
        if batch_size == 0 {
            return Err(Error::new(ErrorKind::InvalidParameterValue, "batch size must be at least 1"));
        }
        self.check_examples(head, examples)?;
        let (mut weighted_sum, mut weight) = (0.0, 0.0);
        for start in (0..examples.len()).step_by(batch_size) {
            let batch = examples.rows(start, (start + batch_size).min(examples.len()));
            let (mut logits, _) = self.logits(head, batch.hidden, interrupt)?;
            let targets: Vec<usize> = batch.targets.iter().map(|&t| t as usize).collect();
            let weights: Vec<f32> = (0..batch.len()).map(|i| batch.weight(i)).collect();
            let mut nll = softmax_cross_entropy(logits.view_mut(), &targets, &weights);
            self.mix_copies(&batch, &mut nll, None);
            weighted_sum += nll.iter().zip(&weights).map(|(l, &w)| l * f64::from(w)).sum::<f64>();
            weight += weights.iter().map(|&w| f64::from(w)).sum::<f64>();
        }
        let mean_nll = if weight > 0.0 { weighted_sum / weight } else { 0.0 };
        Ok(Evaluation { mean_nll, weight, positions: examples.len() })
    }

    /// The adapter in the layout of [`super::format`], kind 1. Fields after the header:
    /// u32 vocab, u32 hidden, u32 rank, f32 alpha, u64 base fingerprint, then f32 A
    /// `[rank, hidden]` and f32 B transposed `[rank, vocab]`, row-major, then u32 2 and
    /// the copy head with its pointer ([`CopyHead::write`]), or u32 0 without one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let copy_bytes = self.copy.as_ref().map_or(0, CopyHead::byte_len);
        let mut writer = Writer::new(AdapterKind::Generator, 28 + 4 * (self.down.len() + self.up.len()) + copy_bytes);
        writer.u32(self.vocab as u32);
        writer.u32(self.hidden as u32);
        writer.u32(self.rank as u32);
        writer.f32(self.alpha);
        writer.u64(self.base_fingerprint);
        writer.f32s(self.down.as_slice().unwrap());
        writer.f32s(self.up.as_slice().unwrap());
        writer.u32(if self.copy.is_some() { COPY_HEAD_WITH_POINTER } else { 0 });
        if let Some(copy) = &self.copy {
            copy.write(&mut writer);
        }
        writer.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(bytes, AdapterKind::Generator)?;
        let vocab = reader.u32()? as usize;
        let hidden = reader.u32()? as usize;
        let rank = reader.u32()? as usize;
        let alpha = reader.f32()?;
        let base_fingerprint = reader.u64()?;
        if vocab == 0 || hidden == 0 || rank == 0 || rank > hidden || !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::new(
                ErrorKind::InvalidBinaryRepresentation,
                format!("adapter header is inconsistent: vocabulary {vocab}, hidden size {hidden}, rank {rank}, alpha {alpha}"),
            ));
        }
        let down = reader.f32s(rank * hidden, "matrix A")?;
        let up = reader.f32s(rank * vocab, "matrix B")?;
        let copy = match reader.u32()? {
            0 => None,
            COPY_HEAD_WITH_POINTER => Some(CopyHead::read(&mut reader, hidden)?),
            1 => {
                return Err(Error::new(
                    ErrorKind::InvalidBinaryRepresentation,
                    "the adapter's copy head has no pointer: it was trained by an earlier version of ragtune",
                )
                .with_hint("Train the adapter again (finetune_adapter(..., replace => true))."))
            }
            other => {
                return Err(Error::new(ErrorKind::InvalidBinaryRepresentation, format!("copy head flag is {other}, not 0 or 2")))
            }
        };
        reader.finish()?;
        Ok(Self {
            vocab,
            hidden,
            base_fingerprint,
            rank,
            alpha,
            down: Array2::from_shape_vec((rank, hidden), down).expect("length read for the shape"),
            up: Array2::from_shape_vec((rank, vocab), up).expect("length read for the shape"),
            copy,
        })
    }
}

/// The stored flag of a copy head with its pointer (1 was one without).
const COPY_HEAD_WITH_POINTER: u32 = 2;

/// Trains an [`OutputAdapter`] with AdamW; deterministic for a given adapter, options and
/// random generator (which orders the examples of each epoch).
pub struct OutputTrainer {
    adapter: OutputAdapter,
    optimizer: AdamW,
    batch_size: usize,
    rng: Rng,
}

impl OutputTrainer {
    pub fn new(adapter: OutputAdapter, options: &TrainingOptions, rng: Rng) -> Result<Self, Error> {
        options.validate()?;
        let mut sizes = vec![adapter.down.len(), adapter.up.len()];
        sizes.extend(adapter.copy.iter().flat_map(CopyHead::sizes));
        let mut optimizer = AdamW::new(options, &sizes);
        if adapter.copy.is_some() {
            for (tensor, scale) in CopyHead::LEARNING_RATE_SCALES {
                optimizer.scale_learning_rate(2 + tensor, scale);
            }
        }
        Ok(Self { adapter, optimizer, batch_size: options.batch_size, rng })
    }

    pub fn adapter(&self) -> &OutputAdapter {
        &self.adapter
    }

    pub fn into_adapter(self) -> OutputAdapter {
        self.adapter
    }

    /// One AdamW step on `batch`. A batch whose weights sum to zero changes nothing. An
    /// interrupt leaves the adapter as it was before the step.
    pub fn train_batch(
        &mut self,
        head: &LmHead,
        batch: &TokenExamples<'_>,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<StepReport, Error> {
        self.adapter.check_examples(head, batch)?;
        let (mean_loss, weight, mut gradients) = self.adapter.loss_and_gradients(head, batch, interrupt)?;
        if weight == 0.0 {
            return Ok(StepReport { mean_loss, weight, grad_norm: 0.0 });
        }
        let adapter = &mut self.adapter;
        let mut params = vec![adapter.down.as_slice_mut().unwrap(), adapter.up.as_slice_mut().unwrap()];
        let mut grads = vec![gradients.down.as_slice_mut().unwrap(), gradients.up.as_slice_mut().unwrap()];
        if let (Some(copy), Some(copy_gradients)) = (adapter.copy.as_mut(), gradients.copy.as_mut()) {
            params.extend(copy.tensors_mut());
            grads.extend(copy_gradients.iter_mut().map(Vec::as_mut_slice));
        }
        let grad_norm = self.optimizer.step(&mut params, &mut grads);
        Ok(StepReport { mean_loss, weight, grad_norm })
    }

    /// One pass over `examples` in a newly shuffled order, a step per batch, checking for
    /// interrupts between batches and between blocks of the output projection.
    pub fn train_epoch(
        &mut self,
        head: &LmHead,
        examples: &TokenExamples<'_>,
        interrupt: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<EpochReport, Error> {
        self.adapter.check_examples(head, examples)?;
        let mut total = LossTotal::default();
        for indices in shuffled_batches(examples.len(), self.batch_size, &mut self.rng) {
            interrupt()?;
            let batch = GatheredExamples::gather(examples, &indices);
            let step = self.train_batch(head, &batch.view(), interrupt)?;
            total.add(step.mean_loss, step.weight, indices.len());
        }
        Ok(total.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::copy_head::{KeyProjection, KEY_WIDTH, MAX_MATCH};

    fn no_interrupt() -> Result<(), Error> {
        Ok(())
    }

    fn random_matrix(rng: &mut Rng, rows: usize, columns: usize, deviation: f64) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, columns), || (rng.normal() * deviation) as f32)
    }

    fn head_bytes(weights: &Array2<f32>) -> Vec<u8> {
        weights.iter().flat_map(|&w| f16::from_f32(w).to_le_bytes()).collect()
    }

    fn random_head(rng: &mut Rng, vocab: usize, hidden: usize) -> LmHead {
        let weights = random_matrix(rng, vocab, hidden, 1.0 / (hidden as f64).sqrt());
        LmHead::from_le_bytes(&head_bytes(&weights), vocab, hidden).unwrap()
    }

    /// Random and adversarial adapter blobs (bit flips, truncations, splices, forged shape
    /// fields with a valid length and checksum) never panic the parsers of either kind:
    /// each gives an adapter or an ERROR.
    #[test]
    fn fuzzed_adapter_blobs_are_refused_or_read() {
        use crate::finetune::format::fingerprint;
        use crate::finetune::QueryAdapter;
        let mut rng = Rng::new(17);
        let head = random_head(&mut rng, 40, 8);
        let output = OutputAdapter::new(&head, 2, 4.0, &mut rng).unwrap();
        let seeds = [output.to_bytes(), output.clone().with_copy_head().to_bytes(), QueryAdapter::new(6).unwrap().to_bytes()];
        // Makes a mutated blob self-consistent again: length field and checksum.
        let reseal = |bytes: &mut Vec<u8>| {
            if bytes.len() >= 24 {
                let total = bytes.len() as u64;
                bytes[8..16].copy_from_slice(&total.to_le_bytes());
                let end = bytes.len() - 8;
                let checksum = fingerprint(&bytes[..end]);
                bytes[end..].copy_from_slice(&checksum.to_le_bytes());
            }
        };
        let (mut read, mut refused) = (0, 0);
        for case in 0..100_000u64 {
            let seed = &seeds[(case % 3) as usize];
            let mut bytes = seed.clone();
            match rng.next_u64() % 5 {
                0 => {
                    let flips = 1 + rng.next_u64() % 8;
                    for _ in 0..flips {
                        let at = (rng.next_u64() % bytes.len() as u64) as usize;
                        bytes[at] ^= 1 << (rng.next_u64() % 8);
                    }
                }
                1 => bytes.truncate((rng.next_u64() % bytes.len() as u64) as usize),
                2 => {
                    // A shape field (the first words after the header) set to an extreme value.
                    let at = 16 + 4 * (rng.next_u64() % 5) as usize;
                    let value = [0u32, 1, u32::MAX, 1 << 31, 16001, rng.next_u64() as u32][(rng.next_u64() % 6) as usize];
                    if at + 4 <= bytes.len() {
                        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
                    }
                }
                3 => {
                    let other = &seeds[(rng.next_u64() % 3) as usize];
                    let cut = (rng.next_u64() % bytes.len().min(other.len()) as u64) as usize;
                    bytes.truncate(cut);
                    bytes.extend_from_slice(&other[cut..]);
                }
                _ => bytes = (0..rng.next_u64() % 200).map(|_| rng.next_u64() as u8).collect(),
            }
            if rng.next_u64() % 2 == 0 {
                reseal(&mut bytes);
            }
            let outcomes = [OutputAdapter::from_bytes(&bytes).is_ok(), QueryAdapter::from_bytes(&bytes).is_ok()];
            read += outcomes.iter().filter(|&&ok| ok).count();
            refused += outcomes.iter().filter(|&&ok| !ok).count();
        }
        assert_eq!(read + refused, 200_000);
        assert!(read > 0 && refused > 100_000, "read {read}, refused {refused}");
    }

    #[test]
    fn head_projection_matches_a_plain_product() {
        let mut rng = Rng::new(1);
        let (vocab, hidden) = (300, 5);
        let weights = random_matrix(&mut rng, vocab, hidden, 1.0);
        let mut head = LmHead::from_le_bytes(&head_bytes(&weights), vocab, hidden).unwrap();
        assert_eq!(head.block_rows, vocab);
        head.block_rows = 128;
        let rows = random_matrix(&mut rng, 4, hidden, 1.0);
        let mut logits = Array2::zeros((4, vocab));
        let mut blocks = 0;
        head.project_into(rows.view(), logits.view_mut(), &mut || {
            blocks += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(blocks, 3);
        let rounded = weights.mapv(|w| f16::from_f32(w).to_f32());
        let expected = rows.dot(&rounded.t());
        assert!(logits.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn head_rejects_wrong_sizes_and_non_finite_weights() {
        let error = LmHead::from_le_bytes(&[0; 10], 3, 2).err().unwrap();
        assert_eq!(error.message, "output projection has 10 bytes, but vocabulary 3 and hidden size 2 take 12");
        let mut bytes = vec![0u8; 12];
        bytes[6..8].copy_from_slice(&f16::INFINITY.to_le_bytes());
        let error = LmHead::from_le_bytes(&bytes, 3, 2).err().unwrap();
        assert_eq!(error.message, "output projection has a non-finite weight in row 1, column 1");
    }

    /// A tiny head, an adapter with both matrices random (B starts at zero otherwise,
    /// which would hide A's gradient) and a weighted batch.
    fn gradient_fixture() -> (LmHead, OutputAdapter, Array2<f32>, Vec<u32>, Vec<f32>) {
        let mut rng = Rng::new(11);
        let (vocab, hidden, rank, rows) = (13, 7, 3, 5);
        let head = random_head(&mut rng, vocab, hidden);
        let mut adapter = OutputAdapter::new(&head, rank, 6.0, &mut rng).unwrap();
        adapter.up = random_matrix(&mut rng, rank, vocab, 0.3);
        let hidden_rows = random_matrix(&mut rng, rows, hidden, 1.0);
        let targets = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
        let weights = vec![1.0, 0.5, 2.0, 0.0, 1.5];
        (head, adapter, hidden_rows, targets, weights)
    }

    /// Copy candidates for the fixture's rows: the target quotable, not quotable, the
    /// pointer over a prompt holding the target, and (on the zero-weight row and the
    /// last) quotable after longer matches.
    fn fixture_copies(targets: &[u32], vocab: u32, hidden: usize) -> Vec<CopyCandidates> {
        let other = |t: u32| (t + 1) % vocab;
        let candidates = |match_length, tokens| CopyCandidates { match_length, tokens, pointer: None };
        let prompt = [0, targets[2], 4, other(targets[2]), targets[2], 2];
        let states = random_matrix(&mut Rng::new(3), prompt.len(), hidden, 1.0);
        let keys = Arc::new(KeyProjection::new(hidden).prompt_keys(&prompt, 1, states.as_slice().unwrap()));
        vec![
            candidates(2, vec![(targets[0], 0.7), (other(targets[0]), 0.3)]),
            candidates(1, vec![(other(targets[1]), 1.0)]),
            CopyCandidates::find_or_point(&prompt, &[], &keys),
            candidates(3, vec![(targets[3], 1.0)]),
            candidates(8, vec![(other(targets[4]), 0.5), (targets[4], 0.5)]),
        ]
    }

    fn parameters_mut(adapter: &mut OutputAdapter) -> Vec<&mut [f32]> {
        let mut tensors = vec![adapter.down.as_slice_mut().unwrap(), adapter.up.as_slice_mut().unwrap()];
        tensors.extend(adapter.copy.iter_mut().flat_map(CopyHead::tensors_mut));
        tensors
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (head, adapter, hidden_rows, targets, weights) = gradient_fixture();
        let copies = fixture_copies(&targets, head.vocab as u32, head.hidden);
        let mut copying = adapter.clone().with_copy_head();
        let mut rng = Rng::new(5);
        for tensor in parameters_mut(&mut copying).into_iter().skip(2) {
            tensor.iter_mut().for_each(|v| *v = (rng.normal() * 0.7) as f32);
        }
        for (adapter, with_copies) in [(&adapter, false), (&copying, true)] {
            let mut batch = TokenExamples::new(hidden_rows.view(), &targets, Some(&weights)).unwrap();
            if with_copies {
                batch = batch.with_copies(&copies).unwrap();
            }
            let loss = |adapter: &OutputAdapter| adapter.loss_and_gradients(&head, &batch, &mut no_interrupt).unwrap().0;
            let (_, weight, mut gradients) = adapter.loss_and_gradients(&head, &batch, &mut no_interrupt).unwrap();
            assert_eq!(weight, 5.0);
            let mut analytic = vec![gradients.down.as_slice().unwrap().to_vec(), gradients.up.as_slice().unwrap().to_vec()];
            analytic.extend(gradients.copy.take().into_iter().flatten());
            let step = 1e-3;
            let mut checked = 0;
            for (tensor, values) in analytic.iter().enumerate() {
                for (index, &analytic) in values.iter().enumerate() {
                    let nudged = |delta: f32| {
                        let mut changed = adapter.clone();
                        parameters_mut(&mut changed)[tensor][index] += delta;
                        loss(&changed)
                    };
                    let numeric = (nudged(step) - nudged(-step)) / (2.0 * f64::from(step));
                    let analytic = f64::from(analytic);
                    assert!(
                        (numeric - analytic).abs() <= 2e-3 + 1e-2 * analytic.abs(),
                        "copies {with_copies}, tensor {tensor} value {index}: numeric {numeric}, analytic {analytic}"
                    );
                    checked += 1;
                }
            }
            let copy_parameters = if with_copies { MAX_MATCH + 7 + 1 + 7 + KEY_WIDTH * 7 } else { 0 };
            assert_eq!(checked, 3 * (7 + 13) + copy_parameters);
            assert!(analytic.iter().all(|values| values.iter().any(|&g| g.abs() > 1e-2)) || !with_copies);
            if with_copies {
                // The gate's weights learn, and the biases of the match lengths of weighted
                // rows (1, 2 and 8); the zero-weight row's (3) and unused ones stay.
                assert!(analytic[3].iter().any(|&g| g.abs() > 1e-3));
                let bias = &analytic[2];
                assert!([0, 1, 7].iter().all(|&i| bias[i].abs() > 1e-4), "{bias:?}");
                assert!((2..7).all(|i| bias[i] == 0.0), "{bias:?}");
            }
        }
    }

    /// What the batched loss says of a copying adapter is what generation samples from.
    #[test]
    fn copying_evaluation_matches_generation_logits() {
        let (head, adapter, hidden_rows, targets, _) = gradient_fixture();
        let mut copying = adapter.with_copy_head();
        parameters_mut(&mut copying)[2].iter_mut().enumerate().for_each(|(i, b)| *b = 0.5 * i as f32 - 1.0);
        let prompt = [targets[0], 3, targets[1], 4, 5, targets[2], targets[3], 9, targets[4], 1, 2];
        let states = random_matrix(&mut Rng::new(8), prompt.len(), head.hidden, 1.0);
        let keys = Arc::new(copying.prompt_keys(&prompt, 0, states.as_slice().unwrap()));
        assert_eq!(keys.len(), prompt.len() - 1);
        // After 7 4 5 the copy head quotes; at the start of an answer it points.
        for generated in [&[7, 4, 5][..], &[]] {
            let candidates: Vec<CopyCandidates> =
                (0..hidden_rows.nrows()).map(|_| CopyCandidates::find_or_point(&prompt, generated, &keys)).collect();
            assert_eq!(candidates[0].match_length, if generated.is_empty() { 0 } else { 2 });
            assert_eq!(candidates[0].pointer.is_some(), generated.is_empty());
            let examples = TokenExamples::new(hidden_rows.view(), &targets, None).unwrap().with_copies(&candidates).unwrap();
            let (base, _) = copying.logits(&head, hidden_rows.view(), &mut no_interrupt).unwrap();
            let fresh = OutputAdapter { up: Array2::zeros(copying.up.raw_dim()), copy: None, ..copying.clone() };
            let (unadapted, _) = fresh.logits(&head, hidden_rows.view(), &mut no_interrupt).unwrap();
            let mut total = 0.0;
            for (row, hidden) in hidden_rows.outer_iter().enumerate() {
                let mut logits = unadapted.row(row).to_vec();
                copying.adapt_logits(hidden.as_slice().unwrap(), &prompt, &keys, generated, &mut logits).unwrap();
                let sum: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
                assert!((sum - 1.0).abs() < 1e-5, "row {row}: probabilities sum to {sum}");
                assert!(logits.iter().zip(base.row(row)).any(|(a, b)| (a - b).abs() > 1e-3));
                total -= f64::from(logits[targets[row] as usize]);
            }
            let evaluation = copying.evaluate(&head, &examples, 2, &mut no_interrupt).unwrap();
            assert!((evaluation.mean_nll - total / targets.len() as f64).abs() < 1e-4);
        }
        let bytes = copying.to_bytes();
        assert_eq!(OutputAdapter::from_bytes(&bytes).unwrap(), copying);
    }

    #[test]
    fn delta_logits_match_the_batched_logits() {
        let (head, adapter, hidden_rows, _, _) = gradient_fixture();
        let (batched, _) = adapter.logits(&head, hidden_rows.view(), &mut no_interrupt).unwrap();
        let fresh = OutputAdapter { up: Array2::zeros(adapter.up.raw_dim()), ..adapter.clone() };
        let (base, _) = fresh.logits(&head, hidden_rows.view(), &mut no_interrupt).unwrap();
        for (row, hidden) in hidden_rows.outer_iter().enumerate() {
            let mut logits = base.row(row).to_vec();
            adapter.add_delta_logits(hidden.as_slice().unwrap(), &mut logits).unwrap();
            for (got, want) in logits.iter().zip(batched.row(row)) {
                assert!((got - want).abs() < 1e-5, "row {row}: {got} vs {want}");
            }
        }
    }

    /// Targets drawn from a teacher whose logits are the base model's plus a rank-2
    /// correction, so the adapter can learn what the base model cannot know.
    struct Synthetic {
        head: LmHead,
        hidden: Array2<f32>,
        targets: Vec<u32>,
    }

    fn synthetic(seed: u64, rows: usize) -> Synthetic {
        let mut rng = Rng::new(seed);
        let (vocab, hidden) = (48, 16);
        let head = random_head(&mut rng, vocab, hidden);
        let base = Array2::from_shape_vec((vocab, hidden), head.weights.iter().map(|w| w.to_f32()).collect()).unwrap();
        let correction = random_matrix(&mut rng, vocab, 2, 2.0).dot(&random_matrix(&mut rng, 2, hidden, 1.0));
        let teacher = base + correction;
        let hidden_rows = random_matrix(&mut rng, rows, hidden, 1.0);
        let logits = hidden_rows.dot(&teacher.t());
        let targets = logits
            .outer_iter()
            .map(|row| {
                let max = row.fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let weights: Vec<f64> = row.iter().map(|&x| f64::from(x - max).exp()).collect();
                let mut pick = rng.next_f64() * weights.iter().sum::<f64>();
                weights
                    .iter()
                    .position(|&w| {
                        pick -= w;
                        pick < 0.0
                    })
                    .unwrap_or(vocab - 1) as u32
            })
            .collect();
        Synthetic { head, hidden: hidden_rows, targets }
    }

    fn train(data: &Synthetic, seed: u64, epochs: usize) -> (OutputAdapter, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let adapter = OutputAdapter::new(&data.head, 4, 8.0, &mut rng).unwrap();
        let options = TrainingOptions { learning_rate: 2e-2, batch_size: 32, ..TrainingOptions::default() };
        let mut trainer = OutputTrainer::new(adapter, &options, rng).unwrap();
        let train = TokenExamples::new(data.hidden.slice(s![..512, ..]), &data.targets[..512], None).unwrap();
        let losses = (0..epochs).map(|_| trainer.train_epoch(&data.head, &train, &mut no_interrupt).unwrap().mean_loss);
        let losses = losses.collect();
        (trainer.into_adapter(), losses)
    }

    #[test]
    fn training_lowers_validation_nll_and_repeats_exactly() {
        let data = synthetic(5, 768);
        let validation = TokenExamples::new(data.hidden.slice(s![512.., ..]), &data.targets[512..], None).unwrap();
        let (adapter, losses) = train(&data, 7, 12);
        let fresh = OutputAdapter::new(&data.head, 4, 8.0, &mut Rng::new(7)).unwrap();
        let before = fresh.evaluate(&data.head, &validation, 100, &mut no_interrupt).unwrap();
        let after = adapter.evaluate(&data.head, &validation, 100, &mut no_interrupt).unwrap();
        assert_eq!((before.positions, before.weight), (256, 256.0));
        assert!(after.mean_nll < 0.6 * before.mean_nll, "validation NLL {} -> {}", before.mean_nll, after.mean_nll);
        assert!(losses.last().unwrap() < &(0.6 * losses[0]), "training losses {losses:?}");

        let (again, again_losses) = train(&data, 7, 12);
        assert_eq!(again.to_bytes(), adapter.to_bytes());
        assert_eq!(again_losses, losses);
        let (other, _) = train(&data, 8, 12);
        assert_ne!(other.to_bytes(), adapter.to_bytes());
    }

    #[test]
    fn weights_scale_each_positions_share() {
        let (head, adapter, hidden_rows, targets, _) = gradient_fixture();
        let doubled: Vec<u32> = targets.iter().chain(&targets[..1]).copied().collect();
        let mut rows = hidden_rows.clone();
        rows.push_row(hidden_rows.row(0)).unwrap();
        let repeated = TokenExamples::new(rows.view(), &doubled, None).unwrap();
        let weights = [2.0, 1.0, 1.0, 1.0, 1.0];
        let weighted = TokenExamples::new(hidden_rows.view(), &targets, Some(&weights)).unwrap();
        let a = adapter.evaluate(&head, &repeated, 4, &mut no_interrupt).unwrap();
        let b = adapter.evaluate(&head, &weighted, 4, &mut no_interrupt).unwrap();
        assert!((a.mean_nll - b.mean_nll).abs() < 1e-6 && a.weight == b.weight);

        let zero = [0.0; 5];
        let ignored = TokenExamples::new(hidden_rows.view(), &targets, Some(&zero)).unwrap();
        let mut trainer = OutputTrainer::new(adapter.clone(), &TrainingOptions::default(), Rng::new(1)).unwrap();
        let step = trainer.train_batch(&head, &ignored, &mut no_interrupt).unwrap();
        assert_eq!((step.weight, trainer.adapter()), (0.0, &adapter));
    }

    #[test]
    fn an_interrupt_stops_training_and_leaves_the_adapter_unchanged() {
        let (head, adapter, hidden_rows, targets, _) = gradient_fixture();
        let examples = TokenExamples::new(hidden_rows.view(), &targets, None).unwrap();
        let mut trainer = OutputTrainer::new(adapter.clone(), &TrainingOptions::default(), Rng::new(1)).unwrap();
        let mut calls = 0;
        let error = trainer
            .train_epoch(&head, &examples, &mut || {
                calls += 1;
                Err(Error::new(ErrorKind::DataException, "canceled"))
            })
            .unwrap_err();
        assert_eq!((error.message.as_str(), calls), ("canceled", 1));
        assert_eq!(trainer.adapter(), &adapter);
    }

    #[test]
    fn serialization_round_trips_and_rejects_damage() {
        let (_, adapter, _, _, _) = gradient_fixture();
        let bytes = adapter.to_bytes();
        assert_eq!(bytes.len(), 16 + 28 + 4 * 3 * (7 + 13) + 8);
        assert_eq!(OutputAdapter::from_bytes(&bytes).unwrap(), adapter);

        let message = |bytes: &[u8]| OutputAdapter::from_bytes(bytes).unwrap_err().message;
        assert_eq!(
            message(&bytes[..bytes.len() - 1]),
            format!("adapter data is truncated: {} bytes, its header says {}", bytes.len() - 1, bytes.len())
        );
        let mut flipped = bytes.clone();
        flipped[100] ^= 0x10;
        assert_eq!(message(&flipped), "adapter data is corrupt: its checksum does not match");
        let query = crate::finetune::QueryAdapter::new(4).unwrap().to_bytes();
        assert_eq!(message(&query), "adapter data holds a retrieval (query) adapter, not a generator (output) adapter");

        // A well-formed file whose header claims a larger rank than its matrices hold.
        let mut writer = Writer::new(AdapterKind::Generator, 24 + 4 * 2 * (7 + 13));
        for field in [13, 7, 3] {
            writer.u32(field);
        }
        writer.f32(6.0);
        writer.u64(adapter.base_fingerprint);
        writer.f32s(&[0.0; 2 * (7 + 13)]);
        assert_eq!(message(&writer.finish()), "adapter data is shorter than its shapes say");

        // A copy head of the first format (flag 1, no pointer) asks to be trained again.
        let mut writer = Writer::new(AdapterKind::Generator, 28 + 4 * 3 * (7 + 13) + 4 + 4 * (MAX_MATCH + 7));
        for field in [13, 7, 3] {
            writer.u32(field);
        }
        writer.f32(6.0);
        writer.u64(adapter.base_fingerprint);
        writer.f32s(&[0.0; 3 * (7 + 13)]);
        writer.u32(1);
        writer.u32(MAX_MATCH as u32);
        writer.f32s(&[0.0; MAX_MATCH + 7]);
        let error = OutputAdapter::from_bytes(&writer.finish()).unwrap_err();
        assert_eq!(error.message, "the adapter's copy head has no pointer: it was trained by an earlier version of ragtune");
        assert!(error.hint.as_deref().is_some_and(|h| h.contains("replace => true")));
    }

    #[test]
    fn an_adapter_only_fits_its_own_model() {
        let mut rng = Rng::new(2);
        let head = random_head(&mut rng, 20, 6);
        let adapter = OutputAdapter::new(&head, 2, 2.0, &mut rng).unwrap();
        adapter.check_base(&head).unwrap();

        let wider = random_head(&mut rng, 20, 8);
        assert_eq!(
            adapter.check_base(&wider).unwrap_err().message,
            "adapter was trained for a model with vocabulary 20 and hidden size 6, not 20 and 8"
        );
        let same_shape = random_head(&mut rng, 20, 6);
        let error = adapter.check_base(&same_shape).unwrap_err();
        assert_eq!(error.message, "adapter was trained for a different model of the same shape");

        let rows = Array2::zeros((1, 8));
        let examples = TokenExamples::new(rows.view(), &[0], None).unwrap();
        assert!(adapter.evaluate(&wider, &examples, 1, &mut no_interrupt).is_err());
        let rows = Array2::zeros((1, 6));
        let out_of_vocabulary = TokenExamples::new(rows.view(), &[20], None).unwrap();
        assert_eq!(
            adapter.evaluate(&head, &out_of_vocabulary, 1, &mut no_interrupt).unwrap_err().message,
            "target token 20 is outside the vocabulary of 20"
        );

        let mut logits = vec![0.0; 21];
        assert_eq!(
            adapter.add_delta_logits(&[0.0; 6], &mut logits).unwrap_err().message,
            "adapter expects hidden states of 6 values and 20 logits, not 6 and 21"
        );
        let error = OutputAdapter::new(&head, 7, 2.0, &mut rng).unwrap_err();
        assert_eq!(error.message, "rank must be between 1 and the hidden size 6, not 7");
    }

    #[test]
    fn examples_are_checked() {
        let rows = Array2::from_elem((2, 3), 0.5f32);
        assert_eq!(
            TokenExamples::new(rows.view(), &[1], None).err().unwrap().message,
            "2 hidden states but 1 target tokens"
        );
        assert_eq!(
            TokenExamples::new(rows.view(), &[1, 2], Some(&[1.0])).err().unwrap().message,
            "2 hidden states but 1 weights"
        );
        assert_eq!(
            TokenExamples::new(rows.view(), &[1, 2], Some(&[1.0, -1.0])).err().unwrap().message,
            "weight 1 is not a finite number >= 0"
        );
        let mut bad = rows.clone();
        bad[[1, 2]] = f32::NAN;
        assert_eq!(
            TokenExamples::new(bad.view(), &[1, 2], None).err().unwrap().message,
            "hidden state 1 has a non-finite value"
        );
    }
}
