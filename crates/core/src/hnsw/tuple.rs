//! Byte layout of the index's tuples, free of Postgres so it is unit-tested directly.
//!
//! An element tuple holds one graph node: the heap rows it stands for, its neighbour
//! lists for every layer it lives on, and its vector. A node's size is fixed for its
//! life, so neighbour updates and vacuum rewrite it in place (and GenericXLog logs only
//! the bytes that changed). Vectors too large to share a page with their node live in a
//! chain of chunk tuples.
//!
//! Element tuple:
//! ```text
//! 0   u8   kind (ELEMENT)        4   u32  vector bytes
//! 1   u8   level                 8   Tid  first chunk (invalid when the vector is inline)
//! 2   u8   deleted               14  u16  unused
//! 3   u8   heap tid count        16  the vector when inline, then
//!     [Tid; HEAP_TIDS] heap rows (unused slots invalid),
//!     [u16; level + 1] neighbour count per layer, and
//!     [Tid; 2m + level * m] neighbour slots (layer 0 first)
//! ```
//! The vector follows the 16-byte header so that scoring an element (deleted flag, heap
//! row count, vector) reads one short contiguous run of bytes, the fewest cache lines;
//! heap rows and neighbour lists are read only for the far fewer elements a search
//! returns or expands.
//! Chunk tuple: `u8 kind (CHUNK)`, `u8` unused, `Tid next`, `u16 length`, `u16` unused,
//! then `length` bytes of vector data.

/// Heap rows one element can stand for (identical vectors share an element).
pub const HEAP_TIDS: usize = 10;
pub const ELEMENT: u8 = 1;
pub const CHUNK: u8 = 2;

const TID_SIZE: usize = 6;
const FIRST_CHUNK_AT: usize = 8;
/// Where an inline vector starts (4-byte aligned, as tuples are at least that).
const VECTOR_AT: usize = 16;
pub const CHUNK_HEADER: usize = 12;

/// A tuple identifier: block and 1-based line pointer, like Postgres's ItemPointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl Tid {
    pub const INVALID: Tid = Tid { block: u32::MAX, offset: 0 };

    pub fn is_valid(self) -> bool {
        self.block != u32::MAX && self.offset != 0
    }

    /// Packs into a u64 (for hashing and compact sets).
    pub fn key(self) -> u64 {
        (u64::from(self.block) << 16) | u64::from(self.offset)
    }

    fn read(bytes: &[u8], at: usize) -> Tid {
        Tid {
            block: u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")),
            offset: u16::from_le_bytes(bytes[at + 4..at + 6].try_into().expect("2 bytes")),
        }
    }

    fn write(self, bytes: &mut [u8], at: usize) {
        bytes[at..at + 4].copy_from_slice(&self.block.to_le_bytes());
        bytes[at + 4..at + 6].copy_from_slice(&self.offset.to_le_bytes());
    }
}

/// Hashes tuple ids for [`TidSet`] (vacuum's set of emptied elements, looked up for every
/// neighbour it repairs). Ids are already well spread, so one multiplication (as in
/// rustc's FxHash) replaces SipHash, which showed in profiles.
#[derive(Default)]
pub struct TidHasher(u64);

impl std::hash::Hasher for TidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of tuple ids with the cheap hasher.
pub type TidSet = std::collections::HashSet<Tid, std::hash::BuildHasherDefault<TidHasher>>;

/// The visited set of an on-disk search: open addressing with linear probing over
/// packed tids, remembering which slots it filled so that clearing costs what was
/// inserted (a query clears it once per layer). A search inserts every neighbour it
/// meets, about thirty per element expanded, and a general hash set's insert was a
/// twentieth of a query's time.
pub struct VisitedTids {
    /// `Tid::key() + 1` per slot (never 0), or 0 for a free slot.
    slots: Vec<u64>,
    filled: Vec<usize>,
}

impl VisitedTids {
    /// A set that holds `expected` tids before it has to grow.
    pub fn with_capacity(expected: usize) -> Self {
        Self { slots: vec![0; (2 * expected).next_power_of_two().max(16)], filled: Vec::with_capacity(expected) }
    }

