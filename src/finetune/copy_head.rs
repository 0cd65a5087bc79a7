//! Copy head: lets a generator adapter continue an answer with what follows, in the
//! prompt, the words the answer has just quoted. A pointer-generator gate (See et al.,
//! 2017) over n-gram matches instead of attention.
//!
//! Why: a correction of the output projection cannot change how the frozen model reads
//! its prompt, and small generators drift away from retrieved passages mid-sentence
//! (SmolLM2-135M answers worse with them than without). The copy head finds the longest
//! suffix of the answer so far (up to [`MAX_MATCH`] tokens) in the prompt; the tokens
//! that follow its occurrences form a copy distribution q, and a learned gate g mixes it
//! into the model's:
//!
//! ```text
//! p(t) = (1 - g) softmax(z)(t) + g q(t),    g = sigmoid(bias[m] + w . h / |h|)
//! ```
//!
//! z are the (adapted) logits, m the match length (no match: g = 0, the model alone) and
//! h the final hidden state. From the training rows the gate learns when quoting is right
//! (inside a quoted sentence, after a long match) and when it is not (where the answer
//! ends or rephrases). For the loss -ln p(target), the gradient of the gate's logit is
//! `g - c`, c being the copy part's share of p(target), and the logits' gradient is the
//! plain softmax one scaled by `1 - c`: a logistic regression on who produced the token.

use super::format::{Reader, Writer};
use crate::error::{Error, ErrorKind};

/// Longest answer suffix looked up in the prompt; the gate has one bias per length.
pub const MAX_MATCH: usize = 8;
/// Most distinct tokens the copy distribution keeps (the most frequent continuations).
pub const MAX_CANDIDATES: usize = 16;

/// Where the answer so far could continue by quoting the prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CopyCandidates {
    /// Tokens of the longest answer suffix found in the prompt (at most [`MAX_MATCH`]);
    /// 0 when even the last token does not occur there, or the answer is empty.
    pub match_length: usize,
    /// The tokens that follow those occurrences and their shares of q (summing to 1),
    /// most frequent first, ties in prompt order.
    pub tokens: Vec<(u32, f32)>,
}

impl CopyCandidates {
    /// Looks up `answer`'s suffix in `prompt`: O(prompt * MAX_MATCH).
    pub fn find(prompt: &[u32], answer: &[u32]) -> Self {
        let longest = answer.len().min(MAX_MATCH);
        let mut best = 0;
        let mut counts: Vec<(u32, u32)> = Vec::new();
        for next in 1..prompt.len() {
            let reach = longest.min(next);
            let length = (0..reach)
                .take_while(|&back| prompt[next - 1 - back] == answer[answer.len() - 1 - back])
                .count();
            if length == 0 || length < best {
                continue;
            }
            if length > best {
                best = length;
                counts.clear();
            }
            match counts.iter_mut().find(|(token, _)| *token == prompt[next]) {
                Some((_, count)) => *count += 1,
                None => counts.push((prompt[next], 1)),
            }
        }
        // Stable: equal counts keep prompt order.
        counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        counts.truncate(MAX_CANDIDATES);
        let total: u32 = counts.iter().map(|&(_, count)| count).sum();
        let tokens = counts.into_iter().map(|(token, count)| (token, count as f32 / total as f32)).collect();
        Self { match_length: best, tokens }
    }

    /// q(token).
    pub fn share(&self, token: u32) -> f32 {
        self.tokens.iter().find(|&&(t, _)| t == token).map_or(0.0, |&(_, share)| share)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// ln(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let (high, low) = if a >= b { (a, b) } else { (b, a) };
    if low == f64::NEG_INFINITY {
        return high;
    }
    high + (low - high).exp().ln_1p()
}

/// One position's loss under the mixture and what its gradients need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedLoss {
    /// -ln p(target).
    pub nll: f64,
    /// 1 - c: what scales the logits' softmax gradient.
    pub model_share: f64,
    /// g - c: the gradient of the loss with respect to the gate's logit.
    pub gate_gradient: f64,
}

/// The gate's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyHead {
    /// One per match length 1..=MAX_MATCH.
    bias: Vec<f32>,
    /// w, over the unit-length hidden state.
    weights: Vec<f32>,
}

