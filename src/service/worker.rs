//! The model service's background worker: one per database, started by the first
//! request from it. Each turn of its loop takes new requests from the slot's queue,
//! admits what fits (a free place in the model's batch, the memory budget), runs one
//! batched step per generator and one shared batch of texts per embedding model, and
//! streams replies back. A request whose backend went away (cancel, statement_timeout,
//! exit) is dropped at the next turn without disturbing the others. A failure of one
//! model call fails the requests it served, as ERRORs in their backends; a panic is
//! caught the same way. Anything else (an ERROR in the worker itself) ends the worker:
//! its requests see it gone, and the next request starts a new one.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use super::client::{Header, HEADER_BYTES};
use super::{ModelStats, SlotStatus, MAX_MODELS, SERVICES, SERVICE_MAX_BATCH, SERVICE_MEMORY_BUDGET, SERVICE_PREFIX_CACHE, SERVICE_THREADS};
use crate::catalog::large_objects::read_large_object;
use crate::catalog::onnx_runtime;
use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::finetune::OutputAdapter;
use ragtune_core::models::batch::{Batch, BatchOptions, Event, Sequence};
use ragtune_core::models::{AppliedAdapter, Embedder, Generator, MadePrompt, ModelConfig};
use ragtune_core::service::{GenerateRequest, ModelRef, Reply, Request};

/// Prompt tokens one prefill call runs between decode steps.
const PREFILL_CHUNK: usize = 128;
/// Texts embedded in one shared call.
const EMBED_BATCH: usize = 16;

type Key = u64;

struct Client {
    handle: pg_sys::dsm_handle,
    requests: *mut pg_sys::shm_mq_handle,
    replies: *mut pg_sys::shm_mq_handle,
    /// Replies not yet taken by the queue (the backend reads slower than we write).
    outbox: VecDeque<Vec<u8>>,
    /// Waiting to be admitted: the request itself.
    waiting: Option<Request>,
    model: String,
    /// Its last reply is in the outbox.
    finished: bool,
}

struct LoadedGenerator {
    model: ModelRef,
    generator: Generator,
    batch: Batch<Key>,
    bytes: usize,
    stats: ModelStats,
    last_generated: u64,
    last_rate_at: Instant,
}

struct EmbedJob {
    key: Key,
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

struct LoadedEmbedder {
    model: ModelRef,
    embedder: Embedder,
    jobs: VecDeque<EmbedJob>,
    bytes: usize,
    stats: ModelStats,
}

struct Service {
    slot: usize,
    clients: HashMap<Key, Client>,
    /// Keys of clients waiting to be admitted, oldest first.
    waiting: VecDeque<Key>,
    generators: HashMap<String, LoadedGenerator>,
    embedders: HashMap<String, LoadedEmbedder>,
    next_key: Key,
}

fn shutdown_requested() -> bool {
    // SAFETY: plain read of a flag set by the SIGTERM handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// The worker's entry point; its argument is `(starts << 8) | slot`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn ragtune_service_main(arg: pg_sys::Datum) {
    let arg = arg.value() as u64;
    let slot = (arg & 0xff) as usize;
    let starts = arg >> 8;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = {
        let services = SERVICES.share();
        let s = &services.slots[slot.min(services.slots.len() - 1)];
        if slot >= services.slots.len() || s.starts != starts || s.status != SlotStatus::Starting {
            return;
        }
        s.database
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    {
        let mut services = SERVICES.exclusive();
        let s = &mut services.slots[slot];
        if s.starts != starts || s.status != SlotStatus::Starting {
            return;
        }
        s.status = SlotStatus::Running;
        // SAFETY: plain reads of the worker's own identity.
        unsafe {
            s.pid = pg_sys::MyProcPid;
            s.latch = pg_sys::MyLatch as usize;
        }
    }
    // SAFETY: registers a plain callback; it runs once at exit.
    unsafe { pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(slot)) };
    log!("ragtune model service started for database {database}");
    let mut service = Service {
        slot,
        clients: HashMap::new(),
        waiting: VecDeque::new(),
        generators: HashMap::new(),
        embedders: HashMap::new(),
        next_key: 1,
    };
    while !shutdown_requested() {
        let busy = service.turn();
        if !busy {
            // SAFETY: plain latch wait of the worker's own latch.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    1000,
                    pg_sys::PG_WAIT_EXTENSION,
                );
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    let slot = arg.value();
    let mut services = SERVICES.exclusive();
    // SAFETY: plain read of the worker's pid.
    if services.slots[slot].pid == unsafe { pg_sys::MyProcPid } {
        services.slots[slot].clear();
    }
}

fn memory_budget() -> usize {
    SERVICE_MEMORY_BUDGET.get().max(64) as usize * (1 << 20)
}

fn batch_options() -> BatchOptions {
    BatchOptions {
        max_batch: SERVICE_MAX_BATCH.get().max(1) as usize,
        prefill_chunk: PREFILL_CHUNK,
        // Within the budget, so that the cache never keeps a model from loading.
        prefix_cache_bytes: (SERVICE_PREFIX_CACHE.get().max(0) as usize * (1 << 20)).min(memory_budget() / 2),
    }
}

fn threads() -> usize {
    match SERVICE_THREADS.get() {
        n if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Catches a panic in model code as an error of the requests it concerns.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::new(ErrorKind::ExternalRoutineException, "the model service failed on this request").with_detail(message))
    })
}

