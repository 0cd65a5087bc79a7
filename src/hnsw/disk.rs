//! The graph as stored in index pages: reading elements and their vectors under buffer
//! locks, and [`GraphAccess`] over them for scans, inserts and vacuum.

use crate::pg::error::Raise;
use ragtune_core::hnsw::graph::{Candidate, GraphAccess, Metric, Searcher};
use super::page::{self, Buffer, RecentBuffers};
use ragtune_core::hnsw::tuple::{parse_chunk, Element, Meta, Scoring, Tid, VisitedTids};
use ragtune_core::types::element::VectorElement;
use pgrx::pg_sys;
use std::borrow::Cow;
use std::collections::HashMap;

/// Reinterprets vector bytes read from a page (4-byte aligned by the tuple layout).
pub fn as_elements<E: VectorElement>(bytes: &[u8]) -> Cow<'_, [E]> {
    // SAFETY: E is f32 or f16, for which every bit pattern is a value.
    let (prefix, elements, suffix) = unsafe { bytes.align_to::<E>() };
    if prefix.is_empty() && suffix.is_empty() {
        Cow::Borrowed(elements)
    } else {
        // Only reachable if a page were laid out differently; stay correct regardless.
        Cow::Owned(bytes.chunks_exact(E::SIZE).map(|b| unsafe { b.as_ptr().cast::<E>().read_unaligned() }).collect())
    }
}

pub fn to_bytes<E: VectorElement>(vector: &[E]) -> &[u8] {
    // SAFETY: plain-old-data elements viewed as bytes.
    unsafe { std::slice::from_raw_parts(vector.as_ptr().cast::<u8>(), std::mem::size_of_val(vector)) }
}

/// Reads index elements, keeping the last buffer pinned (consecutive reads often stay
/// on a page) and never holding a lock between calls.
pub struct Reader {
    index: pg_sys::Relation,
    pub m: usize,
    pinned: Option<(u32, Buffer)>,
    recent: RecentBuffers,
    chunk_bytes: Vec<u8>,
    pages: Vec<Option<*const u8>>,
    copy: Vec<u8>,
}

/// The hardware prefetcher streams the rest of a long vector.
const MAX_PREFETCH: usize = 512;
/// Elements up to this size are scored from an unlocked copy (about 1,900 f32 dimensions
/// at m = 16); larger ones are read under the lock, where copying would cost more than it saves.
const MAX_UNLOCKED_COPY: usize = 8192;

impl Reader {
    /// # Safety
    /// `index` must stay open for the reader's life.
    pub unsafe fn new(index: pg_sys::Relation, m: usize) -> Self {
        // SAFETY: caller's contract.
        let recent = unsafe { RecentBuffers::take(index) };
        Self { index, m, pinned: None, recent, chunk_bytes: Vec::new(), pages: Vec::new(), copy: Vec::new() }
    }

    fn buffer(&mut self, block: u32) -> &Buffer {
        if self.pinned.as_ref().is_none_or(|(pinned, _)| *pinned != block) {
            if let Some((_, old)) = self.pinned.take() {
                old.release();
            }
            // SAFETY: the index is open; the block number comes from index data.
            self.pinned = Some((block, unsafe { self.recent.read(self.index, block) }));
        }
        &self.pinned.as_ref().expect("pinned above").1
    }

    /// Has the CPU fetch what scoring `tids` will read: the buffer headers and line
    /// pointers, then the elements' leading bytes (header and inline vector), so the
    /// cache misses overlap instead of coming one after another. Pins nothing: the
    /// addresses come from where the blocks were last seen, and a stale one only
    /// fetches useless bytes.
    pub fn prefetch(&mut self, tids: &[Tid], bytes_per_element: usize) {
        let mut pages = std::mem::take(&mut self.pages);
        pages.clear();
        for tid in tids {
            let hint = self.recent.hint(tid.block);
            if let Some((_, descriptor)) = hint {
                ragtune_core::kernels::prefetch(descriptor);
            }
            let page = hint.map(|(page, _)| page);
            if let (Some(page), Some(at)) = (page, page::line_pointer_at(tid.offset)) {
                // SAFETY: `at` lies inside the page, which is shared memory that stays mapped.
                ragtune_core::kernels::prefetch(unsafe { std::slice::from_raw_parts(page.add(at), 4) });
            }
            pages.push(page);
        }
        for (tid, page) in tids.iter().zip(&pages) {
            let Some(page) = *page else { continue };
            // SAFETY: the page is mapped shared memory. The line pointer is read without
            // pin or lock only to aim a prefetch; `with_element` reads under the lock.
            if let Some((start, _)) = unsafe { page::item_bounds_unlocked(page, tid.offset) } {
                let length = bytes_per_element.min(MAX_PREFETCH).min(pg_sys::BLCKSZ as usize - start);
                ragtune_core::kernels::prefetch(unsafe { std::slice::from_raw_parts(page.add(start), length) });
            }
        }
        self.pages = pages;
    }

