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
//!
//! For an answer's first token, where there is no suffix to match, a pointer proposes
//! where to start quoting (the frozen model rarely opens with the passage's own words):
//! q is a softmax over the quotable prompt positions j, scored `(Q c/|c|) . k_j`. k_j is
//! the hidden state that predicted token j, less the mean of those states, unit length,
//! through a fixed random projection R (KEY_WIDTH floats per position instead of the
//! hidden size: Johnson-Lindenstrauss keeps inner products roughly); c is the answer's
//! state less the same mean. Q starts as `INITIAL_SHARPNESS * R` (a softmax over cosine
//! similarities: the prompt position whose next-token state is most like the answer's
//! now) and is learned, with its own gate (bias and w). For a target t, the gradient of
//! score j is `c_share (alpha_j - beta_j)`, c_share being the copy part's share of
//! p(t) and beta_j alpha_j's share among the positions holding t.

use super::format::{Reader, Writer};
use crate::error::{Error, ErrorKind};
use crate::rng::Rng;
use std::collections::HashMap;
use std::sync::Arc;

/// Longest answer suffix looked up in the prompt; the gate has one bias per length.
pub const MAX_MATCH: usize = 8;
/// Most distinct tokens the copy distribution keeps (the most frequent continuations).
pub const MAX_CANDIDATES: usize = 16;

/// Width of the pointer's keys.
pub const KEY_WIDTH: usize = 64;
/// Seed of the fixed key projection (not stored: every head regenerates it).
const PROJECTION_SEED: u64 = 0x636f_7079_5f6b_6579;
/// The pointer's initial scores are this many times the cosine similarities.
const INITIAL_SHARPNESS: f32 = 10.0;
/// The head's parameter tensors: biases, w, pointer bias, pointer w, Q.
pub const TENSORS: usize = 5;

/// R `[KEY_WIDTH, hidden]`, entries N(0, 1/KEY_WIDTH): what turns a prompt's hidden
/// states into the pointer's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyProjection {
    matrix: Vec<f32>,
}

impl KeyProjection {
    pub fn new(hidden: usize) -> Self {
        let mut rng = Rng::new(PROJECTION_SEED);
        let deviation = 1.0 / (KEY_WIDTH as f64).sqrt();
        Self { matrix: (0..KEY_WIDTH * hidden).map(|_| (rng.normal() * deviation) as f32).collect() }
    }

    fn hidden(&self) -> usize {
        self.matrix.len() / KEY_WIDTH
    }

    /// The pointer's view of a prompt: `tokens[from..]` (from at least 1), each keyed by
    /// the hidden state before it less those states' mean, `states` holding one row per
    /// token. Centering matters: final hidden states share a few large directions, which
    /// would make every cosine similarity alike.
    pub fn prompt_keys(&self, tokens: &[u32], from: usize, states: &[f32]) -> PromptKeys {
        let hidden = self.hidden();
        let positions = from.max(1)..tokens.len().min(states.len() / hidden);
        let before = |position: usize| &states[(position - 1) * hidden..position * hidden];
        let mut center = vec![0f32; hidden];
        for position in positions.clone() {
            center.iter_mut().zip(before(position)).for_each(|(c, &h)| *c += h / positions.len() as f32);
        }
        let mut keys = Vec::with_capacity(positions.len() * KEY_WIDTH);
        let mut centered = vec![0f32; hidden];
        for position in positions.clone() {
            centered.iter_mut().zip(before(position)).zip(&center).for_each(|((d, &h), &c)| *d = h - c);
            keys.extend(Self::project_unit(&self.matrix, &centered));
        }
        PromptKeys { tokens: tokens.get(positions).unwrap_or_default().to_vec(), keys, center }
    }

    /// `matrix . state / |state|` (zeros for a zero state).
    fn project_unit(matrix: &[f32], state: &[f32]) -> Vec<f32> {
        let norm = crate::kernels::dot(state, state).sqrt();
        let inverse = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        matrix.chunks_exact(state.len()).map(|row| crate::kernels::dot(row, state) * inverse).collect()
    }
}

