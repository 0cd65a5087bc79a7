//! INSERT into a built index: find the new element's neighbours with the same search
//! the scans use, write it, then add it to its neighbours' lists, pruning those with the
//! selection heuristic. Every page change is WAL-logged.
//!
//! Concurrency: a heavyweight lock on the metapage's block number serializes changes of
//! the entry point (exclusive) against ordinary inserts (shared). Buffer locks are held
//! one at a time, only while a page is read or changed; a neighbour list is rewritten
//! only if it is still what the new list was computed from.

use super::disk::{as_elements, to_bytes, DiskGraph, Reader, VectorCache};
use ragtune_core::hnsw::graph::{max_neighbors, random_level, select_neighbors, Candidate, Metric, Searcher};
use super::page::{self, item_cost, lock_graph, read_meta, unlock_graph, update_meta, usable_space, Buffer, Change};
use ragtune_core::hnsw::tuple::{chunk_tuple, ElementMut, Meta, Tid, VisitedTids};
use super::{declared_dimensions, index_kind};
use ragtune_core::hnsw::kind::{prepare, IndexKind};
use ragtune_core::error::Error;
use crate::pg::error::OrRaise;
use crate::types::datum::VecArg;
use ragtune_core::types::element::VectorElement;
use half::f16;
use pgrx::prelude::*;

/// Times a neighbour update is recomputed when another backend changed the list first.
const NEIGHBOR_UPDATE_ATTEMPTS: usize = 3;

#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    is_null: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _check_unique: pg_sys::IndexUniqueCheck::Type,
    _index_unchanged: bool,
    _index_info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: Postgres passes one key value and a valid heap TID.
    unsafe {
        if *is_null {
            return false;
        }
        let kind = index_kind(index).or_raise();
        let tid = page::tid_from_item_pointer(&*heap_tid);
        if kind.half {
            insert_datum::<f16>(index, kind, *values, tid)
        } else {
            insert_datum::<f32>(index, kind, *values, tid)
        }
        .or_raise();
    }
    false
}

unsafe fn insert_datum<E: VectorElement>(index: pg_sys::Relation, kind: IndexKind, datum: pg_sys::Datum, tid: Tid) -> Result<(), Error> {
    // SAFETY: the key column holds this vector type; the index is open.
    unsafe {
        let vector = VecArg::<E>::from_datum_unchecked(datum);
        match prepare(vector.as_slice(), declared_dimensions(index)?, kind)? {
            Some(vector) => insert_vector(index, kind, &vector, tid),
            None => Ok(()),
        }
    }
}

/// Inserts one prepared vector for heap row `heap_tid`.
///
/// # Safety
/// `index` must be an open, built index of this access method.
pub unsafe fn insert_vector<E: VectorElement>(index: pg_sys::Relation, kind: IndexKind, vector: &[E], heap_tid: Tid) -> Result<(), Error> {
    // SAFETY: the global PRNG is seeded per backend by Postgres.
    let u = 1.0 - unsafe { pg_sys::pg_prng_double(&raw mut pg_sys::pg_global_prng_state) };
    // SAFETY: caller's contract.
    let meta = unsafe { read_meta(index) }?;
    let level = random_level(u, usize::from(meta.m));
    let mut mode = if !meta.entry.is_valid() || level > usize::from(meta.entry_level) {
        pg_sys::ExclusiveLock
    } else {
        pg_sys::ShareLock
    };
    lock_graph(index, mode);
    // SAFETY: as above.
    let mut meta = unsafe { read_meta(index) }?;
    let needs_exclusive = !meta.entry.is_valid() || level > usize::from(meta.entry_level);
    if needs_exclusive && mode != pg_sys::ExclusiveLock {
        // The entry point moved while we waited; take the lock that may replace it.
        unlock_graph(index, mode);
        mode = pg_sys::ExclusiveLock;
        lock_graph(index, mode);
        // SAFETY: as above.
        meta = unsafe { read_meta(index) }?;
    }
    // SAFETY: we hold the graph lock in `mode`.
    let result = unsafe { insert_locked(index, kind, &meta, vector, heap_tid, level) };
    unlock_graph(index, mode);
    result
}