impl CopyHead {
    /// Every bias 0 and w 0: an even mix wherever the answer quotes the prompt, which
    /// training moves within a few hundred steps (see `BIAS_LEARNING_RATE_SCALE`).
    pub fn new(hidden: usize) -> Self {
        Self { bias: vec![0.0; MAX_MATCH], weights: vec![0.0; hidden] }
    }

    /// How much faster than the rest the biases learn: AdamW moves each parameter by
    /// about the learning rate per step, and a bias must travel several units (a gate of
    /// 0.95 is a logit of 3) within the few hundred steps of a small table. w keeps the
    /// run's rate: its hundreds of coordinates add up, and at the biases' rate the gate
    /// would follow the hidden state alone after a few steps.
    pub const BIAS_LEARNING_RATE_SCALE: f32 = 100.0;

    pub fn hidden(&self) -> usize {
        self.weights.len()
    }

    /// The parameter tensors, in the order of [`CopyHead::tensors_mut`] and gradients.
    pub fn sizes(&self) -> [usize; 2] {
        [self.bias.len(), self.weights.len()]
    }

    pub fn tensors_mut(&mut self) -> [&mut [f32]; 2] {
        [&mut self.bias, &mut self.weights]
    }

    /// The gate's logit, or None where nothing can be copied.
    fn gate_logit(&self, candidates: &CopyCandidates, hidden: &[f32]) -> Option<f64> {
        if candidates.match_length == 0 || candidates.is_empty() {
            return None;
        }
        let norm = crate::kernels::dot(hidden, hidden).sqrt();
        let along = if norm > 0.0 { crate::kernels::dot(&self.weights, hidden) / norm } else { 0.0 };
        Some(f64::from(self.bias[candidates.match_length.min(MAX_MATCH) - 1]) + f64::from(along))
    }

    /// g for one position (0 where nothing can be copied).
    #[cfg(test)]
    fn gate(&self, candidates: &CopyCandidates, hidden: &[f32]) -> f64 {
        self.gate_logit(candidates, hidden).map_or(0.0, sigmoid)
    }

    /// Replaces one position's logits by ln p, the mixture's log-probabilities (a row
    /// the sampler treats like any logits).
    pub fn mix_into_logits(&self, candidates: &CopyCandidates, hidden: &[f32], logits: &mut [f32]) {
        let Some(x) = self.gate_logit(candidates, hidden) else {
            return;
        };
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
        let sum: f64 = logits.iter().map(|&z| f64::from(z - max).exp()).sum();
        let log_model = -softplus(x) - f64::from(max) - sum.ln();
        let log_copy = -softplus(-x);
        logits.iter_mut().for_each(|z| *z = (f64::from(*z) + log_model) as f32);
        for &(token, share) in &candidates.tokens {
            if let Some(z) = logits.get_mut(token as usize) {
                *z = log_add_exp(f64::from(*z), log_copy + f64::from(share).ln()) as f32;
            }
        }
    }

    /// The mixture's loss at one position, from the model's own `-ln softmax(z)(target)`.
    pub fn mixed_loss(&self, candidates: &CopyCandidates, hidden: &[f32], target: u32, model_nll: f64) -> MixedLoss {
        let Some(x) = self.gate_logit(candidates, hidden) else {
            return MixedLoss { nll: model_nll, model_share: 1.0, gate_gradient: 0.0 };
        };
        let from_model = -softplus(x) - model_nll;
        let share = candidates.share(target);
        let from_copy = if share > 0.0 { -softplus(-x) + f64::from(share).ln() } else { f64::NEG_INFINITY };
        let log_p = log_add_exp(from_model, from_copy);
        let copy_share = (from_copy - log_p).exp();
        MixedLoss { nll: -log_p, model_share: 1.0 - copy_share, gate_gradient: sigmoid(x) - copy_share }
    }