/// The quotable prompt as the pointer sees it: each token with the key of the hidden
/// state that predicted it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptKeys {
    tokens: Vec<u32>,
    /// `[tokens, KEY_WIDTH]`.
    keys: Vec<f32>,
    /// The mean of the states keyed, which queries are centered on too.
    center: Vec<f32>,
}

impl PromptKeys {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Floats' worth of memory held.
    pub fn floats(&self) -> usize {
        self.tokens.len() * (1 + KEY_WIDTH) + self.center.len()
    }
}

/// Where the answer so far could continue by quoting the prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CopyCandidates {
    /// Tokens of the longest answer suffix found in the prompt (at most [`MAX_MATCH`]);
    /// 0 when even the last token does not occur there, or the answer is empty.
    pub match_length: usize,
    /// The tokens that follow those occurrences and their shares of q (summing to 1),
    /// most frequent first, ties in prompt order.
    pub tokens: Vec<(u32, f32)>,
    /// The prompt for the pointer, at an answer's first token ([`CopyCandidates::find_or_point`]).
    pub pointer: Option<Arc<PromptKeys>>,
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
        Self { match_length: best, tokens, pointer: None }
    }

    /// [`CopyCandidates::find`], except that an empty answer gets the pointer over `keys`.
    pub fn find_or_point(prompt: &[u32], answer: &[u32], keys: &Arc<PromptKeys>) -> Self {
        if answer.is_empty() && !keys.is_empty() {
            return Self { pointer: Some(Arc::clone(keys)), ..Self::default() };
        }
        Self::find(prompt, answer)
    }

    /// Whether an answer suffix matches the prompt.
    fn quotes(&self) -> bool {
        self.match_length > 0 && !self.tokens.is_empty()
    }

    /// q(token).
    pub fn share(&self, token: u32) -> f32 {
        self.tokens.iter().find(|&&(t, _)| t == token).map_or(0.0, |&(_, share)| share)
    }

    /// Nothing to copy: neither candidates nor a pointer (what `propose` checks in turn).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.pointer.is_none()
    }

    /// Floats' worth of memory held (a shared pointer prompt counted elsewhere).
    pub fn floats(&self) -> usize {
        2 * self.tokens.len()
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

/// What the copy part proposes at one position.
struct Proposal {
    /// The gate's logit.
    logit: f64,
    /// q as (token, share), shares summing to 1.
    shares: Vec<(u32, f32)>,
    /// What the pointer computed, when it proposed.
    pointed: Option<Pointed>,
}

/// The pointer's softmax over prompt positions, and the centered hidden state it scored
/// them for (Q's gradient is taken along it).
struct Pointed {
    alphas: Vec<f32>,
    centered: Vec<f32>,
}

impl Proposal {
    fn share(&self, token: u32) -> f32 {
        self.shares.iter().find(|&&(t, _)| t == token).map_or(0.0, |&(_, share)| share)
    }
}

/// The head's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyHead {
    /// The quoting gate's, one per match length 1..=MAX_MATCH.
    bias: Vec<f32>,
    /// The quoting gate's w, over the unit-length hidden state.
    weights: Vec<f32>,
    /// The pointer gate's bias (one value) and w.
    pointer_bias: Vec<f32>,
    pointer_weights: Vec<f32>,
    /// Q `[KEY_WIDTH, hidden]`.
    query: Vec<f32>,
    projection: Arc<KeyProjection>,
}

impl CopyHead {
    /// Gates with every bias 0 and w 0 (an even mix wherever something can be copied,
    /// which training moves within a few hundred steps, see `BIAS_LEARNING_RATE_SCALE`),
    /// and a pointer that follows cosine similarity.
    pub fn new(hidden: usize) -> Self {
        let projection = Arc::new(KeyProjection::new(hidden));
        let query = projection.matrix.iter().map(|&r| INITIAL_SHARPNESS * r).collect();
        Self { bias: vec![0.0; MAX_MATCH], weights: vec![0.0; hidden], pointer_bias: vec![0.0], pointer_weights: vec![0.0; hidden], query, projection }
    }

