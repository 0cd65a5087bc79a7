//! Index pages through the buffer manager: the metapage, appending tuples, and
//! WAL-logged in-place updates. Every change after the build goes through GenericXLog,
//! so crash recovery and streaming replicas see it. The graph lock (`lock_graph`) orders
//! inserts against changes of the entry point and against VACUUM.

use ragtune_core::hnsw::tuple::{ElementShape, Meta, Tid, CHUNK_HEADER, META_SIZE, META_VERSION};
use ragtune_core::error::{Error, ErrorKind};
use pgrx::pg_sys;

pub const META_BLOCK: u32 = 0;
/// Marks ragtune HNSW pages in the special space (as pgvector does for its pages).
const PAGE_ID: u16 = 0xFF91;

#[repr(C)]
struct Opaque {
    page_id: u16,
    unused: [u16; 3],
}

const PAGE_HEADER: usize = std::mem::offset_of!(pg_sys::PageHeaderData, pd_linp);
const LINE_POINTER: usize = std::mem::size_of::<pg_sys::ItemIdData>();

fn maxalign(size: usize) -> usize {
    size.next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize)
}

/// Bytes available for tuples and their line pointers on an empty data page.
pub fn usable_space() -> usize {
    pg_sys::BLCKSZ as usize - PAGE_HEADER - maxalign(std::mem::size_of::<Opaque>())
}

/// Space a tuple of `size` bytes takes on a page, line pointer included.
pub fn item_cost(size: usize) -> usize {
    maxalign(size) + LINE_POINTER
}

/// Largest chunk payload that fits in `free` bytes of a page.
pub fn chunk_capacity(free: usize) -> usize {
    (free.saturating_sub(LINE_POINTER) / pg_sys::MAXIMUM_ALIGNOF as usize * pg_sys::MAXIMUM_ALIGNOF as usize)
        .saturating_sub(CHUNK_HEADER)
}

/// An element's shape: its vector inline when the whole tuple fits on a page, else in chunks.
pub fn element_shape(m: usize, level: usize, vector_bytes: usize) -> ElementShape {
    let shape = ElementShape { m, level, vector_bytes, inline: true };
    if item_cost(shape.size()) <= usable_space() {
        shape
    } else {
        ElementShape { inline: false, ..shape }
    }
}

pub fn tid_from_item_pointer(pointer: &pg_sys::ItemPointerData) -> Tid {
    let block = (u32::from(pointer.ip_blkid.bi_hi) << 16) | u32::from(pointer.ip_blkid.bi_lo);
    Tid { block, offset: pointer.ip_posid }
}

pub fn item_pointer_from_tid(tid: Tid) -> pg_sys::ItemPointerData {
    let mut pointer = pg_sys::ItemPointerData::default();
    pointer.ip_blkid.bi_hi = (tid.block >> 16) as u16;
    pointer.ip_blkid.bi_lo = tid.block as u16;
    pointer.ip_posid = tid.offset;
    pointer
}

pub fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::DataException, format!("hnsw index is corrupt: {what}"))
        .with_hint("REINDEX the index.")
}

/// Why a metapage does not decode: another format version, or corruption.
fn bad_meta(contents: &[u8]) -> Error {
    match Meta::format_version(contents) {
        Some(version) if version != META_VERSION => Error::new(
            ErrorKind::DataException,
            format!("hnsw index has on-disk format {version}; this version of ragtune reads format {META_VERSION}"),
        )
        .with_hint("REINDEX the index."),
        _ => corrupt("bad metapage"),
    }
}

/// Formats `page` as an empty data page.
///
/// # Safety
/// `page` must point to a writable page of BLCKSZ bytes.
pub unsafe fn init_page(page: pg_sys::Page) {
    // SAFETY: caller's contract.
    unsafe {
        pg_sys::PageInit(page, pg_sys::BLCKSZ as usize, std::mem::size_of::<Opaque>());
        let opaque = pg_sys::PageGetSpecialPointer(page).cast::<Opaque>();
        opaque.write(Opaque { page_id: PAGE_ID, unused: [0; 3] });
    }
}

/// Writes the metapage contents onto `page` (already initialized).
///
/// # Safety
/// `page` must be a writable, initialized page.
pub unsafe fn write_meta_page(page: pg_sys::Page, meta: &Meta) {
    // SAFETY: the metapage's contents area is far larger than META_SIZE.
    unsafe {
        let contents = pg_sys::PageGetContents(page).cast::<u8>();
        std::ptr::copy_nonoverlapping(meta.encode().as_ptr(), contents, META_SIZE);
        // Tell the page where its data ends, so full-page images keep it.
        let header = page.cast::<pg_sys::PageHeaderData>();
        (*header).pd_lower = (contents.add(META_SIZE) as usize - page as usize) as u16;
    }
}

