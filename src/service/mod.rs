//! The model service: with `shared_preload_libraries = 'ragtune'`, one background worker
//! per database holds each model in use once per server, and runs every backend's
//! generations together with continuous batching (`ragtune_core::models::batch`) and
//! its embeddings in shared batches. Backends keep what needs the caller's identity
//! (rights checks, RLS-filtered retrieval, reading adapters) and send the prompt as
//! text (messages, retrieved passages) through a dynamic shared memory segment holding
//! two `shm_mq`s, as parallel query does; the service tokenizes, so no backend holds a
//! generator's tokenizer. Replies stream back as they are produced. SQL: sql/service.sql.
//!
//! Shared memory holds one slot per database served: the worker's pid and latch, the
//! queue of requests waiting for it (segment handles) and what the `ragtune_service`
//! view shows. Without the preload, or with `ragtune.model_service = off`, each backend
//! loads its own copy of a model, as before.

pub mod client;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};

/// Databases served at once (one worker each).
pub const MAX_SERVICES: usize = 8;
/// Requests one service's queue holds, whatever `ragtune.service_max_queued` says.
pub const QUEUE_CAPACITY: usize = 256;
/// Models one service reports in the view.
pub const MAX_MODELS: usize = 8;
const NAME_BYTES: usize = 64;

/// `ragtune.model_service`: run models in the shared service (superuser-only: turning it
/// off makes a session load its own copy of every model, which is what the service saves).
pub static MODEL_SERVICE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// `ragtune.service_threads`: threads the service's model calls use (0: every core).
pub static SERVICE_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// `ragtune.service_max_batch`: most generations one model decodes together.
pub static SERVICE_MAX_BATCH: GucSetting<i32> = GucSetting::<i32>::new(16);
/// `ragtune.service_max_queued`: most requests waiting for a service; more are refused.
pub static SERVICE_MAX_QUEUED: GucSetting<i32> = GucSetting::<i32>::new(64);
/// `ragtune.service_queue_timeout`: how long a request waits to be taken (ms).
pub static SERVICE_QUEUE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60_000);
/// `ragtune.service_memory_budget`: MB the service may hold in models and caches.
pub static SERVICE_MEMORY_BUDGET: GucSetting<i32> = GucSetting::<i32>::new(8192);
/// `ragtune.service_prefix_cache`: MB of keys and values the prefix cache keeps per model
/// (at most half the memory budget).
pub static SERVICE_PREFIX_CACHE: GucSetting<i32> = GucSetting::<i32>::new(256);

/// True in a server started with the library preloaded (set in the postmaster, so every
/// backend and worker forked from it sees it).
static PRELOADED: AtomicBool = AtomicBool::new(false);

#[derive(Copy, Clone)]
pub struct ModelStats {
    pub name: [u8; NAME_BYTES],
    pub generator: bool,
    pub model_bytes: u64,
    pub cache_bytes: u64,
    pub active: u32,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub tokens_per_second: f64,
    pub prefix_lookups: u64,
    pub prefix_hits: u64,
    pub prefix_tokens_reused: u64,
    pub drafted_tokens: u64,
    pub drafts_accepted: u64,
    pub texts_embedded: u64,
}

impl Default for ModelStats {
    fn default() -> Self {
        Self {
            name: [0; NAME_BYTES],
            generator: false,
            model_bytes: 0,
            cache_bytes: 0,
            active: 0,
            requests: 0,
            prompt_tokens: 0,
            generated_tokens: 0,
            tokens_per_second: 0.0,
            prefix_lookups: 0,
            prefix_hits: 0,
            prefix_tokens_reused: 0,
            drafted_tokens: 0,
            drafts_accepted: 0,
            texts_embedded: 0,
        }
    }
}