    /// How much faster than the rest the biases learn: AdamW moves each parameter by
    /// about the learning rate per step, and a bias must travel several units (a gate of
    /// 0.95 is a logit of 3) within the few hundred steps of a small table. w keeps the
    /// run's rate: its hundreds of coordinates add up, and at the biases' rate the gate
    /// would follow the hidden state alone after a few steps.
    pub const BIAS_LEARNING_RATE_SCALE: f32 = 100.0;
    /// Q learns only from answers' first tokens, one position in thirty or so, and must
    /// move about its initial size within a few hundred steps.
    pub const QUERY_LEARNING_RATE_SCALE: f32 = 10.0;
    /// Tensors (in [`CopyHead::sizes`] order) that learn faster than the run's rate, and
    /// how much.
    pub const LEARNING_RATE_SCALES: [(usize, f32); 3] =
        [(0, Self::BIAS_LEARNING_RATE_SCALE), (2, Self::BIAS_LEARNING_RATE_SCALE), (4, Self::QUERY_LEARNING_RATE_SCALE)];

    pub fn hidden(&self) -> usize {
        self.weights.len()
    }

    /// The parameter tensors, in the order of [`CopyHead::tensors_mut`] and gradients.
    pub fn sizes(&self) -> [usize; TENSORS] {
        [self.bias.len(), self.weights.len(), 1, self.hidden(), self.query.len()]
    }

    pub fn tensors_mut(&mut self) -> [&mut [f32]; TENSORS] {
        [&mut self.bias, &mut self.weights, &mut self.pointer_bias, &mut self.pointer_weights, &mut self.query]
    }

    /// See [`KeyProjection::prompt_keys`].
    pub fn prompt_keys(&self, tokens: &[u32], from: usize, states: &[f32]) -> PromptKeys {
        self.projection.prompt_keys(tokens, from, states)
    }