    /// Runs `f` on element `tid` and its vector bytes, under a share lock. Raises an ERROR
    /// if `tid` does not hold an element (a corrupt graph).
    pub fn with_element<R>(&mut self, tid: Tid, f: impl FnOnce(Element<'_>, &[u8]) -> R) -> R {
        let m = self.m;
        let buffer = self.buffer(tid.block);
        buffer.lock_share();
        // SAFETY: the page stays share-locked while the item is read.
        let bytes: Option<&[u8]> = unsafe { page::item(buffer.page(), tid.offset) }.map(|b| &*b);
        let Some(element) = bytes.and_then(|b| Element::parse(b, m)) else {
            buffer.unlock();
            page::corrupt(&format!("no element at ({},{})", tid.block, tid.offset)).raise()
        };
        if let Some(vector) = element.inline_vector() {
            let result = f(element, vector);
            buffer.unlock();
            return result;
        }
        // A chunked vector: copy the element, then gather the chunks without holding a lock.
        let owned = bytes.map(|b| b.to_vec()).expect("parsed above");
        buffer.unlock();
        let element = Element::parse(&owned, m).expect("parsed above");
        let mut vector = std::mem::take(&mut self.chunk_bytes);
        vector.clear();
        let mut next = element.first_chunk();
        while next.is_valid() {
            let buffer = self.buffer(next.block);
            buffer.lock_share();
            // SAFETY: share-locked while read.
            let chunk = unsafe { page::item(buffer.page(), next.offset) }.and_then(|b| parse_chunk(b));
            let Some((data, following)) = chunk else {
                buffer.unlock();
                page::corrupt("broken vector chunk chain").raise()
            };
            vector.extend_from_slice(data);
            next = following;
            buffer.unlock();
        }
        if vector.len() != element.shape().vector_bytes {
            page::corrupt("vector chunks do not add up").raise();
        }
        let result = f(element, &vector);
        self.chunk_bytes = vector;
        result
    }

    /// What scoring reads of element `tid`, without the content lock: the element's
    /// leading bytes are copied out of its pinned page. A search scores some thirty
    /// elements for each one it expands, and the lock round trip was a fifth of its
    /// time. This is sound because nothing scoring reads changes once written: items
    /// never move (see [`page::item_bounds_unlocked`]), a vector and an element's shape
    /// are immutable, and the flags read (deleted, heap row count) are single bytes that
    /// a writer flips under its exclusive lock, so the copy holds either value, as a
    /// read just before or after that writer would. Only the header and vector are
    /// copied: the neighbour lists, which writers rewrite, are not needed, and skipping
    /// them saves cache misses. Chunked and large elements take the locked path.
    pub fn score_element<R>(&mut self, tid: Tid, f: impl FnOnce(Scoring<'_>) -> R) -> R {
        let page = self.buffer(tid.block).page().cast::<u8>().cast_const();
        // SAFETY: the page is pinned, so it holds this block and its items stay put.
        let bounds = unsafe { page::item_bounds_unlocked(page, tid.offset) };
        if let Some((start, length)) = bounds.filter(|&(_, length)| (8..=MAX_UNLOCKED_COPY).contains(&length)) {
            // SAFETY: inside the item; an element's vector size never changes.
            let vector_bytes = unsafe { page.add(start + 4).cast::<u32>().read_unaligned() } as usize;
            let leading = Scoring::leading_bytes(vector_bytes).min(length);
            let mut copy = std::mem::take(&mut self.copy);
            copy.resize(leading, 0);
            // SAFETY: `start + leading` lies inside the pinned page (checked above); a
            // plain byte copy of shared memory, as C code reads it.
            unsafe { std::ptr::copy_nonoverlapping(page.add(start), copy.as_mut_ptr(), leading) };
            if let Some(scoring) = Scoring::parse(&copy) {
                let result = f(scoring);
                self.copy = copy;
                return result;
            }
            // Chunked, or not an element: the locked path reads chunks and reports corruption.
            self.copy = copy;
        }
        self.with_element(tid, |element, vector| f(Scoring::of(element, vector)))
    }

    /// The element's vector, copied out.
    pub fn vector<E: VectorElement>(&mut self, tid: Tid) -> Vec<E> {
        self.with_element(tid, |_, bytes| as_elements::<E>(bytes).into_owned())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Also runs while an ERROR unwinds through Rust frames, before pgrx hands the
        // error back to Postgres: the pin is released once, here, and forgotten by the
        // resource owner.
        if let Some((_, buffer)) = self.pinned.take() {
            buffer.release();
        }
    }
}

/// Vectors of stored elements, each read from its page once (neighbour selection
/// compares every candidate with every kept neighbour).
pub struct VectorCache<E> {
    vectors: HashMap<Tid, Vec<E>>,
}

impl<E> Default for VectorCache<E> {
    fn default() -> Self {
        Self { vectors: HashMap::new() }
    }
}

impl<E: VectorElement> VectorCache<E> {
    pub fn load(&mut self, reader: &mut Reader, tids: impl Iterator<Item = Tid>) {
        for tid in tids {
            if !self.vectors.contains_key(&tid) {
                let vector = reader.vector::<E>(tid);
                self.vectors.insert(tid, vector);
            }
        }
    }

    pub fn get(&self, tid: Tid) -> &[E] {
        &self.vectors[&tid]
    }

    /// Bounds memory in long loops (vacuum repairs many elements).
    pub fn forget_if_over(&mut self, entries: usize) {
        if self.vectors.len() > entries {
            self.vectors.clear();
        }
    }
}

/// The on-disk graph seen from one query vector.
pub struct DiskGraph<'q, E> {
    pub reader: Reader,
    pub query: &'q [E],
    pub metric: Metric,
    /// Elements whose rows are all gone (vacuum empties them before deleting them) are
    /// no results; searches pass through them. Vacuum's repair instead scores them, so
    /// that its searches stay bounded by ef while half the graph may be emptied, and
    /// drops them from what it selects.
    pub score_emptied: bool,
}

impl<E: VectorElement> DiskGraph<'_, E> {
    /// Candidates per layer (index = layer) for an element of `level`, searched from the
    /// index's entry point with a beam of ef_construction.
    pub fn insert_candidates(&mut self, searcher: &mut Searcher<Tid, VisitedTids>, meta: &Meta, level: usize) -> Vec<Vec<Candidate<Tid>>> {
        searcher.search_for_insert(self, meta.entry, usize::from(meta.entry_level), level, usize::from(meta.ef_construction))
    }
}

impl<E: VectorElement> GraphAccess for DiskGraph<'_, E> {
    type Id = Tid;

    fn distance_to_query(&mut self, id: Tid) -> Option<f32> {
        let (query, metric, score_emptied) = (self.query, self.metric, self.score_emptied);
        self.reader.score_element(id, |element| {
            if element.deleted || (!score_emptied && element.heap_rows == 0) {
                return None;
            }
            Some(metric.distance(query, &as_elements::<E>(element.vector)))
        })
    }

    fn neighbors(&mut self, id: Tid, layer: usize, out: &mut Vec<Tid>) {
        self.reader.with_element(id, |element, _| out.extend(element.neighbors(layer)));
    }

    /// Scoring follows the list's order: few neighbours share a page even in the build's
    /// locality order, and sorting them by position cost more than the pins it saved.
    fn prefetch(&mut self, ids: &[Tid]) {
        self.reader.prefetch(ids, Scoring::leading_bytes(std::mem::size_of_val(self.query)));
    }
}
