//! Drafting tokens from the prompt (prompt lookup): an answer grounded in passages repeats
//! runs of their tokens, so what followed the latest earlier occurrence of the text's last
//! few tokens is a cheap guess at what comes next. One model call then checks every
//! drafted token at once ([`super::Generator::next_piece`]); a greedy generation keeps the
//! tokens the model would have chosen one call at a time, and the call costs little more
//! than a single step, because decoding reads all the weights for one token anyway.

/// The longest run of last tokens looked up; shorter runs are tried when it does not recur.
pub const LONGEST_MATCH: usize = 3;

/// Up to `most` tokens that followed the latest earlier occurrence of the longest suffix
/// (at most [`LONGEST_MATCH`] tokens) of `prompt` followed by `generated`; empty when no
/// suffix recurs. Linear in the text's length for each try.
pub fn draft(prompt: &[u32], generated: &[u32], most: usize) -> Vec<u32> {
    let len = prompt.len() + generated.len();
    let at = |i: usize| if i < prompt.len() { prompt[i] } else { generated[i - prompt.len()] };
    if most == 0 {
        return Vec::new();
    }
    for n in (1..=LONGEST_MATCH.min(len.saturating_sub(1))).rev() {
        let suffix = len - n;
        // Latest first: the nearest context is the likeliest to go on the same way.
        let found = (0..suffix).rev().find(|&start| (0..n).all(|j| at(start + j) == at(suffix + j)));
        if let Some(start) = found {
            let from = start + n;
            return (from..len.min(from + most)).map(at).collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same search, written out over one vector: every earlier start of every suffix.
    fn brute_force(text: &[u32], most: usize) -> Vec<u32> {
        for n in (1..=LONGEST_MATCH).rev() {
            if text.len() <= n {
                continue;
            }
            let suffix = &text[text.len() - n..];
            let mut best = None;
            for start in 0..text.len() - n {
                if &text[start..start + n] == suffix {
                    best = Some(start);
                }
            }
            if let Some(start) = best {
                return text[start + n..].iter().take(most).copied().collect();
            }
        }
        Vec::new()
    }

    #[test]
    fn continues_the_latest_longest_match() {
        // "the cat sat" ... "the dog ran" ... generated "the": the latest "the" is followed by dog.
        let prompt = [1, 2, 3, 9, 1, 4, 5, 9];
        assert_eq!(draft(&prompt, &[1], 4), vec![4, 5, 9, 1]);
        // A longer match wins over a later shorter one: [2, 3] recurs at the start only.
        assert_eq!(draft(&prompt, &[7, 2, 3], 2), vec![9, 1]);
        // Runs past the prompt into what was generated.
        assert_eq!(draft(&[5, 6], &[7, 5, 6], 8), vec![7, 5, 6]);
        assert_eq!(draft(&prompt, &[1], 0), Vec::<u32>::new());
        assert_eq!(draft(&prompt, &[42], 4), Vec::<u32>::new());
        assert_eq!(draft(&[], &[3], 4), Vec::<u32>::new());
        assert_eq!(draft(&[3], &[], 4), Vec::<u32>::new());
    }

    #[test]
    fn agrees_with_a_brute_force_search() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..2_000 {
            let len = (next() % 40) as usize;
            let alphabet = 1 + next() % 6;
            let text: Vec<u32> = (0..len).map(|_| (next() % alphabet) as u32).collect();
            let split = if len == 0 { 0 } else { (next() as usize) % (len + 1) };
            let most = (next() % 7) as usize;
            assert_eq!(draft(&text[..split], &text[split..], most), brute_force(&text, most), "case {case}: {text:?} split {split}");
        }
    }
}
