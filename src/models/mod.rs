//! The SQL functions that run models: `embed()` and `chunk()` (sql/models.sql), and
//! `generate()` and `generate_stream()` (sql/generate.sql). The model catalog they read
//! is in `catalog`; the models themselves are in `ragtune_core::models`.

pub mod embed;
pub mod generate;
