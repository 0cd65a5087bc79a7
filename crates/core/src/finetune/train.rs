//! What both adapters' trainers share: the options of a training run, AdamW with
//! gradient clipping, softmax cross-entropy over rows of logits, and seeded shuffling.

use ndarray::{ArrayViewMut2, Axis};

use crate::error::{Error, ErrorKind};
use crate::rng::Rng;

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingOptions {
    pub learning_rate: f32,
    /// Decoupled (AdamW) decay: each step shrinks every parameter by
    /// `learning_rate * weight_decay` of itself, pulling adapters back towards doing nothing.
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    /// A gradient whose global L2 norm exceeds this is scaled down to it; infinity turns
    /// clipping off.
    pub max_grad_norm: f32,
    /// Examples per step.
    pub batch_size: usize,
}

impl Default for TrainingOptions {
    /// PyTorch's AdamW defaults apart from the learning rate, which suits adapters that
    /// start from doing nothing (LoRA's usual 1e-4 moves them too slowly in a few epochs).
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_grad_norm: 1.0,
            batch_size: 64,
        }
    }
}

impl TrainingOptions {
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: String| Err(Error::new(ErrorKind::InvalidParameterValue, message));
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(format!("learning rate must be positive, not {}", self.learning_rate));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return invalid(format!("weight decay must be zero or positive, not {}", self.weight_decay));
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return invalid(format!("{name} must be in [0, 1), not {beta}"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return invalid(format!("epsilon must be positive, not {}", self.epsilon));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return invalid(format!("maximum gradient norm must be positive, not {}", self.max_grad_norm));
        }
        if self.batch_size == 0 {
            return invalid("batch size must be at least 1".into());
        }
        Ok(())
    }
}

/// What one pass over the training examples did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Mean training loss over the epoch, each batch's as it was before its update,
    /// weighted as the batches' own means are.
    pub mean_loss: f64,
    pub batches: usize,
    pub examples: usize,
}

/// Sums batch losses into an epoch's mean.
#[derive(Default)]
pub(crate) struct LossTotal {
    weighted_sum: f64,
    weight: f64,
    batches: usize,
    examples: usize,
}

impl LossTotal {
    pub fn add(&mut self, mean: f64, weight: f64, examples: usize) {
        self.weighted_sum += mean * weight;
        self.weight += weight;
        self.batches += 1;
        self.examples += examples;
    }

    pub fn report(&self) -> EpochReport {
        let mean_loss = if self.weight > 0.0 { self.weighted_sum / self.weight } else { 0.0 };
        EpochReport { mean_loss, batches: self.batches, examples: self.examples }
    }
}

/// Example indices in a seeded random order, cut into batches of `batch_size` (the last
/// may be smaller).
pub(crate) fn shuffled_batches(count: usize, batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..count).collect();
    rng.shuffle(&mut order);
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// AdamW (Loshchilov and Hutter) over a fixed list of parameter tensors, in PyTorch's
/// formulation: decay first, then the bias-corrected Adam step.
pub(crate) struct AdamW {
    learning_rate: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    max_grad_norm: f32,
    steps: i32,
    /// First and second moments of each tensor.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    /// Each tensor's learning rate as a multiple of the run's (1 unless set).
    rate_scales: Vec<f32>,
}

impl AdamW {
    /// `sizes`: the number of values of each parameter tensor, in the order `step` takes them.
    pub fn new(options: &TrainingOptions, sizes: &[usize]) -> Self {
        Self {
            learning_rate: options.learning_rate,
            weight_decay: options.weight_decay,
            beta1: options.beta1,
            beta2: options.beta2,
            epsilon: options.epsilon,
            max_grad_norm: options.max_grad_norm,
            steps: 0,
            moments: sizes.iter().map(|&n| (vec![0.0; n], vec![0.0; n])).collect(),
            rate_scales: vec![1.0; sizes.len()],
        }
    }