/// The bytes of item `offset` on `page`, or `None` if there is no such item.
///
/// # Safety
/// `page` must be a valid page that stays locked while the slice is used.
pub unsafe fn item<'a>(page: pg_sys::Page, offset: u16) -> Option<&'a mut [u8]> {
    // SAFETY: bounds are checked against the page's line pointer count and item length.
    unsafe {
        if offset == 0 || offset > pg_sys::PageGetMaxOffsetNumber(page) {
            return None;
        }
        let item_id = pg_sys::PageGetItemId(page, offset);
        let length = (*item_id).lp_len() as usize;
        let start = (*item_id).lp_off() as usize;
        if length == 0 || start + length > pg_sys::BLCKSZ as usize {
            return None;
        }
        Some(std::slice::from_raw_parts_mut(pg_sys::PageGetItem(page, item_id).cast::<u8>(), length))
    }
}

/// Byte offset of line pointer `offset` within a page, if it lies inside one.
pub fn line_pointer_at(offset: u16) -> Option<usize> {
    let at = PAGE_HEADER + LINE_POINTER * usize::from(offset).checked_sub(1)?;
    (at + LINE_POINTER <= pg_sys::BLCKSZ as usize).then_some(at)
}

/// Start and length of item `offset` on `page`, read without the content lock. Items of
/// this index never move once added (pages are only appended to; vacuum marks elements
/// deleted in place), so a line pointer found here stays valid while the page is pinned.
/// Without a pin it is only a hint (for prefetching).
///
/// # Safety
/// `page` must point to a page of BLCKSZ bytes of shared buffer memory.
pub unsafe fn item_bounds_unlocked(page: *const u8, offset: u16) -> Option<(usize, usize)> {
    let at = line_pointer_at(offset)?;
    // SAFETY: both reads are inside the page; volatile reads of aligned words another
    // backend may be writing yield one value or the other, and both are checked.
    let (lower, word) = unsafe {
        let lower = std::ptr::read_volatile(page.add(std::mem::offset_of!(pg_sys::PageHeaderData, pd_lower)).cast::<u16>());
        (usize::from(lower), std::ptr::read_volatile(page.add(at).cast::<u32>()))
    };
    // ItemIdData: lp_off (15 bits), lp_flags (2), lp_len (15).
    let (start, flags, length) = ((word & 0x7fff) as usize, (word >> 15) & 3, (word >> 17) as usize);
    let valid = at + LINE_POINTER <= lower
        && flags == pg_sys::LP_NORMAL
        && start >= PAGE_HEADER
        && length > 0
        && start + length <= pg_sys::BLCKSZ as usize;
    valid.then_some((start, length))
}

/// Appends a tuple to `page`, returning its offset; `None` if it does not fit.
///
/// # Safety
/// `page` must be a writable, initialized, locked page.
pub unsafe fn add_item(page: pg_sys::Page, bytes: &[u8]) -> Option<u16> {
    // SAFETY: PageAddItemExtended copies `bytes` and checks space itself.
    let offset = unsafe {
        pg_sys::PageAddItemExtended(page, bytes.as_ptr().cast_mut().cast(), bytes.len(), pg_sys::InvalidOffsetNumber, 0)
    };
    (offset != pg_sys::InvalidOffsetNumber).then_some(offset)
}

/// The buffer calls a search makes for every element it scores, declared without pgrx's
/// error guard (a `sigsetjmp` per call, a fifth of a search's instructions). They raise
/// no ERROR for a pinned, valid buffer taken in a supported mode, which `Buffer`
/// guarantees; the only errors they have report internal corruption ("bad buffer ID",
/// "lock is not held"), and one of those would still reach the guard of the enclosing
/// access-method callback, leaking only that call's Rust allocations.
mod hot {
    extern "C-unwind" {
        pub fn LockBuffer(buffer: i32, mode: i32);
        pub fn ReleaseBuffer(buffer: i32);
    }
}

/// A pinned buffer of the index.
pub struct Buffer(pub pg_sys::Buffer);

impl Buffer {
    /// Pins block `block` of the main fork.
    ///
    /// # Safety
    /// `index` must be an open index relation.
    pub unsafe fn read(index: pg_sys::Relation, block: u32) -> Buffer {
        // SAFETY: caller's contract.
        Buffer(unsafe {
            pg_sys::ReadBufferExtended(index, pg_sys::ForkNumber::MAIN_FORKNUM, block, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut())
        })
    }

