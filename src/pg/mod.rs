//! What every piece of glue shares with Postgres: raising errors (ours and SPI's), interrupt flags
//! that other threads may read, and read-only queries.

pub mod error;
pub mod interrupts;
pub mod spi;
