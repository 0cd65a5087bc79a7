//! Distance kernels for `vector` (f32) and `halfvec` (f16).
//!
//! Each public function dispatches through a table of implementations picked
//! once per process for the best instruction set the CPU supports. f16 inputs
//! are widened and accumulated in f32. [`scalar`] holds the portable versions.

use std::sync::OnceLock;

use half::f16;

pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use scalar::cosine_distance_from_terms;

/// (a·b, |a|², |b|²) as returned by the cosine kernels.
type CosineTerms = (f32, f32, f32);

/// One backend's implementation of every kernel.
struct Kernels {
    name: &'static str,
    l2_squared: fn(&[f32], &[f32]) -> f32,
    dot: fn(&[f32], &[f32]) -> f32,
    l1: fn(&[f32], &[f32]) -> f32,
    cosine_terms: fn(&[f32], &[f32]) -> CosineTerms,
    l2_squared_f16: fn(&[f16], &[f16]) -> f32,
    dot_f16: fn(&[f16], &[f16]) -> f32,
    l1_f16: fn(&[f16], &[f16]) -> f32,
    cosine_terms_f16: fn(&[f16], &[f16]) -> CosineTerms,
}

static SCALAR: Kernels = Kernels {
    name: "scalar",
    l2_squared: scalar::l2_squared,
    dot: scalar::dot,
    l1: scalar::l1,
    cosine_terms: scalar::cosine_terms,
    l2_squared_f16: scalar::l2_squared_f16,
    dot_f16: scalar::dot_f16,
    l1_f16: scalar::l1_f16,
    cosine_terms_f16: scalar::cosine_terms_f16,
};

/// Every backend the running CPU supports, best first; scalar is always last.
fn supported_backends() -> Vec<&'static Kernels> {
    let mut backends = Vec::new();
    #[cfg(target_arch = "x86_64")]
    backends.extend(x86::supported());
    backends.push(&SCALAR);
    backends
}

/// The dispatched backend. Feature detection runs once; afterwards this is
/// one atomic load.
#[inline]
fn active() -> &'static Kernels {
    static ACTIVE: OnceLock<&'static Kernels> = OnceLock::new();
    ACTIVE.get_or_init(|| supported_backends()[0])
}

/// The instruction set dispatch picked: "avx512f", "avx2+fma+f16c" or "scalar".
pub fn active_isa() -> &'static str {
    active().name
}

/// Squared Euclidean distance: sum of (a - b)^2.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (active().l2_squared)(a, b)
}

/// Inner product: sum of a * b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (active().dot)(a, b)
}

/// Taxicab distance: sum of |a - b|.
#[inline]
pub fn l1(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (active().l1)(a, b)
}

/// (a·b, |a|², |b|²) in one pass; feed to [`cosine_distance_from_terms`].
#[inline]
pub fn cosine_terms(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    debug_assert_eq!(a.len(), b.len());
    (active().cosine_terms)(a, b)
}

/// [`l2_squared`] for f16 inputs, accumulated in f32.
#[inline]
pub fn l2_squared_f16(a: &[f16], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (active().l2_squared_f16)(a, b)
}

/// [`dot`] for f16 inputs, accumulated in f32.
#[inline]
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (active().dot_f16)(a, b)
}

/// [`l1`] for f16 inputs, accumulated in f32.
#[inline]
pub fn l1_f16(a: &[f16], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (active().l1_f16)(a, b)
}

