//! Retrieval-augmented answers without a server: the prompt (`prompt`), citation
//! markers (`citations`) and the fusion of hybrid retrieval (`hybrid`).

pub mod citations;
pub mod hybrid;
pub mod prompt;