/// A model's row as the worker reads it: it must be the version the backend checked.
fn read_model(model: &ModelRef) -> Result<(ModelConfig, Vec<u8>, Vec<u8>), Error> {
    let name = model.name.clone();
    let row = BackgroundWorker::transaction(move || {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT set_config('search_path', 'pg_catalog, ' || quote_ident(n.nspname), true) \
                     FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
                     WHERE e.extname = 'ragtune'",
                    None,
                    &[],
                )
                .map(|_| ())
                .map_err(|e| e.to_string())?;
            let table = client
                .select("SELECT config::text, onnx, version, tokenizer FROM ragtune_models WHERE name = $1", Some(1), &[name.as_str().into()])
                .map_err(|e| e.to_string())?;
            let Some(row) = table.into_iter().next() else { return Ok(None) };
            let config = row.get::<String>(1).map_err(|e| e.to_string())?.unwrap_or_default();
            let onnx = row.get::<pg_sys::Oid>(2).map_err(|e| e.to_string())?.unwrap_or(pg_sys::InvalidOid);
            let version = row.get::<i64>(3).map_err(|e| e.to_string())?.unwrap_or_default();
            let tokenizer = row.get::<Vec<u8>>(4).map_err(|e| e.to_string())?.unwrap_or_default();
            let bytes = if onnx.to_u32() == model.onnx && version == model.version { read_large_object(onnx) } else { Vec::new() };
            Ok(Some((config, onnx.to_u32(), version, tokenizer, bytes)))
        })
    });
    let spi_failed = |e: String| Error::new(ErrorKind::ExternalRoutineException, format!("SPI failed: {e}"));
    let Some((config, onnx, version, tokenizer, bytes)) = row.map_err(spi_failed)? else {
        return Err(Error::new(ErrorKind::UndefinedObject, format!("model \"{}\" does not exist", model.name)));
    };
    if onnx != model.onnx || version != model.version {
        return Err(Error::new(ErrorKind::InvalidParameterValue, format!("model \"{}\" changed while the request was sent", model.name))
            .with_hint("Retry the call."));
    }
    Ok((ModelConfig::from_json(&config)?, tokenizer, bytes))
}

impl Service {
    /// One turn of the loop; false when there was nothing to do.
    fn turn(&mut self) -> bool {
        // SAFETY: resets the worker's own latch before looking for work, so that a
        // request queued from now on wakes the next wait.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        pg_sys::check_for_interrupts!();
        // SAFETY: plain read of the flag the SIGHUP handler sets.
        if unsafe { std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) } != 0 {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        self.take_queued();
        self.admit();
        let mut busy = false;
        let names: Vec<String> = self.generators.keys().cloned().collect();
        for name in names {
            busy |= self.step_generator(&name);
        }
        let names: Vec<String> = self.embedders.keys().cloned().collect();
        for name in names {
            busy |= self.step_embedder(&name);
        }
        self.flush();
        self.publish_stats();
        busy
    }

