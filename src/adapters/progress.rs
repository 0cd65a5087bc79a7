//! Progress of training runs, visible to other sessions while the run's transaction is
//! still open: each run keeps a small JSON file in the data directory's `pg_stat_tmp`
//! (as pg_stat_statements keeps its query texts there), replaced atomically on every
//! update and removed when the run ends, also by an error or cancel. The view
//! `ragtune_finetune_progress` (sql/adapters.sql) reads the files of live backends.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

const DIRECTORY: &str = "pg_stat_tmp";
const PREFIX: &str = "ragtune_finetune.";

/// One run's state as the view shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub pid: i32,
    /// The role that runs it: its members (and pg_read_all_stats') may see the report.
    #[serde(default)]
    pub role: u32,
    pub adapter: String,
    pub kind: String,
    pub base_model: String,
    /// reading rows, training, saving
    pub phase: String,
    pub rows_total: Option<i64>,
    pub rows_seen: i64,
    pub epoch: i32,
    pub epochs: i32,
    pub train_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    pub validation_recall: Option<f64>,
    pub started_at: f64,
    pub eta_seconds: Option<f64>,
}

/// The progress file of the current run; dropping it removes the file.
pub struct Progress {
    path: PathBuf,
    started: Instant,
    phase_started: Instant,
    published: Instant,
    pub report: Report,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Progress {
    pub fn start(adapter: &str, kind: &str, base_model: &str, epochs: i32) -> Self {
        // SAFETY: the backend's own pid, set at startup.
        let pid = unsafe { pg_sys::MyProcPid };
        let report = Report {
            pid,
            // SAFETY: the current user, read in a transaction.
            role: unsafe { pg_sys::GetUserId() }.to_u32(),
            adapter: adapter.to_string(),
            kind: kind.to_string(),
            base_model: base_model.to_string(),
            phase: "reading rows".into(),
            epochs,
            started_at: now(),
            ..Report::default()
        };
        let now = Instant::now();
        let path = PathBuf::from(DIRECTORY).join(format!("{PREFIX}{pid}.json"));
        let mut progress = Self { path, started: now, phase_started: now, published: now, report };
        progress.write();
        progress
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn set_phase(&mut self, phase: &str) {
        self.report.phase = phase.to_string();
        self.report.eta_seconds = None;
        self.phase_started = Instant::now();
        self.write();
    }

    /// `seen` rows read so far; the time left is the reading's, at its pace so far.
    /// Published at most twice a second.
    pub fn rows_read(&mut self, seen: i64) {
        self.report.rows_seen = seen;
        if let Some(total) = self.report.rows_total.filter(|_| seen > 0) {
            let per_row = self.phase_started.elapsed().as_secs_f64() / seen as f64;
            self.report.eta_seconds = Some(per_row * (total - seen).max(0) as f64);
        }
        if self.published.elapsed().as_secs_f64() >= 0.5 {
            self.write();
        }
    }

    /// Publishes the report. Progress is informative: a failed write is not an error.
    pub fn write(&mut self) {
        self.published = Instant::now();
        let temporary = self.path.with_extension("tmp");
        let json = serde_json::to_vec(&self.report).expect("a report serializes");
        if std::fs::write(&temporary, json).is_ok() {
            let _ = std::fs::rename(&temporary, &self.path);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the calling role may see a report of a run by `role`, as pg_stat_activity
/// shows the details of a backend.
fn may_see(role: u32) -> bool {
    // SAFETY: role-membership lookups in a transaction.
    unsafe {
        let user = pg_sys::GetUserId();
        pg_sys::has_privs_of_role(user, pg_sys::Oid::from(role))
            || pg_sys::has_privs_of_role(user, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
    }
}

/// The reports of the runs in progress that the caller may see (files of ended backends
/// are filtered out by the view, which joins pg_stat_activity).
#[pg_extern(sql = false)]
fn ragtune_finetune_progress_reports() -> SetOfIterator<'static, pgrx::JsonB> {
    let reports: Vec<pgrx::JsonB> = std::fs::read_dir(DIRECTORY)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(PREFIX) && name.ends_with(".json")
        })
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Report>(&bytes).ok())
        .filter(|report| may_see(report.role))
        .filter_map(|report| serde_json::to_value(report).ok())
        .map(pgrx::JsonB)
        .collect();
    SetOfIterator::new(reports)
}
