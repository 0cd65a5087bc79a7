//! Interrupts seen from other threads: model watchers and the index build's coordinator
//! poll these flags, and only the backend's own thread acts on them.

use pgrx::pg_sys;

/// True once Postgres has a cancel or terminate request for this backend. Read from the
/// watcher thread: the flags are `volatile sig_atomic_t`, set by signal handlers.
pub fn cancel_pending() -> bool {
    // SAFETY: plain reads of two int flags that live for the whole process.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
    }
}

/// Polled by the index build's coordinating thread; must not raise (worker threads are
/// running). True only when CHECK_FOR_INTERRUPTS would act now, so that stopping the
/// workers cannot turn into a busy loop while interrupts are held off.
pub fn interrupt_pending() -> bool {
    // SAFETY: plain reads of backend globals (the first set by signal handlers).
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0
            && pg_sys::InterruptHoldoffCount == 0
            && pg_sys::CritSectionCount == 0
    }
}
