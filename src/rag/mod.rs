//! Retrieval and answers grounded in it: `retrieve()`, `rag_answer()` and
//! `rag_answer_json()` over a registered RAG source (sql/rag.sql). Retrieval is an
//! ordinary query run with the caller's rights, so grants and row-level security decide
//! which rows can be retrieved, and the source's vector index serves the ORDER BY.
//! With text search, a full-text leg (a GIN index serves its match) is fused with the
//! vector leg by reciprocal rank fusion. Citation markers and the fusion: ragtune_core::rag.

pub mod answer_stats;

use std::collections::HashMap;

use ragtune_core::rag::citations;
use ragtune_core::rag::hybrid::{self, RetrievalMode};
use ragtune_core::rag::prompt::{self, round_ms, snippet, Grounding, PassageOrder, RAG_SYSTEM};

use std::time::Instant;

use pgrx::prelude::*;
use serde_json::json;

use crate::catalog::adapters;
use crate::catalog::{embedding_model, generator_model, generator_name, lease_generator_text, name_or_setting};
use crate::models::embed::embed_with;
use crate::pg::error::OrRaiseSpi;
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::{OrRaise, Raise};
use crate::models::generate::{Generation, Request};
use crate::pg::error::raise_model_error;
use ragtune_core::models::{clean, Message, Role};
use crate::pg::interrupts::cancel_pending;

/// `ragtune.default_rag_source`: the source `retrieve()` and `rag_answer()` use when none
/// is named (when empty: the only registered source, if there is just one).
pub static DEFAULT_RAG_SOURCE: pgrx::guc::GucSetting<Option<std::ffi::CString>> =
    pgrx::guc::GucSetting::<Option<std::ffi::CString>>::new(None);

/// `ragtune.retrieve_ef_search`: the least `hnsw.ef_search` a retrieval's own scan uses.
/// An answer takes about a second, and the scan milliseconds, so retrieval buys recall.
pub static RETRIEVE_EF_SEARCH: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(DEFAULT_RETRIEVE_EF_SEARCH);
const DEFAULT_RETRIEVE_EF_SEARCH: i32 = 800;

pub fn init() {
    pgrx::guc::GucRegistry::define_int_guc(
        c"ragtune.retrieve_ef_search",
        c"Least hnsw.ef_search of the scans of retrieve() and rag_answer()",
        c"Raised to k when k is larger; a larger session hnsw.ef_search is kept. Only that query's scan uses it.",
        &RETRIEVE_EF_SEARCH,
        1,
        MAX_K,
        pgrx::guc::GucContext::Userset,
        pgrx::guc::GucFlags::default(),
    );
    pgrx::guc::GucRegistry::define_string_guc(
        c"ragtune.default_rag_source",
        c"RAG source used when none is named",
        c"A name from ragtune_rag_sources; when empty, the only registered source.",
        &DEFAULT_RAG_SOURCE,
        pgrx::guc::GucContext::Userset,
        pgrx::guc::GucFlags::default(),
    );
}

/// The most passages one retrieval returns (as hnsw.ef_search's maximum).
const MAX_K: i32 = 1000;

struct Source {
    name: String,
    /// The query that returns id, content and cosine distance for $1 (the query
    /// embedding, as text) and $2 (how many rows), nearest first.
    query: String,
    text_search: Option<TextSearch>,
    /// The same rows' content and embedding (real[]).
    neighbours: String,
    model: String,
}

/// A source's full-text leg (its queries read `document`: the tsvector column, or
/// to_tsvector(configuration, text column)).
struct TextSearch {
    config: pg_sys::Oid,
    /// The source's rows (pg_class's estimate for tables, else a count) and, for each
    /// tsquery of $1 (tsquery[]), how many rows match it (its GIN index counts them).
    statistics: String,
    /// id, content and cosine distance to $1 of the rows matching tsquery $3, at most $2,
    /// best first by the summed weights $5 (float8[]) of the lexemes $4 (tsquery[]) they hold.
    query: String,
}

pub(crate) struct Passage {
    pub(crate) id: String,
    pub(crate) content: String,
    score: f64,
}

/// Whether the calling role may retrieve from a source owned by `owner` and granted to
/// `grantees` (0 standing for PUBLIC).
fn may_use_source(owner: pg_sys::Oid, grantees: &[pg_sys::Oid]) -> bool {
    // SAFETY: role-membership lookups in a transaction; a dropped role is no one's.
    unsafe {
        let user = pg_sys::GetUserId();
        std::iter::once(owner).chain(grantees.iter().copied()).any(|role| role == pg_sys::InvalidOid || pg_sys::has_privs_of_role(user, role))
    }
}