    /// Extends the index by one page and returns it pinned and exclusively locked.
    ///
    /// # Safety
    /// `index` must be an open index relation.
    pub unsafe fn extend(index: pg_sys::Relation) -> Buffer {
        // SAFETY: the extension lock serializes concurrent extenders, as Postgres requires.
        unsafe {
            pg_sys::LockRelationForExtension(index, pg_sys::ExclusiveLock as i32);
            let buffer = Self::read(index, pg_sys::InvalidBlockNumber);
            pg_sys::LockBuffer(buffer.0, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
            pg_sys::UnlockRelationForExtension(index, pg_sys::ExclusiveLock as i32);
            buffer
        }
    }

    pub fn block(&self) -> u32 {
        // SAFETY: the buffer is pinned.
        unsafe { pg_sys::BufferGetBlockNumber(self.0) }
    }

    pub fn page(&self) -> pg_sys::Page {
        // SAFETY: the buffer is pinned.
        unsafe { pg_sys::BufferGetPage(self.0) }
    }

    pub fn lock_share(&self) {
        // SAFETY: the buffer is pinned and not locked by us.
        unsafe { hot::LockBuffer(self.0, pg_sys::BUFFER_LOCK_SHARE as i32) }
    }

    pub fn lock_exclusive(&self) {
        // SAFETY: as above.
        unsafe { pg_sys::LockBuffer(self.0, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32) }
    }

    pub fn unlock(&self) {
        // SAFETY: we hold a lock on it.
        unsafe { hot::LockBuffer(self.0, pg_sys::BUFFER_LOCK_UNLOCK as i32) }
    }

    pub fn release(self) {
        // SAFETY: pinned and unlocked.
        unsafe { hot::ReleaseBuffer(self.0) }
    }

    pub fn unlock_release(self) {
        // SAFETY: pinned and locked.
        unsafe { pg_sys::UnlockReleaseBuffer(self.0) }
    }
}

/// Which buffer last held each block of one index, remembered by the backend across
/// queries. Re-reading a block through `ReadRecentBuffer` skips the shared buffer
/// mapping table (its hash lookup and partition lock were the largest cost of a search);
/// Postgres checks that the buffer still holds the block, so a stale entry only costs a
/// normal read.
pub struct RecentBuffers {
    node: pg_sys::RelFileNode,
    buffers: Vec<pg_sys::Buffer>,
}

thread_local! {
    /// Per backend; a handful of indexes at most (each entry is 4 bytes per block).
    static RECENT: std::cell::RefCell<Vec<(pg_sys::RelFileNode, Vec<pg_sys::Buffer>)>> = const { std::cell::RefCell::new(Vec::new()) };
}
const RECENT_INDEXES: usize = 8;

impl RecentBuffers {
    /// The memo for `index`, taken out of the backend's list until dropped.
    ///
    /// # Safety
    /// `index` must be an open relation.
    pub unsafe fn take(index: pg_sys::Relation) -> Self {
        // SAFETY: caller's contract.
        let node = unsafe { (*index).rd_node };
        let same = |(n, _): &(pg_sys::RelFileNode, _)| n.relNode == node.relNode && n.dbNode == node.dbNode && n.spcNode == node.spcNode;
        let buffers = RECENT.with_borrow_mut(|list| list.iter().position(same).map(|i| list.swap_remove(i).1));
        RecentBuffers { node, buffers: buffers.unwrap_or_default() }
    }

    /// Pins `block`, through the buffer that held it last if it still does.
    ///
    /// # Safety
    /// `index` must be the open relation this memo was taken for.
    pub unsafe fn read(&mut self, index: pg_sys::Relation, block: u32) -> Buffer {
        let at = block as usize;
        if let Some(&recent) = self.buffers.get(at) {
            // SAFETY: Postgres validates `recent` against the block before pinning it.
            if recent != 0 && unsafe { pg_sys::ReadRecentBuffer(self.node, pg_sys::ForkNumber::MAIN_FORKNUM, block, recent) } {
                return Buffer(recent);
            }
        }
        // SAFETY: caller's contract.
        let buffer = unsafe { Buffer::read(index, block) };
        if self.buffers.len() <= at {
            self.buffers.resize(at + 1, 0);
        }
        self.buffers[at] = buffer.0;
        buffer
    }

