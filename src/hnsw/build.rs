//! CREATE INDEX: read the table, link the graph in memory on several threads (Rust
//! threads that only compute on vectors copied out of Postgres), then write the pages in
//! one pass and WAL-log them as full pages. The graph grows with the rows read (never
//! from the planner's estimate), counted by the bytes it uses; if it outgrows
//! maintenance_work_mem, or memory cannot be had, what is built so far is written and the
//! rest of the table goes through the ordinary insert path.

use ragtune_core::hnsw::graph::random_level;
use super::insert;
use ragtune_core::hnsw::memory::{MemoryGraph, Stopped};
use super::options::index_options;
use super::page::{self, item_cost, usable_space, Buffer, META_BLOCK};
use ragtune_core::hnsw::tuple::{chunk_tuple, ElementMut, ElementShape, Meta, Tid, CHUNK_HEADER, HEAP_TIDS};
use super::{declared_dimensions, index_kind, relation_name};
use ragtune_core::hnsw::kind::{prepare, IndexKind};
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::interrupts::interrupt_pending;
use crate::pg::error::OrRaise;
use ragtune_core::rng::Rng;
use crate::types::datum::VecArg;
use ragtune_core::types::element::VectorElement;
use half::f16;
use pgrx::prelude::*;
use std::collections::{HashMap, TryReserveError};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::mem::size_of;

const PHASE_LOAD: i64 = 1;
const PHASE_LINK: i64 = 2;
const PHASE_WRITE: i64 = 3;

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildphasename(phase: i64) -> *mut std::ffi::c_char {
    let name: &'static std::ffi::CStr = match phase {
        PHASE_LOAD => c"loading tuples",
        PHASE_LINK => c"building graph",
        PHASE_WRITE => c"writing pages",
        _ => return std::ptr::null_mut(),
    };
    name.as_ptr().cast_mut()
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: Postgres passes open relations and a valid IndexInfo.
    let (heap_tuples, index_tuples) = unsafe {
        let kind = index_kind(index).or_raise();
        if kind.half {
            build::<f16>(heap, index, index_info, kind)
        } else {
            build::<f32>(heap, index, index_info, kind)
        }
    }
    .or_raise();
    // SAFETY: palloc0 of the result struct Postgres expects.
    unsafe {
        let result = pg_sys::palloc0(std::mem::size_of::<pg_sys::IndexBuildResult>()).cast::<pg_sys::IndexBuildResult>();
        (*result).heap_tuples = heap_tuples;
        (*result).index_tuples = index_tuples;
        result
    }
}

/// An unlogged index's init fork: just an empty metapage.
#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    // SAFETY: Postgres passes an open index whose init fork is empty.
    unsafe {
        let (m, ef_construction) = index_options(index).or_raise();
        let meta = empty_meta(declared_dimensions(index).or_raise(), m, ef_construction);
        let buffer = pg_sys::ReadBufferExtended(
            index,
            pg_sys::ForkNumber::INIT_FORKNUM,
            pg_sys::InvalidBlockNumber,
            pg_sys::ReadBufferMode::RBM_NORMAL,
            std::ptr::null_mut(),
        );
        let buffer = Buffer(buffer);
        buffer.lock_exclusive();
        page::init_page(buffer.page());
        page::write_meta_page(buffer.page(), &meta);
        pg_sys::MarkBufferDirty(buffer.0);
        pg_sys::log_newpage_buffer(buffer.0, true);
        buffer.unlock_release();
    }
}

fn empty_meta(dimensions: usize, m: usize, ef_construction: usize) -> Meta {
    Meta {
        dimensions: dimensions as u32,
        m: m as u16,
        ef_construction: ef_construction as u16,
        entry: Tid::INVALID,
        entry_level: 0,
        insert_page: pg_sys::InvalidBlockNumber,
    }
}

