//! `ragtune_answer_stats` (sql/rag.sql): per database, source, model and adapters,
//! what rag_answer() calls did (calls, "don't know" answers, latency, tokens, best
//! retrieval score), in shared memory as pg_stat_statements keeps its counters. Needs
//! shared_preload_libraries = 'ragtune'. Question texts are kept only with
//! ragtune.answer_stats_questions on (each question then has its own entry), and shown only
//! to the role that asked and to pg_read_all_stats.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};

use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::rag::answer_stats::{bucket, quantile, BUCKETS};
use crate::pg::error::Raise;

/// Entries kept; past it, the entry with the fewest calls makes room.
const ENTRIES: usize = 256;
/// Bytes of a name (catalog names are at most 63) and of a kept question.
const NAME: usize = 64;
const QUESTION: usize = 256;

static COLLECT: GucSetting<bool> = GucSetting::<bool>::new(true);
static QUESTIONS: GucSetting<bool> = GucSetting::<bool>::new(false);
static PRELOADED: AtomicBool = AtomicBool::new(false);

#[derive(Copy, Clone)]
pub struct Entry {
    used: bool,
    database: u32,
    source: [u8; NAME],
    model: [u8; NAME],
    adapter: [u8; NAME],
    retrieval_adapter: [u8; NAME],
    /// With ragtune.answer_stats_questions: the question (cut at a character boundary) and
    /// the role that asked it.
    question: [u8; QUESTION],
    asker: u32,
    calls: u64,
    dont_know: u64,
    prompt_tokens: u64,
    generated_tokens: u64,
    best_score_sum: f64,
    scored: u64,
    latency: [u32; BUCKETS],
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            used: false,
            database: 0,
            source: [0; NAME],
            model: [0; NAME],
            adapter: [0; NAME],
            retrieval_adapter: [0; NAME],
            question: [0; QUESTION],
            asker: 0,
            calls: 0,
            dont_know: 0,
            prompt_tokens: 0,
            generated_tokens: 0,
            best_score_sum: 0.0,
            scored: 0,
            latency: [0; BUCKETS],
        }
    }
}

#[derive(Copy, Clone)]
pub struct AnswerStats {
    entries: [Entry; ENTRIES],
    /// Entries dropped to make room since the last reset.
    evicted: u64,
}

impl Default for AnswerStats {
    fn default() -> Self {
        AnswerStats { entries: [Entry::default(); ENTRIES], evicted: 0 }
    }
}

// SAFETY: plain values only.
unsafe impl PGRXSharedMemory for AnswerStats {}

static STATS: PgLwLock<AnswerStats> = unsafe { PgLwLock::new(c"ragtune_answer_stats") };