    /// Attaches the segments of newly queued requests and reads their requests.
    fn take_queued(&mut self) {
        let handles: Vec<pg_sys::dsm_handle> = {
            let mut services = SERVICES.exclusive();
            let slot = &mut services.slots[self.slot];
            let handles = slot.queue[..slot.queued as usize].to_vec();
            slot.queued = 0;
            handles
        };
        for handle in handles {
            // SAFETY: attaching outside any transaction keeps the mapping until it is
            // detached below (no resource owner); a backend that gave up already has
            // freed it: attach then fails and the request is gone.
            unsafe {
                let seg = pg_sys::dsm_attach(handle);
                if seg.is_null() {
                    continue;
                }
                let base = pg_sys::dsm_segment_address(seg).cast::<u8>();
                let header = base.cast::<Header>().read();
                let request_queue = base.add(HEADER_BYTES).cast::<pg_sys::shm_mq>();
                let reply_queue = base.add(HEADER_BYTES + header.request_queue_bytes as usize).cast::<pg_sys::shm_mq>();
                pg_sys::shm_mq_set_receiver(request_queue, pg_sys::MyProc);
                pg_sys::shm_mq_set_sender(reply_queue, pg_sys::MyProc);
                let requests = pg_sys::shm_mq_attach(request_queue, seg, std::ptr::null_mut());
                let replies = pg_sys::shm_mq_attach(reply_queue, seg, std::ptr::null_mut());
                let mut size = 0;
                let mut data = std::ptr::null_mut();
                let received = pg_sys::shm_mq_receive(requests, &mut size, &mut data, true);
                let key = self.next_key;
                self.next_key += 1;
                let mut client =
                    Client { handle, requests, replies, outbox: VecDeque::new(), waiting: None, model: String::new(), finished: false };
                if received != pg_sys::shm_mq_result::SHM_MQ_SUCCESS {
                    pg_sys::dsm_detach(seg);
                    continue;
                }
                match Request::decode(std::slice::from_raw_parts(data.cast::<u8>(), size)) {
                    Ok(request) => {
                        client.model = match &request {
                            Request::Generate(g) => g.model.name.clone(),
                            Request::Embed { model, .. } => model.name.clone(),
                        };
                        client.waiting = Some(request);
                        self.waiting.push_back(key);
                    }
                    Err(error) => {
                        client.outbox.push_back(Reply::Failed(error).encode());
                        client.finished = true;
                    }
                }
                self.clients.insert(key, client);
            }
        }
    }

    fn reply(&mut self, key: Key, reply: Reply) {
        if let Some(client) = self.clients.get_mut(&key) {
            if matches!(reply, Reply::Finished { .. } | Reply::Failed(_) | Reply::Embeddings(_)) {
                client.finished = true;
            }
            client.outbox.push_back(reply.encode());
        }
    }

    /// Moves waiting requests into their model's batch while there is room.
    fn admit(&mut self) {
        let mut still_waiting = VecDeque::new();
        while let Some(key) = self.waiting.pop_front() {
            let Some(request) = self.clients.get_mut(&key).and_then(|c| c.waiting.take()) else { continue };
            match self.try_admit(key, request) {
                Ok(None) => {}
                Ok(Some(request)) => {
                    self.clients.get_mut(&key).expect("waiting client").waiting = Some(request);
                    still_waiting.push_back(key);
                }
                Err(error) => self.reply(key, Reply::Failed(error)),
            }
        }
        self.waiting = still_waiting;
    }