impl ModelStats {
    pub fn named(name: &str) -> Self {
        let mut stats = Self::default();
        // Cut at a character boundary: the view shows it as text.
        let mut end = name.len().min(NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        stats.name[..end].copy_from_slice(&name.as_bytes()[..end]);
        stats
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SlotStatus {
    Free,
    Starting,
    Running,
}

#[derive(Copy, Clone)]
pub struct Slot {
    pub database: u32,
    pub status: SlotStatus,
    pub pid: i32,
    /// The worker's latch (shared memory, at the same address in every process).
    pub latch: usize,
    /// Counts the workers started for this slot: a request remembers which one it was
    /// queued for, and sees when that one is gone.
    pub starts: u64,
    /// When the worker was asked for (ms since the epoch), while it is starting.
    pub asked_at: i64,
    pub queue: [u32; QUEUE_CAPACITY],
    pub queued: u32,
    /// Requests the worker took from the queue and has not admitted yet.
    pub waiting: u32,
    pub models: [ModelStats; MAX_MODELS],
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            database: 0,
            status: SlotStatus::Free,
            pid: 0,
            latch: 0,
            starts: 0,
            asked_at: 0,
            queue: [0; QUEUE_CAPACITY],
            queued: 0,
            waiting: 0,
            models: [ModelStats::default(); MAX_MODELS],
        }
    }
}

impl Slot {
    /// Empties the slot once its worker is gone (keeps `starts` counting).
    pub fn clear(&mut self) {
        *self = Slot { starts: self.starts, ..Slot::default() };
    }
}

#[derive(Copy, Clone, Default)]
pub struct Services {
    pub slots: [Slot; MAX_SERVICES],
}

// SAFETY: plain values only (no pointers into process memory: the latch lives in
// shared memory, mapped at the same address in every process of the server).
unsafe impl PGRXSharedMemory for Services {}

pub static SERVICES: PgLwLock<Services> = unsafe { PgLwLock::new(c"ragtune_services") };

/// Whether calls go through the service: the library is preloaded and the setting on
/// (on a hot standby too).
pub fn available() -> bool {
    PRELOADED.load(Ordering::Relaxed) && MODEL_SERVICE.get()
}

pub fn init() {
    GucRegistry::define_bool_guc(
        c"ragtune.model_service",
        c"Run models in the shared model service",
        c"Needs shared_preload_libraries = 'ragtune'. Off: each session loads its own copy of a model.",
        &MODEL_SERVICE,
        GucContext::Suset,
        GucFlags::default(),
    );
    let ints: [(&std::ffi::CStr, &std::ffi::CStr, &std::ffi::CStr, &'static GucSetting<i32>, i32, i32, GucContext, GucFlags); 6] = [
        (c"ragtune.service_threads", c"Threads the model service's calls use", c"0 uses every core.", &SERVICE_THREADS, 0, 256, GucContext::Sighup, GucFlags::default()),
        (c"ragtune.service_max_batch", c"Most generations one model decodes together", c"", &SERVICE_MAX_BATCH, 1, 256, GucContext::Sighup, GucFlags::default()),
        (
            c"ragtune.service_max_queued",
            c"Most requests waiting for the model service",
            c"More are refused with an ERROR.",
            &SERVICE_MAX_QUEUED,
            1,
            QUEUE_CAPACITY as i32,
            GucContext::Sighup,
            GucFlags::default(),
        ),
        (
            c"ragtune.service_queue_timeout",
            c"How long a request waits for the model service to take it",
            c"",
            &SERVICE_QUEUE_TIMEOUT,
            1,
            i32::MAX,
            GucContext::Userset,
            GucFlags::UNIT_MS,
        ),
        (
            c"ragtune.service_memory_budget",
            c"Memory the model service may hold in models and caches",
            c"Requests wait while more would be needed; models not in use are unloaded first.",
            &SERVICE_MEMORY_BUDGET,
            64,
            i32::MAX,
            GucContext::Sighup,
            GucFlags::UNIT_MB,
        ),
        (
            c"ragtune.service_prefix_cache",
            c"Memory the model service's prefix cache keeps per model",
            c"Keys and values of prompts that ran, for requests that start the same way; at most half of ragtune.service_memory_budget.",
            &SERVICE_PREFIX_CACHE,
            0,
            i32::MAX,
            GucContext::Sighup,
            GucFlags::UNIT_MB,
        ),
    ];
    for (name, short, long, setting, min, max, context, flags) in ints {
        GucRegistry::define_int_guc(name, short, long, setting, min, max, context, flags);
    }
    // SAFETY: a plain read of a flag the postmaster sets while loading preloaded libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(SERVICES);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One row per model the service of this database holds (the `ragtune_service` view).
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn ragtune_service_status() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(model, String),
        name!(kind, String),
        name!(model_bytes, i64),
        name!(cache_bytes, i64),
        name!(active, i32),
        name!(queued, i32),
        name!(requests, i64),
        name!(prompt_tokens, i64),
        name!(generated_tokens, i64),
        name!(tokens_per_second, f64),
        name!(prefix_lookups, i64),
        name!(prefix_hits, i64),
        name!(prefix_tokens_reused, i64),
        name!(drafted_tokens, i64),
        name!(drafts_accepted, i64),
        name!(texts_embedded, i64),
    ),
> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return TableIterator::new(Vec::new());
    }
    // SAFETY: plain read of the backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let services = SERVICES.share();
    let rows: Vec<_> = services
        .slots
        .iter()
        .filter(|slot| slot.database == database && slot.status == SlotStatus::Running)
        .flat_map(|slot| {
            slot.models.iter().filter(|m| m.name[0] != 0).map(move |m| {
                (
                    slot.pid,
                    m.name(),
                    if m.generator { "generator" } else { "embedding" }.to_string(),
                    m.model_bytes as i64,
                    m.cache_bytes as i64,
                    m.active as i32,
                    (slot.queued + slot.waiting) as i32,
                    m.requests as i64,
                    m.prompt_tokens as i64,
                    m.generated_tokens as i64,
                    m.tokens_per_second,
                    m.prefix_lookups as i64,
                    m.prefix_hits as i64,
                    m.prefix_tokens_reused as i64,
                    m.drafted_tokens as i64,
                    m.drafts_accepted as i64,
                    m.texts_embedded as i64,
                )
            })
        })
        .collect();
    TableIterator::new(rows)
}