    /// Sets tensor `tensor`'s learning rate (and so its decay per step) to `scale` times the run's.
    pub fn scale_learning_rate(&mut self, tensor: usize, scale: f32) {
        self.rate_scales[tensor] = scale;
    }

    /// Clips the gradients to the maximum global norm, then updates the parameters.
    /// Returns the gradients' global norm before clipping.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &mut [&mut [f32]]) -> f64 {
        let norm = grads.iter().flat_map(|g| g.iter()).map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
        if norm > f64::from(self.max_grad_norm) {
            let shrink = (f64::from(self.max_grad_norm) / norm) as f32;
            grads.iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= shrink));
        }

        self.steps += 1;
        let first_correction = 1.0 - f64::from(self.beta1).powi(self.steps);
        let second_correction = 1.0 - f64::from(self.beta2).powi(self.steps);
        let second_scale = (1.0 / second_correction.sqrt()) as f32;
        let (beta1, beta2, epsilon) = (self.beta1, self.beta2, self.epsilon);
        let tensors = params.iter_mut().zip(grads.iter()).zip(&mut self.moments).zip(&self.rate_scales);
        for (((values, grad), (first, second)), &rate_scale) in tensors {
            let learning_rate = self.learning_rate * rate_scale;
            let step_size = (f64::from(learning_rate) / first_correction) as f32;
            let keep = 1.0 - learning_rate * self.weight_decay;
            for (((p, &g), m), v) in values.iter_mut().zip(grad.iter()).zip(first).zip(second) {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *p = *p * keep - step_size * *m / (v.sqrt() * second_scale + epsilon);
            }
        }
        norm
    }
}

/// Softmax cross-entropy of each row of `logits` against its target column. Leaves each
/// row holding `scale[i] * (softmax - one_hot(target))`, the gradient of
/// `sum_i scale[i] * nll_i` with respect to the logits, and returns the `nll_i`.
pub(crate) fn softmax_cross_entropy(mut logits: ArrayViewMut2<'_, f32>, targets: &[usize], scale: &[f32]) -> Vec<f64> {
    let mut nll = Vec::with_capacity(targets.len());
    for ((mut row, &target), &row_scale) in logits.axis_iter_mut(Axis(0)).zip(targets).zip(scale) {
        let row = row.as_slice_mut().expect("logits rows are contiguous");
        let target_logit = row[target];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let sum = exp_shifted_in_place(row, max);
        nll.push(f64::from(max) + sum.ln() - f64::from(target_logit));
        let to_gradient = (f64::from(row_scale) / sum) as f32;
        row.iter_mut().for_each(|x| *x *= to_gradient);
        row[target] -= row_scale;
    }
    nll
}

/// Replaces each x by exp(x - shift) (shift >= every x) and returns their sum. Eight
/// running sums keep the loop vectorizable and the rounding error small.
fn exp_shifted_in_place(row: &mut [f32], shift: f32) -> f64 {
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (x, sum) in chunk.iter_mut().zip(&mut sums) {
            *x = exp_non_positive(*x - shift);
            *sum += *x;
        }
    }
    let mut total: f64 = sums.iter().map(|&s| f64::from(s)).sum();
    for x in chunks.into_remainder() {
        *x = exp_non_positive(*x - shift);
        total += f64::from(*x);
    }
    total
}

