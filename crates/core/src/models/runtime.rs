//! ONNX Runtime, loaded once per process from a library path the caller names (the SQL
//! glue takes it from the `ragtune.onnxruntime_path` setting), and sessions built from
//! model bytes, since models live in the database rather than in files.
//!
//! Nothing here runs at `_PG_init`: a backend loads the runtime the first time it needs a
//! model. ONNX Runtime starts threads when the environment and a session are created;
//! those happen with every signal blocked, so the threads inherit a full mask and
//! Postgres signals (cancel, terminate, latch wake-ups) always reach the backend's own
//! thread. Running a session starts no threads.

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use super::onnx_check::check_model_bytes;
use crate::error::{Error, ErrorKind};

/// The setting that names ONNX Runtime's library; load errors point at it.
pub const LIBRARY_SETTING: &str = "ragtune.onnxruntime_path";

/// Where scripts/setup.sh installs ONNX Runtime's library (RAGTUNE_HOME/onnxruntime/ and
/// the file pgrx.toml's [onnxruntime] pins; a test checks that they agree): the
/// setting's default.
pub const DEFAULT_LIBRARY_PATH: &std::ffi::CStr = c"/var/lib/ragtune/onnxruntime/libonnxruntime.so.1.31.1";

/// The loaded library and the process's ONNX Runtime environment.
pub struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime's shared library from `library` (an absolute path is best: ort
/// resolves relative ones against the executable's directory) and creates the
/// environment; later calls return the same runtime.
///
/// A process keeps the first library it loads: asking for another path afterwards is an
/// error rather than a silent use of the old one. A failed load leaves nothing behind, so
/// it can be retried with a corrected path.
pub fn load(library: &Path) -> Result<&'static Runtime, Error> {
    if let Some(runtime) = RUNTIME.get() {
        return runtime.same_library(library).map(|()| runtime);
    }
    let _loading = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = RUNTIME.get() {
        return runtime.same_library(library).map(|()| runtime);
    }
    check_file(library)?;
    let environment = with_signals_blocked(|| {
        // ort's own fallback (ORT_DYLIB_PATH, then the system search path) panics when the
        // library is missing; init_from never falls back.
        let builder = ort::init_from(library).map_err(|e| {
            Error::new(ErrorKind::ExternalRoutineException, "could not load ONNX Runtime")
                .with_detail(e.to_string())
                .with_hint(library_hint())
        })?;
        builder.with_name("ragtune").with_telemetry(false).build().map_err(|e| {
            Error::new(ErrorKind::ExternalRoutineException, "could not create the ONNX Runtime environment")
                .with_detail(e.to_string())
        })
    })?;
    Ok(RUNTIME.get_or_init(|| Runtime { library: library.to_path_buf(), environment }))
}

fn library_hint() -> String {
    format!("Set {LIBRARY_SETTING} to the path of ONNX Runtime's shared library (libonnxruntime.so, 1.31 or later).")
}

/// A missing file gets its own error: dlopen's message for it is easy to misread.
fn check_file(library: &Path) -> Result<(), Error> {
    if library.is_file() {
        return Ok(());
    }
    Err(Error::new(ErrorKind::UndefinedFile, format!("ONNX Runtime library \"{}\" does not exist", library.display()))
        .with_hint(library_hint()))
}

impl Runtime {
    /// The library this process loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }

    fn same_library(&self, library: &Path) -> Result<(), Error> {
        if library == self.library {
            return Ok(());
        }
        check_file(library)?;
        Err(Error::new(
            ErrorKind::InvalidParameterValue,
            format!(
                "ONNX Runtime is already loaded from \"{}\" and cannot be replaced by \"{}\"",
                self.library.display(),
                library.display()
            ),
        )
        .with_hint(format!("A new {LIBRARY_SETTING} takes effect in new sessions.")))
    }

