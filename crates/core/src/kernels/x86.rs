//! x86-64 SIMD kernels: AVX-512F, and AVX2 + FMA + F16C. They are compiled with
//! per-function target features and handed out only after runtime detection,
//! so one binary still runs on any x86-64.

use core::arch::x86_64::*;
use half::f16;

use super::Kernels;

/// The SIMD backends this CPU supports, best first.
pub(super) fn supported() -> impl Iterator<Item = &'static Kernels> {
    let avx512 = is_x86_feature_detected!("avx512f");
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    [(avx512, &AVX512), (avx2, &AVX2)]
        .into_iter()
        .filter_map(|(ok, kernels)| ok.then_some(kernels))
}

macro_rules! table {
    ($name:literal, $isa:ident) => {
        // SAFETY (every entry): the table is reachable only through `supported`,
        // which first checks that the CPU has the module's target features.
        Kernels {
            name: $name,
            l2_squared: |a, b| unsafe { $isa::l2_squared::<f32>(a, b) },
            dot: |a, b| unsafe { $isa::dot::<f32>(a, b) },
            l1: |a, b| unsafe { $isa::l1::<f32>(a, b) },
            cosine_terms: |a, b| unsafe { $isa::cosine_terms::<f32>(a, b) },
            l2_squared_f16: |a, b| unsafe { $isa::l2_squared::<f16>(a, b) },
            dot_f16: |a, b| unsafe { $isa::dot::<f16>(a, b) },
            l1_f16: |a, b| unsafe { $isa::l1::<f16>(a, b) },
            cosine_terms_f16: |a, b| unsafe { $isa::cosine_terms::<f16>(a, b) },
        }
    };
}

static AVX512: Kernels = table!("avx512f", avx512);
static AVX2: Kernels = table!("avx2+fma+f16c", avx2);

/// Element types the kernels widen to f32 lanes.
trait Elem: Copy + Default {
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn load8(chunk: &[Self; 8]) -> __m256;
    /// # Safety
    /// The CPU must support AVX-512F.
    unsafe fn load16(chunk: &[Self; 16]) -> __m512;
    /// Loads the last `s.len() % 16` elements of `s` into some lanes and
    /// zeroes the others (which add nothing to any sum).
    /// # Safety
    /// The CPU must support AVX-512F.
    unsafe fn load16_tail(s: &[Self]) -> __m512;
}