    /// Sized for a beam of `ef` on a graph of degree `m` (2m on layer 0): a search scores
    /// up to about ef times 2m elements, and growing on the way showed in profiles.
    pub fn for_beam(ef: usize, m: usize) -> Self {
        Self::with_capacity((ef * 2 * m).min(1 << 16))
    }

    /// Fibonacci hashing: the top bits of the product mix every bit of the key.
    fn home(&self, key: u64) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    /// Where `key` is, or the free slot where it would go.
    fn probe(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        while self.slots[at] != key && self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        at
    }

    fn grow(&mut self) {
        let keys: Vec<u64> = self.filled.iter().map(|&at| self.slots[at]).collect();
        self.slots = vec![0; 2 * self.slots.len()];
        self.filled.clear();
        for key in keys {
            let at = self.probe(key);
            self.slots[at] = key;
            self.filled.push(at);
        }
    }
}

impl super::graph::Visited<Tid> for VisitedTids {
    fn clear(&mut self) {
        for &at in &self.filled {
            self.slots[at] = 0;
        }
        self.filled.clear();
    }

    #[inline]
    fn insert(&mut self, tid: Tid) -> bool {
        // At most half full, so probes stay short.
        if 2 * (self.filled.len() + 1) > self.slots.len() {
            self.grow();
        }
        let key = tid.key() + 1;
        let at = self.probe(key);
        if self.slots[at] == key {
            return false;
        }
        self.slots[at] = key;
        self.filled.push(at);
        true
    }
}

/// Sizes of an element tuple for a given graph shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElementShape {
    pub m: usize,
    pub level: usize,
    pub vector_bytes: usize,
    pub inline: bool,
}

impl ElementShape {
    pub fn slots(&self) -> usize {
        2 * self.m + self.level * self.m
    }

    /// First neighbour slot of `layer` and its capacity.
    pub fn layer_slots(&self, layer: usize) -> (usize, usize) {
        if layer == 0 {
            (0, 2 * self.m)
        } else {
            (2 * self.m + (layer - 1) * self.m, self.m)
        }
    }

    fn heap_tids_at(&self) -> usize {
        VECTOR_AT + if self.inline { self.vector_bytes } else { 0 }
    }

    fn counts_at(&self) -> usize {
        self.heap_tids_at() + HEAP_TIDS * TID_SIZE
    }

    fn neighbors_at(&self) -> usize {
        self.counts_at() + 2 * (self.level + 1)
    }

    pub fn size(&self) -> usize {
        self.neighbors_at() + TID_SIZE * self.slots()
    }
}

/// Read access to an element tuple's bytes.
#[derive(Clone, Copy)]
pub struct Element<'a> {
    bytes: &'a [u8],
    m: usize,
}

impl<'a> Element<'a> {
    /// Views `bytes` as an element tuple of an index with parameter `m`; `None` if the
    /// bytes are not a well-formed element (so corrupt pages give errors, not panics).
    pub fn parse(bytes: &'a [u8], m: usize) -> Option<Self> {
        if bytes.len() < VECTOR_AT || bytes[0] != ELEMENT {
            return None;
        }
        let element = Self { bytes, m };
        let shape = element.shape();
        let expected = shape.size();
        (bytes.len() >= expected && usize::from(bytes[3]) <= HEAP_TIDS).then_some(element)
    }

    pub fn shape(&self) -> ElementShape {
        header_shape(self.bytes, self.m)
    }

    pub fn level(&self) -> usize {
        usize::from(self.bytes[1])
    }

    pub fn is_deleted(&self) -> bool {
        self.bytes[2] != 0
    }

    pub fn heap_tids(&self) -> impl Iterator<Item = Tid> + 'a {
        let (bytes, at) = (self.bytes, self.shape().heap_tids_at());
        (0..usize::from(bytes[3])).map(move |i| Tid::read(bytes, at + i * TID_SIZE))
    }

    pub fn first_chunk(&self) -> Tid {
        Tid::read(self.bytes, FIRST_CHUNK_AT)
    }

    /// Neighbours at `layer` (empty above the element's level).
    pub fn neighbors(&self, layer: usize) -> impl Iterator<Item = Tid> + 'a {
        let shape = self.shape();
        let bytes = self.bytes;
        let count = if layer <= shape.level {
            let at = shape.counts_at() + 2 * layer;
            usize::from(u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes")))
        } else {
            0
        };
        let (first, capacity) = shape.layer_slots(layer);
        let at = shape.neighbors_at() + first * TID_SIZE;
        (0..count.min(capacity)).map(move |i| Tid::read(bytes, at + i * TID_SIZE))
    }

    /// The inline vector's bytes (`None` when it lives in chunks).
    pub fn inline_vector(&self) -> Option<&'a [u8]> {
        let shape = self.shape();
        shape.inline.then(|| &self.bytes[VECTOR_AT..VECTOR_AT + shape.vector_bytes])
    }
}