    /// Builds an inference session from the bytes of an ONNX model, once
    /// [`check_model_bytes`] accepts them: every model a backend loads, at registration
    /// or from the catalog, comes through here. `intra_threads` is the number of threads
    /// one operator may use (1 runs everything on the caller's thread); the pool's
    /// threads sleep instead of spinning between operators, since they share the machine
    /// with the database.
    pub fn session(&self, model: &[u8], intra_threads: usize) -> Result<Session, Error> {
        if intra_threads == 0 {
            return Err(Error::new(ErrorKind::InvalidParameterValue, "ONNX Runtime needs at least 1 thread"));
        }
        check_model_bytes(model)?;
        let options_failed = |e: ort::Error| {
            Error::new(ErrorKind::ExternalRoutineException, "could not configure an ONNX Runtime session")
                .with_detail(e.to_string())
        };
        with_signals_blocked(|| {
            let mut builder = Session::builder(&self.environment)
                .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
                .and_then(|b| Ok(b.with_intra_threads(intra_threads)?))
                .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
                .map_err(options_failed)?;
            builder.commit_from_memory(model).map_err(|e| {
                Error::new(ErrorKind::DataException, "could not load the ONNX model").with_detail(e.to_string())
            })
        })
    }
}

/// Runs `f` with every signal blocked in the calling thread, restoring the mask afterwards
/// (also when `f` panics). Threads started inside inherit the full mask.
pub(crate) fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores a mask pthread_sigmask returned.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, ptr::null_mut()) };
        }
    }
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initializes `all`; pthread_sigmask with a valid how cannot fail
    // and initializes `previous`.
    let restore = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), previous.as_mut_ptr());
        Restore(previous.assume_init())
    };
    let result = f();
    drop(restore);
    result
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::process::Command;

    use super::*;

    #[test]
    fn default_library_is_the_one_pgrx_toml_pins() {
        let pins = include_str!("../../../../pgrx.toml");
        let section = &pins[pins.find("[onnxruntime]").expect("[onnxruntime] in pgrx.toml")..];
        let file = section.lines().find_map(|line| line.strip_prefix("file = ")).expect("file = in [onnxruntime]");
        let pinned = std::path::Path::new(file.trim_matches('"')).file_name().unwrap();
        let default = std::path::Path::new(DEFAULT_LIBRARY_PATH.to_str().unwrap());
        assert_eq!(default.file_name().unwrap(), pinned);
        assert_eq!(default.parent().unwrap(), std::path::Path::new("/var/lib/ragtune/onnxruntime"), "scripts/lib.sh's RAGTUNE_HOME");
    }
    use crate::models::embed::Embedder;
    use crate::models::test_files;

    fn blocked_signals() -> libc::sigset_t {
        let mut current = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: a null new mask only reads the current one.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, ptr::null(), current.as_mut_ptr());
            current.assume_init()
        }
    }

    fn is_blocked(set: &libc::sigset_t, signal: i32) -> bool {
        // SAFETY: `set` is an initialized signal set.
        unsafe { libc::sigismember(set, signal) == 1 }
    }

    #[test]
    fn signals_are_blocked_inside_and_restored() {
        assert!(!is_blocked(&blocked_signals(), libc::SIGINT));
        let inside = with_signals_blocked(|| {
            // A thread started here inherits the mask.
            std::thread::spawn(blocked_signals).join().unwrap()
        });
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGALRM, libc::SIGQUIT] {
            assert!(is_blocked(&inside, signal), "signal {signal} not blocked");
        }
        assert!(!is_blocked(&blocked_signals(), libc::SIGINT));
        let panicked = std::panic::catch_unwind(|| with_signals_blocked(|| panic!("inside")));
        assert!(panicked.is_err());
        assert!(!is_blocked(&blocked_signals(), libc::SIGINT));
    }

    #[test]
    fn missing_library_is_an_error_with_a_hint() {
        let error = load(Path::new("/nonexistent/libonnxruntime.so")).err().unwrap();
        assert_eq!(error.kind, ErrorKind::UndefinedFile);
        assert_eq!(error.message, "ONNX Runtime library \"/nonexistent/libonnxruntime.so\" does not exist");
        assert!(error.hint.unwrap().contains("ragtune.onnxruntime_path"));
    }

    #[test]
    fn zero_threads_is_an_error() {
        let error = test_files::runtime().session(&[], 0).err().unwrap();
        assert_eq!(error.message, "ONNX Runtime needs at least 1 thread");
    }

    #[test]
    fn corrupt_model_bytes_are_an_error() {
        let runtime = test_files::runtime();
        for bytes in [&b""[..], b"not an onnx model", &test_files::minilm("model.onnx")[..4096]] {
            let error = runtime.session(bytes, 1).err().unwrap();
            assert_eq!(error.kind, ErrorKind::DataException);
            assert_eq!(error.message, "could not load the ONNX model");
            assert!(error.detail.is_some());
        }
    }

    /// Runs the calling test again, alone, in a new process: true inside that process (run
    /// the test's body), false in the caller once the body has passed there. Needed for
    /// what only a fresh process shows, since the first successful load is for good.
    fn in_fresh_process(test: &str) -> bool {
        const CHILD: &str = "RAGTUNE_TEST_FRESH_PROCESS";
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "{stdout}");
        false
    }

    /// The process's threads and the signals each blocks (a bit per signal, as in
    /// /proc/PID/task/TID/status).
    fn threads() -> HashMap<String, u64> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .map(|task| {
                let task = task.unwrap();
                let status = std::fs::read_to_string(task.path().join("status")).unwrap();
                let blocked = status.lines().find_map(|line| line.strip_prefix("SigBlk:")).unwrap();
                (task.file_name().into_string().unwrap(), u64::from_str_radix(blocked.trim(), 16).unwrap())
            })
            .collect()
    }

    #[test]
    fn onnx_runtime_threads_block_every_signal() {
        if !in_fresh_process("models::runtime::tests::onnx_runtime_threads_block_every_signal") {
            return;
        }
        let before = threads();
        let mut embedder = Embedder::new(
            test_files::runtime(),
            &test_files::minilm("model.onnx"),
            &test_files::minilm("tokenizer.json"),
            &test_files::minilm_config(),
            3,
        )
        .unwrap();
        let after_load = threads();
        let started = |earlier: &HashMap<String, u64>, now: &HashMap<String, u64>| {
            now.iter().filter(|(tid, _)| !earlier.contains_key(*tid)).map(|(t, b)| (t.clone(), *b)).collect::<Vec<_>>()
        };
        let check = |threads: Vec<(String, u64)>| {
            for (tid, blocked) in threads {
                for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM] {
                    assert!(blocked & (1 << (signal - 1)) != 0, "thread {tid} takes signal {signal}: {blocked:x}");
                }
            }
        };
        let loaded = started(&before, &after_load);
        assert!(!loaded.is_empty(), "a session with 3 threads started no threads");
        check(loaded);
        // The caller's own mask is back, and running the model starts no thread that takes
        // signals (the cancel watcher of each call blocks them all, and is joined).
        assert!(!is_blocked(&blocked_signals(), libc::SIGINT));
        embedder.embed_batch(&["A cat sits on the mat.", &"word ".repeat(300)], &test_files::never).unwrap();
        check(started(&after_load, &threads()));
    }

    #[test]
    fn loading_in_a_fresh_process() {
        if !in_fresh_process("models::runtime::tests::loading_in_a_fresh_process") {
            return;
        }

        // A file that is no shared library.
        let not_a_library = std::env::temp_dir().join(format!("ragtune-not-a-library-{}.so", std::process::id()));
        std::fs::write(&not_a_library, b"not a library").unwrap();
        let error = load(&not_a_library).err().unwrap();
        std::fs::remove_file(&not_a_library).unwrap();
        assert_eq!(error.kind, ErrorKind::ExternalRoutineException);
        assert_eq!(error.message, "could not load ONNX Runtime");
        assert!(error.detail.unwrap().contains("not-a-library"));
        assert!(error.hint.unwrap().contains("ragtune.onnxruntime_path"));

        // A shared library that is not ONNX Runtime.
        let error = load(Path::new("/lib/x86_64-linux-gnu/libz.so.1")).err().unwrap();
        assert!(error.detail.unwrap().contains("does not export `OrtGetApiBase`"));

        // The failures left nothing behind: the right path loads, and stays.
        let library = test_files::onnxruntime_library();
        let runtime = load(&library).unwrap();
        assert_eq!(runtime.library(), library);
        assert!(ptr::eq(runtime, load(&library).unwrap()));
        let error = load(&not_a_library.with_file_name("libz.so.1")).err().unwrap();
        assert_eq!(error.kind, ErrorKind::UndefinedFile);
        let error = load(Path::new("/lib/x86_64-linux-gnu/libz.so.1")).err().unwrap();
        assert!(error.message.starts_with("ONNX Runtime is already loaded from"), "{}", error.message);
        assert!(error.hint.unwrap().contains("ragtune.onnxruntime_path"));
    }
}
