//! Stopping model work when the caller asks: between steps of pure code (tokenizing
//! windows, sub-batches, chunking) and inside an ONNX Runtime call, from a watcher thread.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::DynValue;

use super::runtime::with_signals_blocked;
use crate::error::{Error, ErrorKind};

/// Asked of the caller while model work runs (also from another thread): true stops the
/// work, which then fails with [`cancelled`]; the caller then raises its own cancellation
/// error.
pub type CancelCheck<'a> = &'a (dyn Fn() -> bool + Sync);

pub fn cancelled() -> Error {
    Error::new(ErrorKind::QueryCanceled, "the model call was cancelled")
}

/// Err([`cancelled`]) once `cancel` says so.
pub fn check(cancel: CancelCheck<'_>) -> Result<(), Error> {
    if cancel() {
        Err(cancelled())
    } else {
        Ok(())
    }
}

/// Runs the session while a watcher thread polls `cancel` and stops the run when it says
/// so (a long prompt or a large batch takes seconds in one call). The watcher starts with
/// every signal blocked, so Postgres's signals keep reaching the backend's own thread.
/// `configure` sets further run options; a failed run is reported by `run_failed`.
pub fn run_cancellable(
    session: &mut Session,
    inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
    configure: impl FnOnce(&mut RunOptions) -> ort::Result<()>,
    run_failed: fn(ort::Error) -> Error,
    cancel: CancelCheck<'_>,
) -> Result<HashMap<String, DynValue>, Error> {
    let mut options = RunOptions::new().map_err(run_failed)?;
    configure(&mut options).map_err(run_failed)?;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = with_signals_blocked(|| {
            scope.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    if cancel() {
                        let _ = options.terminate();
                        return;
                    }
                    std::thread::park_timeout(Duration::from_millis(5));
                }
            })
        });
        let result = session
            .run_with_options(inputs, &options)
            .map(|outputs| outputs.into_iter().map(|(name, value)| (name.to_string(), value)).collect());
        // Wake the watcher so that it ends now rather than after its nap: the scope waits
        // for it, once per call.
        done.store(true, Ordering::Release);
        watcher.thread().unpark();
        result.map_err(|e| if cancel() { cancelled() } else { run_failed(e) })
    })
}