/// The shape an element's header describes (`bytes` holds at least the header).
fn header_shape(bytes: &[u8], m: usize) -> ElementShape {
    ElementShape {
        m,
        level: usize::from(bytes[1]),
        vector_bytes: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize,
        inline: !Tid::read(bytes, FIRST_CHUNK_AT).is_valid(),
    }
}

/// What scoring an element reads: its deleted flag, how many heap rows it stands for,
/// and its vector.
#[derive(Clone, Copy)]
pub struct Scoring<'a> {
    pub deleted: bool,
    pub heap_rows: usize,
    pub vector: &'a [u8],
}

impl<'a> Scoring<'a> {
    /// The leading bytes of an element with an inline vector of `vector_bytes` that
    /// scoring reads: header and vector.
    pub const fn leading_bytes(vector_bytes: usize) -> usize {
        VECTOR_AT + vector_bytes
    }

    /// Reads an element's leading bytes (see [`Scoring::leading_bytes`]); what follows
    /// may be cut off. `None` if they are not a well-formed element with an inline vector.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < VECTOR_AT || bytes[0] != ELEMENT || usize::from(bytes[3]) > HEAP_TIDS {
            return None;
        }
        let shape = header_shape(bytes, 0);
        let vector = bytes.get(VECTOR_AT..VECTOR_AT + shape.vector_bytes).filter(|_| shape.inline)?;
        Some(Scoring { deleted: bytes[2] != 0, heap_rows: usize::from(bytes[3]), vector })
    }

    /// An element read whole, with its vector (gathered from chunks if need be).
    pub fn of(element: Element<'_>, vector: &'a [u8]) -> Self {
        Scoring { deleted: element.is_deleted(), heap_rows: usize::from(element.bytes[3]), vector }
    }
}

/// Write access to an element tuple's bytes (a fresh buffer or the tuple on a page).
pub struct ElementMut<'a> {
    bytes: &'a mut [u8],
    shape: ElementShape,
}

impl<'a> ElementMut<'a> {
    /// Initializes `bytes` (exactly `shape.size()` long) as an empty element.
    pub fn init(bytes: &'a mut [u8], shape: ElementShape) -> Self {
        assert_eq!(bytes.len(), shape.size(), "element buffer size");
        assert!(shape.level <= usize::from(u8::MAX), "element level");
        bytes.fill(0);
        bytes[0] = ELEMENT;
        bytes[1] = shape.level as u8;
        bytes[4..8].copy_from_slice(&(shape.vector_bytes as u32).to_le_bytes());
        for i in 0..HEAP_TIDS {
            Tid::INVALID.write(bytes, shape.heap_tids_at() + i * TID_SIZE);
        }
        Tid::INVALID.write(bytes, FIRST_CHUNK_AT);
        Self { bytes, shape }
    }

    /// Opens an existing element for update.
    pub fn open(bytes: &'a mut [u8], m: usize) -> Option<Self> {
        let shape = Element::parse(bytes, m)?.shape();
        Some(Self { bytes, shape })
    }

