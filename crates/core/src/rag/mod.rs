//! Retrieval-augmented answers without a server: citation markers (`citations`).

pub mod citations;