/// Whether `role` (a source's owner) is a superuser or has the privileges of ragtune_admin:
/// only such sources are used by calls that name none.
fn is_admin(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups in a transaction.
    unsafe {
        let admin = pg_sys::get_role_oid(c"ragtune_admin".as_ptr(), true);
        pg_sys::superuser_arg(role) || (admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, admin))
    }
}

/// The source `name`, or when none is named the one ragtune.default_rag_source names, or
/// else the only one; a source used without being named must belong to ragtune_admin, so
/// that no other role can claim a default. The caller must be allowed to use it.
///
/// A partitioned source (shards as postgres_fdw foreign partitions) is searched per leaf
/// partition, each leaf's `ORDER BY <=> LIMIT k` on its own (postgres_fdw ships it whole to
/// the leaf's server, whose index serves it), the branches under one Append (which runs
/// foreign scans asynchronously: the shards search at once), then the best k of them. Only
/// where reading the leaves gives what reading the parent would: the parent has no row
/// security and the caller may read every leaf; otherwise the parent is read.
fn source(name: Option<&str>) -> Result<Source, Error> {
    let named = name.is_some();
    let name = name_or_setting(name, &DEFAULT_RAG_SOURCE);
    let rows = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT s.name, s.model, CASE WHEN fan.branches IS NOT NULL \
                   THEN format('WITH fan AS MATERIALIZED (%s) SELECT * FROM fan ORDER BY 3 LIMIT $2', fan.branches) \
                   ELSE format(v.branch, s.id_column, s.text_column, s.embedding_column, n.nspname, \
                     format_type(a.atttypid, NULL), s.relation) END, \
                 format('SELECT %I::text, %I::real[] FROM %s ORDER BY %I OPERATOR(%I.<=>) $1::%s LIMIT $2', \
                   s.text_column, s.embedding_column, s.relation, s.embedding_column, n.nspname, format_type(a.atttypid, NULL)), \
                 s.owner::oid, s.grantees::oid[], s.text_search::oid, \
                 format('SELECT source_row.%1$I::text, source_row.%2$I::text, source_row.%3$I OPERATOR(%4$I.<=>) $1::%5$s, \
                     (SELECT pg_catalog.sum(q.w) \
                      FROM ROWS FROM (pg_catalog.unnest($4::pg_catalog.tsquery[]), pg_catalog.unnest($5::pg_catalog.float8[])) q(l, w) \
                      WHERE d.document OPERATOR(pg_catalog.@@) q.l) AS score \
                   FROM %6$s source_row CROSS JOIN LATERAL (SELECT %7$s AS document) d \
                   WHERE %7$s OPERATOR(pg_catalog.@@) $3::pg_catalog.tsquery \
                   ORDER BY score DESC, source_row.%1$I LIMIT $2', \
                   s.id_column, s.text_column, s.embedding_column, n.nspname, format_type(a.atttypid, NULL), s.relation, \
                   t.document), \
                 format('SELECT CASE WHEN c.relkind IN (''r'', ''m'') AND c.reltuples > 0 THEN c.reltuples::pg_catalog.float8 \
                     ELSE (SELECT pg_catalog.count(*) FROM %1$s)::pg_catalog.float8 END, \
                   ARRAY(SELECT (SELECT pg_catalog.count(*) FROM %1$s source_row WHERE %2$s OPERATOR(pg_catalog.@@) u.l) \
                     FROM pg_catalog.unnest($1::pg_catalog.tsquery[]) WITH ORDINALITY u(l, i) ORDER BY u.i) \
                   FROM pg_catalog.pg_class c WHERE c.oid = %3$s', s.relation, t.document, s.relation::oid) \
                 FROM ragtune_rag_sources s \
                 JOIN pg_attribute a ON a.attrelid = s.relation AND a.attname = s.embedding_column \
                 JOIN pg_extension e ON e.extname = 'ragtune' JOIN pg_namespace n ON n.oid = e.extnamespace \
                 CROSS JOIN LATERAL (SELECT 'SELECT %1$I::text, %2$I::text, %3$I OPERATOR(%4$I.<=>) $1::%5$s FROM %6$s \
                   ORDER BY %3$I OPERATOR(%4$I.<=>) $1::%5$s LIMIT $2'::text AS branch) v \
                 LEFT JOIN LATERAL (SELECT pg_catalog.string_agg(format('(' || v.branch || ')', s.id_column, s.text_column, \
                     s.embedding_column, n.nspname, format_type(a.atttypid, NULL), p.relid::regclass), ' UNION ALL ' \
                     ORDER BY p.relid) AS branches \
                   FROM pg_catalog.pg_partition_tree(s.relation) p JOIN pg_catalog.pg_class c ON c.oid = s.relation \
                   WHERE p.isleaf AND c.relkind = 'p' AND NOT c.relrowsecurity \
                   HAVING pg_catalog.bool_and(pg_catalog.has_table_privilege(p.relid, 'SELECT'))) fan ON true \
                 CROSS JOIN LATERAL (SELECT coalesce('source_row.' || quote_ident(s.tsvector_column), \
                   format('pg_catalog.to_tsvector(%L::pg_catalog.regconfig, source_row.%I)', s.text_search::text, s.text_column)) \
                   AS document) t \
                 WHERE s.name = $1 OR $1 IS NULL ORDER BY s.name",
                None,
                &[name.clone().into()],
            )
            .or_raise_spi();
        rows.into_iter()
            .map(|row| {
                let text = |i| row.get::<String>(i).or_raise_spi().unwrap_or_default();
                let owner = row.get::<pg_sys::Oid>(5).or_raise_spi().unwrap_or(pg_sys::InvalidOid);
                let grantees = row.get::<Vec<pg_sys::Oid>>(6).or_raise_spi().unwrap_or_default();
                let text_search =
                    row.get::<pg_sys::Oid>(7).or_raise_spi().map(|config| TextSearch { config, query: text(8), statistics: text(9) });
                (Source { name: text(1), model: text(2), query: text(3), neighbours: text(4), text_search }, owner, grantees)
            })
            .collect::<Vec<_>>()
    });
    let (default_rows, other_rows): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, owner, _)| named || is_admin(*owner));
    let (source, owner, grantees) = match (&name, default_rows.len()) {
        (_, 1) => default_rows.into_iter().next().expect("one row"),
        (Some(name), _) if !other_rows.is_empty() => {
            return Err(Error::new(
                ErrorKind::InsufficientPrivilege,
                format!("RAG source \"{name}\" is not registered by a member of ragtune_admin, so it must be named"),
            )
            .with_detail("ragtune.default_rag_source only picks sources registered by superusers or members of ragtune_admin.")
            .with_hint(format!("Pass source => '{name}'.")))
        }
        (Some(name), _) => {
            return Err(Error::new(ErrorKind::UndefinedObject, format!("RAG source \"{name}\" does not exist"))
                .with_hint("register_rag_source() registers one; SELECT name FROM ragtune_rag_sources lists them."))
        }
        (None, 0) => {
            return Err(Error::new(ErrorKind::UndefinedObject, "no RAG source registered by a member of ragtune_admin")
                .with_hint("Name a source, or register one with register_rag_source()."))
        }
        (None, _) => {
            return Err(Error::new(ErrorKind::InvalidParameterValue, "several RAG sources exist and none was named")
                .with_hint("Name one, or set ragtune.default_rag_source."))
        }
    };
    if !may_use_source(owner, &grantees) {
        return Err(Error::new(ErrorKind::InsufficientPrivilege, format!("permission denied for RAG source \"{}\"", source.name))
            .with_hint(format!("The source's owner can allow it with grant_rag_source('{}', role).", source.name)));
    }
    Ok(source)
}

