//! The files scripts/setup.sh installs (ONNX Runtime, the default models) and the Python
//! reference embeddings, for the models tests. A missing file fails the test that needs
//! it: these tests never skip.

use std::path::PathBuf;

use serde::Deserialize;

use super::config::ModelConfig;
use super::embed::Embedder;
use super::generate::Generator;
use super::runtime::{self, Runtime};

const MINILM: &str = "all-MiniLM-L6-v2-int8";

/// A cancel check that never stops anything.
pub fn never() -> bool {
    false
}

/// RAGTUNE_HOME as scripts/lib.sh sets it.
fn ragtune_home() -> PathBuf {
    std::env::var_os("RAGTUNE_HOME").map_or_else(|| PathBuf::from("/var/lib/ragtune"), PathBuf::from)
}

fn installed(path: PathBuf) -> PathBuf {
    assert!(path.is_file(), "{} is missing: run scripts/setup.sh --no-install", path.display());
    path
}

/// ONNX Runtime's library (pgrx.toml [onnxruntime]).
pub fn onnxruntime_library() -> PathBuf {
    let file = std::path::Path::new(runtime::DEFAULT_LIBRARY_PATH.to_str().unwrap()).file_name().unwrap();
    installed(ragtune_home().join("onnxruntime").join(file))
}

pub fn runtime() -> &'static Runtime {
    runtime::load(&onnxruntime_library()).unwrap()
}

/// The Python environment of the generator converter (scripts/convert_generators.sh),
/// which has the onnx package and onnxruntime.
pub fn python() -> PathBuf {
    installed(ragtune_home().join("venv-gguf/bin/python"))
}

/// The default model's directory, as scripts/setup.sh installs it.
pub fn minilm_dir() -> PathBuf {
    ragtune_home().join("models").join(MINILM)
}

/// A converted generator's directory (scripts/convert_generators.sh).
pub fn generator_dir(model: &str) -> PathBuf {
    ragtune_home().join("models").join(model)
}

/// A file of the default model: model.onnx, tokenizer.json or config.json.
pub fn minilm_path(file: &str) -> PathBuf {
    installed(minilm_dir().join(file))
}

pub fn minilm(file: &str) -> Vec<u8> {
    std::fs::read(minilm_path(file)).unwrap()
}

pub fn minilm_config() -> ModelConfig {
    ModelConfig::from_json(std::str::from_utf8(&minilm("config.json")).unwrap()).unwrap()
}

/// The default model on one thread; each test builds its own (running needs `&mut`).
pub fn minilm_embedder() -> Embedder {
    Embedder::new(runtime(), &minilm("model.onnx"), &minilm("tokenizer.json"), &minilm_config(), 1).unwrap()
}

/// A file of a converted generator (scripts/convert_generators.sh).
pub fn generator_path(model: &str, file: &str) -> PathBuf {
    installed(generator_dir(model).join(file))
}

pub fn generator_file(model: &str, file: &str) -> Vec<u8> {
    std::fs::read(generator_path(model, file)).unwrap()
}

pub fn generator_config(model: &str) -> ModelConfig {
    ModelConfig::from_json(std::str::from_utf8(&generator_file(model, "config.json")).unwrap()).unwrap()
}

pub fn generator(model: &str, threads: usize) -> Generator {
    Generator::new(
        runtime(),
        &generator_file(model, "model.onnx"),
        &generator_file(model, "tokenizer.json"),
        &generator_config(model),
        threads,
    )
    .unwrap()
}

#[derive(Deserialize)]
pub struct Fixture {
    pub sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
pub struct Sentence {
    pub text: String,
    /// Without padding.
    pub input_ids: Vec<i64>,
    pub embedding: Vec<f32>,
}

/// tests/fixtures/minilm_embeddings.json, written by scripts/embedding_fixtures.py.
pub fn fixture() -> Fixture {
    let json = include_str!("../../../../tests/fixtures/minilm_embeddings.json");
    serde_json::from_str(json).unwrap()
}
