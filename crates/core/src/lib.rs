//! ragtune-core: everything of ragtune that does not need a PostgreSQL server, tested
//! with plain `cargo test -p ragtune-core`.
//!
//! - `kernels`: distance kernels for f32 and f16 (scalar and x86 SIMD).
//! - `types`: vector element maths and pgvector's text format.
//! - `hnsw`: the graph algorithms (search, neighbour selection, the in-memory build,
//!   reconnection) and the on-page tuple layout.
//! - `models`: ONNX Runtime sessions, tokenizers, chat templates, embedding, chunking,
//!   sampling and the decoding loop, and the model-file check.
//! - `finetune`: adapters' maths, formats and training loops.
//! - `rag`: citation markers.
//! - `error`: the one error type, with the SQLSTATE kind it is raised with.
//!
//! The extension crate (the repository root) is the pgrx glue around these.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod finetune;
pub mod hnsw;
pub mod kernels;
pub mod models;
pub mod rag;
pub mod rng;
pub mod service;
pub mod types;