    /// Admits `request`; gives it back when it must wait.
    fn try_admit(&mut self, key: Key, request: Request) -> Result<Option<Request>, Error> {
        match request {
            Request::Generate(g) => {
                if !self.generator_ready(&g.model)? {
                    return Ok(Some(Request::Generate(g)));
                }
                let loaded = self.generators.get_mut(&g.model.name).expect("loaded");
                // Made again while the request waits for room: cheap next to a model step.
                let prompt = guarded(|| loaded.generator.text().make_prompt(&g.messages, g.grounding.as_ref(), g.max_tokens as usize))?;
                let estimate = (prompt.ids.len() + g.max_tokens as usize) * loaded.generator.cache_bytes_per_token();
                let held = loaded.bytes + loaded.batch.cache_bytes(&loaded.generator);
                if !loaded.batch.has_room() || (!loaded.batch.is_empty() && held + estimate > memory_budget()) {
                    return Ok(Some(Request::Generate(g)));
                }
                let made = Reply::Prompt { tokens: prompt.ids.len() as u32, dropped: prompt.dropped as u32 };
                let sequence = sequence(g, prompt)?;
                let events = guarded(|| loaded.batch.add(key, &loaded.generator, sequence))?;
                loaded.stats.requests += 1;
                self.reply(key, Reply::Admitted);
                self.reply(key, made);
                self.dispatch(events);
                Ok(None)
            }
            Request::Embed { model, texts } => {
                if !self.embedder_ready(&model)? {
                    return Ok(Some(Request::Embed { model, texts }));
                }
                let loaded = self.embedders.get_mut(&model.name).expect("loaded");
                loaded.stats.requests += 1;
                loaded.jobs.push_back(EmbedJob { key, texts, vectors: Vec::new() });
                self.reply(key, Reply::Admitted);
                Ok(None)
            }
        }
    }

    /// Whether `model` is loaded as the request's version; loads it when it can (false:
    /// the loaded version still serves requests, or memory must be freed first).
    fn generator_ready(&mut self, model: &ModelRef) -> Result<bool, Error> {
        if let Some(loaded) = self.generators.get(&model.name) {
            if loaded.model == *model {
                return Ok(true);
            }
            if !loaded.batch.is_empty() {
                return Ok(false);
            }
            self.generators.remove(&model.name);
        }
        let (config, tokenizer, bytes) = read_model(model)?;
        if !self.make_room(bytes.len()) {
            return Ok(false);
        }
        let generator = guarded(|| Generator::new(onnx_runtime()?, &bytes, &tokenizer, &config, threads()))?;
        let mut stats = ModelStats::named(&model.name);
        stats.generator = true;
        stats.model_bytes = bytes.len() as u64;
        log!("ragtune model service loaded generator \"{}\" ({} MB)", model.name, bytes.len() >> 20);
        self.generators.insert(
            model.name.clone(),
            LoadedGenerator {
                model: model.clone(),
                generator,
                batch: Batch::new(batch_options()),
                bytes: bytes.len(),
                stats,
                last_generated: 0,
                last_rate_at: Instant::now(),
            },
        );
        Ok(true)
    }

    fn embedder_ready(&mut self, model: &ModelRef) -> Result<bool, Error> {
        if let Some(loaded) = self.embedders.get(&model.name) {
            if loaded.model == *model {
                return Ok(true);
            }
            if !loaded.jobs.is_empty() {
                return Ok(false);
            }
            self.embedders.remove(&model.name);
        }
        let (config, tokenizer, bytes) = read_model(model)?;
        if !self.make_room(bytes.len()) {
            return Ok(false);
        }
        let embedder = guarded(|| Embedder::new(onnx_runtime()?, &bytes, &tokenizer, &config, threads()))?;
        let mut stats = ModelStats::named(&model.name);
        stats.model_bytes = bytes.len() as u64;
        log!("ragtune model service loaded embedding model \"{}\" ({} MB)", model.name, bytes.len() >> 20);
        self.embedders
            .insert(model.name.clone(), LoadedEmbedder { model: model.clone(), embedder, jobs: VecDeque::new(), bytes: bytes.len(), stats });
        Ok(true)
    }

