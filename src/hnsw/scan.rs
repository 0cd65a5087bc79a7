//! Index scans: `ORDER BY embedding <-> $1 LIMIT n`. The first call searches the graph
//! (greedy descent, then a beam of `hnsw.ef_search` on layer 0) and later calls hand out
//! the heap rows of the elements found, nearest first. With `hnsw.iterative_scan` on, a
//! scan that runs out (a filter rejected the rows) searches on from where it stopped, in
//! batches of `ef_search`, until `hnsw.max_scan_tuples` elements have been scored.

use super::disk::{DiskGraph, Reader};
use ragtune_core::hnsw::graph::{Candidate, Searcher};
use ragtune_core::hnsw::kind::prepare;
use super::options::{IterativeScan, EF_SEARCH, ITERATIVE_SCAN, MAX_SCAN_TUPLES};
use super::page::read_meta;
use ragtune_core::hnsw::tuple::{Tid, VisitedTids};
use super::index_kind;
use ragtune_core::hnsw::kind::IndexKind;
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::{OrRaise, Raise};
use crate::types::datum::VecArg;
use ragtune_core::types::element::VectorElement;
use half::f16;
use pgrx::prelude::*;
use std::collections::VecDeque;

/// Per-scan state, owned by the scan's memory context.
struct ScanState {
    kind: IndexKind,
    /// The query's datum, or None for a NULL query (which matches nothing).
    query: Option<pg_sys::Datum>,
    /// Set by the first `amgettuple` after a (re)scan.
    search: Option<Search>,
    /// Heap rows found and not yet returned, in result order.
    pending: VecDeque<Tid>,
}

