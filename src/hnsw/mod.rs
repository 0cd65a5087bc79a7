//! The `hnsw` index access method: approximate nearest-neighbour search over `vector`
//! and `halfvec` columns, pgvector-compatible in SQL (`USING hnsw (embedding
//! vector_cosine_ops) WITH (m = 16, ef_construction = 64)`, `SET hnsw.ef_search`).
//!
//! Split by callback family as pgvector does: `build` (CREATE INDEX), `insert`, `scan`,
//! `vacuum`, with `page` (buffers, WAL) and `disk` (the stored graph) underneath. The
//! graph algorithms themselves and the tuple layout are in ragtune-core
//! (`ragtune_core::hnsw`), tested without a server.

mod build;
mod cost;
mod disk;
mod insert;
pub(crate) mod options;
mod page;
mod scan;
mod vacuum;
mod verify;

#[cfg(feature = "pg_test")]
mod pg_tests;

use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::hnsw::graph::Metric;
use ragtune_core::hnsw::kind::IndexKind;
use pgrx::prelude::*;

pub use options::init;

/// How an index compares vectors, read from its operator class's first support function.
///
/// # Safety
/// `index` must be an open index relation of this access method.
pub unsafe fn index_kind(index: pg_sys::Relation) -> Result<IndexKind, Error> {
    use crate::types::sql as f;
    // SAFETY: every hnsw operator class declares support function 1.
    let address = unsafe { (*pg_sys::index_getprocinfo(index, 1, 1)).fn_addr }.map(|p| p as usize);
    let known: [(usize, bool, Metric, bool); 8] = [
        (f::vector_l2_squared_distance_wrapper as *const () as usize, false, Metric::L2, false),
        (f::vector_negative_inner_product_wrapper as *const () as usize, false, Metric::InnerProduct, false),
        (f::vector_cosine_distance_wrapper as *const () as usize, false, Metric::InnerProduct, true),
        (f::vector_l1_distance_wrapper as *const () as usize, false, Metric::L1, false),
        (f::halfvec_l2_squared_distance_wrapper as *const () as usize, true, Metric::L2, false),
        (f::halfvec_negative_inner_product_wrapper as *const () as usize, true, Metric::InnerProduct, false),
        (f::halfvec_cosine_distance_wrapper as *const () as usize, true, Metric::InnerProduct, true),
        (f::halfvec_l1_distance_wrapper as *const () as usize, true, Metric::L1, false),
    ];
    known
        .iter()
        .find(|(f, ..)| Some(*f) == address)
        .map(|&(_, half, metric, normalize)| IndexKind { half, metric, normalize })
        .ok_or_else(|| {
            Error::new(ErrorKind::InvalidParameterValue, "unsupported operator class for hnsw")
                .with_hint("Use one of the *_l2_ops, *_ip_ops, *_cosine_ops or *_l1_ops classes of vector or halfvec.")
        })
}

/// Number of dimensions declared for the indexed column (`vector(n)`).
///
/// # Safety
/// `index` must be an open index relation.
unsafe fn declared_dimensions(index: pg_sys::Relation) -> Result<usize, Error> {
    // SAFETY: an hnsw index has exactly one key column.
    let typmod = unsafe { (*(*(*index).rd_att).attrs.as_ptr()).atttypmod };
    if typmod < 1 {
        return Err(Error::new(ErrorKind::InvalidParameterValue, "column does not have dimensions")
            .with_hint("Declare the column with a size, for example vector(384)."));
    }
    Ok(typmod as usize)
}

#[pg_extern(sql = false)]
fn hnsw_handler(_fcinfo: pg_sys::FunctionCallInfo) -> PgBox<pg_sys::IndexAmRoutine> {
    // SAFETY: a freshly allocated node, filled in as Postgres expects.
    let mut routine = unsafe { PgBox::<pg_sys::IndexAmRoutine>::alloc_node(pg_sys::NodeTag::T_IndexAmRoutine) };
    routine.amstrategies = 0;
    routine.amsupport = 1;
    routine.amoptsprocnum = 0;
    routine.amcanorder = false;
    routine.amcanorderbyop = true;
    routine.amcanbackward = false;
    routine.amcanunique = false;
    routine.amcanmulticol = false;
    routine.amoptionalkey = true;
    routine.amsearcharray = false;
    routine.amsearchnulls = false;
    routine.amstorage = false;
    routine.amclusterable = false;
    routine.ampredlocks = false;
    routine.amcanparallel = false;
    routine.amcaninclude = false;
    routine.amusemaintenanceworkmem = true;
    routine.amparallelvacuumoptions = pg_sys::VACUUM_OPTION_PARALLEL_BULKDEL as u8;
    routine.amkeytype = pg_sys::InvalidOid;

    routine.ambuild = Some(build::ambuild);
    routine.ambuildempty = Some(build::ambuildempty);
    routine.aminsert = Some(insert::aminsert);
    routine.ambulkdelete = Some(vacuum::ambulkdelete);
    routine.amvacuumcleanup = Some(vacuum::amvacuumcleanup);
    routine.amcostestimate = Some(cost::amcostestimate);
    routine.amoptions = Some(options::amoptions);
    routine.amvalidate = Some(options::amvalidate);
    routine.ambuildphasename = Some(build::ambuildphasename);
    routine.ambeginscan = Some(scan::ambeginscan);
    routine.amrescan = Some(scan::amrescan);
    routine.amgettuple = Some(scan::amgettuple);
    routine.amendscan = Some(scan::amendscan);
    routine.into_pg_boxed()
}

/// An open relation's name, for messages.
pub(crate) fn relation_name(relation: pg_sys::Relation) -> String {
    // SAFETY: an open relation has a valid name.
    unsafe { std::ffi::CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr()) }.to_string_lossy().into_owned()
}