    /// Unloads idle models until `bytes` more fit the budget; false when they cannot.
    fn make_room(&mut self, bytes: usize) -> bool {
        loop {
            let held: usize = self.generators.values().map(|g| g.bytes + g.batch.cache_bytes(&g.generator)).sum::<usize>()
                + self.embedders.values().map(|e| e.bytes).sum::<usize>();
            if held + bytes <= memory_budget() || held == 0 {
                return true;
            }
            let idle_generator = self.generators.iter().find(|(_, g)| g.batch.is_empty()).map(|(n, _)| n.clone());
            let idle_embedder = self.embedders.iter().find(|(_, e)| e.jobs.is_empty()).map(|(n, _)| n.clone());
            match (idle_generator, idle_embedder) {
                (Some(name), _) => {
                    self.generators.remove(&name);
                }
                (None, Some(name)) => {
                    self.embedders.remove(&name);
                }
                (None, None) => return false,
            }
        }
    }

    fn step_generator(&mut self, name: &str) -> bool {
        let loaded = self.generators.get_mut(name).expect("listed");
        if loaded.batch.is_empty() {
            return false;
        }
        let events = match guarded(|| Ok(loaded.batch.step(&mut loaded.generator, &shutdown_requested))) {
            Ok(events) => events,
            Err(error) => {
                // A panic leaves the batch in an unknown state: fail all of it, start anew.
                let keys: Vec<Key> = self.clients.iter().filter(|(_, c)| c.model == name && c.waiting.is_none()).map(|(k, _)| *k).collect();
                let loaded = self.generators.get_mut(name).expect("listed");
                loaded.batch = Batch::new(batch_options());
                for key in keys {
                    self.reply(key, Reply::Failed(error.clone()));
                }
                return true;
            }
        };
        self.dispatch(events);
        true
    }

    fn dispatch(&mut self, events: Vec<Event<Key>>) {
        for event in events {
            match event {
                Event::Piece(key, piece) => self.reply(key, Reply::Piece(piece)),
                Event::Finished(key, finish, generated) => self.reply(key, Reply::Finished { finish, generated: generated as u32 }),
                Event::Failed(key, error) => self.reply(key, Reply::Failed(error)),
            }
        }
    }

    /// Embeds up to [`EMBED_BATCH`] texts of the model's oldest jobs in one call.
    fn step_embedder(&mut self, name: &str) -> bool {
        let loaded = self.embedders.get_mut(name).expect("listed");
        if loaded.jobs.is_empty() {
            return false;
        }
        let mut texts: Vec<&str> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        for (j, job) in loaded.jobs.iter().enumerate() {
            let from = job.vectors.len();
            let take = (EMBED_BATCH - texts.len()).min(job.texts.len() - from);
            texts.extend(job.texts[from..from + take].iter().map(String::as_str));
            owners.extend(std::iter::repeat_n(j, take));
            if texts.len() == EMBED_BATCH {
                break;
            }
        }
        let embedder = &mut loaded.embedder;
        let result = if texts.is_empty() { Ok(Vec::new()) } else { guarded(|| embedder.embed_batch(&texts, &shutdown_requested)) };
        let mut replies = Vec::new();
        match result {
            Ok(vectors) => {
                loaded.stats.texts_embedded += vectors.len() as u64;
                for (vector, j) in vectors.into_iter().zip(owners) {
                    loaded.jobs[j].vectors.push(vector);
                }
                while loaded.jobs.front().is_some_and(|job| job.vectors.len() == job.texts.len()) {
                    let job = loaded.jobs.pop_front().expect("front");
                    replies.push((job.key, Reply::Embeddings(job.vectors)));
                }
            }
            Err(error) => {
                let failed: Vec<usize> = owners.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().rev().collect();
                for j in failed {
                    let job = loaded.jobs.remove(j).expect("listed job");
                    replies.push((job.key, Reply::Failed(error.clone())));
                }
            }
        }
        for (key, reply) in replies {
            self.reply(key, reply);
        }
        true
    }

