//! HNSW without a server: the graph algorithms over any storage (`graph`: search,
//! neighbour selection, reconnection), the in-memory parallel build (`memory`), the
//! layout of the index's tuples (`tuple`), and what an operator class decides (`kind`).

pub mod graph;
pub mod kind;
pub mod memory;
pub mod tuple;