/// Copies a slice shorter than one chunk into a zeroed chunk, so the
/// whole-chunk load can take it without reading past the slice.
#[inline(always)]
fn padded<E: Elem, const N: usize>(tail: &[E]) -> [E; N] {
    let mut chunk = [E::default(); N];
    chunk[..tail.len()].copy_from_slice(tail);
    chunk
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(chunk: &[f32; 8]) -> __m256 {
        // SAFETY: `chunk` is 8 readable f32s and loadu needs no alignment.
        unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(chunk: &[f32; 16]) -> __m512 {
        // SAFETY: `chunk` is 16 readable f32s and loadu needs no alignment.
        unsafe { _mm512_loadu_ps(chunk.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_tail(s: &[f32]) -> __m512 {
        let (_, tail) = s.as_chunks::<16>();
        let mask = (1u16 << tail.len()) - 1;
        // SAFETY: the mask selects exactly the `tail.len()` readable elements;
        // masked-off lanes are not accessed, so they cannot fault.
        unsafe { _mm512_maskz_loadu_ps(mask, tail.as_ptr()) }
    }
}

impl Elem for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(chunk: &[f16; 8]) -> __m256 {
        // SAFETY: `chunk` is 16 readable bytes (f16 is a transparent u16) and
        // loadu needs no alignment.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(chunk: &[f16; 16]) -> __m512 {
        // SAFETY: `chunk` is 32 readable bytes and loadu needs no alignment.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) })
    }

    // A 16-bit masked load needs AVX-512BW, which AVX-512F alone does not
    // imply, so re-read the last whole chunk and keep only its final lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_tail(s: &[f16]) -> __m512 {
        let keep = !0u16 << (16 - s.len() % 16);
        // SAFETY: the caller guarantees AVX-512F.
        match s.last_chunk::<16>() {
            Some(last) => _mm512_maskz_mov_ps(keep, unsafe { Self::load16(last) }),
            None => unsafe { Self::load16(&padded(s)) },
        }
    }
}

mod avx512 {
    use super::*;

    // Two 64-byte loads per cycle against a 4-cycle FMA latency: four
    // independent accumulators keep the FMA units fed.
    const U: usize = 4;

    /// Calls `step(k, a_lanes, b_lanes)` for every 16-lane chunk, where `k < U`
    /// picks the accumulator so that consecutive chunks do not wait on each other.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold<E: Elem>(a: &[E], b: &[E], mut step: impl FnMut(usize, __m512, __m512)) {
        debug_assert_eq!(a.len(), b.len());
        // SAFETY: this function's target features are enabled.
        let load = |chunk: &[E; 16]| unsafe { E::load16(chunk) };
        let (chunks_a, _) = a.as_chunks::<16>();
        let (chunks_b, _) = b.as_chunks::<16>();
        let (groups_a, rest_a) = chunks_a.as_chunks::<U>();
        let (groups_b, rest_b) = chunks_b.as_chunks::<U>();
        for (ga, gb) in groups_a.iter().zip(groups_b) {
            for k in 0..U {
                step(k, load(&ga[k]), load(&gb[k]));
            }
        }
        // At most U - 1 whole chunks remain. Constant indices (this loop
        // unrolls) keep the accumulators in registers.
        for k in 0..U - 1 {
            if let (Some(ca), Some(cb)) = (rest_a.get(k), rest_b.get(k)) {
                step(k, load(ca), load(cb));
            }
        }
        if !a.len().is_multiple_of(16) {
            // SAFETY: this function's target features are enabled.
            let (x, y) = unsafe { (E::load16_tail(a), E::load16_tail(b)) };
            step(U - 1, x, y);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sum([a0, a1, a2, a3]: [__m512; U]) -> f32 {
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn l2_squared<E: Elem>(a: &[E], b: &[E]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); U];
        fold(a, b, |k, x, y| {
            let d = _mm512_sub_ps(x, y);
            acc[k] = _mm512_fmadd_ps(d, d, acc[k]);
        });
        sum(acc)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn dot<E: Elem>(a: &[E], b: &[E]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); U];
        fold(a, b, |k, x, y| acc[k] = _mm512_fmadd_ps(x, y, acc[k]));
        sum(acc)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn l1<E: Elem>(a: &[E], b: &[E]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); U];
        fold(a, b, |k, x, y| {
            acc[k] = _mm512_add_ps(acc[k], _mm512_abs_ps(_mm512_sub_ps(x, y)));
        });
        sum(acc)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn cosine_terms<E: Elem>(a: &[E], b: &[E]) -> (f32, f32, f32) {
        let mut dot = [_mm512_setzero_ps(); U];
        let mut na = [_mm512_setzero_ps(); U];
        let mut nb = [_mm512_setzero_ps(); U];
        fold(a, b, |k, x, y| {
            dot[k] = _mm512_fmadd_ps(x, y, dot[k]);
            na[k] = _mm512_fmadd_ps(x, x, na[k]);
            nb[k] = _mm512_fmadd_ps(y, y, nb[k]);
        });
        (sum(dot), sum(na), sum(nb))
    }
}

mod avx2 {
    use super::*;

    // Two 32-byte loads per cycle against a 4-cycle FMA latency; see avx512.
    const U: usize = 4;

    /// Calls `step(k, a_lanes, b_lanes)` for every 8-lane chunk, where `k < U`
    /// picks the accumulator so that consecutive chunks do not wait on each other.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fold<E: Elem>(a: &[E], b: &[E], mut step: impl FnMut(usize, __m256, __m256)) {
        debug_assert_eq!(a.len(), b.len());
        // SAFETY: this function's target features are enabled.
        let load = |chunk: &[E; 8]| unsafe { E::load8(chunk) };
        // The last `len % 8` elements, from a re-read of the last whole chunk
        // with the lanes already summed zeroed: in bounds and without a copy.
        let tail = |s: &[E]| match s.last_chunk::<8>() {
            Some(last) => {
                let last_dropped = _mm256_set1_epi32((8 - s.len() % 8) as i32 - 1);
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let keep = _mm256_cmpgt_epi32(lane, last_dropped);
                _mm256_and_ps(_mm256_castsi256_ps(keep), load(last))
            }
            None => load(&padded(s)),
        };
        let (chunks_a, _) = a.as_chunks::<8>();
        let (chunks_b, _) = b.as_chunks::<8>();
        let (groups_a, rest_a) = chunks_a.as_chunks::<U>();
        let (groups_b, rest_b) = chunks_b.as_chunks::<U>();
        for (ga, gb) in groups_a.iter().zip(groups_b) {
            for k in 0..U {
                step(k, load(&ga[k]), load(&gb[k]));
            }
        }
        // At most U - 1 whole chunks remain. Constant indices (this loop
        // unrolls) keep the accumulators in registers.
        for k in 0..U - 1 {
            if let (Some(ca), Some(cb)) = (rest_a.get(k), rest_b.get(k)) {
                step(k, load(ca), load(cb));
            }
        }
        if !a.len().is_multiple_of(8) {
            step(U - 1, tail(a), tail(b));
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum([a0, a1, a2, a3]: [__m256; U]) -> f32 {
        let v = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn l2_squared<E: Elem>(a: &[E], b: &[E]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); U];
        fold(a, b, |k, x, y| {
            let d = _mm256_sub_ps(x, y);
            acc[k] = _mm256_fmadd_ps(d, d, acc[k]);
        });
        sum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot<E: Elem>(a: &[E], b: &[E]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); U];
        fold(a, b, |k, x, y| acc[k] = _mm256_fmadd_ps(x, y, acc[k]));
        sum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn l1<E: Elem>(a: &[E], b: &[E]) -> f32 {
        // Clearing the sign bit is |x|; AVX2 has no float abs instruction.
        let sign = _mm256_set1_ps(-0.0);
        let mut acc = [_mm256_setzero_ps(); U];
        fold(a, b, |k, x, y| {
            acc[k] = _mm256_add_ps(acc[k], _mm256_andnot_ps(sign, _mm256_sub_ps(x, y)));
        });
        sum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn cosine_terms<E: Elem>(a: &[E], b: &[E]) -> (f32, f32, f32) {
        let mut dot = [_mm256_setzero_ps(); U];
        let mut na = [_mm256_setzero_ps(); U];
        let mut nb = [_mm256_setzero_ps(); U];
        fold(a, b, |k, x, y| {
            dot[k] = _mm256_fmadd_ps(x, y, dot[k]);
            na[k] = _mm256_fmadd_ps(x, x, na[k]);
            nb[k] = _mm256_fmadd_ps(y, y, nb[k]);
        });
        (sum(dot), sum(na), sum(nb))
    }
}
