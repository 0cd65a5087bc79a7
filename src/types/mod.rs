//! `vector` (float4 elements) and `halfvec` (float16 elements), compatible with pgvector's
//! SQL surface, text format and binary wire format.

pub mod datum;
pub mod element;
pub mod ops;
pub(crate) mod sql;
pub mod text;

// In-server tests run under `cargo pgrx test` (which enables `pg_test`); plain
// `cargo test` runs only the pure tests.
#[cfg(feature = "pg_test")]
mod pg_tests;