    /// Adds `coefficient` times the gradient of the gate's logit at one position to the
    /// gradients (in [`CopyHead::sizes`] order).
    pub fn add_gate_gradient(
        &self,
        candidates: &CopyCandidates,
        hidden: &[f32],
        coefficient: f32,
        bias_gradient: &mut [f32],
        weights_gradient: &mut [f32],
    ) {
        if candidates.match_length == 0 || candidates.is_empty() {
            return;
        }
        bias_gradient[candidates.match_length.min(MAX_MATCH) - 1] += coefficient;
        let norm = crate::kernels::dot(hidden, hidden).sqrt();
        if norm > 0.0 {
            let scale = coefficient / norm;
            weights_gradient.iter_mut().zip(hidden).for_each(|(g, &h)| *g += scale * h);
        }
    }

    /// Bytes it takes in [`CopyHead::write`].
    pub fn byte_len(&self) -> usize {
        4 + 4 * (self.bias.len() + self.weights.len())
    }

    /// u32 number of biases, then f32 biases and f32 w `[hidden]`.
    pub(crate) fn write(&self, writer: &mut Writer) {
        writer.u32(self.bias.len() as u32);
        writer.f32s(&self.bias);
        writer.f32s(&self.weights);
    }

    pub(crate) fn read(reader: &mut Reader<'_>, hidden: usize) -> Result<Self, Error> {
        let lengths = reader.u32()? as usize;
        if lengths != MAX_MATCH {
            return Err(Error::new(
                ErrorKind::InvalidBinaryRepresentation,
                format!("copy head has {lengths} match lengths, this version uses {MAX_MATCH}"),
            ));
        }
        let bias = reader.f32s(MAX_MATCH, "copy gate biases")?;
        let weights = reader.f32s(hidden, "copy gate weights")?;
        Ok(Self { bias, weights })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_longest_match() {
        // prompt: 1 2 3 | 9 2 3 4 | 2 5
        let prompt = [1, 2, 3, 9, 2, 3, 4, 2, 5];
        // "2 3" occurs twice, followed by 9 and 4; the one-token match "3" is shorter.
        let found = CopyCandidates::find(&prompt, &[7, 2, 3]);
        assert_eq!(found.match_length, 2);
        assert_eq!(found.tokens, vec![(9, 0.5), (4, 0.5)]);
        // "1 2 3" occurs once: the longer match wins alone.
        let found = CopyCandidates::find(&prompt, &[1, 2, 3]);
        assert_eq!((found.match_length, found.tokens.clone()), (3, vec![(9, 1.0)]));
        // "2" is followed by 3 twice and 5 once: most frequent first.
        let found = CopyCandidates::find(&prompt, &[2]);
        assert_eq!(found.match_length, 1);
        assert_eq!(found.tokens[0].0, 3);
        assert!((found.share(3) - 2.0 / 3.0).abs() < 1e-6 && (found.share(5) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(found.share(8), 0.0);
        // The prompt's last token has no continuation; unknown tokens and empty answers match nothing.
        assert_eq!(CopyCandidates::find(&prompt, &[5]), CopyCandidates::default());
        assert_eq!(CopyCandidates::find(&prompt, &[6]), CopyCandidates::default());
        assert_eq!(CopyCandidates::find(&prompt, &[]), CopyCandidates::default());
    }

    #[test]
    fn matches_are_capped_and_candidates_limited() {
        let prompt: Vec<u32> = (0..40).collect();
        let found = CopyCandidates::find(&prompt, &prompt[..20]);
        assert_eq!((found.match_length, found.tokens.clone()), (MAX_MATCH, vec![(20, 1.0)]));
        // Token 0 followed by 100 distinct tokens: only the first MAX_CANDIDATES kept, renormalized.
        let prompt: Vec<u32> = (1..=100).flat_map(|t| [0, t]).collect();
        let found = CopyCandidates::find(&prompt, &[0]);
        assert_eq!(found.tokens.len(), MAX_CANDIDATES);
        assert_eq!(found.tokens[0].0, 1);
        let total: f32 = found.tokens.iter().map(|t| t.1).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    fn head(bias: f32, weights: Vec<f32>) -> CopyHead {
        CopyHead { bias: vec![bias; MAX_MATCH], weights }
    }

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let sum: f64 = logits.iter().map(|&z| f64::from(z).exp()).sum();
        logits.iter().map(|&z| f64::from(z).exp() / sum).collect()
    }

    #[test]
    fn mixing_gives_the_mixture_distribution() {
        let head = head(0.3, vec![0.5, -1.0, 0.25]);
        let hidden = [1.0, 2.0, -0.5];
        let candidates = CopyCandidates { match_length: 2, tokens: vec![(3, 0.75), (0, 0.25)] };
        let logits = [0.1f32, 2.0, -1.0, 0.5, 1.5];
        let gate = head.gate(&candidates, &hidden);
        let norm = (1.0f64 + 4.0 + 0.25).sqrt();
        let expected_logit = 0.3 + (0.5 - 2.0 - 0.125) / norm;
        assert!((gate - 1.0 / (1.0 + (-expected_logit).exp())).abs() < 1e-6);
        let mut mixed = logits;
        head.mix_into_logits(&candidates, &hidden, &mut mixed);
        let model = softmax(&logits);
        for (token, &log_p) in mixed.iter().enumerate() {
            let want = (1.0 - gate) * model[token] + gate * f64::from(candidates.share(token as u32));
            assert!((f64::from(log_p).exp() - want).abs() < 1e-6, "token {token}");
        }
        // The loss agrees with the mixed row, and nothing copyable leaves the logits alone.
        let loss = head.mixed_loss(&candidates, &hidden, 3, -model[3].ln());
        assert!((loss.nll + f64::from(mixed[3])).abs() < 1e-5);
        let mut unchanged = logits;
        head.mix_into_logits(&CopyCandidates::default(), &hidden, &mut unchanged);
        assert_eq!(unchanged, logits);
        let plain = head.mixed_loss(&CopyCandidates::default(), &hidden, 3, 1.25);
        assert_eq!(plain, MixedLoss { nll: 1.25, model_share: 1.0, gate_gradient: 0.0 });
    }

    /// The closed-form gradients against central differences of the mixture's loss.
    #[test]
    fn gradients_match_finite_differences() {
        let hidden = [0.7f32, -1.2, 0.4];
        let candidates = CopyCandidates { match_length: 3, tokens: vec![(1, 0.6), (2, 0.4)] };
        let logits = [0.2f32, -0.3, 1.1, 0.4];
        let loss_at = |head: &CopyHead, logits: &[f32], target: u32| {
            let model_nll = -softmax(logits)[target as usize].ln();
            head.mixed_loss(&candidates, &hidden, target, model_nll).nll
        };
        // Targets the copy part can produce (1) and cannot (3).
        for target in [1u32, 3] {
            let base = head(-0.4, vec![0.3, 0.1, -0.2]);
            let model_nll = -softmax(&logits)[target as usize].ln();
            let loss = base.mixed_loss(&candidates, &hidden, target, model_nll);
            let (mut bias_gradient, mut weights_gradient) = (vec![0f32; MAX_MATCH], vec![0f32; 3]);
            base.add_gate_gradient(&candidates, &hidden, loss.gate_gradient as f32, &mut bias_gradient, &mut weights_gradient);
            let step = 1e-3;
            for index in 0..MAX_MATCH + 3 {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                let (analytic, p, m) = if index < MAX_MATCH {
                    (bias_gradient[index], &mut plus.bias[index], &mut minus.bias[index])
                } else {
                    (weights_gradient[index - MAX_MATCH], &mut plus.weights[index - MAX_MATCH], &mut minus.weights[index - MAX_MATCH])
                };
                *p += step;
                *m -= step;
                let numeric = (loss_at(&plus, &logits, target) - loss_at(&minus, &logits, target)) / (2.0 * f64::from(step));
                assert!((numeric - f64::from(analytic)).abs() < 1e-4, "target {target}, parameter {index}: {numeric} vs {analytic}");
            }
            // Logits: model_share * (softmax - one_hot).
            let model = softmax(&logits);
            for token in 0..logits.len() {
                let analytic = loss.model_share * (model[token] - f64::from(u8::from(token == target as usize)));
                let (mut plus, mut minus) = (logits, logits);
                plus[token] += step;
                minus[token] -= step;
                let numeric = (loss_at(&base, &plus, target) - loss_at(&base, &minus, target)) / (2.0 * f64::from(step));
                assert!((numeric - analytic).abs() < 1e-4, "target {target}, logit {token}: {numeric} vs {analytic}");
            }
        }
    }
}
