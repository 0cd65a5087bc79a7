//! `vector` (float4 elements) and `halfvec` (float16 elements) without a server: element
//! maths (`element`, `ops`) and pgvector's text format (`text`).

pub mod element;
pub mod ops;
pub mod text;