    pub fn as_element(&self) -> Element<'_> {
        Element { bytes: self.bytes, m: self.shape.m }
    }

    pub fn set_deleted(&mut self, deleted: bool) {
        self.bytes[2] = u8::from(deleted);
    }

    /// Adds a heap row; false when all slots are taken.
    pub fn add_heap_tid(&mut self, tid: Tid) -> bool {
        let count = usize::from(self.bytes[3]);
        if count == HEAP_TIDS {
            return false;
        }
        tid.write(self.bytes, self.shape.heap_tids_at() + count * TID_SIZE);
        self.bytes[3] = (count + 1) as u8;
        true
    }

    /// Keeps only the heap rows `keep` accepts; returns how many remain.
    pub fn retain_heap_tids(&mut self, mut keep: impl FnMut(Tid) -> bool) -> usize {
        let kept: Vec<Tid> = self.as_element().heap_tids().filter(|&tid| keep(tid)).collect();
        for i in 0..HEAP_TIDS {
            kept.get(i).copied().unwrap_or(Tid::INVALID).write(self.bytes, self.shape.heap_tids_at() + i * TID_SIZE);
        }
        self.bytes[3] = kept.len() as u8;
        kept.len()
    }

    pub fn set_first_chunk(&mut self, tid: Tid) {
        tid.write(self.bytes, FIRST_CHUNK_AT);
    }

    /// Replaces the neighbours at `layer` (truncated to the layer's capacity).
    pub fn set_neighbors(&mut self, layer: usize, neighbors: &[Tid]) {
        assert!(layer <= self.shape.level, "layer above the element's level");
        let (first, capacity) = self.shape.layer_slots(layer);
        let count = neighbors.len().min(capacity);
        let at = self.shape.neighbors_at() + first * TID_SIZE;
        for i in 0..capacity {
            neighbors.get(i).filter(|_| i < count).copied().unwrap_or(Tid::INVALID).write(self.bytes, at + i * TID_SIZE);
        }
        let at = self.shape.counts_at() + 2 * layer;
        self.bytes[at..at + 2].copy_from_slice(&(count as u16).to_le_bytes());
    }

    /// Copies the vector in (inline shapes only).
    pub fn set_inline_vector(&mut self, vector: &[u8]) {
        assert!(self.shape.inline && vector.len() == self.shape.vector_bytes, "inline vector size");
        self.bytes[VECTOR_AT..VECTOR_AT + vector.len()].copy_from_slice(vector);
    }
}

/// Index-wide state kept on the metapage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub dimensions: u32,
    pub m: u16,
    pub ef_construction: u16,
    /// Where searches start; invalid while the index is empty.
    pub entry: Tid,
    pub entry_level: u8,
    /// The page new elements are appended to (the newest one).
    pub insert_page: u32,
}

const META_MAGIC: u32 = 0x5254_4857;
/// 2: the vector moved next to the element header.
pub const META_VERSION: u32 = 2;
pub const META_SIZE: usize = 28;

impl Meta {
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut bytes = [0u8; META_SIZE];
        bytes[0..4].copy_from_slice(&META_MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&META_VERSION.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.dimensions.to_le_bytes());
        bytes[12..14].copy_from_slice(&self.m.to_le_bytes());
        bytes[14..16].copy_from_slice(&self.ef_construction.to_le_bytes());
        self.entry.write(&mut bytes, 16);
        bytes[22] = self.entry_level;
        bytes[24..28].copy_from_slice(&self.insert_page.to_le_bytes());
        bytes
    }

    /// The format version of a metapage with this index's magic number.
    pub fn format_version(bytes: &[u8]) -> Option<u32> {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        (bytes.len() >= 8 && word(0) == META_MAGIC).then(|| word(4))
    }

    /// `None` unless the bytes carry this format's magic number and version.
    pub fn decode(bytes: &[u8]) -> Option<Meta> {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let half = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
        if bytes.len() < META_SIZE || word(0) != META_MAGIC || word(4) != META_VERSION {
            return None;
        }
        Some(Meta {
            dimensions: word(8),
            m: half(12),
            ef_construction: half(14),
            entry: Tid::read(bytes, 16),
            entry_level: bytes[22],
            insert_page: word(24),
        })
    }
}

/// Builds a chunk tuple holding `data`, linked to `next`.
pub fn chunk_tuple(data: &[u8], next: Tid) -> Vec<u8> {
    let mut bytes = vec![0u8; CHUNK_HEADER + data.len()];
    bytes[0] = CHUNK;
    next.write(&mut bytes, 2);
    bytes[8..10].copy_from_slice(&(data.len() as u16).to_le_bytes());
    bytes[CHUNK_HEADER..].copy_from_slice(data);
    bytes
}