impl Source {
    fn mode(&self, mode: Option<&str>) -> RetrievalMode {
        RetrievalMode::parse(mode, self.text_search.is_some()).or_raise()
    }
}

/// The `k` best rows of `source` for `query` in `mode`, best first, with their cosine
/// similarity; the query embedding is transformed by retrieval adapter `adapter` first.
fn retrieve_passages(source: &Source, query: &str, k: i32, adapter: Option<&str>, mode: RetrievalMode) -> Vec<Passage> {
    if !(1..=MAX_K).contains(&k) {
        Error::new(ErrorKind::InvalidParameterValue, format!("k must be between 1 and {MAX_K}, not {k}")).raise();
    }
    let model = embedding_model(Some(&source.model)).or_raise();
    let adapter = adapter.map(|name| adapters::query_adapter(&adapters::adapter_row(name)?, &model.name)).transpose().or_raise();
    let mut embedding = embed_with(&model, &[query]).pop().expect("one embedding per text");
    if let Some(adapter) = adapter {
        embedding = adapter.apply(&embedding).or_raise();
    }
    let literal = ragtune_core::types::text::format(embedding);
    let rows = hybrid::leg_rows(mode, k, MAX_K);
    let vector = match mode.uses_vectors() {
        true => with_retrieval_breadth(rows, || passages(&source.query, vec![literal.clone().into(), rows.into()])),
        false => Vec::new(),
    };
    let text = match (&source.text_search, mode.uses_text()) {
        (Some(text_search), true) => text_passages(text_search, query, literal, rows),
        _ => Vec::new(),
    };
    match mode {
        RetrievalMode::Vector => vector,
        RetrievalMode::Text => text,
        RetrievalMode::Hybrid => fuse(vector, text, k as usize),
    }
}

