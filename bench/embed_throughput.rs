//! Embedding throughput of ragtune's Embedder, to set next to bench/embed_throughput.py
//! (Python onnxruntime + tokenizers) on the same texts: the reference sentences of
//! tests/fixtures/minilm_embeddings.json, on one intra-op thread, one text per call and
//! then all texts in one call. Times tokenizing, the model and pooling.
//!
//! cargo run --release --example embed_throughput -- LIBONNXRUNTIME MODEL_DIR
//! (bench/embed.sh passes the files scripts/setup.sh installs and runs both.)

use std::path::Path;
use std::time::{Duration, Instant};

use ragtune::models::{runtime, Embedder, ModelConfig};

const MIN_TIME: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, library, model_dir] = &args[..] else { panic!("usage: embed_throughput LIBONNXRUNTIME MODEL_DIR") };
    let model_dir = Path::new(model_dir);
    let read = |file: &str| std::fs::read(model_dir.join(file)).unwrap();
    let config = ModelConfig::from_json(std::str::from_utf8(&read("config.json")).unwrap()).unwrap();
    let runtime = runtime::load(Path::new(library)).unwrap();
    let mut embedder = Embedder::new(runtime, &read("model.onnx"), &read("tokenizer.json"), &config, 1).unwrap();

    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/minilm_embeddings.json")).unwrap();
    let texts: Vec<&str> = fixture["sentences"].as_array().unwrap().iter().map(|s| s["text"].as_str().unwrap()).collect();

    for batch in [1, texts.len()] {
        let mut pass = || {
            for group in texts.chunks(batch) {
                std::hint::black_box(embedder.embed_batch(group).unwrap());
            }
        };
        pass(); // warm up
        let (start, mut passes) = (Instant::now(), 0);
        while passes < 2 || start.elapsed() < MIN_TIME {
            pass();
            passes += 1;
        }
        let rate = (passes * texts.len()) as f64 / start.elapsed().as_secs_f64();
        println!("rust    batch {batch:>2}: {rate:7.1} texts/s ({} texts, 1 thread)", texts.len());
    }
}