unsafe fn insert_locked<E: VectorElement>(
    index: pg_sys::Relation,
    kind: IndexKind,
    meta: &Meta,
    vector: &[E],
    heap_tid: Tid,
    level: usize,
) -> Result<(), Error> {
    let m = usize::from(meta.m);
    // SAFETY: caller's contract for every call below.
    unsafe {
        if !meta.entry.is_valid() {
            let tid = write_element(index, meta, vector, heap_tid, level, &[])?;
            return update_meta(index, |meta| {
                meta.entry = tid;
                meta.entry_level = level as u8;
            });
        }
        let mut graph = DiskGraph { reader: Reader::new(index, m), query: vector, metric: kind.metric, score_emptied: false };
        let mut searcher = Searcher::new(VisitedTids::for_beam(usize::from(meta.ef_construction), m));
        let layers = graph.insert_candidates(&mut searcher, meta, level);
        let mut reader = graph.reader;
        // An identical vector already indexed: record this row on its element.
        if let Some(nearest) = layers.first().and_then(|l| l.first()) {
            if nearest.distance == 0.0 && add_heap_tid(index, &mut reader, nearest.id, vector, heap_tid)? {
                return Ok(());
            }
        }
        let mut vectors = VectorCache::<E>::default();
        let neighbors: Vec<Vec<Candidate<Tid>>> = layers
            .iter()
            .enumerate()
            .map(|(layer, candidates)| {
                vectors.load(&mut reader, candidates.iter().map(|c| c.id));
                select_neighbors(candidates, max_neighbors(m, layer), |a, b| {
                    kind.metric.distance(vectors.get(a), vectors.get(b))
                })
            })
            .collect();
        let tid = write_element(index, meta, vector, heap_tid, level, &neighbors)?;
        for (layer, chosen) in neighbors.iter().enumerate() {
            for neighbor in chosen {
                link_back(index, &mut reader, &mut vectors, kind.metric, m, layer, neighbor.id, tid, vector, neighbor.distance)?;
            }
        }
        drop(reader);
        if level > usize::from(meta.entry_level) {
            update_meta(index, |meta| {
                meta.entry = tid;
                meta.entry_level = level as u8;
            })?;
        }
        Ok(())
    }
}

/// Adds `heap_tid` to element `tid` if its vector equals `vector` and a slot is free.
unsafe fn add_heap_tid<E: VectorElement>(
    index: pg_sys::Relation,
    reader: &mut Reader,
    tid: Tid,
    vector: &[E],
    heap_tid: Tid,
) -> Result<bool, Error> {
    if reader.with_element(tid, |_, bytes| as_elements::<E>(bytes).as_ref() != vector) {
        return Ok(false);
    }
    // SAFETY: exclusive lock for the update; the item was an element a moment ago and
    // elements never move.
    unsafe {
        let buffer = Buffer::read(index, tid.block);
        buffer.lock_exclusive();
        let mut change = Change::start(index);
        let page = change.page(&buffer);
        let added = page::item(page, tid.offset)
            .and_then(|bytes| ElementMut::open(bytes, reader.m))
            .is_some_and(|mut element| !element.as_element().is_deleted() && element.add_heap_tid(heap_tid));
        if added {
            change.finish();
        } else {
            change.abort();
        }
        buffer.unlock_release();
        Ok(added)
    }
}

/// Writes a new element (and its vector's chunks if it does not fit inline) on the
/// insert page or a new one, returning where it went.
unsafe fn write_element<E: VectorElement>(
    index: pg_sys::Relation,
    meta: &Meta,
    vector: &[E],
    heap_tid: Tid,
    level: usize,
    neighbors: &[Vec<Candidate<Tid>>],
) -> Result<Tid, Error> {
    let bytes = to_bytes(vector);
    let shape = page::element_shape(usize::from(meta.m), level, bytes.len());
    // SAFETY: caller's contract.
    let first_chunk = if shape.inline { Tid::INVALID } else { unsafe { write_chunks(index, bytes)? } };
    let mut tuple = vec![0u8; shape.size()];
    let mut element = ElementMut::init(&mut tuple, shape);
    element.add_heap_tid(heap_tid);
    for (layer, chosen) in neighbors.iter().enumerate() {
        element.set_neighbors(layer, &chosen.iter().map(|c| c.id).collect::<Vec<_>>());
    }
    if shape.inline {
        element.set_inline_vector(bytes);
    } else {
        element.set_first_chunk(first_chunk);
    }
    // SAFETY: caller's contract.
    unsafe { append_tuple(index, &tuple) }
}

