//! A backend's side of a request to the model service: start the database's worker if
//! none runs, put the request in a new shared memory segment, queue the segment's
//! handle, then read replies as they come, waiting on the latch (cancel requests and
//! statement_timeout are served while it waits). Dropping a call detaches the segment:
//! the service sees the request abandoned and drops it at its next step, also when this
//! backend errors out or exits mid-answer.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use super::{now_ms, SlotStatus, MAX_SERVICES, SERVICES, SERVICE_MAX_QUEUED, SERVICE_QUEUE_TIMEOUT};
use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::service::{Reply, Request};

/// Bytes of the queue replies come through (a longer reply streams through it).
pub const REPLY_QUEUE_BYTES: usize = 64 << 10;
/// The largest request (a prompt with a generator adapter's weights).
const MAX_REQUEST_BYTES: usize = 256 << 20;
/// Where the queues start in the segment, and the room shm_mq needs beyond a message.
pub const HEADER_BYTES: usize = 64;
const QUEUE_OVERHEAD: usize = 1024;
/// A worker asked for but not running after this long is asked for again.
const START_TIMEOUT_MS: i64 = 30_000;

/// The segment's layout, written at its start by the backend and read by the worker.
#[repr(C)]
pub struct Header {
    pub request_queue_bytes: u64,
    pub reply_queue_bytes: u64,
}

fn busy(message: String) -> Error {
    Error::new(ErrorKind::InsufficientResources, message)
}

fn stopped() -> Error {
    Error::new(ErrorKind::InsufficientResources, "the model service stopped before it answered")
        .with_hint("The server log says why; the next call starts it again.")
}

/// One request in flight.
pub struct Call {
    handle: pg_sys::dsm_handle,
    replies: *mut pg_sys::shm_mq_handle,
    slot: usize,
    starts: u64,
    admitted: bool,
    queued_at: Instant,
}

impl Call {
    /// Sends `request` to this database's service (started first if none runs).
    pub fn start(request: &Request) -> Result<Call, Error> {
        let bytes = request.encode();
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(Error::new(
                ErrorKind::ProgramLimitExceeded,
                format!("a model service request of {} bytes is larger than the limit of {MAX_REQUEST_BYTES}", bytes.len()),
            ));
        }
        let (slot, starts) = service_slot()?;
        let request_queue_bytes = (bytes.len() + QUEUE_OVERHEAD).next_multiple_of(8);
        // SAFETY: the segment is created and laid out here before its handle is shared;
        // the handles live in TopTransactionContext, as long as the call can (a streamed
        // answer spans many calls of its function within one transaction).
        let (handle, replies) = unsafe {
            let seg = pg_sys::dsm_create(HEADER_BYTES + request_queue_bytes + REPLY_QUEUE_BYTES, 0);
            let base = pg_sys::dsm_segment_address(seg).cast::<u8>();
            base.cast::<Header>().write(Header {
                request_queue_bytes: request_queue_bytes as u64,
                reply_queue_bytes: REPLY_QUEUE_BYTES as u64,
            });
            let request_queue = pg_sys::shm_mq_create(base.add(HEADER_BYTES).cast(), request_queue_bytes);
            let reply_queue = pg_sys::shm_mq_create(base.add(HEADER_BYTES + request_queue_bytes).cast(), REPLY_QUEUE_BYTES);
            pg_sys::shm_mq_set_sender(request_queue, pg_sys::MyProc);
            pg_sys::shm_mq_set_receiver(reply_queue, pg_sys::MyProc);
            let (requests, replies) = PgMemoryContexts::TopTransactionContext.switch_to(|_| {
                (pg_sys::shm_mq_attach(request_queue, seg, std::ptr::null_mut()), pg_sys::shm_mq_attach(reply_queue, seg, std::ptr::null_mut()))
            });
            // The queue holds the whole message: this never waits for the worker.
            let sent = pg_sys::shm_mq_send(requests, bytes.len(), bytes.as_ptr().cast(), false, true);
            if sent != pg_sys::shm_mq_result::SHM_MQ_SUCCESS {
                pg_sys::dsm_detach(seg);
                return Err(Error::new(ErrorKind::ExternalRoutineException, "could not write the request for the model service"));
            }
            (pg_sys::dsm_segment_handle(seg), replies)
        };
        let call = Call { handle, replies, slot, starts, admitted: false, queued_at: Instant::now() };
        call.enqueue()?;
        Ok(call)
    }

    /// Puts the segment's handle in the service's queue, waiting (bounded) while it is full.
    fn enqueue(&self) -> Result<(), Error> {
        let timeout = queue_timeout();
        loop {
            let latch = {
                let mut services = SERVICES.exclusive();
                let slot = &mut services.slots[self.slot];
                if slot.starts != self.starts || slot.status == SlotStatus::Free {
                    return Err(stopped());
                }
                let limit = (SERVICE_MAX_QUEUED.get().max(1) as usize).min(slot.queue.len());
                if (slot.queued as usize) < limit {
                    slot.queue[slot.queued as usize] = self.handle;
                    slot.queued += 1;
                    Some(slot.latch)
                } else {
                    None
                }
            };
            match latch {
                Some(latch) => {
                    if latch != 0 {
                        // SAFETY: the worker's latch lives in shared memory as long as the slot says it runs.
                        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
                    }
                    return Ok(());
                }
                None if self.queued_at.elapsed() >= timeout => {
                    return Err(busy(format!(
                        "the model service's queue stayed full ({} requests) for {} ms",
                        SERVICE_MAX_QUEUED.get(),
                        timeout.as_millis()
                    ))
                    .with_hint("Retry later, or raise ragtune.service_max_queued or ragtune.service_queue_timeout."));
                }
                None => wait(Duration::from_millis(10)),
            }
        }
    }

    /// The next reply; an error when the service stopped, the request waited too long
    /// to be taken, or a reply is malformed.
    pub fn receive(&mut self) -> Result<Reply, Error> {
        loop {
            let mut size = 0;
            let mut data = std::ptr::null_mut();
            // SAFETY: the handle is valid while the segment is attached, which it is
            // until this call is dropped (or the transaction aborts, which ends it).
            let result = unsafe { pg_sys::shm_mq_receive(self.replies, &mut size, &mut data, true) };
            match result {
                pg_sys::shm_mq_result::SHM_MQ_SUCCESS => {
                    // SAFETY: shm_mq gives `size` readable bytes at `data` until the next receive.
                    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
                    match Reply::decode(bytes)? {
                        Reply::Admitted => self.admitted = true,
                        reply => return Ok(reply),
                    }
                }
                pg_sys::shm_mq_result::SHM_MQ_DETACHED => return Err(stopped()),
                _ => {
                    if !self.admitted && self.queued_at.elapsed() >= queue_timeout() {
                        return Err(busy(format!(
                            "the model service did not take the request within {} ms",
                            queue_timeout().as_millis()
                        ))
                        .with_hint("The service is busy: retry later, or raise ragtune.service_queue_timeout."));
                    }
                    if !self.service_runs() {
                        return Err(stopped());
                    }
                    wait(Duration::from_millis(250));
                }
            }
        }
    }

    fn service_runs(&self) -> bool {
        let services = SERVICES.share();
        let slot = &services.slots[self.slot];
        slot.starts == self.starts && slot.status != SlotStatus::Free
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.admitted {
            let mut services = SERVICES.exclusive();
            let slot = &mut services.slots[self.slot];
            let queued = slot.queued as usize;
            if let Some(at) = slot.queue[..queued].iter().position(|&h| h == self.handle) {
                slot.queue.copy_within(at + 1..queued, at);
                slot.queued -= 1;
            }
        }
        // SAFETY: an aborting transaction may have detached the segment already (its
        // resource owner ends before memory contexts are deleted): look it up first.
        unsafe {
            let seg = pg_sys::dsm_find_mapping(self.handle);
            if !seg.is_null() {
                pg_sys::dsm_detach(seg);
            }
        }
    }
}

