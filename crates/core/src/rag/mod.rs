//! Retrieval-augmented answers without a server: the prompt (`prompt`) and citation
//! markers (`citations`).

pub mod citations;
pub mod prompt;
