//! Retrieval-augmented answers without a server: the prompt (`prompt`), citation
//! markers (`citations`), scoring answers against references (`evaluate`), the answer statistics'
//! latency histogram (`answer_stats`) and the fusion of hybrid retrieval (`hybrid`).

pub mod answer_stats;
pub mod citations;
pub mod evaluate;
pub mod hybrid;
pub mod prompt;