    /// Where `block`'s page and its buffer descriptor were last seen in shared memory,
    /// as a hint for prefetching.
    pub fn hint(&self, block: u32) -> Option<(*const u8, &'static [u8])> {
        let buffer = *self.buffers.get(block as usize)?;
        // Local buffers (temporary indexes) live elsewhere; they are rarely large.
        (buffer > 0).then(|| {
            let at = buffer as usize - 1;
            // SAFETY: BufferBlocks and BufferDescriptors are the shared buffer pool and its
            // descriptor array, mapped for the backend's life; `buffer` was a valid shared
            // buffer number when recorded. The descriptor is only prefetched, never read.
            unsafe {
                let page = pg_sys::BufferBlocks.cast::<u8>().cast_const().add(at * pg_sys::BLCKSZ as usize);
                let descriptor = std::slice::from_raw_parts(pg_sys::BufferDescriptors.add(at).cast::<u8>(), 64);
                (page, descriptor)
            }
        })
    }
}

impl Drop for RecentBuffers {
    fn drop(&mut self) {
        let memo = (self.node, std::mem::take(&mut self.buffers));
        RECENT.with_borrow_mut(|list| {
            if list.len() >= RECENT_INDEXES {
                list.remove(0);
            }
            list.push(memo);
        });
    }
}

/// One WAL-logged change to a set of locked buffers: register buffers, edit the
/// returned page images, then `finish` (which applies and logs them atomically).
pub struct Change(*mut pg_sys::GenericXLogState);

impl Change {
    /// # Safety
    /// `index` must be an open index relation.
    pub unsafe fn start(index: pg_sys::Relation) -> Change {
        // SAFETY: caller's contract.
        Change(unsafe { pg_sys::GenericXLogStart(index) })
    }

    /// Registers an exclusively locked buffer; edit the returned page, not the buffer's.
    pub fn page(&mut self, buffer: &Buffer) -> pg_sys::Page {
        // SAFETY: the state is live and the buffer exclusively locked by the caller.
        unsafe { pg_sys::GenericXLogRegisterBuffer(self.0, buffer.0, 0) }
    }

    /// Registers a buffer whose page is rewritten from scratch (logs a full image).
    pub fn new_page(&mut self, buffer: &Buffer) -> pg_sys::Page {
        // SAFETY: as above.
        unsafe { pg_sys::GenericXLogRegisterBuffer(self.0, buffer.0, pg_sys::GENERIC_XLOG_FULL_IMAGE as i32) }
    }

    pub fn finish(self) {
        // SAFETY: the state is live; this consumes it.
        unsafe { pg_sys::GenericXLogFinish(self.0) };
    }

    /// Drops the edits; the registered buffers keep their contents.
    pub fn abort(self) {
        // SAFETY: the state is live; this consumes it.
        unsafe { pg_sys::GenericXLogAbort(self.0) };
    }
}

/// Reads the metapage.
///
/// # Safety
/// `index` must be an open index relation of this access method.
pub unsafe fn read_meta(index: pg_sys::Relation) -> Result<Meta, Error> {
    // SAFETY: block 0 always exists once the index is built.
    unsafe {
        let buffer = Buffer::read(index, META_BLOCK);
        buffer.lock_share();
        let contents = std::slice::from_raw_parts(pg_sys::PageGetContents(buffer.page()).cast::<u8>(), META_SIZE);
        let meta = Meta::decode(contents).ok_or_else(|| bad_meta(contents));
        buffer.unlock_release();
        meta
    }
}

/// Rewrites the metapage, WAL-logged.
///
/// # Safety
/// `index` must be an open index relation of this access method.
pub unsafe fn update_meta(index: pg_sys::Relation, update: impl FnOnce(&mut Meta)) -> Result<(), Error> {
    // SAFETY: exclusive lock on the metapage for the read-modify-write.
    unsafe {
        let buffer = Buffer::read(index, META_BLOCK);
        buffer.lock_exclusive();
        let mut change = Change::start(index);
        let page = change.page(&buffer);
        let contents = std::slice::from_raw_parts(pg_sys::PageGetContents(page).cast::<u8>(), META_SIZE);
        let Some(mut meta) = Meta::decode(contents) else {
            let error = bad_meta(contents);
            change.abort();
            buffer.unlock_release();
            return Err(error);
        };
        update(&mut meta);
        write_meta_page(page, &meta);
        change.finish();
        buffer.unlock_release();
        Ok(())
    }
}

/// The block number whose heavyweight lock guards the entry point (never a data page
/// lock: buffer locks are separate).
const UPDATE_LOCK: u32 = META_BLOCK;

/// Takes the graph lock: shared by inserts that keep the entry point, exclusive for a
/// change of the entry point and for VACUUM's repair.
pub(super) fn lock_graph(index: pg_sys::Relation, mode: u32) {
    // SAFETY: a heavyweight lock on the index, released by unlock_graph or at abort.
    unsafe { pg_sys::LockPage(index, UPDATE_LOCK, mode as pg_sys::LOCKMODE) }
}

pub(super) fn unlock_graph(index: pg_sys::Relation, mode: u32) {
    // SAFETY: we hold the lock in this mode.
    unsafe { pg_sys::UnlockPage(index, UPDATE_LOCK, mode as pg_sys::LOCKMODE) }
}