/// Writes a vector too large for one page as a chain of chunks, last chunk first.
unsafe fn write_chunks(index: pg_sys::Relation, bytes: &[u8]) -> Result<Tid, Error> {
    let capacity = page::chunk_capacity(usable_space());
    let mut next = Tid::INVALID;
    for chunk in bytes.chunks(capacity).rev() {
        // SAFETY: caller's contract.
        next = unsafe { append_tuple(index, &chunk_tuple(chunk, next)) }?;
    }
    Ok(next)
}

/// Appends a tuple to the insert page, extending the index when it is full.
unsafe fn append_tuple(index: pg_sys::Relation, tuple: &[u8]) -> Result<Tid, Error> {
    // SAFETY: caller's contract; buffers are locked exclusively while changed.
    unsafe {
        let meta = read_meta(index)?;
        if meta.insert_page != pg_sys::InvalidBlockNumber {
            let buffer = Buffer::read(index, meta.insert_page);
            buffer.lock_exclusive();
            if pg_sys::PageGetFreeSpace(buffer.page()) >= item_cost(tuple.len()) {
                let mut change = Change::start(index);
                let page = change.page(&buffer);
                let offset = page::add_item(page, tuple);
                change.finish();
                let block = buffer.block();
                buffer.unlock_release();
                let offset = offset.ok_or_else(|| page::corrupt("free space accounting"))?;
                return Ok(Tid { block, offset });
            }
            buffer.unlock_release();
        }
        // A new page; vacuum and verification walk all blocks, so no chain to keep.
        let buffer = Buffer::extend(index);
        let mut change = Change::start(index);
        let page = change.new_page(&buffer);
        page::init_page(page);
        let offset = page::add_item(page, tuple).ok_or_else(|| page::corrupt("tuple larger than a page"))?;
        change.finish();
        let block = buffer.block();
        buffer.unlock_release();
        update_meta(index, |meta| meta.insert_page = block)?;
        Ok(Tid { block, offset })
    }
}

/// Adds `new` (at `distance` from `neighbor`) to `neighbor`'s list at `layer`; a full
/// list is re-selected with the heuristic and may leave `new` out.
#[allow(clippy::too_many_arguments)]
unsafe fn link_back<E: VectorElement>(
    index: pg_sys::Relation,
    reader: &mut Reader,
    vectors: &mut VectorCache<E>,
    metric: Metric,
    m: usize,
    layer: usize,
    neighbor: Tid,
    new: Tid,
    new_vector: &[E],
    distance: f32,
) -> Result<(), Error> {
    let capacity = max_neighbors(m, layer);
    for _ in 0..NEIGHBOR_UPDATE_ATTEMPTS {
        let current: Vec<Tid> = reader.with_element(neighbor, |element, _| element.neighbors(layer).collect());
        let updated: Vec<Tid> = if current.len() < capacity {
            current.iter().copied().chain([new]).collect()
        } else {
            vectors.load(reader, current.iter().copied().chain([neighbor]));
            let base = vectors.get(neighbor);
            let mut candidates: Vec<Candidate<Tid>> = current
                .iter()
                .map(|&id| Candidate { distance: metric.distance(base, vectors.get(id)), id })
                .chain([Candidate { distance, id: new }])
                .collect();
            candidates.sort_unstable();
            let chosen = select_neighbors(&candidates, capacity, |a, b| {
                let vector_of = |id: Tid| if id == new { new_vector } else { vectors.get(id) };
                metric.distance(vector_of(a), vector_of(b))
            });
            if !chosen.iter().any(|c| c.id == new) {
                return Ok(());
            }
            chosen.iter().map(|c| c.id).collect()
        };
        // SAFETY: exclusive lock while the list is compared and rewritten.
        let written = unsafe {
            let buffer = Buffer::read(index, neighbor.block);
            buffer.lock_exclusive();
            let mut change = Change::start(index);
            let page = change.page(&buffer);
            let mut written = false;
            if let Some(mut element) = page::item(page, neighbor.offset).and_then(|b| ElementMut::open(b, m)) {
                let unchanged = element.as_element().neighbors(layer).eq(current.iter().copied());
                if unchanged && layer <= element.as_element().level() {
                    element.set_neighbors(layer, &updated);
                    written = true;
                }
            }
            if written {
                change.finish();
            } else {
                change.abort();
            }
            buffer.unlock_release();
            written
        };
        if written {
            return Ok(());
        }
    }
    // Another backend kept changing this list; the edge from `new` still exists, and
    // losing the reverse edge only costs a little recall.
    Ok(())
}