/// The rows of a source's query run with `args`: id, content and cosine distance.
fn passages(query: &str, args: Vec<pgrx::datum::DatumWithOid<'_>>) -> Vec<Passage> {
    Spi::connect(|client| {
        client
            .select(query, None, &args)
            .or_raise_spi()
            .into_iter()
            .map(|row| Passage {
                id: row.get::<String>(1).or_raise_spi().unwrap_or_default(),
                content: row.get::<String>(2).or_raise_spi().unwrap_or_default(),
                score: 1.0 - row.get::<f64>(3).or_raise_spi().unwrap_or(1.0),
            })
            .collect()
    })
}

/// The text leg: the best `rows` rows holding lexemes of `query` (see hybrid::text_terms),
/// with their cosine distance to the query embedding `literal`. Read-only SPI throughout:
/// retrieval writes nothing (and so runs on standbys).
fn text_passages(text_search: &TextSearch, query: &str, literal: String, rows: i32) -> Vec<Passage> {
    let lexemes: Vec<String> = Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.array_agg(t.lexeme) FROM pg_catalog.unnest(pg_catalog.to_tsvector($1::pg_catalog.regconfig, $2)) t",
                None,
                &[text_search.config.into(), query.into()],
            )
            .or_raise_spi()
            .into_iter()
            .next()
            .and_then(|row| row.get::<Vec<String>>(1).or_raise_spi())
            .unwrap_or_default()
    });
    // Each lexeme alone, as a tsquery.
    let single: Vec<String> = lexemes.iter().filter_map(|l| hybrid::lexeme_query(l)).collect();
    if single.is_empty() {
        return Vec::new();
    }
    let (n, df) = Spi::connect(|client| {
        let row = client.select(&text_search.statistics, None, &[single.clone().into()]).or_raise_spi().into_iter().next();
        let n = row.as_ref().and_then(|r| r.get::<f64>(1).or_raise_spi()).unwrap_or(0.0);
        let df = row.and_then(|r| r.get::<Vec<i64>>(2).or_raise_spi()).unwrap_or_default();
        (n, df)
    });
    let terms = hybrid::text_terms(&single, &df, n);
    let Some(matched) = hybrid::any_of(&terms.matched) else {
        return Vec::new();
    };
    passages(&text_search.query, vec![literal.into(), rows.into(), matched.into(), terms.lexemes.into(), terms.weights.into()])
}

/// The best `k` rows of the two legs by reciprocal rank fusion (rows are told apart by id).
fn fuse(vector: Vec<Passage>, text: Vec<Passage>, k: usize) -> Vec<Passage> {
    let ids = |leg: &[Passage]| leg.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    let fused = hybrid::reciprocal_rank_fusion(&[&ids(&vector), &ids(&text)], k);
    let mut by_id: HashMap<String, Passage> = text.into_iter().chain(vector).map(|p| (p.id.clone(), p)).collect();
    fused.into_iter().filter_map(|(id, _)| by_id.remove(&id)).collect()
}

