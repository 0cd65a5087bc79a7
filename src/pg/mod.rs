//! What every piece of glue shares with Postgres: raising errors, and interrupt flags
//! that other threads may read.

pub mod error;
pub mod interrupts;
