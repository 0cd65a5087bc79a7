//! Adapters fine-tuned from table rows: the training math, evaluation, the bookkeeping
//! of epochs (`epochs`: validation split, the epoch kept, stacked examples) and the
//! stored format. The SQL glue turns rows into embeddings or hidden states, calls
//! these with `pgrx::check_for_interrupts!` as the interrupt callback, and stores the
//! adapters' bytes.
//!
//! - [`OutputAdapter`]: a low-rank correction of a generator's output projection, trained
//!   on final hidden states and next tokens ([`output_adapter`] explains the design).
//!   `LmHead::from_le_bytes(lm_head.f16, vocab, hidden)`, `OutputAdapter::new(&head,
//!   rank, alpha, &mut rng)`, `OutputTrainer::new(adapter, &options, rng)`, then
//!   `train_epoch` per epoch and `OutputAdapter::evaluate` on validation positions; at
//!   generation time `adapt_logits(hidden, prompt, pointer, generated, logits)` per
//!   position. `with_copy_head()` adds a [`copy_head`] that learns where an answer starts
//!   quoting the prompt and when to go on quoting; its examples then carry
//!   [`CopyCandidates`] (`TokenExamples::with_copies`), with the prompt's [`PromptKeys`]
//!   (from [`KeyProjection::prompt_keys`] over the prompt's hidden states) at each
//!   answer's first token.
//! - [`QueryAdapter`]: a linear map of query embeddings, trained on (query, relevant
//!   passage) pairs with in-batch negatives. `QueryTrainer::new(QueryAdapter::new(d)?,
//!   &options, temperature, rng)`, `train_epoch`, [`recall_at_k`] before and after; at
//!   search time `apply(query)`.
//!
//! Everything runs on the calling thread, so a run repeats bit for bit for the same seed
//! on the same machine (matrix products may round differently on CPUs with other SIMD
//! instructions). ndarray's `matrixmultiply-threading` stays off: it starts a
//! process-wide thread pool that would live on in the backend.

pub mod copy_head;
pub mod dataset;
pub mod epochs;
pub mod format;
pub mod output_adapter;
pub mod query_adapter;
pub mod train;

pub use copy_head::{CopyCandidates, KeyProjection, PromptKeys};
pub use dataset::{in_validation, row_key, CompletionExample};
pub use format::AdapterKind;
pub use output_adapter::{Evaluation, LmHead, OutputAdapter, OutputTrainer, StepReport, TokenExamples};
pub use query_adapter::{recall_at_k, QueryAdapter, QueryExamples, QueryTrainer, DEFAULT_TEMPERATURE};
pub use train::{EpochReport, TrainingOptions};