/// A query vector as stored in the index (normalized for cosine).
enum Query {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// The graph search behind a scan, kept between batches.
struct Search {
    /// None when nothing can match (an empty index, a zero vector under cosine).
    query: Option<Query>,
    searcher: Searcher<Tid, VisitedTids>,
    entry: Tid,
    entry_level: usize,
    m: usize,
    /// Settings as they were when the scan started.
    mode: IterativeScan,
    ef: usize,
    max_scan_tuples: usize,
    batches: usize,
    /// Distance of the furthest row handed out (strict order drops nearer ones later).
    returned_distance: f32,
    finished: bool,
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(index: pg_sys::Relation, keys: i32, order_bys: i32) -> pg_sys::IndexScanDesc {
    // SAFETY: Postgres passes an open index; the state lives as long as the scan's
    // memory context and is dropped with it.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, keys, order_bys);
        let kind = index_kind(index).or_raise();
        let state = pgrx::PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(ScanState {
            kind,
            query: None,
            search: None,
            pending: VecDeque::new(),
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
        state.search = None;
        state.pending.clear();
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
        let index = (*scan).indexRelation;
        if state.search.is_none() {
            count_index_scan(index);
            state.search = Some(Search::start(index, state.kind, state.query).or_raise());
        }
        let search = state.search.as_mut().expect("started above");
        loop {
            if let Some(tid) = state.pending.pop_front() {
                (*scan).xs_heaptid = super::page::item_pointer_from_tid(tid);
                // Results come in exact distance order of the stored vectors (relaxed
                // iterative scans excepted, as documented).
                (*scan).xs_recheck = false;
                (*scan).xs_recheckorderby = false;
                return true;
            }
            if search.finished {
                return false;
            }
            pg_sys::check_for_interrupts!();
            search.next_batch(index, state.kind.metric, &mut state.pending);
        }
    }
}

/// Counts a scan in pg_stat_user_indexes.idx_scan, as C's pgstat_count_index_scan() does.
unsafe fn count_index_scan(index: pg_sys::Relation) {
    // SAFETY: an open relation; pgstat_assoc_relation gives it its counters where counting is on.
    unsafe {
        if (*index).pgstat_info.is_null() {
            if !(*index).pgstat_enabled {
                return;
            }
            pg_sys::pgstat_assoc_relation(index);
        }
        if let Some(counters) = (*index).pgstat_info.as_mut() {
            counters.t_counts.t_numscans += 1;
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(_scan: pg_sys::IndexScanDesc) {
    // The state is freed with the scan's memory context.
}

impl Search {
    /// Reads the entry point and prepares the query; runs no search yet.
    unsafe fn start(index: pg_sys::Relation, kind: IndexKind, query: Option<pg_sys::Datum>) -> Result<Search, Error> {
        // SAFETY: the index is open; the query datum has the indexed type.
        let meta = unsafe { read_meta(index)? };
        let query = match query {
            Some(datum) if meta.entry.is_valid() => unsafe {
                if kind.half {
                    prepare_query::<f16>(datum, meta.dimensions, kind)?.map(Query::F16)
                } else {
                    prepare_query::<f32>(datum, meta.dimensions, kind)?.map(Query::F32)
                }
            },
            _ => None,
        };
        let ef = EF_SEARCH.get() as usize;
        Ok(Search {
            finished: query.is_none(),
            query,
            searcher: Searcher::new(VisitedTids::for_beam(ef, usize::from(meta.m))),
            entry: meta.entry,
            entry_level: usize::from(meta.entry_level),
            m: usize::from(meta.m),
            mode: ITERATIVE_SCAN.get(),
            ef,
            max_scan_tuples: MAX_SCAN_TUPLES.get() as usize,
            batches: 0,
            returned_distance: f32::NEG_INFINITY,
        })
    }

    /// Searches for the next batch and queues its heap rows; marks the search finished
    /// when no later batch may follow.
    unsafe fn next_batch(&mut self, index: pg_sys::Relation, metric: ragtune_core::hnsw::graph::Metric, pending: &mut VecDeque<Tid>) {
        // SAFETY: the index stays open for the scan.
        let reader = unsafe { Reader::new(index, self.m) };
        let query = self.query.take();
        let (found, mut reader) = match &query {
            Some(Query::F32(q)) => self.search_graph(DiskGraph { reader, query: q, metric, score_emptied: false }),
            Some(Query::F16(q)) => self.search_graph(DiskGraph { reader, query: q, metric, score_emptied: false }),
            None => (Vec::new(), reader),
        };
        self.query = query;
        self.batches += 1;
        self.finished = found.is_empty()
            || self.mode == IterativeScan::Off
            || self.searcher.scored >= self.max_scan_tuples;
        for candidate in found {
            if self.mode == IterativeScan::StrictOrder && candidate.distance < self.returned_distance {
                continue;
            }
            self.returned_distance = self.returned_distance.max(candidate.distance);
            reader.with_element(candidate.id, |element, _| pending.extend(element.heap_tids()));
        }
    }

    /// Runs this batch's search; hands the reader back for reading the results' heap rows.
    fn search_graph<E: VectorElement>(&mut self, mut graph: DiskGraph<'_, E>) -> (Vec<Candidate<Tid>>, Reader) {
        let found = match (self.batches, self.mode) {
            (0, IterativeScan::Off) => self.searcher.search(&mut graph, self.entry, self.entry_level, self.ef),
            (0, _) => self.searcher.search_iteratively(&mut graph, self.entry, self.entry_level, self.ef),
            _ => self.searcher.resume(&mut graph, self.ef),
        };
        (found, graph.reader)
    }
}

/// The query datum as a vector ready for the index, or None if nothing can match it.
unsafe fn prepare_query<E: VectorElement>(datum: pg_sys::Datum, dimensions: u32, kind: IndexKind) -> Result<Option<Vec<E>>, Error> {
    // SAFETY: caller's contract: the datum has the indexed type.
    let query = unsafe { VecArg::<E>::from_datum_unchecked(datum) };
    prepare(query.as_slice(), dimensions as usize, kind)
}
