//! Distance-kernel throughput: the dispatched SIMD path against the portable
//! scalar kernels, in GB/s of vector data read (2 vectors * dim * element size
//! per call).
//!
//! cargo run --release -p ragtune-core --example kernel_throughput

use ragtune_core::kernels as k;
use ragtune_core::rng::Rng;

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::f16;

const DIMS: [usize; 4] = [50, 384, 768, 1536];
// Bytes of f32 vector data per dim (the f16 copies take half): past L1 (tens
// of KiB) but well inside a per-core L2 (1-2 MiB), so DRAM is not measured.
const WORKING_SET: usize = 512 << 10;
const CELL_TIME: Duration = Duration::from_millis(200);
const SLICES: u32 = 5;

type Kernel<T> = fn(&[T], &[T]) -> f32;

/// Seeded, for reproducible inputs.
fn random_values(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).vector(n, 1.0)
}

/// GB/s that `kernel` sustains over `pairs`: the best of several time slices,
/// so that a slice disturbed by another process does not decide the figure.
fn throughput<T>(kernel: Kernel<T>, pairs: &[(Vec<T>, Vec<T>)]) -> f64 {
    let pass = || {
        let mut acc = 0.0f32;
        for (a, b) in pairs {
            acc += kernel(black_box(a), black_box(b));
        }
        black_box(acc);
    };
    pass(); // warm caches and the dispatch table
    let bytes_per_pass = pairs.len() as f64 * 2.0 * std::mem::size_of_val(&*pairs[0].0) as f64;
    let mut best = 0.0f64;
    for _ in 0..SLICES {
        let start = Instant::now();
        let mut passes = 0u32;
        while start.elapsed() < CELL_TIME / SLICES {
            pass();
            passes += 1;
        }
        best = best.max(f64::from(passes) * bytes_per_pass / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    println!("active ISA: {}", k::active_isa());
    println!(
        "{:>5}  {:<12}  {:<4}  {:>10}  {:>11}  {:>7}",
        "dim", "metric", "type", "simd GB/s", "scalar GB/s", "speedup"
    );
    let f32_metrics: [(&str, Kernel<f32>, Kernel<f32>); 4] = [
        ("l2_squared", k::l2_squared, k::scalar::l2_squared),
        ("dot", k::dot, k::scalar::dot),
        (
            "cosine_terms",
            |a, b| sum3(k::cosine_terms(a, b)),
            |a, b| sum3(k::scalar::cosine_terms(a, b)),
        ),
        ("l1", k::l1, k::scalar::l1),
    ];
    let f16_metrics: [(&str, Kernel<f16>, Kernel<f16>); 4] = [
        ("l2_squared", k::l2_squared_f16, k::scalar::l2_squared_f16),
        ("dot", k::dot_f16, k::scalar::dot_f16),
        (
            "cosine_terms",
            |a, b| sum3(k::cosine_terms_f16(a, b)),
            |a, b| sum3(k::scalar::cosine_terms_f16(a, b)),
        ),
        ("l1", k::l1_f16, k::scalar::l1_f16),
    ];
    for dim in DIMS {
        let count = (WORKING_SET / (2 * dim * 4)).max(4);
        let f32_pairs: Vec<(Vec<f32>, Vec<f32>)> = (0..count as u64)
            .map(|i| (random_values(2 * i, dim), random_values(2 * i + 1, dim)))
            .collect();
        // Same vectors as f16 (half the bytes, so the same count stays in cache).
        let f16_pairs: Vec<(Vec<f16>, Vec<f16>)> = f32_pairs
            .iter()
            .map(|(a, b)| (to_f16(a), to_f16(b)))
            .collect();
        for (i, ((name, simd32, scalar32), (_, simd16, scalar16))) in
            f32_metrics.iter().zip(&f16_metrics).enumerate()
        {
            let rows = [
                (
                    "f32",
                    throughput(*simd32, &f32_pairs),
                    throughput(*scalar32, &f32_pairs),
                ),
                (
                    "f16",
                    throughput(*simd16, &f16_pairs),
                    throughput(*scalar16, &f16_pairs),
                ),
            ];
            for (ty, simd, scalar) in rows {
                let dim_label = if i == 0 && ty == "f32" {
                    dim.to_string()
                } else {
                    String::new()
                };
                println!(
                    "{dim_label:>5}  {name:<12}  {ty:<4}  {simd:>10.1}  {scalar:>11.1}  {:>6.1}x",
                    simd / scalar
                );
            }
        }
    }
}

fn sum3((x, y, z): (f32, f32, f32)) -> f32 {
    x + y + z
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}
