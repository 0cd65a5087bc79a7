//! Fine-tuning throughput on synthetic data of real models' shapes: one training epoch
//! of the generator (output) adapter at SmolLM2-135M's and Qwen2.5-0.5B's vocabulary and
//! hidden sizes, a validation pass, generation-time corrections, and one epoch of the
//! retrieval (query) adapter at MiniLM's 384 dimensions. Single-threaded, as in a backend.
//!
//! cargo run --release -p ragtune-core --example finetune_epoch

use std::time::Instant;

use half::f16;
use ndarray::Array2;
use ragtune_core::error::Error;
use ragtune_core::finetune::{
    LmHead, OutputAdapter, OutputTrainer, QueryAdapter, QueryExamples, QueryTrainer, TokenExamples, TrainingOptions,
    DEFAULT_TEMPERATURE,
};
use ragtune_core::rng::Rng;

fn no_interrupt() -> Result<(), Error> {
    Ok(())
}

/// Peak resident memory of this process so far, from /proc (Linux).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

fn normal_matrix(rng: &mut Rng, rows: usize, columns: usize, deviation: f64) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, columns), || (rng.normal() * deviation) as f32)
}

fn generator(name: &str, vocab: usize, hidden: usize, positions: usize, batch_size: usize) {
    let mut rng = Rng::new(1);
    let bytes: Vec<u8> = (0..vocab * hidden).flat_map(|_| f16::from_f64(rng.normal() * 0.05).to_le_bytes()).collect();
    let started = Instant::now();
    let head = LmHead::from_le_bytes(&bytes, vocab, hidden).unwrap();
    let load = started.elapsed().as_secs_f64();
    drop(bytes);

    let hidden_rows = normal_matrix(&mut rng, positions, hidden, 1.0);
    let targets: Vec<u32> = (0..positions).map(|_| rng.below(vocab as u64) as u32).collect();
    let examples = TokenExamples::new(hidden_rows.view(), &targets, None).unwrap();
    let adapter = OutputAdapter::new(&head, 8, 16.0, &mut rng).unwrap();
    let options = TrainingOptions { batch_size, ..TrainingOptions::default() };
    let mut trainer = OutputTrainer::new(adapter, &options, rng).unwrap();

    let mut interrupts = 0usize;
    let started = Instant::now();
    let report = trainer
        .train_epoch(&head, &examples, &mut || {
            interrupts += 1;
            Ok(())
        })
        .unwrap();
    let epoch = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let evaluation = trainer.adapter().evaluate(&head, &examples, batch_size, &mut no_interrupt).unwrap();
    let evaluate = started.elapsed().as_secs_f64();

    let mut logits = vec![0f32; vocab];
    let calls = 1000;
    let started = Instant::now();
    for row in hidden_rows.outer_iter().cycle().take(calls) {
        trainer.adapter().add_delta_logits(row.as_slice().unwrap(), &mut logits).unwrap();
    }
    let delta = started.elapsed().as_secs_f64() / calls as f64;

    let gflop = 2.0 * (positions * vocab * hidden) as f64 / 1e9;
    println!(
        "{name} vocab {vocab} hidden {hidden}, rank 8, {positions} positions, batch {batch_size}: \
         epoch {epoch:.2} s ({:.0} positions/s, W h at {:.1} GFLOP/s, {} steps, {interrupts} interrupt checks, \
         loss {:.3}); validation pass {evaluate:.2} s (NLL {:.3}); load lm_head {load:.2} s; \
         add_delta_logits {:.0} us; adapter {:.2} MiB; peak RSS {:.0} MiB",
        positions as f64 / epoch,
        gflop / epoch,
        report.batches,
        report.mean_loss,
        evaluation.mean_nll,
        delta * 1e6,
        trainer.adapter().to_bytes().len() as f64 / (1 << 20) as f64,
        peak_rss_mib()
    );
}

fn retrieval(dimensions: usize, pairs: usize) {
    let mut rng = Rng::new(2);
    let passages = normal_matrix(&mut rng, pairs, dimensions, 1.0);
    let queries = &passages + &normal_matrix(&mut rng, pairs, dimensions, 0.5);
    let positives: Vec<u32> = (0..pairs as u32).collect();
    let examples = QueryExamples::new(queries.view(), passages.view(), &positives).unwrap();
    let options = TrainingOptions { batch_size: 64, ..TrainingOptions::default() };
    let adapter = QueryAdapter::new(dimensions).unwrap();
    let mut trainer = QueryTrainer::new(adapter, &options, DEFAULT_TEMPERATURE, rng).unwrap();
    let started = Instant::now();
    trainer.train_epoch(&examples, &mut no_interrupt).unwrap();
    let epoch = started.elapsed().as_secs_f64();
    let query = queries.row(0).to_vec();
    let calls = 1000;
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(trainer.adapter().apply(&query).unwrap());
    }
    let apply = started.elapsed().as_secs_f64() / calls as f64;
    println!(
        "query adapter {dimensions} dimensions, {pairs} pairs, batch 64: epoch {epoch:.2} s \
         ({:.0} pairs/s); apply {:.0} us",
        pairs as f64 / epoch,
        apply * 1e6
    );
}

fn main() {
    generator("SmolLM2-135M", 49152, 576, 2000, 64);
    generator("SmolLM2-135M", 49152, 576, 2000, 256);
    generator("Qwen2.5-0.5B", 151936, 896, 500, 64);
    retrieval(384, 10_000);
}
