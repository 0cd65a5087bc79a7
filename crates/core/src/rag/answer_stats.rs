//! The latency histogram of ragtune_answer_stats: fixed buckets, so that an entry in
//! shared memory has a fixed size and any number of answers costs no more memory.

/// Buckets per doubling: a bucket spans a factor 2^(1/4) (19%).
const PER_DOUBLING: f64 = 4.0;
/// From 1 ms to 2^24 ms (4.7 hours); below and above go to the first and last bucket.
pub const BUCKETS: usize = 96;

/// The bucket of an answer that took `ms` milliseconds.
pub fn bucket(ms: f64) -> usize {
    if ms.is_nan() || ms <= 1.0 {
        return 0;
    }
    ((ms.log2() * PER_DOUBLING) as usize).min(BUCKETS - 1)
}

/// The q-quantile (0..=1) of the answers counted in `counts`: the geometric middle of
/// the bucket the quantile falls in, so within 10% of the exact figure; None for none.
pub fn quantile(counts: &[u32], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based, as the nearest-rank method.
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += c as u64;
        if seen >= rank {
            return Some(2f64.powf((i as f64 + 0.5) / PER_DOUBLING));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_ten_percent() {
        let latencies: Vec<f64> = (1..=1000).map(|i| 40.0 + i as f64 * 3.7).collect();
        let mut counts = [0u32; BUCKETS];
        for &ms in &latencies {
            counts[bucket(ms)] += 1;
        }
        for (q, exact) in [(0.5, latencies[499]), (0.95, latencies[949])] {
            let estimate = quantile(&counts, q).unwrap();
            assert!((estimate / exact - 1.0).abs() <= 0.1, "{q}: {estimate} against {exact}");
        }
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn out_of_range_latencies_go_to_the_end_buckets() {
        assert_eq!(bucket(0.2), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(1e12), BUCKETS - 1);
        assert_eq!(bucket(1000.0), 39);
    }
}