    /// Writes what the queues take, and lets go of finished and abandoned requests.
    fn flush(&mut self) {
        let mut gone = Vec::new();
        for (&key, client) in self.clients.iter_mut() {
            let mut detached = false;
            while let Some(message) = client.outbox.front() {
                // SAFETY: the handle is valid while the segment is attached (until below).
                let sent = unsafe { pg_sys::shm_mq_send(client.replies, message.len(), message.as_ptr().cast(), true, true) };
                match sent {
                    pg_sys::shm_mq_result::SHM_MQ_SUCCESS => {
                        client.outbox.pop_front();
                    }
                    pg_sys::shm_mq_result::SHM_MQ_DETACHED => {
                        detached = true;
                        break;
                    }
                    _ => break,
                }
            }
            if !detached && !client.finished {
                // The backend sends nothing after its request: a receive only tells
                // whether it is still there.
                let mut size = 0;
                let mut data = std::ptr::null_mut();
                // SAFETY: as above.
                detached = unsafe { pg_sys::shm_mq_receive(client.requests, &mut size, &mut data, true) }
                    == pg_sys::shm_mq_result::SHM_MQ_DETACHED;
            }
            if detached || (client.finished && client.outbox.is_empty()) {
                gone.push(key);
            }
        }
        for key in gone {
            let client = self.clients.remove(&key).expect("listed");
            if !client.finished {
                if let Some(loaded) = self.generators.get_mut(&client.model) {
                    loaded.batch.remove(key, &loaded.generator);
                }
                if let Some(loaded) = self.embedders.get_mut(&client.model) {
                    loaded.jobs.retain(|job| job.key != key);
                }
                self.waiting.retain(|&k| k != key);
            }
            // SAFETY: the segment was attached by this worker; detaching ends the request.
            unsafe {
                let seg = pg_sys::dsm_find_mapping(client.handle);
                if !seg.is_null() {
                    pg_sys::dsm_detach(seg);
                }
            }
        }
    }

    fn publish_stats(&mut self) {
        let mut models = [ModelStats::default(); MAX_MODELS];
        let mut at = 0;
        for loaded in self.generators.values_mut() {
            let batch = loaded.batch.stats();
            let elapsed = loaded.last_rate_at.elapsed().as_secs_f64();
            if elapsed >= 1.0 {
                loaded.stats.tokens_per_second = (batch.generated_tokens - loaded.last_generated) as f64 / elapsed;
                loaded.last_generated = batch.generated_tokens;
                loaded.last_rate_at = Instant::now();
            }
            loaded.stats.active = loaded.batch.len() as u32;
            loaded.stats.cache_bytes = loaded.batch.cache_bytes(&loaded.generator) as u64;
            loaded.stats.prompt_tokens = batch.prompt_tokens;
            loaded.stats.generated_tokens = batch.generated_tokens;
            loaded.stats.prefix_lookups = batch.prefix_lookups;
            loaded.stats.prefix_hits = batch.prefix_hits;
            loaded.stats.prefix_tokens_reused = batch.prefix_tokens_reused;
            loaded.stats.drafted_tokens = batch.drafted_tokens;
            loaded.stats.drafts_accepted = batch.drafts_accepted;
            if at < MAX_MODELS {
                models[at] = loaded.stats;
                at += 1;
            }
        }
        for loaded in self.embedders.values_mut() {
            loaded.stats.active = loaded.jobs.len() as u32;
            if at < MAX_MODELS {
                models[at] = loaded.stats;
                at += 1;
            }
        }
        let waiting = self.waiting.len() as u32;
        let mut services = SERVICES.exclusive();
        let slot = &mut services.slots[self.slot];
        slot.models = models;
        slot.waiting = waiting;
    }
}

/// The batch's sequence for a request and the prompt made of it, with its adapter read
/// from the bytes the backend sent (checked as when it is read from the catalog).
fn sequence(g: GenerateRequest, prompt: MadePrompt) -> Result<Sequence, Error> {
    let adapter = match g.adapter {
        Some(bytes) => {
            Some(AppliedAdapter { adapter: std::sync::Arc::new(OutputAdapter::from_bytes(&bytes)?), quotable_from: prompt.user_start })
        }
        None => None,
    };
    Ok(Sequence {
        prompt: prompt.ids,
        max_tokens: g.max_tokens as usize,
        sampling: g.sampling,
        stop: g.stop,
        adapter,
        shared_prefix: prompt.user_start,
        cache_scope: g.cache_scope,
        draft_tokens: g.draft_tokens as usize,
    })
}