    /// The copy part at one position, or None where nothing can be copied.
    fn propose(&self, candidates: &CopyCandidates, hidden: &[f32]) -> Option<Proposal> {
        let norm = crate::kernels::dot(hidden, hidden).sqrt();
        let along = |weights: &[f32]| if norm > 0.0 { f64::from(crate::kernels::dot(weights, hidden) / norm) } else { 0.0 };
        if candidates.quotes() {
            let logit = f64::from(self.bias[candidates.match_length.min(MAX_MATCH) - 1]) + along(&self.weights);
            return Some(Proposal { logit, shares: candidates.tokens.clone(), pointed: None });
        }
        let prompt = candidates.pointer.as_deref().filter(|p| !p.is_empty())?;
        let centered: Vec<f32> = hidden.iter().zip(&prompt.center).map(|(&h, &c)| h - c).collect();
        let query = KeyProjection::project_unit(&self.query, &centered);
        let scores: Vec<f32> = prompt.keys.chunks_exact(KEY_WIDTH).map(|key| crate::kernels::dot(&query, key)).collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let exps: Vec<f64> = scores.iter().map(|&x| f64::from(x - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let alphas: Vec<f32> = exps.iter().map(|&e| (e / sum) as f32).collect();
        let mut by_token: HashMap<u32, f32> = HashMap::new();
        for (&token, &alpha) in prompt.tokens.iter().zip(&alphas) {
            *by_token.entry(token).or_default() += alpha;
        }
        let mut shares: Vec<(u32, f32)> = by_token.into_iter().collect();
        shares.sort_unstable_by_key(|&(token, _)| token);
        let logit = f64::from(self.pointer_bias[0]) + along(&self.pointer_weights);
        Some(Proposal { logit, shares, pointed: Some(Pointed { alphas, centered }) })
    }

    /// g for one position (0 where nothing can be copied).
    #[cfg(test)]
    fn gate(&self, candidates: &CopyCandidates, hidden: &[f32]) -> f64 {
        self.propose(candidates, hidden).map_or(0.0, |p| sigmoid(p.logit))
    }

    /// Replaces one position's logits by ln p, the mixture's log-probabilities (a row
    /// the sampler treats like any logits).
    pub fn mix_into_logits(&self, candidates: &CopyCandidates, hidden: &[f32], logits: &mut [f32]) {
        let Some(proposal) = self.propose(candidates, hidden) else {
            return;
        };
        let x = proposal.logit;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
        let sum: f64 = logits.iter().map(|&z| f64::from(z - max).exp()).sum();
        let log_model = -softplus(x) - f64::from(max) - sum.ln();
        let log_copy = -softplus(-x);
        logits.iter_mut().for_each(|z| *z = (f64::from(*z) + log_model) as f32);
        for &(token, share) in &proposal.shares {
            if let Some(z) = logits.get_mut(token as usize).filter(|_| share > 0.0) {
                *z = log_add_exp(f64::from(*z), log_copy + f64::from(share).ln()) as f32;
            }
        }
    }

    /// The mixture's loss at one position, from the model's own `-ln softmax(z)(target)`.
    pub fn mixed_loss(&self, candidates: &CopyCandidates, hidden: &[f32], target: u32, model_nll: f64) -> MixedLoss {
        self.mixture(candidates, hidden, target, model_nll, None)
    }

    /// [`CopyHead::mixed_loss`], adding `scale` times its gradient with respect to the
    /// head's parameters to `gradients` (in [`CopyHead::sizes`] order).
    pub fn mixed_loss_with_gradients(
        &self,
        candidates: &CopyCandidates,
        hidden: &[f32],
        target: u32,
        model_nll: f64,
        scale: f32,
        gradients: &mut [Vec<f32>; TENSORS],
    ) -> MixedLoss {
        self.mixture(candidates, hidden, target, model_nll, Some((scale, gradients)))
    }

    fn mixture(
        &self,
        candidates: &CopyCandidates,
        hidden: &[f32],
        target: u32,
        model_nll: f64,
        gradients: Option<(f32, &mut [Vec<f32>; TENSORS])>,
    ) -> MixedLoss {
        let Some(proposal) = self.propose(candidates, hidden) else {
            return MixedLoss { nll: model_nll, model_share: 1.0, gate_gradient: 0.0 };
        };
        let x = proposal.logit;
        let from_model = -softplus(x) - model_nll;
        let share = proposal.share(target);
        let from_copy = if share > 0.0 { -softplus(-x) + f64::from(share).ln() } else { f64::NEG_INFINITY };
        let log_p = log_add_exp(from_model, from_copy);
        let copy_share = (from_copy - log_p).exp();
        let loss = MixedLoss { nll: -log_p, model_share: 1.0 - copy_share, gate_gradient: sigmoid(x) - copy_share };
        let Some((scale, gradients)) = gradients else {
            return loss;
        };
        let norm = crate::kernels::dot(hidden, hidden).sqrt();
        let unit = |coefficient: f32| hidden.iter().map(move |&h| if norm > 0.0 { coefficient * h / norm } else { 0.0 });
        let [bias, weights, pointer_bias, pointer_weights, query] = gradients;
        let gate = scale * loss.gate_gradient as f32;
        let Some(Pointed { alphas, centered }) = &proposal.pointed else {
            bias[candidates.match_length.min(MAX_MATCH) - 1] += gate;
            weights.iter_mut().zip(unit(gate)).for_each(|(g, u)| *g += u);
            return loss;
        };
        pointer_bias[0] += gate;
        pointer_weights.iter_mut().zip(unit(gate)).for_each(|(g, u)| *g += u);
        if copy_share > 0.0 {
            // d loss / d score_j = c (alpha_j - beta_j); Q's gradient is sum_j of that
            // times k_j, outer the unit hidden state.
            let prompt = candidates.pointer.as_deref().expect("the pointer proposed");
            let mut direction = [0f32; KEY_WIDTH];
            for ((&token, &alpha), key) in prompt.tokens.iter().zip(alphas).zip(prompt.keys.chunks_exact(KEY_WIDTH)) {
                let beta = if token == target { alpha / share } else { 0.0 };
                let coefficient = scale * copy_share as f32 * (alpha - beta);
                direction.iter_mut().zip(key).for_each(|(d, &k)| *d += coefficient * k);
            }
            let centered_norm = crate::kernels::dot(centered, centered).sqrt();
            if centered_norm > 0.0 {
                for (row, &d) in query.chunks_exact_mut(hidden.len()).zip(&direction) {
                    row.iter_mut().zip(centered).for_each(|(g, &u)| *g += d * u / centered_norm);
                }
            }
        }
        loss
    }

    /// Bytes it takes in [`CopyHead::write`].
    pub fn byte_len(&self) -> usize {
        8 + 4 * (self.bias.len() + self.weights.len() + 1 + self.pointer_weights.len() + self.query.len())
    }

    /// u32 number of biases, f32 biases and f32 w `[hidden]`; then u32 KEY_WIDTH, f32
    /// pointer bias, f32 pointer w `[hidden]` and f32 Q `[KEY_WIDTH, hidden]`.
    pub(crate) fn write(&self, writer: &mut Writer) {
        writer.u32(self.bias.len() as u32);
        writer.f32s(&self.bias);
        writer.f32s(&self.weights);
        writer.u32(KEY_WIDTH as u32);
        writer.f32s(&self.pointer_bias);
        writer.f32s(&self.pointer_weights);
        writer.f32s(&self.query);
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
        let width = reader.u32()? as usize;
        if width != KEY_WIDTH {
            return Err(Error::new(
                ErrorKind::InvalidBinaryRepresentation,
                format!("copy head has pointer keys of {width} values, this version uses {KEY_WIDTH}"),
            ));
        }
        let pointer_bias = reader.f32s(1, "pointer gate bias")?;
        let pointer_weights = reader.f32s(hidden, "pointer gate weights")?;
        let query = reader.f32s(KEY_WIDTH * hidden, "pointer query")?;
        Ok(Self { bias, weights, pointer_bias, pointer_weights, query, projection: Arc::new(KeyProjection::new(hidden)) })
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
        let mut head = CopyHead::new(weights.len());
        head.bias = vec![bias; MAX_MATCH];
        head.weights = weights;
        head
    }

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let sum: f64 = logits.iter().map(|&z| f64::from(z).exp()).sum();
        logits.iter().map(|&z| f64::from(z).exp() / sum).collect()
    }

    /// A pointer over prompt tokens 5 6 5 7, keyed from made-up hidden states.
    fn pointer_candidates(head: &CopyHead) -> CopyCandidates {
        let tokens = [9, 5, 6, 5, 7];
        let states = [0.3f32, -0.2, 0.9, 1.0, 0.4, -0.6, -0.5, 0.8, 0.1, 0.2, 0.2, -1.0, 0.7, 0.7, 0.3];
        let keys = Arc::new(head.prompt_keys(&tokens, 1, &states));
        CopyCandidates::find_or_point(&tokens, &[], &keys)
    }

    #[test]
    fn mixing_gives_the_mixture_distribution() {
        let head = head(0.3, vec![0.5, -1.0, 0.25]);
        let hidden = [1.0, 2.0, -0.5];
        let candidates = CopyCandidates { match_length: 2, tokens: vec![(3, 0.75), (0, 0.25)], pointer: None };
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

    #[test]
    fn the_pointer_is_used_only_where_nothing_is_quoted() {
        let head = CopyHead::new(3);
        let keys = Arc::new(head.prompt_keys(&[9, 5, 6], 1, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]));
        // Keys for tokens 1.. (5 and 6), each from the state before it less their mean.
        assert_eq!(keys.tokens, [5, 6]);
        assert_eq!(keys.center, [0.5, 0.5, 0.0]);
        let projection = KeyProjection::new(3);
        assert_eq!(keys.keys[..KEY_WIDTH], KeyProjection::project_unit(&projection.matrix, &[0.5, -0.5, 0.0])[..]);
        assert_eq!(keys.keys[KEY_WIDTH..], KeyProjection::project_unit(&projection.matrix, &[-0.5, 0.5, 0.0])[..]);
        // The empty answer points; later, a quote keeps its candidates and no match is
        // the model alone.
        let pointing = CopyCandidates::find_or_point(&[9, 5, 6], &[], &keys);
        assert_eq!(pointing.pointer.as_deref(), Some(&*keys));
        assert!(!pointing.is_empty());
        let quoting = CopyCandidates::find_or_point(&[9, 5, 6], &[5], &keys);
        assert_eq!((quoting.match_length, quoting.pointer.is_none()), (1, true));
        let hidden = [1.0, 1.0, 1.0];
        let unmatched = CopyCandidates::find_or_point(&[9, 5, 6], &[7], &keys);
        assert!(unmatched.is_empty() && head.propose(&unmatched, &hidden).is_none());
        // Nothing to point at: the model alone.
        let none = CopyCandidates::find_or_point(&[9, 5, 6], &[], &Arc::default());
        assert!(none.is_empty() && head.propose(&none, &hidden).is_none());
    }

    #[test]
    fn the_pointer_mixes_in_its_softmax_over_positions() {
        let mut head = head(0.0, vec![0.2, -0.1, 0.4]);
        head.pointer_bias = vec![-0.5];
        head.pointer_weights = vec![0.3, 0.3, -0.2];
        let candidates = pointer_candidates(&head);
        let hidden = [0.4f32, -0.3, 0.8];
        // Independently: scores (Q c/|c|) . k_j with c = h less the prompt's center,
        // softmax, summed per token.
        let norm = (0.16f32 + 0.09 + 0.64).sqrt();
        let prompt = candidates.pointer.as_deref().unwrap();
        let centered: Vec<f32> = hidden.iter().zip(&prompt.center).map(|(h, c)| h - c).collect();
        let centered_norm = centered.iter().map(|c| c * c).sum::<f32>().sqrt();
        let query: Vec<f32> =
            head.query.chunks_exact(3).map(|row| row.iter().zip(&centered).map(|(a, b)| a * b).sum::<f32>() / centered_norm).collect();
        let scores: Vec<f32> = prompt.keys.chunks_exact(KEY_WIDTH).map(|k| k.iter().zip(&query).map(|(a, b)| a * b).sum()).collect();
        let alphas = softmax(&scores);
        let q = |token: u32| prompt.tokens.iter().zip(&alphas).filter(|(&t, _)| t == token).map(|(_, &a)| a).sum::<f64>();
        assert!((q(5) + q(6) + q(7) - 1.0).abs() < 1e-6 && q(5) > 0.0);
        let gate_logit = -0.5 + f64::from((0.3 * 0.4 - 0.3 * 0.3 - 0.2 * 0.8) / norm);
        let gate = 1.0 / (1.0 + (-gate_logit).exp());
        assert!((head.gate(&candidates, &hidden) - gate).abs() < 1e-6);
        let logits = [0.1f32, 2.0, -1.0, 0.5, 1.5, 0.0, 0.7, -0.3, 0.2];
        let mut mixed = logits;
        head.mix_into_logits(&candidates, &hidden, &mut mixed);
        let model = softmax(&logits);
        for (token, &log_p) in mixed.iter().enumerate() {
            let want = (1.0 - gate) * model[token] + gate * q(token as u32);
            assert!((f64::from(log_p).exp() - want).abs() < 1e-5, "token {token}");
        }
    }

    /// The closed-form gradients against central differences of the mixture's loss, for
    /// a quoting position and a pointing one, targets the copy part can and cannot produce.
    #[test]
    fn gradients_match_finite_differences() {
        let hidden = [0.7f32, -1.2, 0.4];
        let mut base = head(-0.4, vec![0.3, 0.1, -0.2]);
        base.pointer_bias = vec![0.2];
        base.pointer_weights = vec![-0.1, 0.25, 0.15];
        let quoting = CopyCandidates { match_length: 3, tokens: vec![(1, 0.6), (2, 0.4)], pointer: None };
        let pointing = pointer_candidates(&base);
        let logits = [0.2f32, -0.3, 1.1, 0.4, 0.0, -0.8, 0.5, 0.9];
        let loss_at = |head: &CopyHead, candidates: &CopyCandidates, logits: &[f32], target: u32| {
            let model_nll = -softmax(logits)[target as usize].ln();
            head.mixed_loss(candidates, &hidden, target, model_nll).nll
        };
        for (candidates, targets) in [(&quoting, [1u32, 3]), (&pointing, [5, 3])] {
            for target in targets {
                let model_nll = -softmax(&logits)[target as usize].ln();
                let mut gradients = base.sizes().map(|n| vec![0f32; n]);
                let loss = base.mixed_loss_with_gradients(candidates, &hidden, target, model_nll, 1.0, &mut gradients);
                assert_eq!(loss, base.mixed_loss(candidates, &hidden, target, model_nll));
                let step = 1e-3;
                let mut checked = 0;
                for (tensor, analytic) in gradients.iter().enumerate() {
                    // Q's coordinates in steps, to keep the test quick.
                    for index in (0..analytic.len()).step_by(if tensor == 4 { 37 } else { 1 }) {
                        let (mut plus, mut minus) = (base.clone(), base.clone());
                        plus.tensors_mut()[tensor][index] += step;
                        minus.tensors_mut()[tensor][index] -= step;
                        let numeric = (loss_at(&plus, candidates, &logits, target) - loss_at(&minus, candidates, &logits, target))
                            / (2.0 * f64::from(step));
                        assert!(
                            (numeric - f64::from(analytic[index])).abs() < 2e-4,
                            "target {target}, tensor {tensor}[{index}]: {numeric} vs {}",
                            analytic[index]
                        );
                        checked += 1;
                    }
                }
                assert!(checked > MAX_MATCH + 2 * 3);
                // Something moves: the gate always, Q where the pointer can produce the target.
                assert!(gradients[if candidates.pointer.is_some() { 2 } else { 0 }].iter().any(|&g| g != 0.0));
                if candidates.pointer.is_some() && target == 5 {
                    assert!(gradients[4].iter().any(|&g| g != 0.0));
                }
                // Logits: model_share * (softmax - one_hot).
                let model = softmax(&logits);
                for token in 0..logits.len() {
                    let analytic = loss.model_share * (model[token] - f64::from(u8::from(token == target as usize)));
                    let (mut plus, mut minus) = (logits, logits);
                    plus[token] += step;
                    minus[token] -= step;
                    let numeric = (loss_at(&base, candidates, &plus, target) - loss_at(&base, candidates, &minus, target))
                        / (2.0 * f64::from(step));
                    assert!((numeric - analytic).abs() < 1e-4, "target {target}, logit {token}: {numeric} vs {analytic}");
                }
            }
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let mut head = head(0.5, vec![0.1, 0.2, 0.3]);
        head.pointer_bias = vec![-1.5];
        head.query[7] = 42.0;
        let mut writer = Writer::new(super::super::format::AdapterKind::Generator, head.byte_len());
        head.write(&mut writer);
        let bytes = writer.finish();
        let mut reader = Reader::new(&bytes, super::super::format::AdapterKind::Generator).unwrap();
        assert_eq!(CopyHead::read(&mut reader, 3).unwrap(), head);
        reader.finish().unwrap();
    }
}
