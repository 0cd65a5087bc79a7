//! The SQL functions of sql/adapters.sql: training adapters (`train`: finetune_adapter(),
//! evaluate_adapter()) with a progress view (`progress`). Looking adapters up is in
//! `catalog::adapters`; the math is in `ragtune_core::finetune`.

pub mod progress;
pub(crate) mod train;