/// Everything the table scan callback needs.
struct BuildState<E: VectorElement> {
    index: pg_sys::Relation,
    kind: IndexKind,
    dimensions: usize,
    m: usize,
    graph: MemoryGraph<E>,
    /// The first heap row of each graph node.
    heap_tids: Vec<Tid>,
    /// The other heap rows of nodes that hold several (identical vectors).
    more_heap_tids: HashMap<u32, Vec<Tid>>,
    /// The latest node by a hash of its vector, to fold identical vectors into one element.
    by_content: HashMap<u64, u32>,
    rng: Rng,
    memory_limit: usize,
    /// Bytes used besides the graph's own (heap rows, the content map).
    bookkeeping: usize,
    /// Set once the in-memory graph was written; later rows are inserted on disk.
    flushed: bool,
    indexed: f64,
}

unsafe fn build<E: VectorElement>(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
    kind: IndexKind,
) -> Result<(f64, f64), Error> {
    // SAFETY: open relations from ambuild.
    unsafe {
        if pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM) != 0 {
            return Err(Error::new(ErrorKind::DataException, format!("index \"{}\" already contains data", relation_name(index))));
        }
        let (m, ef_construction) = index_options(index)?;
        let dimensions = declared_dimensions(index)?;
        let mut state = BuildState::<E> {
            index,
            kind,
            dimensions,
            m,
            graph: MemoryGraph::new(dimensions, m, ef_construction, kind.metric),
            heap_tids: Vec::new(),
            more_heap_tids: HashMap::new(),
            by_content: HashMap::new(),
            rng: Rng::new(0x5EED_4853_4E57),
            memory_limit: pg_sys::maintenance_work_mem as usize * 1024,
            bookkeeping: 0,
            flushed: false,
            indexed: 0.0,
        };
        pg_sys::pgstat_progress_update_param(pg_sys::PROGRESS_CREATEIDX_SUBPHASE as i32, PHASE_LOAD);
        let heap_tuples = pg_sys::table_index_build_scan(
            heap,
            index,
            index_info,
            true,
            true,
            Some(build_callback::<E>),
            (&raw mut state).cast(),
            std::ptr::null_mut(),
        );
        if !state.flushed {
            flush(&mut state)?;
        }
        Ok((heap_tuples, state.indexed))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn build_callback<E: VectorElement>(
    _index: pg_sys::Relation,
    heap_tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    is_null: *mut bool,
    _tuple_is_alive: bool,
    state: *mut std::ffi::c_void,
) {
    // SAFETY: `state` is the BuildState passed to table_index_build_scan.
    let state = unsafe { &mut *state.cast::<BuildState<E>>() };
    // SAFETY: one key column; values and nulls arrays hold one entry each.
    let (datum, null) = unsafe { (*values, *is_null) };
    if null {
        return;
    }
    // SAFETY: the key column holds this vector type.
    let vector = unsafe { VecArg::<E>::from_datum_unchecked(datum) };
    let Some(vector) = prepare(vector.as_slice(), state.dimensions, state.kind).or_raise() else {
        return;
    };
    // SAFETY: a valid heap TID.
    let tid = page::tid_from_item_pointer(unsafe { &*heap_tid });
    state.indexed += 1.0;
    if state.flushed {
        // SAFETY: the index is open and built up to here.
        unsafe { insert::insert_vector(state.index, state.kind, &vector, tid) }.or_raise();
        return;
    }
    match add_to_graph(state, &vector, tid) {
        Ok(()) if state.graph.memory_usage() + state.bookkeeping > state.memory_limit => {
            notice(
                format!("hnsw graph no longer fits into maintenance_work_mem after {} tuples", state.graph.len()),
                Some("Increase maintenance_work_mem to speed up builds."),
            );
            flush(state).or_raise();
        }
        Ok(()) => {}
        Err(_) => {
            notice(format!("could not allocate memory for the hnsw graph after {} tuples", state.graph.len()), None);
            flush(state).or_raise();
            // SAFETY: the index is open and built up to here.
            unsafe { insert::insert_vector(state.index, state.kind, &vector, tid) }.or_raise();
        }
    }
}

/// The NOTICE of a build that leaves the in-memory graph for the insert path.
fn notice(message: String, hint: Option<&str>) {
    let mut report = pgrx::pg_sys::panic::ErrorReport::new(pgrx::PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message, "ragtune")
        .set_detail("Building will take significantly more time.");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(pgrx::PgLogLevel::NOTICE);
}

fn content_hash<E: VectorElement>(vector: &[E]) -> u64 {
    let mut hasher = DefaultHasher::new();
    super::disk::to_bytes(vector).hash(&mut hasher);
    hasher.finish()
}

/// Bytes a content-map entry takes (its slot and control byte).
const CONTENT_ENTRY_BYTES: usize = size_of::<(u64, u32)>() + 1;

/// Adds the row to the graph; on an error (memory) the row was not added.
fn add_to_graph<E: VectorElement>(state: &mut BuildState<E>, vector: &[E], tid: Tid) -> Result<(), TryReserveError> {
    let hash = content_hash(vector);
    if let Some(&node) = state.by_content.get(&hash) {
        if state.graph.vector(node) == vector {
            let more = state.more_heap_tids.get(&node).map_or(0, Vec::len);
            if 1 + more < HEAP_TIDS {
                if more == 0 {
                    state.more_heap_tids.try_reserve(1)?;
                    let mut tids = Vec::new();
                    tids.try_reserve_exact(HEAP_TIDS - 1)?;
                    state.more_heap_tids.insert(node, tids);
                    state.bookkeeping += size_of::<(u32, Vec<Tid>)>() + 1 + (HEAP_TIDS - 1) * size_of::<Tid>();
                }
                state.more_heap_tids.get_mut(&node).expect("just made").push(tid);
                return Ok(());
            }
        }
    }
    if state.graph.spare_capacity() == 0 {
        reserve(state)?;
    }
    state.by_content.try_reserve(1)?;
    state.heap_tids.try_reserve(1)?;
    // u in (0, 1]: the top 53 bits of a random word, never exactly 0.
    let u = 1.0 - (state.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let node = state.graph.push(vector, random_level(u, state.m))?;
    state.heap_tids.push(tid);
    // A full node or (rarely) another vector with the same hash: later rows fold into this one.
    if state.by_content.insert(hash, node).is_none() {
        state.bookkeeping += CONTENT_ENTRY_BYTES;
    }
    state.bookkeeping += size_of::<Tid>();
    Ok(())
}

/// Room for more nodes: doubling, but no further than maintenance_work_mem allows, so
/// what is held stays close to what is used.
fn reserve<E: VectorElement>(state: &mut BuildState<E>) -> Result<(), TryReserveError> {
    let per_node = MemoryGraph::<E>::estimated_bytes_per_node(state.dimensions, state.m) + size_of::<Tid>() + CONTENT_ENTRY_BYTES;
    let used = state.graph.memory_usage() + state.bookkeeping;
    let room = state.memory_limit.saturating_sub(used) / per_node + 1;
    let nodes = state.graph.len().max(1024).min(room);
    state.graph.try_reserve(nodes)?;
    state.heap_tids.try_reserve_exact(nodes)?;
    state.by_content.try_reserve(nodes)
}

/// Links the in-memory graph and writes it out.
fn flush<E: VectorElement>(state: &mut BuildState<E>) -> Result<(), Error> {
    let threads = build_threads();
    let total = state.graph.len() as i64;
    // SAFETY: progress reporting from the backend's own thread.
    unsafe {
        pg_sys::pgstat_progress_update_param(pg_sys::PROGRESS_CREATEIDX_SUBPHASE as i32, PHASE_LINK);
        pg_sys::pgstat_progress_update_param(pg_sys::PROGRESS_CREATEIDX_TUPLES_TOTAL as i32, total);
    }
    // An interrupt stops the workers so that Postgres can act on it here, on the
    // backend's thread; not every interrupt is an error (some are only processed), and
    // then linking resumes where it stopped.
    loop {
        let linked = state.graph.link_all(
            threads,
            &mut |done| {
                // SAFETY: called on the backend's thread by link_all's coordinator.
                unsafe { pg_sys::pgstat_progress_update_param(pg_sys::PROGRESS_CREATEIDX_TUPLES_DONE as i32, done as i64) }
            },
            &mut interrupt_pending,
        );
        match linked {
            Ok(()) => break,
            Err(Stopped::Cancelled) => {
                pg_sys::check_for_interrupts!();
            }
            Err(Stopped::OutOfResources) => {
                return Err(Error::new(ErrorKind::ProgramLimitExceeded, "could not start the threads that build the hnsw graph")
                    .with_detail(format!("Out of memory or threads linking {total} elements.")))
            }
        }
    }
    loop {
        match state.graph.reconnect_unreachable(&mut interrupt_pending) {
            Ok(0) => break,
            Ok(left) => {
                pgrx::warning!("hnsw build left {left} of {total} elements of \"{}\" unreachable", relation_name(state.index));
                break;
            }
            Err(Stopped::Cancelled) => {
                pg_sys::check_for_interrupts!();
            }
            Err(Stopped::OutOfResources) => {
                return Err(Error::new(ErrorKind::ProgramLimitExceeded, "out of memory checking that the hnsw graph reaches every element"))
            }
        }
    }
    // SAFETY: as above.
    unsafe { pg_sys::pgstat_progress_update_param(pg_sys::PROGRESS_CREATEIDX_SUBPHASE as i32, PHASE_WRITE) };
    // SAFETY: the index is open and still empty.
    unsafe { write_graph(state) }?;
    state.flushed = true;
    state.graph = MemoryGraph::new(state.dimensions, state.m, 2 * state.m, state.kind.metric);
    state.heap_tids = Vec::new();
    state.more_heap_tids = HashMap::new();
    state.by_content = HashMap::new();
    state.bookkeeping = 0;
    Ok(())
}

/// Threads that link the graph: this backend plus as many as parallel maintenance may use.
fn build_threads() -> usize {
    // SAFETY: reading a GUC variable on the backend's thread.
    let allowed = unsafe { pg_sys::max_parallel_maintenance_workers }.max(0) as usize + 1;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    allowed.min(cores)
}

/// Where each tuple goes: pages are filled in the graph's locality order, and a node's
/// neighbours' positions are known before any page is written.
enum Item {
    VectorElement(u32),
    /// Bytes `range` of `node`'s vector, linked to the chunk that follows.
    Chunk { node: u32, range: std::ops::Range<usize>, next: Tid },
}

struct Layout {
    pages: Vec<Vec<Item>>,
    positions: Vec<Tid>,
    first_chunks: Vec<Tid>,
}

const FIRST_DATA_BLOCK: u32 = META_BLOCK + 1;

impl Layout {
    /// Appends a tuple of `size` bytes, starting a new page when it does not fit.
    fn place(&mut self, used: &mut usize, size: usize, item: Item) -> Tid {
        if *used + item_cost(size) > usable_space() {
            self.pages.push(Vec::new());
            *used = 0;
        }
        *used += item_cost(size);
        let block = FIRST_DATA_BLOCK + self.pages.len() as u32 - 1;
        let page = self.pages.last_mut().expect("at least one page");
        page.push(item);
        Tid { block, offset: page.len() as u16 }
    }

    fn item_mut(&mut self, tid: Tid) -> &mut Item {
        &mut self.pages[(tid.block - FIRST_DATA_BLOCK) as usize][tid.offset as usize - 1]
    }
}

fn shape_of<E: VectorElement>(state: &BuildState<E>, node: u32) -> ElementShape {
    page::element_shape(state.m, state.graph.level(node), state.dimensions * E::SIZE)
}

fn plan_layout<E: VectorElement>(state: &BuildState<E>) -> Layout {
    let nodes = state.graph.len();
    let mut layout = Layout { pages: vec![Vec::new()], positions: vec![Tid::INVALID; nodes], first_chunks: vec![Tid::INVALID; nodes] };
    let mut used = 0usize;
    for node in state.graph.locality_order() {
        let shape = shape_of(state, node);
        layout.positions[node as usize] = layout.place(&mut used, shape.size(), Item::VectorElement(node));
        if shape.inline {
            continue;
        }
        // The vector fills the rest of this page, then whole pages after it.
        let mut previous: Option<Tid> = None;
        let mut start = 0;
        while start < shape.vector_bytes {
            let mut capacity = page::chunk_capacity(usable_space() - used);
            if capacity < 64 {
                layout.pages.push(Vec::new());
                used = 0;
                capacity = page::chunk_capacity(usable_space());
            }
            let end = (start + capacity).min(shape.vector_bytes);
            let tid = layout.place(&mut used, CHUNK_HEADER + end - start, Item::Chunk { node, range: start..end, next: Tid::INVALID });
            match previous {
                Some(previous) => {
                    if let Item::Chunk { next, .. } = layout.item_mut(previous) {
                        *next = tid;
                    }
                }
                None => layout.first_chunks[node as usize] = tid,
            }
            previous = Some(tid);
            start = end;
        }
    }
    layout
}

/// Writes the graph's pages and the metapage, then WAL-logs them all as full pages.
unsafe fn write_graph<E: VectorElement>(state: &BuildState<E>) -> Result<(), Error> {
    let index = state.index;
    // SAFETY: the index is open, empty, and locked against others by CREATE INDEX.
    unsafe {
        let (_, ef_construction) = index_options(index)?;
        let layout = plan_layout(state);
        let mut meta = empty_meta(state.dimensions, state.m, ef_construction);
        if let Some((node, level)) = state.graph.entry_point() {
            meta.entry = layout.positions[node as usize];
            meta.entry_level = level as u8;
            meta.insert_page = FIRST_DATA_BLOCK + layout.pages.len() as u32 - 1;
        }
        let buffer = Buffer::extend(index);
        page::init_page(buffer.page());
        page::write_meta_page(buffer.page(), &meta);
        pg_sys::MarkBufferDirty(buffer.0);
        buffer.unlock_release();
        if meta.entry.is_valid() {
            let mut scratch = Vec::new();
            for items in &layout.pages {
                pg_sys::check_for_interrupts!();
                let buffer = Buffer::extend(index);
                let page = buffer.page();
                page::init_page(page);
                for item in items {
                    tuple_bytes(state, &layout, item, &mut scratch);
                    if page::add_item(page, &scratch).is_none() {
                        buffer.unlock_release();
                        return Err(page::corrupt("build layout does not fit its page"));
                    }
                }
                pg_sys::MarkBufferDirty(buffer.0);
                buffer.unlock_release();
            }
        }
        if (*(*index).rd_rel).relpersistence == pg_sys::RELPERSISTENCE_PERMANENT as std::ffi::c_char {
            let blocks = pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
            pg_sys::log_newpage_range(index, pg_sys::ForkNumber::MAIN_FORKNUM, 0, blocks, true);
        }
    }
    Ok(())
}

/// Serializes one planned tuple into `out`.
fn tuple_bytes<E: VectorElement>(state: &BuildState<E>, layout: &Layout, item: &Item, out: &mut Vec<u8>) {
    match *item {
        Item::VectorElement(node) => {
            let shape = shape_of(state, node);
            out.clear();
            out.resize(shape.size(), 0);
            let mut element = ElementMut::init(out, shape);
            element.add_heap_tid(state.heap_tids[node as usize]);
            for &tid in state.more_heap_tids.get(&node).into_iter().flatten() {
                element.add_heap_tid(tid);
            }
            for layer in 0..=shape.level {
                let neighbors: Vec<Tid> =
                    state.graph.neighbors(node, layer).iter().map(|&n| layout.positions[n as usize]).collect();
                element.set_neighbors(layer, &neighbors);
            }
            if shape.inline {
                element.set_inline_vector(super::disk::to_bytes(state.graph.vector(node)));
            } else {
                element.set_first_chunk(layout.first_chunks[node as usize]);
            }
        }
        Item::Chunk { node, ref range, next } => {
            *out = chunk_tuple(&super::disk::to_bytes(state.graph.vector(node))[range.clone()], next);
        }
    }
}
