//! In-database models: loading ONNX Runtime, tokenizers, embeddings,
//! chunking and text generation. The SQL glue keeps each model's bytes, tokenizer.json and config in a
//! catalog table and passes them here; errors come back as [`crate::error::Error`]s for
//! it to raise.
//!
//! Once per backend, lazily: `runtime::load(path)`. Per model:
//! `ModelConfig::from_json(..)`, then `Embedder::new(runtime, model, tokenizer, &config,
//! threads)`; then `embed` / `embed_batch`, and `chunk(text, n, overlap,
//! embedder.tokenizer())`.

pub mod batch;
pub mod cancel;
pub mod chat;
pub mod chunk;
pub mod clean;
pub mod config;
pub mod draft;
pub mod embed;
pub mod generate;
mod kv;
pub mod onnx_check;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;

// The extension's in-server tests (which enable test_files) use only part of it.
#[cfg(any(test, feature = "test_files"))]
#[cfg_attr(not(test), allow(dead_code))]
pub mod test_files;

pub use chunk::chunk;
pub use chat::{Message, Role};
pub use config::{ChatFormat, EmbeddingConfig, GeneratorConfig, ModelConfig, ModelKind, Pooling};
pub use embed::Embedder;
pub use generate::{AppliedAdapter, Decoding, Finish, Generator, GeneratorText, MadePrompt};
pub use sampling::SamplingParams;
pub use runtime::{Runtime, LIBRARY_SETTING};
pub use tokenizer::Tokenizer;