pub fn init() {
    GucRegistry::define_bool_guc(
        c"ragtune.answer_stats",
        c"Count rag_answer() calls in ragtune_answer_stats",
        c"Needs shared_preload_libraries = 'ragtune'.",
        &COLLECT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"ragtune.answer_stats_questions",
        c"Keep each question's text in ragtune_answer_stats",
        c"Off: no question text is stored, and entries count every question together.",
        &QUESTIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: a plain read of a flag the postmaster sets while loading preloaded libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(STATS);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

/// Copies `text` into a fixed field, cut at a character boundary.
fn fixed<const N: usize>(text: &str) -> [u8; N] {
    let mut end = text.len().min(N - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut field = [0u8; N];
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
    field
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// What one rag_answer() call did.
pub struct Call<'a> {
    pub source: &'a str,
    pub model: &'a str,
    pub adapter: Option<&'a str>,
    pub retrieval_adapter: Option<&'a str>,
    pub question: &'a str,
    pub dont_know: bool,
    pub total_ms: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub best_score: Option<f64>,
}

/// Counts a call, where the server has the statistics and the setting is on.
pub fn record(call: &Call<'_>) {
    if !PRELOADED.load(Ordering::Relaxed) || !COLLECT.get() {
        return;
    }
    // SAFETY: plain reads of the backend's database and the role in effect.
    let (database, role) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::GetUserId().to_u32()) };
    let key = Entry {
        used: true,
        database,
        source: fixed(call.source),
        model: fixed(call.model),
        adapter: fixed(call.adapter.unwrap_or("")),
        retrieval_adapter: fixed(call.retrieval_adapter.unwrap_or("")),
        question: if QUESTIONS.get() { fixed(call.question) } else { [0; QUESTION] },
        asker: if QUESTIONS.get() { role } else { 0 },
        ..Entry::default()
    };
    let same = |e: &Entry| {
        e.used
            && e.database == key.database
            && e.source == key.source
            && e.model == key.model
            && e.adapter == key.adapter
            && e.retrieval_adapter == key.retrieval_adapter
            && e.question == key.question
            && e.asker == key.asker
    };
    let mut stats = STATS.exclusive();
    let at = match stats.entries.iter().position(same) {
        Some(at) => at,
        None => {
            let at = match stats.entries.iter().position(|e| !e.used) {
                Some(free) => free,
                None => {
                    stats.evicted += 1;
                    (0..ENTRIES).min_by_key(|&i| stats.entries[i].calls).expect("entries")
                }
            };
            stats.entries[at] = key;
            at
        }
    };
    let entry = &mut stats.entries[at];
    entry.calls += 1;
    entry.dont_know += call.dont_know as u64;
    entry.prompt_tokens += call.prompt_tokens as u64;
    entry.generated_tokens += call.generated_tokens as u64;
    if let Some(score) = call.best_score.filter(|s| s.is_finite()) {
        entry.best_score_sum += score;
        entry.scored += 1;
    }
    entry.latency[bucket(call.total_ms)] += 1;
}

fn require_preloaded() {
    if !PRELOADED.load(Ordering::Relaxed) {
        Error::new(ErrorKind::ObjectNotInPrerequisiteState, "ragtune_answer_stats needs ragtune in shared_preload_libraries")
            .with_hint("Add ragtune to shared_preload_libraries in postgresql.conf and restart the server.")
            .raise();
    }
}

/// This database's entries (the `ragtune_answer_stats` view).
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn ragtune_answer_stats_entries() -> TableIterator<
    'static,
    (
        name!(source, String),
        name!(model, String),
        name!(adapter, Option<String>),
        name!(retrieval_adapter, Option<String>),
        name!(question, Option<String>),
        name!(asker, Option<pg_sys::Oid>),
        name!(calls, i64),
        name!(dont_know, i64),
        name!(p50_ms, Option<f64>),
        name!(p95_ms, Option<f64>),
        name!(prompt_tokens, i64),
        name!(generated_tokens, i64),
        name!(mean_best_score, Option<f64>),
    ),
> {
    require_preloaded();
    // SAFETY: plain read of the backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let entries: Vec<Entry> = STATS.share().entries.iter().filter(|e| e.used && e.database == database).copied().collect();
    let optional = |field: &[u8]| Some(text(field)).filter(|t| !t.is_empty());
    // A question's text only for members of the role that asked and of pg_read_all_stats,
    // here rather than in the view: this function can be called by anyone.
    // SAFETY: plain catalog lookups of the current user's memberships.
    let may_read = |asker: u32| unsafe {
        let user = pg_sys::GetUserId();
        pg_sys::is_member_of_role(user, pg_sys::Oid::from(asker))
            || pg_sys::is_member_of_role(user, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
    };
    TableIterator::new(entries.into_iter().map(move |e| {
        let question = optional(&e.question).map(|q| if may_read(e.asker) { q } else { "<insufficient privilege>".to_string() });
        (
            text(&e.source),
            text(&e.model),
            optional(&e.adapter),
            optional(&e.retrieval_adapter),
            question,
            (e.asker != 0).then(|| pg_sys::Oid::from(e.asker)),
            e.calls as i64,
            e.dont_know as i64,
            quantile(&e.latency, 0.5),
            quantile(&e.latency, 0.95),
            e.prompt_tokens as i64,
            e.generated_tokens as i64,
            (e.scored > 0).then(|| e.best_score_sum / e.scored as f64),
        )
    }))
}

/// Empties the statistics of every database; returns how many entries there were.
#[pg_extern(sql = false)]
fn ragtune_answer_stats_reset() -> i64 {
    require_preloaded();
    let mut stats = STATS.exclusive();
    let used = stats.entries.iter().filter(|e| e.used).count() as i64;
    stats.entries.iter_mut().for_each(|e| *e = Entry::default());
    stats.evicted = 0;
    used
}