fn queue_timeout() -> Duration {
    Duration::from_millis(SERVICE_QUEUE_TIMEOUT.get().max(1) as u64)
}

/// Sleeps on the backend's latch for at most `timeout`, then serves interrupts.
fn wait(timeout: Duration) {
    // SAFETY: plain latch wait of the backend's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pg_sys::check_for_interrupts!();
}

/// The slot of this database's service and which start of it, starting a worker when
/// none runs (or one asked for never came up).
fn service_slot() -> Result<(usize, u64), Error> {
    // SAFETY: plain read of the backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let (slot, starts) = {
        let mut services = SERVICES.exclusive();
        let now = now_ms();
        if let Some(at) = services.slots.iter().position(|s| s.database == database && s.status != SlotStatus::Free) {
            let slot = &mut services.slots[at];
            if slot.status == SlotStatus::Running || now - slot.asked_at < START_TIMEOUT_MS {
                return Ok((at, slot.starts));
            }
            slot.clear();
        }
        let at = services.slots.iter().position(|s| s.status == SlotStatus::Free).ok_or_else(|| {
            busy(format!("the model service already runs for {MAX_SERVICES} databases, its most"))
                .with_hint("Set ragtune.model_service = off for this database's sessions to run models in the session.")
        })?;
        let slot = &mut services.slots[at];
        slot.clear();
        slot.database = database;
        slot.status = SlotStatus::Starting;
        slot.starts += 1;
        slot.asked_at = now;
        (at, slot.starts)
    };
    let started = BackgroundWorkerBuilder::new("ragtune model service")
        .set_type("ragtune model service")
        .set_library("ragtune")
        .set_function("ragtune_service_main")
        .enable_spi_access()
        // Also on a hot standby: the worker only reads (catalog rows, large objects).
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_argument(Some(pg_sys::Datum::from((starts << 8) as usize | slot)))
        .load_dynamic();
    if started.is_err() {
        SERVICES.exclusive().slots[slot].clear();
        return Err(busy("could not start the model service: no background worker slot is free".into())
            .with_hint("Raise max_worker_processes."));
    }
    Ok((slot, starts))
}