/// Runs `scan` with `hnsw.ef_search` at least ragtune.retrieve_ef_search and `k` (an HNSW
/// scan returns at most ef_search rows), as a function's SET clause would: the setting is
/// saved at a new nesting level and restored after, or by the abort of an ERROR.
fn with_retrieval_breadth<T>(k: i32, scan: impl FnOnce() -> T) -> T {
    let session = crate::hnsw::options::EF_SEARCH.get();
    let ef = session.max(RETRIEVE_EF_SEARCH.get()).max(k);
    if ef == session {
        return scan();
    }
    let value = std::ffi::CString::new(ef.to_string()).expect("digits");
    // SAFETY: GUC calls in a transaction; the nesting level is closed below on success, and
    // by (sub)transaction abort when `scan` raises an ERROR.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"hnsw.ef_search".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
        let rows = scan();
        pg_sys::AtEOXact_GUC(true, level);
        rows
    }
}

/// For each embedding (made by `model`), the content and stored embedding of the `k`
/// rows of RAG source `name` nearest to it, read with the caller's rights: the near misses
/// retrieval adapters learn to rank below the right passage.
pub(crate) fn nearest_rows(name: &str, model: &str, embeddings: &[Vec<f32>], k: i32) -> Result<Vec<Vec<(String, Vec<f32>)>>, Error> {
    let source = source(Some(name))?;
    if source.model != model {
        return Err(Error::new(
            ErrorKind::WrongObjectType,
            format!("RAG source \"{name}\" holds embeddings of model \"{}\", not \"{model}\"", source.model),
        ));
    }
    Ok(embeddings
        .iter()
        .map(|embedding| {
            pg_sys::check_for_interrupts!();
            let literal = ragtune_core::types::text::format(embedding.iter().copied());
            with_retrieval_breadth(k, || {
                Spi::connect(|client| {
                    client
                        .select(&source.neighbours, None, &[literal.into(), k.into()])
                        .or_raise_spi()
                        .into_iter()
                        .filter_map(|row| {
                            let content = row.get::<String>(1).or_raise_spi()?;
                            let embedding = row.get::<Vec<f32>>(2).or_raise_spi()?;
                            Some((content, embedding))
                        })
                        .collect()
                })
            })
        })
        .collect())
}

#[pg_extern(sql = false)]
fn retrieve(
    query: Option<&str>,
    source: Option<&str>,
    k: Option<i32>,
    adapter: Option<&str>,
    mode: Option<&str>,
) -> TableIterator<'static, (name!(id, String), name!(content, String), name!(score, f64))> {
    let Some(query) = query else {
        return TableIterator::new(Vec::new());
    };
    let source = self::source(source).or_raise();
    let mode = source.mode(mode);
    let passages = retrieve_passages(&source, query, k.unwrap_or(prompt::DEFAULT_RETRIEVE_K), adapter, mode);
    TableIterator::new(passages.into_iter().map(|p| (p.id, p.content, p.score)))
}

pub(crate) struct Settings<'a> {
    source: Option<&'a str>,
    k: i32,
    model: Option<&'a str>,
    /// Generator adapter.
    adapter: Option<&'a str>,
    /// A generator adapter's weights, used instead of `adapter` (evaluate_strategies()
    /// trains one without storing it).
    pub(crate) adapter_weights: Option<std::sync::Arc<ragtune_core::finetune::OutputAdapter>>,
    retrieval_adapter: Option<&'a str>,
    max_tokens: i32,
    passage_tokens: usize,
    min_score: f64,
    order: PassageOrder,
    system: Option<&'a str>,
    /// As given: the source decides what NULL means.
    mode: Option<&'a str>,
}

pub(crate) struct Answer {
    pub(crate) text: String,
    cited: citations::Cited,
    /// max_tokens stopped the answer (which then ends with its last complete sentence).
    cut: bool,
    source: String,
    mode: RetrievalMode,
    /// The passages given to the model, best first: [1], [2], ...
    pub(crate) passages: Vec<Passage>,
    best_score: Option<f64>,
    pub(crate) prompt_tokens: usize,
    pub(crate) generated_tokens: usize,
    pub(crate) retrieve_ms: f64,
    load_ms: f64,
    pub(crate) prompt_ms: f64,
    pub(crate) generate_ms: f64,
}

/// The passages retrieved for `question` that score at least min_score, and the best
/// score retrieved.
fn grounding(question: &str, source: &Source, mode: RetrievalMode, settings: &Settings<'_>) -> (Vec<Passage>, Option<f64>) {
    let retrieved = retrieve_passages(source, question, settings.k, settings.retrieval_adapter, mode);
    // In text and hybrid modes the best match need not be first.
    let best_score = retrieved.iter().map(|p| p.score).reduce(f64::max);
    (retrieved.into_iter().filter(|p| p.score >= settings.min_score).collect(), best_score)
}