/// Reads a chunk tuple: its data and the next chunk.
pub fn parse_chunk(bytes: &[u8]) -> Option<(&[u8], Tid)> {
    if bytes.len() < CHUNK_HEADER || bytes[0] != CHUNK {
        return None;
    }
    let length = usize::from(u16::from_le_bytes(bytes[8..10].try_into().expect("2 bytes")));
    let data = bytes.get(CHUNK_HEADER..CHUNK_HEADER + length)?;
    Some((data, Tid::read(bytes, 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visited_tids_agree_with_a_hash_set_through_growth_and_clears() {
        use crate::hnsw::graph::Visited;
        let mut rng = crate::rng::Rng::new(5);
        let mut visited = VisitedTids::with_capacity(4);
        let mut reference = std::collections::HashSet::new();
        for round in 0..40 {
            visited.clear();
            reference.clear();
            // Few blocks and offsets, so that inserts repeat; block 0 offset 0 and the
            // invalid tid included.
            let blocks = 1 + round as u64 * 7;
            for _ in 0..(round * 37) {
                let tid = match rng.below(50) {
                    0 => Tid { block: 0, offset: 0 },
                    1 => Tid::INVALID,
                    _ => tid(rng.below(blocks) as u32, rng.below(20) as u16),
                };
                assert_eq!(visited.insert(tid), reference.insert(tid), "round {round}, {tid:?}");
            }
            for block in 0..blocks as u32 {
                for offset in 0..20 {
                    let tid = tid(block, offset);
                    // A second insert reports whether the first one was remembered.
                    assert_eq!(!visited.insert(tid), reference.contains(&tid), "round {round}, {tid:?}");
                }
            }
        }
    }

    fn tid(block: u32, offset: u16) -> Tid {
        Tid { block, offset }
    }

    #[test]
    fn element_round_trip() {
        let shape = ElementShape { m: 4, level: 2, vector_bytes: 12, inline: true };
        let mut buffer = vec![0u8; shape.size()];
        let mut element = ElementMut::init(&mut buffer, shape);
        assert!(element.add_heap_tid(tid(7, 3)));
        element.set_neighbors(0, &[tid(1, 1), tid(1, 2), tid(2, 5)]);
        element.set_neighbors(2, &[tid(9, 9)]);
        element.set_inline_vector(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let view = Element::parse(&buffer, 4).unwrap();
        assert_eq!(view.level(), 2);
        assert!(!view.is_deleted());
        assert_eq!(view.heap_tids().collect::<Vec<_>>(), [tid(7, 3)]);
        assert_eq!(view.neighbors(0).collect::<Vec<_>>(), [tid(1, 1), tid(1, 2), tid(2, 5)]);
        assert_eq!(view.neighbors(1).count(), 0);
        assert_eq!(view.neighbors(2).collect::<Vec<_>>(), [tid(9, 9)]);
        assert_eq!(view.neighbors(3).count(), 0);
        assert_eq!(view.inline_vector().unwrap(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(VECTOR_AT % 4, 0);
    }

    #[test]
    fn scoring_reads_the_leading_bytes_only() {
        let shape = ElementShape { m: 16, level: 2, vector_bytes: 8, inline: true };
        let mut buffer = vec![0u8; shape.size()];
        let mut element = ElementMut::init(&mut buffer, shape);
        element.add_heap_tid(tid(3, 1));
        element.add_heap_tid(tid(3, 2));
        element.set_neighbors(0, &[tid(1, 1)]);
        element.set_inline_vector(&[1, 2, 3, 4, 5, 6, 7, 8]);
        element.set_deleted(true);
        let leading = &buffer[..Scoring::leading_bytes(shape.vector_bytes)];
        let scoring = Scoring::parse(leading).unwrap();
        assert!(scoring.deleted);
        assert_eq!(scoring.heap_rows, 2);
        assert_eq!(scoring.vector, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(Scoring::parse(&leading[..leading.len() - 1]).is_none(), "vector cut off");
        assert!(Scoring::parse(&[0u8; 16]).is_none(), "not an element");

        let chunked = ElementShape { inline: false, ..shape };
        let mut buffer = vec![0u8; chunked.size()];
        ElementMut::init(&mut buffer, chunked).set_first_chunk(tid(8, 1));
        assert!(Scoring::parse(&buffer).is_none(), "vector in chunks");
    }

    #[test]
    fn neighbour_lists_are_capped_and_rewritable() {
        let shape = ElementShape { m: 2, level: 1, vector_bytes: 4, inline: true };
        let mut buffer = vec![0u8; shape.size()];
        let mut element = ElementMut::init(&mut buffer, shape);
        let many: Vec<Tid> = (1..=9).map(|i| tid(i, 1)).collect();
        element.set_neighbors(0, &many);
        element.set_neighbors(1, &many);
        assert_eq!(element.as_element().neighbors(0).count(), 4);
        assert_eq!(element.as_element().neighbors(1).collect::<Vec<_>>(), [tid(1, 1), tid(2, 1)]);
        element.set_neighbors(0, &[tid(5, 5)]);
        assert_eq!(element.as_element().neighbors(0).collect::<Vec<_>>(), [tid(5, 5)]);
        assert_eq!(element.as_element().neighbors(1).count(), 2, "other layers untouched");
    }

    #[test]
    fn full_lists_on_every_layer() {
        let shape = ElementShape { m: 16, level: 3, vector_bytes: 200, inline: true };
        let mut buffer = vec![0u8; shape.size()];
        let mut element = ElementMut::init(&mut buffer, shape);
        for layer in 0..=3 {
            let list: Vec<Tid> = (0..40).map(|i| tid(layer as u32 * 100 + i, 1)).collect();
            element.set_neighbors(layer, &list);
        }
        let view = Element::parse(&buffer, 16).unwrap();
        for layer in 0..=3 {
            let want: Vec<Tid> = (0..if layer == 0 { 32 } else { 16 }).map(|i| tid(layer as u32 * 100 + i, 1)).collect();
            assert_eq!(view.neighbors(layer).collect::<Vec<_>>(), want, "layer {layer}");
        }
    }

    #[test]
    fn heap_tids_fill_up_and_retain() {
        let shape = ElementShape { m: 2, level: 0, vector_bytes: 4, inline: true };
        let mut buffer = vec![0u8; shape.size()];
        let mut element = ElementMut::init(&mut buffer, shape);
        for i in 0..HEAP_TIDS as u16 {
            assert!(element.add_heap_tid(tid(1, i + 1)));
        }
        assert!(!element.add_heap_tid(tid(2, 1)));
        assert_eq!(element.retain_heap_tids(|t| t.offset % 2 == 0), HEAP_TIDS / 2);
        assert!(element.as_element().heap_tids().all(|t| t.offset % 2 == 0));
        element.set_deleted(true);
        assert!(element.as_element().is_deleted());
    }

    #[test]
    fn chunked_vectors_and_chunks() {
        let shape = ElementShape { m: 2, level: 0, vector_bytes: 64_000, inline: false };
        let mut buffer = vec![0u8; shape.size()];
        let mut element = ElementMut::init(&mut buffer, shape);
        element.set_first_chunk(tid(3, 1));
        let view = element.as_element();
        assert!(view.inline_vector().is_none());
        assert_eq!(view.first_chunk(), tid(3, 1));
        let chunk = chunk_tuple(&[9, 8, 7], tid(4, 2));
        assert_eq!(parse_chunk(&chunk), Some((&[9u8, 8, 7][..], tid(4, 2))));
    }

    #[test]
    fn meta_round_trip() {
        let meta = Meta { dimensions: 1536, m: 16, ef_construction: 64, entry: tid(12, 3), entry_level: 4, insert_page: 99 };
        assert_eq!(Meta::decode(&meta.encode()), Some(meta));
        assert_eq!(Meta::format_version(&meta.encode()), Some(META_VERSION));
        let mut older = meta.encode();
        older[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Meta::decode(&older), None);
        assert_eq!(Meta::format_version(&older), Some(1));
        let mut corrupt = meta.encode();
        corrupt[0] ^= 1;
        assert_eq!(Meta::decode(&corrupt), None);
        assert_eq!(Meta::format_version(&corrupt), None);
    }

    #[test]
    fn malformed_bytes_are_rejected() {
        assert!(Element::parse(&[], 16).is_none());
        assert!(Element::parse(&[CHUNK; 100], 16).is_none());
        let shape = ElementShape { m: 16, level: 3, vector_bytes: 200, inline: true };
        let mut buffer = vec![0u8; shape.size()];
        ElementMut::init(&mut buffer, shape);
        assert!(Element::parse(&buffer[..buffer.len() - 1], 16).is_none(), "truncated");
        assert!(parse_chunk(&[CHUNK, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0]).is_none(), "length beyond tuple");
    }
}