/// exp(x) for x <= 0, within 2 ulp, branch-free so that the compiler vectorizes it with
/// baseline SSE2 (`f32::exp` is a library call per element, and a softmax over a
/// 150,000-token vocabulary takes one per logit). Below -87 the result is about 1e-38
/// instead of smaller or zero, which no sum of probabilities notices.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that x - n ln 2 is exact for the n that occur (Cody-Waite).
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer in float arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    // Taylor coefficients of e^r, 1/7! down to 1/0!: on |r| <= ln2/2 the error is below 1e-8.
    const COEFFICIENTS: [f32; 8] =
        [1.984_127e-4, 1.388_889e-3, 8.333_334e-3, 4.166_666_8e-2, 1.666_666_7e-1, 0.5, 1.0, 1.0];
    let p = COEFFICIENTS.iter().fold(0.0, |p, &c| p * r + c);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * f64::from(i) / 200_000.0;
            let got = f64::from(exp_non_positive(x as f32));
            let want = (x as f32 as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "largest relative error {worst}");
        assert_eq!(exp_non_positive(0.0), 1.0);
        assert!(exp_non_positive(-1000.0) < 1e-37);
    }

    #[test]
    fn cross_entropy_matches_a_direct_computation() {
        let mut rng = Rng::new(3);
        let (rows, columns) = (3, 37);
        let logits = Array2::from_shape_fn((rows, columns), |_| (rng.normal() * 4.0) as f32);
        let targets = [5, 0, 36];
        let scale = [0.5, 1.0, 2.0];
        let mut gradient = logits.clone();
        let nll = softmax_cross_entropy(gradient.view_mut(), &targets, &scale);
        for i in 0..rows {
            let row: Vec<f64> = logits.row(i).iter().map(|&x| f64::from(x)).collect();
            let log_sum = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            assert!((nll[i] - (log_sum - row[targets[i]])).abs() < 1e-5, "row {i}: {}", nll[i]);
            for j in 0..columns {
                let want = f64::from(scale[i]) * ((row[j] - log_sum).exp() - if j == targets[i] { 1.0 } else { 0.0 });
                assert!((f64::from(gradient[[i, j]]) - want).abs() < 1e-6, "[{i}, {j}]");
            }
        }
    }

    #[test]
    fn adamw_first_step_moves_each_parameter_by_the_learning_rate() {
        let options = TrainingOptions { weight_decay: 0.0, ..TrainingOptions::default() };
        let mut optimizer = AdamW::new(&options, &[3]);
        let mut params = [1.0f32, -2.0, 0.5];
        let mut grads = [0.3f32, -0.2, 0.1];
        let norm = optimizer.step(&mut [&mut params], &mut [&mut grads]);
        assert!((norm - 0.14f64.sqrt()).abs() < 1e-6);
        for (after, before) in params.iter().zip([0.999f32, -1.999, 0.499]) {
            assert!((after - before).abs() < 1e-6, "{after} vs {before}");
        }
    }

    #[test]
    fn clipping_scales_the_whole_gradient() {
        let options = TrainingOptions { max_grad_norm: 0.5, ..TrainingOptions::default() };
        let mut optimizer = AdamW::new(&options, &[1, 1]);
        let (mut a, mut b) = ([0f32], [0f32]);
        let (mut ga, mut gb) = ([3f32], [4f32]);
        assert_eq!(optimizer.step(&mut [&mut a, &mut b], &mut [&mut ga, &mut gb]), 5.0);
        assert!((ga[0] - 0.3).abs() < 1e-7 && (gb[0] - 0.4).abs() < 1e-7, "{ga:?} {gb:?}");
    }

    #[test]
    fn invalid_options_are_rejected() {
        let base = TrainingOptions::default();
        assert!(base.validate().is_ok());
        let cases = [
            (TrainingOptions { learning_rate: 0.0, ..base.clone() }, "learning rate must be positive, not 0"),
            (TrainingOptions { beta2: 1.0, ..base.clone() }, "beta2 must be in [0, 1), not 1"),
            (TrainingOptions { batch_size: 0, ..base.clone() }, "batch size must be at least 1"),
            (
                TrainingOptions { max_grad_norm: f32::NAN, ..base.clone() },
                "maximum gradient norm must be positive, not NaN",
            ),
        ];
        for (options, message) in cases {
            let error = options.validate().unwrap_err();
            assert_eq!((error.kind, error.message.as_str()), (ErrorKind::InvalidParameterValue, message));
        }
        let no_clipping = TrainingOptions { max_grad_norm: f32::INFINITY, ..base };
        assert!(no_clipping.validate().is_ok());
    }
}