/// The user message of `passages` and `question`, cut to the generator's tokens where the
/// prompt is made.
fn grounding_message(passages: &[Passage], question: &str, settings: &Settings<'_>) -> Grounding {
    Grounding {
        passages: passages.iter().map(|p| p.content.clone()).collect(),
        question: question.to_string(),
        passage_tokens: settings.passage_tokens,
        order: settings.order,
    }
}

pub(crate) fn answer(question: &str, settings: &Settings<'_>) -> Answer {
    let started = Instant::now();
    let source = source(settings.source).or_raise();
    let mode = source.mode(settings.mode);
    let (passages, best_score) = grounding(question, &source, mode, settings);
    let retrieved_at = Instant::now();
    let retrieve_ms = ms(started, retrieved_at);
    if passages.is_empty() {
        return Answer {
            text: prompt::no_answer(&source.name, best_score, settings.min_score),
            cited: citations::Cited::None,
            cut: false,
            source: source.name,
            mode,
            passages,
            best_score,
            prompt_tokens: 0,
            generated_tokens: 0,
            retrieve_ms,
            load_ms: 0.0,
            prompt_ms: 0.0,
            generate_ms: 0.0,
        };
    }
    let request = Request::new(settings.max_tokens, 0.0, 1.0, 0, Some(0), Vec::new()).or_raise();
    let prepared = match &settings.adapter_weights {
        Some(weights) => Generation::prepare_with(generator_model(settings.model).or_raise(), Some(weights.clone())),
        None => Generation::prepare(settings.model, settings.adapter),
    };
    let messages = [Message::new(Role::System, settings.system.unwrap_or(RAG_SYSTEM))];
    let mut generation = prepared.start(&messages, Some(grounding_message(&passages, question, settings)), &request);
    // The first piece comes from the prompt's run (prefill): it ends the prompt phase.
    let mut text = generation.next().unwrap_or_default();
    let first_piece_at = Instant::now();
    text.extend(generation.by_ref());
    let done = Instant::now();
    let contents: Vec<&str> = passages.iter().map(|p| p.content.as_str()).collect();
    let cut = generation.generated_tokens() >= settings.max_tokens as usize;
    // Markers are added to the text a reader sees, so that they count its words.
    let (text, cited) = citations::cite(&answer_text(&text, cut), &contents);
    Answer {
        text,
        cited,
        cut,
        source: source.name,
        mode,
        passages,
        best_score,
        prompt_tokens: generation.prompt_tokens,
        generated_tokens: generation.generated_tokens(),
        retrieve_ms,
        load_ms: round_ms(generation.load_time.as_secs_f64()),
        prompt_ms: round_ms((first_piece_at - retrieved_at - generation.load_time).as_secs_f64()),
        generate_ms: ms(first_piece_at, done),
    }
}

/// The generator's text as rag_answer() returns it, before citation markers: an answer
/// that max_tokens cut ends with its last complete sentence, and in ragtune.answer_format
/// `text` the model's Markdown reads as plain text.
pub(crate) fn answer_text(generated: &str, cut: bool) -> String {
    let text = if cut { prompt::complete_sentences(generated.trim()) } else { generated.trim() };
    match crate::catalog::ANSWER_FORMAT.get() {
        crate::catalog::AnswerFormat::Text => raise_model_error(clean::clean(text, clean::Format::Markdown, &cancel_pending)),
        crate::catalog::AnswerFormat::Markdown => text.to_string(),
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    round_ms((to - from).as_secs_f64())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn settings<'a>(
    source: Option<&'a str>,
    k: Option<i32>,
    model: Option<&'a str>,
    adapter: Option<&'a str>,
    retrieval_adapter: Option<&'a str>,
    max_tokens: Option<i32>,
    passage_tokens: Option<i32>,
    min_score: Option<f64>,
    passage_order: Option<&str>,
    system: Option<&'a str>,
    mode: Option<&'a str>,
) -> Settings<'a> {
    let order = PassageOrder::parse(passage_order.unwrap_or(prompt::DEFAULT_PASSAGE_ORDER)).or_raise();
    let passage_tokens = passage_tokens.unwrap_or(prompt::DEFAULT_PASSAGE_TOKENS);
    if passage_tokens < 1 {
        Error::new(ErrorKind::InvalidParameterValue, "passage_tokens must be at least 1").raise();
    }
    let adapter = adapter.map(|name| (name, adapters::adapter_row(name).or_raise().kind));
    let (adapter, retrieval_adapter) = prompt::split_adapters(adapter, retrieval_adapter).or_raise();
    Settings {
        source,
        k: k.unwrap_or(prompt::DEFAULT_K),
        model,
        adapter,
        adapter_weights: None,
        retrieval_adapter,
        max_tokens: max_tokens.unwrap_or(prompt::DEFAULT_MAX_TOKENS),
        passage_tokens: passage_tokens as usize,
        min_score: min_score.unwrap_or(prompt::DEFAULT_MIN_SCORE),
        order,
        system,
        mode,
    }
}

