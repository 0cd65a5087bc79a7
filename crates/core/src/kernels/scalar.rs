//! Portable kernels: the fallback on CPUs without a SIMD path, and the
//! "scalar" baseline of the throughput benchmark.

use half::f16;

/// Element types the kernels widen to f32 before any arithmetic.
trait Widen: Copy {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

// Float addition is not reassociated by the compiler, so a single running sum
// is one long dependency chain; independent partial sums let it vectorize.
const LANES: usize = 8;

/// Sums `M` per-element terms over `a` and `b` in one pass.
#[inline(always)]
fn fold<E: Widen, const M: usize>(
    a: &[E],
    b: &[E],
    term: impl Fn(f32, f32) -> [f32; M],
) -> [f32; M] {
    debug_assert_eq!(a.len(), b.len());
    let (chunks_a, tail_a) = a.as_chunks::<LANES>();
    let (chunks_b, tail_b) = b.as_chunks::<LANES>();
    let mut lanes = [[0.0f32; LANES]; M];
    for (xa, xb) in chunks_a.iter().zip(chunks_b) {
        let (xa, xb) = (xa.map(E::widen), xb.map(E::widen));
        // One sum at a time, so each is a plain lane-wise loop to vectorize.
        for (m, sums) in lanes.iter_mut().enumerate() {
            for (l, sum) in sums.iter_mut().enumerate() {
                *sum += term(xa[l], xb[l])[m];
            }
        }
    }
    let mut sum = [0.0f32; M];
    for (&x, &y) in tail_a.iter().zip(tail_b) {
        let t = term(x.widen(), y.widen());
        for m in 0..M {
            sum[m] += t[m];
        }
    }
    for m in 0..M {
        sum[m] += lanes[m].iter().sum::<f32>();
    }
    sum
}

#[inline(always)]
fn l2_squared_generic<E: Widen>(a: &[E], b: &[E]) -> f32 {
    let [s] = fold(a, b, |x, y| [(x - y) * (x - y)]);
    s
}

#[inline(always)]
fn dot_generic<E: Widen>(a: &[E], b: &[E]) -> f32 {
    let [s] = fold(a, b, |x, y| [x * y]);
    s
}

#[inline(always)]
fn l1_generic<E: Widen>(a: &[E], b: &[E]) -> f32 {
    let [s] = fold(a, b, |x, y| [(x - y).abs()]);
    s
}

#[inline(always)]
fn cosine_terms_generic<E: Widen>(a: &[E], b: &[E]) -> (f32, f32, f32) {
    let [d, na, nb] = fold(a, b, |x, y| [x * y, x * x, y * y]);
    (d, na, nb)
}

/// Squared Euclidean distance: sum of (a - b)^2.
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    l2_squared_generic(a, b)
}

/// Inner product: sum of a * b.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// Taxicab distance: sum of |a - b|.
pub fn l1(a: &[f32], b: &[f32]) -> f32 {
    l1_generic(a, b)
}

/// (a·b, |a|², |b|²) in one pass.
pub fn cosine_terms(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    cosine_terms_generic(a, b)
}

/// [`l2_squared`] for f16 inputs, accumulated in f32.
pub fn l2_squared_f16(a: &[f16], b: &[f16]) -> f32 {
    l2_squared_generic(a, b)
}

/// [`dot`] for f16 inputs, accumulated in f32.
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    dot_generic(a, b)
}

/// [`l1`] for f16 inputs, accumulated in f32.
pub fn l1_f16(a: &[f16], b: &[f16]) -> f32 {
    l1_generic(a, b)
}

/// [`cosine_terms`] for f16 inputs, accumulated in f32.
pub fn cosine_terms_f16(a: &[f16], b: &[f16]) -> (f32, f32, f32) {
    cosine_terms_generic(a, b)
}


/// Cosine distance from [`cosine_terms`], computed as pgvector does: in f64,
/// NaN when either vector is zero, similarity clamped to [-1, 1].
pub fn cosine_distance_from_terms(dot: f32, na: f32, nb: f32) -> f64 {
    let similarity = f64::from(dot) / (f64::from(na) * f64::from(nb)).sqrt();
    // A zero vector gives 0 / 0; say so rather than lean on clamp passing NaN through.
    if similarity.is_nan() {
        return f64::NAN;
    }
    // Rounding can push |similarity| slightly past 1.
    1.0 - similarity.clamp(-1.0, 1.0)
}
