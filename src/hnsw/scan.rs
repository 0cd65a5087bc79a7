//! Index scans: `ORDER BY embedding <-> $1 LIMIT n`. The first call searches the graph
//! (greedy descent, then a beam of `hnsw.ef_search` on layer 0) and later calls hand out
//! the heap rows of the elements found, nearest first.

use super::disk::{DiskGraph, Reader};
use super::graph::Searcher;
use super::insert::prepare;
use super::options::EF_SEARCH;
use super::page::read_meta;
use super::tuple::{Tid, TidSet};
use super::IndexKind;
use crate::error::{Error, ErrorKind, OrRaise};
use crate::types::datum::VecArg;
use crate::types::element::Element as VectorElement;
use half::f16;
use pgrx::prelude::*;

/// Per-scan state, owned by the scan's memory context.
struct ScanState {
    kind: IndexKind,
    /// The query's datum, or None for a NULL query (which matches nothing).
    query: Option<pg_sys::Datum>,
    /// Heap rows in result order, filled by the first `amgettuple`.
    results: Option<std::vec::IntoIter<Tid>>,
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(index: pg_sys::Relation, keys: i32, order_bys: i32) -> pg_sys::IndexScanDesc {
    // SAFETY: Postgres passes an open index; the state lives as long as the scan's
    // memory context and is dropped with it.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, keys, order_bys);
        let kind = IndexKind::of(index).or_raise();
        let state = pgrx::PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(ScanState {
            kind,
            query: None,
            results: None,
        });
        (*scan).opaque = state.cast();
        scan
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _key_count: i32,
    order_bys: pg_sys::ScanKey,
    order_by_count: i32,
) {
    // SAFETY: the scan and its state come from ambeginscan.
    unsafe {
        let state = &mut *(*scan).opaque.cast::<ScanState>();
        state.results = None;
        state.query = None;
        if order_by_count > 0 && !order_bys.is_null() {
            std::ptr::copy_nonoverlapping(order_bys, (*scan).orderByData, order_by_count as usize);
            let key = &*order_bys;
            if key.sk_flags & pg_sys::SK_ISNULL as i32 == 0 {
                state.query = Some(key.sk_argument);
            }
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(scan: pg_sys::IndexScanDesc, direction: pg_sys::ScanDirection::Type) -> bool {
    if direction != pg_sys::ScanDirection::ForwardScanDirection {
        Error::new(ErrorKind::InvalidParameterValue, "hnsw index scans only go forward").raise();
    }
    // SAFETY: the scan and its state come from ambeginscan.
    unsafe {
        let state = &mut *(*scan).opaque.cast::<ScanState>();
        if state.results.is_none() {
            let index = (*scan).indexRelation;
            let found = match state.query {
                None => Vec::new(),
                Some(query) if state.kind.half => search::<f16>(index, state.kind, query).or_raise(),
                Some(query) => search::<f32>(index, state.kind, query).or_raise(),
            };
            state.results = Some(found.into_iter());
        }
        match state.results.as_mut().and_then(Iterator::next) {
            Some(tid) => {
                (*scan).xs_heaptid = super::page::item_pointer_from_tid(tid);
                // Results come in exact distance order of the stored vectors.
                (*scan).xs_recheck = false;
                (*scan).xs_recheckorderby = false;
                true
            }
            None => false,
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(_scan: pg_sys::IndexScanDesc) {
    // The state is freed with the scan's memory context.
}

/// Heap rows of the `ef_search` nearest elements, nearest first.
unsafe fn search<E: VectorElement>(index: pg_sys::Relation, kind: IndexKind, query: pg_sys::Datum) -> Result<Vec<Tid>, Error> {
    // SAFETY: the query datum has the indexed type; the index is open.
    unsafe {
        let meta = read_meta(index)?;
        let query = VecArg::<E>::from_datum_unchecked(query);
        let Some(query) = prepare(query.as_slice(), meta.dimensions as usize, kind)? else {
            return Ok(Vec::new());
        };
        if !meta.entry.is_valid() {
            return Ok(Vec::new());
        }
        let ef = EF_SEARCH.get() as usize;
        let mut graph =
            DiskGraph { reader: Reader::new(index, usize::from(meta.m)), query: &query, metric: kind.metric, score_emptied: false };
        let found = Searcher::new(TidSet::default()).search(&mut graph, meta.entry, usize::from(meta.entry_level), ef);
        let mut heap_tids = Vec::with_capacity(found.len());
        for candidate in found {
            graph.reader.with_element(candidate.id, |element, _| heap_tids.extend(element.heap_tids()));
        }
        Ok(heap_tids)
    }
}
