//! Choosing the next token from a row of logits: greedy, or sampled with temperature,
//! top-k and top-p (nucleus), reproducibly from a seed.

use crate::error::{Error, ErrorKind};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 chooses the most likely token (greedy); higher flattens the distribution.
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p (0, 1].
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: &str| Err(Error::new(ErrorKind::InvalidParameterValue, message.to_string()));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid("temperature must be 0 (greedy) or positive");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p must be greater than 0 and at most 1");
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Scratch: (token, weight) candidates of the current step.
    candidates: Vec<(u32, f64)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self { params, rng: Rng::new(params.seed), candidates: Vec::new() }
    }

    /// Whether it always takes the most likely token (what checking drafts relies on).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    /// The next token among `logits` (one per token id). NaN logits are never chosen.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let temperature = self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (i as u32, f64::from(l) / temperature)),
        );
        if self.candidates.is_empty() {
            return 0;
        }
        let by_weight_descending =
            |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let top_k = self.params.top_k;
        if top_k > 0 && top_k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(top_k - 1, by_weight_descending);
            self.candidates.truncate(top_k);
        }
        self.candidates.sort_unstable_by(by_weight_descending);
        // Softmax over the candidates, then the nucleus.
        let max = self.candidates[0].1;
        let mut total = 0.0;
        for candidate in &mut self.candidates {
            candidate.1 = (candidate.1 - max).exp();
            total += candidate.1;
        }
        let mut kept_mass = 0.0;
        let mut kept = 0;
        for candidate in &self.candidates {
            kept_mass += candidate.1;
            kept += 1;
            if kept_mass >= self.params.top_p * total {
                break;
            }
        }
        let mut target = self.rng.next_f64() * kept_mass;
        for &(token, weight) in &self.candidates[..kept] {
            if target < weight {
                return token;
            }
            target -= weight;
        }
        self.candidates[kept - 1].0
    }
}

/// The first index of the largest logit (as numpy's argmax), ignoring NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > best_logit {
            best = i;
            best_logit = logit;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(params: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(params);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[sampler.choose(logits) as usize] += 1;
        }
        counts
    }

    fn params(temperature: f64, top_p: f64, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, seed }
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        let mut sampler = Sampler::new(SamplingParams::default());
        assert_eq!(sampler.choose(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(sampler.choose(&[f32::NAN, -5.0, -2.0]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 at temperature 1.
        let logits = [2f32.ln() * 3.0, 2f32.ln() * 2.0, 2f32.ln(), 2f32.ln()];
        let n = 40_000;
        let counts = sampled(params(1.0, 1.0, 0, 3), &logits, n);
        for (count, p) in counts.iter().zip([0.5, 0.25, 0.125, 0.125]) {
            let frequency = *count as f64 / n as f64;
            assert!((frequency - p).abs() < 0.01, "{counts:?}");
        }
        // Temperature 0.5 squares the probabilities: 16:4:1:1.
        let counts = sampled(params(0.5, 1.0, 0, 3), &logits, n);
        assert!((counts[0] as f64 / n as f64 - 16.0 / 22.0).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [2f32.ln() * 3.0, 2f32.ln() * 2.0, 2f32.ln(), 2f32.ln()];
        let counts = sampled(params(1.0, 1.0, 2, 5), &logits, 10_000);
        assert_eq!(&counts[2..], &[0, 0]);
        assert!((counts[0] as f64 / 10_000.0 - 2.0 / 3.0).abs() < 0.02, "{counts:?}");
        // The nucleus for 0.7 is the two most likely tokens (0.5 + 0.25 >= 0.7).
        let counts = sampled(params(1.0, 0.7, 0, 5), &logits, 10_000);
        assert_eq!(&counts[2..], &[0, 0]);
        // top_p 0.5 keeps only the first.
        assert_eq!(sampled(params(1.0, 0.5, 0, 5), &logits, 100), vec![100, 0, 0, 0]);
    }

    #[test]
    fn a_seed_repeats_and_another_differs() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 20.0).collect();
        let run = |seed| {
            let mut sampler = Sampler::new(params(1.0, 0.95, 50, seed));
            (0..50).map(|_| sampler.choose(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn invalid_settings() {
        assert!(params(-0.1, 1.0, 0, 0).validate().is_err());
        assert!(params(f64::NAN, 1.0, 0, 0).validate().is_err());
        assert!(params(1.0, 0.0, 0, 0).validate().is_err());
        assert!(params(1.0, 1.5, 0, 0).validate().is_err());
        assert!(params(0.7, 0.9, 40, 1).validate().is_ok());
    }
}