/// rag_answer_json(); rag_answer() (sql/rag.sql) formats it as text.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn rag_answer_json(
    question: Option<&str>,
    source: Option<&str>,
    k: Option<i32>,
    model: Option<&str>,
    adapter: Option<&str>,
    max_tokens: Option<i32>,
    passage_tokens: Option<i32>,
    min_score: Option<f64>,
    passage_order: Option<&str>,
    system: Option<&str>,
    retrieval_adapter: Option<&str>,
    mode: Option<&str>,
) -> Option<pgrx::JsonB> {
    let question = question?;
    let settings = settings(
        source,
        k,
        model,
        adapter,
        retrieval_adapter,
        max_tokens,
        passage_tokens,
        min_score,
        passage_order,
        system,
        mode,
    );
    let answer = answer(question, &settings);
    let model_name = generator_name(settings.model);
    answer_stats::record(&answer_stats::Call {
        source: &answer.source,
        model: model_name.as_deref().unwrap_or(""),
        adapter: settings.adapter,
        retrieval_adapter: settings.retrieval_adapter,
        question,
        dont_know: answer.passages.is_empty(),
        total_ms: answer.retrieve_ms + answer.load_ms + answer.prompt_ms + answer.generate_ms,
        prompt_tokens: answer.prompt_tokens,
        generated_tokens: answer.generated_tokens,
        best_score: answer.best_score,
    });
    let cited = citations::markers(&answer.text, answer.passages.len());
    let sources: Vec<_> = answer
        .passages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"n": i + 1, "id": p.id, "snippet": snippet(&p.content), "score": p.score,
                   "cited": cited.contains(&(i + 1))})
        })
        .collect();
    Some(pgrx::JsonB(json!({
        "answer": answer.text,
        "sources": sources,
        "source": answer.source,
        "mode": answer.mode.name(),
        "model": model_name,
        "best_score": answer.best_score,
        "citations": answer.cited.name(),
        "cut_at_max_tokens": answer.cut,
        "tokens": {"prompt": answer.prompt_tokens, "generated": answer.generated_tokens},
        "timings_ms": {"retrieve": answer.retrieve_ms, "load": answer.load_ms, "prompt": answer.prompt_ms,
                       "generate": answer.generate_ms,
                       "total": round_ms((answer.retrieve_ms + answer.load_ms + answer.prompt_ms + answer.generate_ms) / 1e3)},
    })))
}

/// The user message rag_answer() would send for `question` (None when no passage
/// reaches min_score): to build training rows for adapters that learn to use passages.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn rag_prompt(
    question: Option<&str>,
    source: Option<&str>,
    k: Option<i32>,
    model: Option<&str>,
    passage_tokens: Option<i32>,
    min_score: Option<f64>,
    passage_order: Option<&str>,
    retrieval_adapter: Option<&str>,
    mode: Option<&str>,
) -> Option<String> {
    let question = question?;
    let settings =
        settings(source, k, model, None, retrieval_adapter, None, passage_tokens, min_score, passage_order, None, mode);
    let source = self::source(settings.source).or_raise();
    let (passages, _) = grounding(question, &source, source.mode(settings.mode), &settings);
    if passages.is_empty() {
        return None;
    }
    let model = generator_model(settings.model).or_raise();
    let mut lease = raise_model_error(lease_generator_text(&model));
    Some(grounding_message(&passages, question, &settings).user_message(lease.get().tokenizer()).or_raise())
}

/// rag_answer()'s system message when none is given.
#[pg_extern(sql = false)]
fn rag_system_prompt() -> &'static str {
    RAG_SYSTEM
}
