//! What every piece of glue shares with Postgres: raising errors (ours and SPI's), and interrupt flags
//! that other threads may read.

pub mod error;
pub mod interrupts;
