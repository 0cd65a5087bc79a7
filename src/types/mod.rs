//! `vector` (float4 elements) and `halfvec` (float16 elements), compatible with pgvector's
//! SQL surface, text format and binary wire format: the datum layout and the SQL
//! functions. Element maths and the text format are in `ragtune_core::types`.

pub mod datum;
pub(crate) mod sql;

// In-server tests run under `cargo pgrx test` (which enables `pg_test`); plain
// `cargo test` runs only the pure tests.
#[cfg(feature = "pg_test")]
mod pg_tests;