/// [`cosine_terms`] for f16 inputs, accumulated in f32.
#[inline]
pub fn cosine_terms_f16(a: &[f16], b: &[f16]) -> (f32, f32, f32) {
    debug_assert_eq!(a.len(), b.len());
    (active().cosine_terms_f16)(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rng::Rng;

    #[test]
    fn cache_lines_cover_every_byte_once() {
        for address in 1000..1000 + 128 {
            for bytes in 0..300 {
                let expected: Vec<usize> = (address..address + bytes).map(|b| b / 64 * 64).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                assert_eq!(cache_lines(address, bytes).collect::<Vec<_>>(), expected, "{address} {bytes}");
            }
        }
    }

    /// f64 sums of the per-element terms (their own error is ~2^-29 of the
    /// f32 bound checked), plus the sum of absolute products, which scales
    /// that bound for dot.
    struct Reference {
        l2: f64,
        dot: f64,
        l1: f64,
        na: f64,
        nb: f64,
        abs_dot: f64,
    }

    fn reference(a: &[f64], b: &[f64]) -> Reference {
        let mut r = Reference {
            l2: 0.0,
            dot: 0.0,
            l1: 0.0,
            na: 0.0,
            nb: 0.0,
            abs_dot: 0.0,
        };
        for (&x, &y) in a.iter().zip(b) {
            r.l2 += (x - y) * (x - y);
            r.dot += x * y;
            r.abs_dot += (x * y).abs();
            r.l1 += (x - y).abs();
            r.na += x * x;
            r.nb += y * y;
        }
        r
    }

    /// Worst-case f32 error of an n-term sum whose terms each carry up to
    /// three roundings (subtract, multiply, add): (n + 2) * u * sum|terms|,
    /// with u = eps / 2, doubled for margin. The absolute slack covers
    /// products that underflow into subnormals (each off by at most 2^-150).
    fn assert_close(what: &str, got: f32, want: f64, abs_terms: f64, n: usize) {
        let tol =
            f64::from(f32::EPSILON) * (n as f64 + 2.0) * abs_terms + n as f64 * 2f64.powi(-149);
        let err = (f64::from(got) - want).abs();
        assert!(
            got.is_finite() && err <= tol,
            "{what}: n={n} got={got:e} want={want:e} err={err:e} tol={tol:e}"
        );
    }

    /// What one backend's kernels returned for one input pair:
    /// l2_squared, dot, l1, cosine_terms.
    type Results = (f32, f32, f32, (f32, f32, f32));

    /// Checks `got` against the f64 reference computed from the same inputs.
    fn check(what: &str, got: Results, a: &[f64], b: &[f64]) {
        let n = a.len();
        let r = reference(a, b);
        let (l2, dot, l1, (cos_dot, cos_na, cos_nb)) = got;
        assert_close(&format!("{what} l2_squared"), l2, r.l2, r.l2, n);
        assert_close(&format!("{what} dot"), dot, r.dot, r.abs_dot, n);
        assert_close(&format!("{what} l1"), l1, r.l1, r.l1, n);
        assert_close(&format!("{what} cosine dot"), cos_dot, r.dot, r.abs_dot, n);
        assert_close(&format!("{what} cosine |a|^2"), cos_na, r.na, r.na, n);
        assert_close(&format!("{what} cosine |b|^2"), cos_nb, r.nb, r.nb, n);
    }

    fn check_f32(k: &Kernels, a: &[f32], b: &[f32], case: &str) {
        let got = (
            (k.l2_squared)(a, b),
            (k.dot)(a, b),
            (k.l1)(a, b),
            (k.cosine_terms)(a, b),
        );
        let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        check(&format!("{} f32 [{case}]", k.name), got, &wide(a), &wide(b));
    }

    fn check_f16(k: &Kernels, a: &[f16], b: &[f16], case: &str) {
        let got = (
            (k.l2_squared_f16)(a, b),
            (k.dot_f16)(a, b),
            (k.l1_f16)(a, b),
            (k.cosine_terms_f16)(a, b),
        );
        let wide = |v: &[f16]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
        check(&format!("{} f16 [{case}]", k.name), got, &wide(a), &wide(b));
    }

    /// 0..=64 exhaustively, the odd tails around every SIMD width, and random
    /// lengths up to 2000.
    fn lengths(rng: &mut Rng) -> Vec<usize> {
        let mut lengths: Vec<usize> = (0..=64).collect();
        lengths.extend([65, 127, 129, 255, 257, 1023, 1024, 1025, 1536, 1999, 2000]);
        lengths.extend((0..60).map(|_| 1 + rng.below(2000) as usize));
        lengths
    }

    /// Named input pairs of length `n`. `big` and `tiny` are the format's
    /// extreme magnitudes; `spread` bounds the binary exponents of the
    /// mixed-magnitude case.
    fn cases(
        rng: &mut Rng,
        n: usize,
        big: f64,
        tiny: f64,
        spread: i32,
    ) -> Vec<(&'static str, Vec<f64>, Vec<f64>)> {
        let mut random = |scale: f64| {
            (0..n)
                .map(|_| scale * rng.signed_unit())
                .collect::<Vec<_>>()
        };
        let abs = |v: Vec<f64>| v.into_iter().map(f64::abs).collect();
        let mut cases = vec![
            ("uniform", random(1.0), random(1.0)),
            ("large", random(big), random(big)),
            ("tiny", random(tiny), random(tiny)),
            ("same-sign", abs(random(1.0)), abs(random(1.0))),
        ];
        let mut mixed = || {
            (0..n)
                .map(|_| {
                    rng.signed_unit() * 2f64.powi(rng.below(2 * spread as u64 + 1) as i32 - spread)
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (mixed(), mixed());
        cases.extend([
            ("one-zero", a.clone(), vec![0.0; n]),
            ("mixed-magnitude", a, b),
            ("zeros", vec![0.0; n], vec![0.0; n]),
        ]);
        cases
    }

    #[test]
    fn dispatch_picks_best_supported_backend() {
        let names: Vec<_> = supported_backends().iter().map(|k| k.name).collect();
        eprintln!(
            "supported backends: {names:?}; dispatched: {}",
            active_isa()
        );
        #[cfg(target_arch = "x86_64")]
        let best = if is_x86_feature_detected!("avx512f") {
            "avx512f"
        } else if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            "avx2+fma+f16c"
        } else {
            "scalar"
        };
        #[cfg(not(target_arch = "x86_64"))]
        let best = "scalar";
        assert_eq!(active_isa(), best);
        assert_eq!(names[0], best);
        assert_eq!(names.last(), Some(&"scalar"));
    }

    #[test]
    fn public_functions_use_active_backend() {
        let mut rng = Rng::new(7);
        let a: Vec<f32> = (0..333).map(|_| rng.signed_unit() as f32).collect();
        let b: Vec<f32> = (0..333).map(|_| rng.signed_unit() as f32).collect();
        let (ha, hb): (Vec<f16>, Vec<f16>) = (
            a.iter().map(|&x| f16::from_f32(x)).collect(),
            b.iter().map(|&x| f16::from_f32(x)).collect(),
        );
        let k = active();
        assert_eq!(
            l2_squared(&a, &b).to_bits(),
            (k.l2_squared)(&a, &b).to_bits()
        );
        assert_eq!(dot(&a, &b).to_bits(), (k.dot)(&a, &b).to_bits());
        assert_eq!(l1(&a, &b).to_bits(), (k.l1)(&a, &b).to_bits());
        assert_eq!(cosine_terms(&a, &b), (k.cosine_terms)(&a, &b));
        assert_eq!(
            l2_squared_f16(&ha, &hb).to_bits(),
            (k.l2_squared_f16)(&ha, &hb).to_bits()
        );
        assert_eq!(dot_f16(&ha, &hb).to_bits(), (k.dot_f16)(&ha, &hb).to_bits());
        assert_eq!(l1_f16(&ha, &hb).to_bits(), (k.l1_f16)(&ha, &hb).to_bits());
        assert_eq!(cosine_terms_f16(&ha, &hb), (k.cosine_terms_f16)(&ha, &hb));
    }

    #[test]
    fn f32_kernels_match_f64_reference() {
        let mut rng = Rng::new(1);
        for backend in supported_backends() {
            for n in lengths(&mut rng) {
                // Keeps n * (2 * big)^2 far below f32::MAX.
                let big = 1e18 / (n.max(1) as f64).sqrt();
                for (case, a, b) in cases(&mut rng, n, big, 1e-20, 20) {
                    let a: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                    let b: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                    check_f32(backend, &a, &b, case);
                }
            }
        }
    }

    #[test]
    fn f16_kernels_match_f64_reference() {
        let mut rng = Rng::new(2);
        for backend in supported_backends() {
            for n in lengths(&mut rng) {
                // 6e4 is near f16::MAX; 1e-6 is subnormal in f16.
                for (case, a, b) in cases(&mut rng, n, 6e4, 1e-6, 12) {
                    let a: Vec<f16> = a.iter().map(|&x| f16::from_f64(x)).collect();
                    let b: Vec<f16> = b.iter().map(|&x| f16::from_f64(x)).collect();
                    check_f16(backend, &a, &b, case);
                }
            }
        }
    }

    #[test]
    fn empty_inputs_give_zero() {
        for k in supported_backends() {
            assert_eq!((k.l2_squared)(&[], &[]), 0.0);
            assert_eq!((k.dot)(&[], &[]), 0.0);
            assert_eq!((k.l1)(&[], &[]), 0.0);
            assert_eq!((k.cosine_terms)(&[], &[]), (0.0, 0.0, 0.0));
            assert_eq!((k.l2_squared_f16)(&[], &[]), 0.0);
            assert_eq!((k.dot_f16)(&[], &[]), 0.0);
            assert_eq!((k.l1_f16)(&[], &[]), 0.0);
            assert_eq!((k.cosine_terms_f16)(&[], &[]), (0.0, 0.0, 0.0));
        }
    }

    #[test]
    fn identical_and_opposite_vectors() {
        let mut rng = Rng::new(3);
        for k in supported_backends() {
            for n in lengths(&mut rng).into_iter().filter(|&n| n > 0) {
                let a: Vec<f32> = (0..n).map(|_| rng.signed_unit() as f32).collect();
                let neg: Vec<f32> = a.iter().map(|x| -x).collect();
                let ha: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
                let hneg: Vec<f16> = ha.iter().map(|&x| -x).collect();
                assert_eq!((k.l2_squared)(&a, &a), 0.0, "{} n={n}", k.name);
                assert_eq!((k.l1)(&a, &a), 0.0, "{} n={n}", k.name);
                assert_eq!((k.l2_squared_f16)(&ha, &ha), 0.0, "{} n={n}", k.name);
                assert_eq!((k.l1_f16)(&ha, &ha), 0.0, "{} n={n}", k.name);
                // dot and |a|^2 run the same operations in the same order,
                // so the similarity is exactly 1 (or -1 for the negation).
                let (d, na, nb) = (k.cosine_terms)(&a, &a);
                assert_eq!(
                    cosine_distance_from_terms(d, na, nb),
                    0.0,
                    "{} n={n}",
                    k.name
                );
                let (d, na, nb) = (k.cosine_terms)(&a, &neg);
                assert_eq!(
                    cosine_distance_from_terms(d, na, nb),
                    2.0,
                    "{} n={n}",
                    k.name
                );
                let (d, na, nb) = (k.cosine_terms_f16)(&ha, &ha);
                assert_eq!(
                    cosine_distance_from_terms(d, na, nb),
                    0.0,
                    "{} n={n}",
                    k.name
                );
                let (d, na, nb) = (k.cosine_terms_f16)(&ha, &hneg);
                assert_eq!(
                    cosine_distance_from_terms(d, na, nb),
                    2.0,
                    "{} n={n}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn zero_vector_cosine_is_nan() {
        let a = [0.5f32, -1.0, 2.0];
        let z = [0.0f32; 3];
        let (ha, hz) = (a.map(f16::from_f32), z.map(f16::from_f32));
        for k in supported_backends() {
            for (d, na, nb) in [
                (k.cosine_terms)(&a, &z),
                (k.cosine_terms)(&z, &a),
                (k.cosine_terms)(&z, &z),
                (k.cosine_terms_f16)(&ha, &hz),
                (k.cosine_terms_f16)(&hz, &hz),
            ] {
                assert!(cosine_distance_from_terms(d, na, nb).is_nan(), "{}", k.name);
            }
        }
    }

    #[test]
    fn cosine_distance_from_terms_matches_pgvector() {
        assert_eq!(cosine_distance_from_terms(1.0, 1.0, 1.0), 0.0);
        assert_eq!(cosine_distance_from_terms(-1.0, 1.0, 1.0), 2.0);
        assert_eq!(cosine_distance_from_terms(0.0, 1.0, 1.0), 1.0);
        assert_eq!(cosine_distance_from_terms(3.0, 4.0, 9.0), 0.5);
        // Rounding past +-1 is clamped.
        assert_eq!(cosine_distance_from_terms(1.000_001, 1.0, 1.0), 0.0);
        assert_eq!(cosine_distance_from_terms(-1.000_001, 1.0, 1.0), 2.0);
        assert!(cosine_distance_from_terms(0.0, 0.0, 0.0).is_nan());
        assert!(cosine_distance_from_terms(0.0, 2.0, 0.0).is_nan());
        assert!(cosine_distance_from_terms(0.0, 0.0, 2.0).is_nan());
        // The norm product is taken in f64, so it does not overflow.
        let d = cosine_distance_from_terms(3e38, 3e38, 3e38);
        assert!(d.abs() < 1e-12, "{d}");
    }
}

/// Asks the CPU to start loading `data` into cache. Graph searches score vectors
/// scattered over memory; announcing a whole neighbour list first overlaps the cache
/// misses instead of waiting out each in turn.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = data.as_ptr().cast::<i8>();
        for line in cache_lines(start as usize, std::mem::size_of_val(data)) {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is only a hint:
            // it never faults, whatever the address; wrapping arithmetic only forms it.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line.wrapping_sub(start as usize))) };
        }
    }
}

/// Start addresses of the 64-byte cache lines that `bytes` bytes at `address` touch:
/// an unaligned span takes one line more than its length suggests, and leaving out
/// its last line left a cache miss in a quarter of the vectors a search scores.
fn cache_lines(address: usize, bytes: usize) -> impl Iterator<Item = usize> {
    const LINE: usize = 64;
    let first = address - address % LINE;
    let end = if bytes == 0 { first } else { address + bytes };
    (first..end).step_by(LINE)
}
