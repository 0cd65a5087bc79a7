//! Turning training rows into examples, the same way whatever order a table returns
//! them in: each row's place in the validation split and in the training order comes from
//! a hash of its texts and the seed, and a prompt/completion row becomes the positions
//! whose final hidden states predict the completion's tokens.

use super::format::fingerprint;

/// A row's key: a hash of the seed and both texts. Rows are ordered by key before
/// training, and the key decides the validation split.
pub fn row_key(seed: u64, input: &str, target: &str) -> u64 {
    let mut bytes = Vec::with_capacity(16 + input.len() + target.len());
    bytes.extend_from_slice(&seed.to_le_bytes());
    bytes.extend_from_slice(&(input.len() as u64).to_le_bytes());
    bytes.extend_from_slice(input.as_bytes());
    bytes.extend_from_slice(target.as_bytes());
    // The fingerprint's high bits are uneven for short texts (a third of keys, not a
    // fifth, fell below 0.2); splitmix64's finalizer spreads them.
    let mut z = fingerprint(&bytes);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether the row with `key` is held out for validation: a `fraction` of keys are.
pub fn in_validation(key: u64, fraction: f64) -> bool {
    ((key >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// One prompt/completion row laid out for teacher forcing: the model reads `tokens`
/// (the prompt, then the completion without its end token), and the positions from
/// `first` on predict `targets` (the completion's tokens, then the end token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionExample {
    pub tokens: Vec<u32>,
    pub first: usize,
    pub targets: Vec<u32>,
}

impl CompletionExample {
    /// None for an empty prompt (no position reads it before the first target).
    pub fn new(prompt: &[u32], completion: &[u32], end: u32) -> Option<Self> {
        if prompt.is_empty() {
            return None;
        }
        let tokens = [prompt, completion].concat();
        let targets = completion.iter().copied().chain([end]).collect();
        Some(Self { tokens, first: prompt.len() - 1, targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_positions_predict_the_next_token() {
        let example = CompletionExample::new(&[10, 11, 12], &[20, 21], 2).unwrap();
        assert_eq!(example.tokens, vec![10, 11, 12, 20, 21]);
        // position 2 (token 12) predicts 20, 3 predicts 21, 4 predicts the end
        assert_eq!(example.first, 2);
        assert_eq!(example.targets, vec![20, 21, 2]);
        for (i, &target) in example.targets.iter().enumerate() {
            let position = example.first + i;
            let next = example.tokens.get(position + 1).copied().unwrap_or(2);
            assert_eq!(next, target);
        }
        assert_eq!(CompletionExample::new(&[5], &[], 2).unwrap().targets, vec![2]);
        assert!(CompletionExample::new(&[], &[1], 2).is_none());
    }

    #[test]
    fn keys_depend_on_seed_and_both_texts() {
        let key = row_key(1, "a", "b");
        assert_eq!(key, row_key(1, "a", "b"));
        assert_ne!(key, row_key(2, "a", "b"));
        assert_ne!(key, row_key(1, "ab", ""));
        assert_ne!(key, row_key(1, "a", "c"));
    }

    #[test]
    fn validation_takes_about_the_fraction() {
        let held = (0..10_000).filter(|&i| in_validation(row_key(7, &i.to_string(), "x"), 0.2)).count();
        assert!((1800..2200).contains(&held), "{held}");
        assert!(!(0..1000).any(|i| in_validation(row_key(7, &i.to_string(), "x"), 0.0)));
        assert!((0..1000).all(|i| in_validation(row_key(7, &i.to_string(), "x"), 1.0)));
    }
}
