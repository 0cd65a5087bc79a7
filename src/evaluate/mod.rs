//! `evaluate_strategies()` (sql/evaluate.sql): closed-book, RAG, fine-tuned and both,
//! measured side by side on the same held-out questions of a table the caller can read.
//! Questions are split by a hash of their text and the seed
//! (`ragtune_core::rag::evaluate`): held-out ones are scored, the others may train the
//! generator adapter, which never reads a held-out question. Scoring and the figures are
//! pure code in ragtune_core; this reads rows, runs the answers and returns the table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::adapters::train::train_on_training_split;
use crate::catalog::adapters::{adapter_row, output_adapter};
use crate::catalog::generator_model;
use crate::models::generate::{Generation, Request};
use crate::pg::error::{OrRaise, OrRaiseSpi, Raise};
use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::finetune::{AdapterKind, OutputAdapter};
use ragtune_core::models::chat::chat_messages;
use ragtune_core::rag::citations::markers;
use ragtune_core::rag::evaluate::{
    contains_reference, differences, is_held_out, question_key, summarize, token_f1, Interval, QuestionScore, Summary,
};
use ragtune_core::rag::prompt::round_ms;

const STRATEGIES: [&str; 5] = ["closed_book", "rag", "finetuned", "rag_finetuned", "rag_retrieval_adapter"];
const MAX_QUESTIONS: i32 = 10_000;
/// Rows read from the question table at a time.
const FETCH_ROWS: i64 = 256;

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidParameterValue, message)
}

/// A held-out question as read.
struct Question {
    key: u64,
    text: String,
    references: Vec<String>,
    /// Ids of the source rows that hold the answer (empty when the table names none).
    passages: Vec<String>,
}

/// The question table's queries: (question, references text[], passage ids text[]) for
/// scoring, and (question, first reference) for training.
struct QuestionQueries {
    relation: String,
    scored: String,
    training: String,
}

fn question_queries(table: pg_sys::Oid, question: &str, answer: &str, passage: Option<&str>) -> Result<QuestionQueries, Error> {
    // For each column: whether it exists, is text (or text[] for the answers), and is an array.
    let column = |name: &str| -> (Option<bool>, bool) {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT t.typcategory = 'S' OR e.typcategory = 'S', t.typcategory = 'A' FROM pg_attribute a \
                     JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
                     WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                    Some(1),
                    &[table.into(), name.into()],
                )
                .or_raise_spi();
            rows.into_iter()
                .next()
                .map_or((None, false), |r| (r.get::<bool>(1).or_raise_spi().or(Some(false)), r.get::<bool>(2).or_raise_spi().unwrap_or(false)))
        })
    };
    let relation = Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[table.into()]).or_raise_spi().unwrap_or_default();
    let missing = |name: &str| Error::new(ErrorKind::UndefinedColumn, format!("column \"{name}\" of {relation} does not exist"));
    let not_text = |name: &str, what: &str| {
        Error::new(ErrorKind::DatatypeMismatch, format!("column \"{name}\" of {relation} is not {what}"))
            .with_hint("Cast it in a view over the table.")
    };
    match column(question) {
        (None, _) => return Err(missing(question)),
        (Some(true), false) => {}
        _ => return Err(not_text(question, "a text column")),
    }
    let answers_are_array = match column(answer) {
        (None, _) => return Err(missing(answer)),
        (Some(true), array) => array,
        _ => return Err(not_text(answer, "a text or text[] column")),
    };
    let passages_are_array = match passage {
        None => None,
        Some(name) => match column(name) {
            (None, _) => return Err(missing(name)),
            (_, array) => Some(array),
        },
    };
    let format = |template: &str| -> String {
        Spi::get_one_with_args::<String>(
            template,
            &[question.into(), answer.into(), passage.unwrap_or("").into(), table.into()],
        )
        .or_raise_spi()
        .unwrap_or_default()
    };
    let answers = if answers_are_array { "%2$I::text[]" } else { "ARRAY[%2$I::text]" };
    let passages = match passages_are_array {
        None => "NULL::text[]",
        Some(true) => "%3$I::text[]",
        Some(false) => "ARRAY[%3$I::text]",
    };
    Ok(QuestionQueries {
        scored: format(&format!("SELECT format('SELECT %1$I::text, {answers}, {passages} FROM %4$s', $1, $2, $3, $4::regclass)")),
        training: format(&format!("SELECT format('SELECT %1$I::text, ({answers})[1] FROM %4$s', $1, $2, $3, $4::regclass)")),
        relation,
    })
}

/// What the split made of the table: the scored questions (the first `limit` of the
/// held-out ones in key order) and how many rows went where.
struct Split {
    scored: Vec<Question>,
    read: i64,
    held_out: i64,
    training: i64,
    skipped: i64,
}

/// A row as read: question, references, passage ids.
type QuestionRow = (Option<String>, Option<Vec<Option<String>>>, Option<Vec<Option<String>>>);

fn read_split(queries: &QuestionQueries, seed: u64, fraction: f64, limit: usize) -> Split {
    let mut split = Split { scored: Vec::new(), read: 0, held_out: 0, training: 0, skipped: 0 };
    // The `limit` smallest keys of the held-out questions (one per question text).
    let mut kept: BTreeMap<(u64, String), Question> = BTreeMap::new();
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(queries.scored.as_str(), &[]);
        loop {
            let batch: Vec<QuestionRow> = cursor
                .fetch(FETCH_ROWS)
                .or_raise_spi()
                .map(|row| {
                    (
                        row.get::<String>(1).or_raise_spi(),
                        row.get::<Vec<Option<String>>>(2).or_raise_spi(),
                        row.get::<Vec<Option<String>>>(3).or_raise_spi(),
                    )
                })
                .collect();
            // SAFETY: the batch's tuple table is SPI's last result, no longer referred to.
            unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
            if batch.is_empty() {
                break;
            }
            for (text, references, passages) in batch {
                pg_sys::check_for_interrupts!();
                split.read += 1;
                let references: Vec<String> = references.unwrap_or_default().into_iter().flatten().filter(|r| !r.trim().is_empty()).collect();
                let Some(text) = text.filter(|t| !t.trim().is_empty() && !references.is_empty()) else {
                    split.skipped += 1;
                    continue;
                };
                let key = question_key(seed, &text);
                if !is_held_out(key, fraction) {
                    split.training += 1;
                    continue;
                }
                split.held_out += 1;
                let passages = passages.unwrap_or_default().into_iter().flatten().collect();
                kept.entry((key, text.clone())).or_insert(Question { key, text, references, passages });
                if kept.len() > limit {
                    kept.pop_last();
                }
            }
        }
    });
    split.scored = kept.into_values().collect();
    split
}

/// One strategy's run over the scored questions.
struct Run {
    strategy: &'static str,
    scores: Vec<QuestionScore>,
    answers: Vec<Value>,
    training_seconds: Option<f64>,
    adapter_bytes: Option<i64>,
}

/// A generator adapter for the fine-tuned strategies: named, or trained here.
struct Adapter {
    weights: Arc<OutputAdapter>,
    seconds: Option<f64>,
    bytes: i64,
}

/// Settings every strategy shares.
struct Common<'a> {
    source: Option<&'a str>,
    model: Option<&'a str>,
    k: i32,
    max_tokens: i32,
    mode: Option<&'a str>,
}

fn closed_book(question: &Question, common: &Common<'_>, adapter: Option<&Adapter>) -> (String, QuestionScore) {
    let request = Request::new(common.max_tokens, 0.0, 1.0, 0, Some(0), Vec::new()).or_raise();
    let started = Instant::now();
    let prepared = Generation::prepare_with(generator_model(common.model).or_raise(), adapter.map(|a| a.weights.clone()));
    let mut generation = prepared.start(&chat_messages(None, &question.text), None, &request);
    let mut text = generation.next().unwrap_or_default();
    let first_piece_at = Instant::now();
    text.extend(generation.by_ref());
    let done = Instant::now();
    // As rag_answer() returns an answer, so that only the passages differ.
    let text = crate::rag::answer_text(&text, generation.generated_tokens() >= common.max_tokens as usize);
    let score = QuestionScore {
        correct: contains_reference(&text, &question.references),
        f1: token_f1(&text, &question.references),
        prompt_ms: round_ms((first_piece_at - started - generation.load_time).as_secs_f64()),
        generate_ms: round_ms((done - first_piece_at).as_secs_f64()),
        prompt_tokens: generation.prompt_tokens,
        generated_tokens: generation.generated_tokens(),
        ..QuestionScore::default()
    };
    (text, score)
}

fn rag(question: &Question, common: &Common<'_>, adapter: Option<&Adapter>, retrieval_adapter: Option<&str>) -> (String, QuestionScore, Vec<String>) {
    let mut settings =
        crate::rag::settings(common.source, Some(common.k), common.model, None, retrieval_adapter, Some(common.max_tokens), None, None, None, None, common.mode);
    settings.adapter_weights = adapter.map(|a| a.weights.clone());
    let answer = crate::rag::answer(&question.text, &settings);
    let cited = markers(&answer.text, answer.passages.len());
    let holds_answer = |n: usize| {
        let passage = &answer.passages[n - 1];
        if question.passages.is_empty() {
            contains_reference(&passage.content, &question.references)
        } else {
            question.passages.contains(&passage.id)
        }
    };
    let ids: Vec<String> = answer.passages.iter().map(|p| p.id.clone()).collect();
    let score = QuestionScore {
        correct: contains_reference(&answer.text, &question.references),
        f1: token_f1(&answer.text, &question.references),
        cited: Some((cited.len(), cited.iter().filter(|&&n| holds_answer(n)).count())),
        gold_retrieved: (!question.passages.is_empty()).then(|| ids.iter().any(|id| question.passages.contains(id))),
        no_passage: answer.passages.is_empty(),
        retrieve_ms: answer.retrieve_ms,
        prompt_ms: answer.prompt_ms,
        generate_ms: answer.generate_ms,
        prompt_tokens: answer.prompt_tokens,
        generated_tokens: answer.generated_tokens,
    };
    (answer.text, score, ids)
}

fn run_strategy(strategy: &'static str, questions: &[Question], common: &Common<'_>, adapter: Option<&Adapter>, retrieval_adapter: Option<&str>) -> Run {
    let started = Instant::now();
    let mut scores = Vec::with_capacity(questions.len());
    let mut answers = Vec::with_capacity(questions.len());
    // A progress NOTICE about every quarter of the questions, at least 10 apart.
    let every = (questions.len() / 4).max(10);
    for (done, question) in questions.iter().enumerate() {
        pg_sys::check_for_interrupts!();
        if done > 0 && done % every == 0 {
            let seconds = started.elapsed().as_secs_f64();
            pgrx::notice!(
                "evaluate_strategies: {strategy}: {done}/{} questions, {seconds:.1} s, about {:.0} s left",
                questions.len(),
                seconds / done as f64 * (questions.len() - done) as f64
            );
        }
        let (text, score, passages) = match strategy {
            "closed_book" => {
                let (text, score) = closed_book(question, common, None);
                (text, score, None)
            }
            "finetuned" => {
                let (text, score) = closed_book(question, common, adapter);
                (text, score, None)
            }
            "rag" => with_passages(rag(question, common, None, None)),
            "rag_finetuned" => with_passages(rag(question, common, adapter, None)),
            _ => with_passages(rag(question, common, None, retrieval_adapter)),
        };
        answers.push(json!({
            "key": question.key.to_string(), "question": question.text, "references": question.references,
            "answer": text, "passages": passages, "correct": score.correct, "f1": score.f1,
            "cited": score.cited.map(|c| c.0), "cited_right": score.cited.map(|c| c.1),
            "gold_retrieved": score.gold_retrieved, "no_passage": score.no_passage,
            "retrieve_ms": score.retrieve_ms, "prompt_ms": score.prompt_ms, "generate_ms": score.generate_ms,
            "total_ms": score.total_ms(), "prompt_tokens": score.prompt_tokens, "generated_tokens": score.generated_tokens,
        }));
        scores.push(score);
    }
    pgrx::notice!("evaluate_strategies: {strategy}: {} questions in {:.1} s", questions.len(), started.elapsed().as_secs_f64());
    let fine_tuned = strategy.contains("finetuned");
    Run {
        strategy,
        scores,
        answers,
        training_seconds: adapter.filter(|_| fine_tuned).and_then(|a| a.seconds),
        adapter_bytes: adapter.filter(|_| fine_tuned).map(|a| a.bytes),
    }
}

fn with_passages((text, score, ids): (String, QuestionScore, Vec<String>)) -> (String, QuestionScore, Option<Vec<String>>) {
    (text, score, Some(ids))
}

/// The named generator adapter, after checking it was not trained on the questions this
/// call scores: an adapter trained on `relation` must have held out the same questions.
fn named_adapter(name: &str, model: Option<&str>, relation: &str, seed: i64, fraction: f64) -> Adapter {
    let model = generator_model(model).or_raise();
    let weights = output_adapter(&adapter_row(name).or_raise(), &model.name).or_raise();
    let (options, metrics, bytes) = Spi::connect(|client| {
        let rows = client
            .select("SELECT options, metrics, weights_bytes FROM ragtune_adapters WHERE name = $1", Some(1), &[name.into()])
            .or_raise_spi();
        rows.into_iter()
            .next()
            .map(|r| {
                (
                    r.get::<pgrx::JsonB>(1).or_raise_spi().map_or(Value::Null, |j| j.0),
                    r.get::<pgrx::JsonB>(2).or_raise_spi().map_or(Value::Null, |j| j.0),
                    r.get::<i64>(3).or_raise_spi().unwrap_or(0),
                )
            })
            .unwrap_or((Value::Null, Value::Null, 0))
    });
    if options["training_data"].as_str() == Some(relation) {
        let held = &options["held_out"];
        if held["seed"].as_i64() != Some(seed) || held["fraction"].as_f64() != Some(fraction) {
            Error::new(
                ErrorKind::InvalidParameterValue,
                format!("adapter \"{name}\" was trained on rows of {relation}: scoring it there could count rows it was trained on"),
            )
            .with_hint(match (held["seed"].as_i64(), held["fraction"].as_f64()) {
                (Some(s), Some(f)) => format!("It held out the questions of seed => {s}, held_out_fraction => {f}: evaluate with those."),
                _ => "Evaluate it on another table, or let evaluate_strategies() train one on the training split.".into(),
            })
            .raise();
        }
    }
    Adapter { weights, seconds: metrics["seconds"]["total"].as_f64(), bytes }
}

fn interval(i: &Interval) -> (Option<f64>, Option<Vec<f64>>) {
    if i.mean.is_nan() {
        (None, None)
    } else {
        (Some(i.mean), Some(vec![i.low, i.high]))
    }
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

type Row = (
    String,
    i32,
    Option<f64>,
    Option<Vec<f64>>,
    Option<f64>,
    Option<Vec<f64>>,
    Option<f64>,
    Option<Vec<f64>>,
    Option<f64>,
    Option<Vec<f64>>,
    i32,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    pgrx::JsonB,
    pgrx::JsonB,
);

fn row(run: &Run, summary: &Summary, others: &[&Run], seed: u64) -> Row {
    let diffs: serde_json::Map<String, Value> = others
        .iter()
        .map(|other| {
            let (accuracy, f1) = differences(&run.scores, &other.scores, seed);
            (other.strategy.to_string(), json!({"accuracy": [accuracy.mean, accuracy.low, accuracy.high], "f1": [f1.mean, f1.low, f1.high]}))
        })
        .collect();
    let (accuracy, accuracy_ci) = interval(&summary.accuracy);
    let (f1, f1_ci) = interval(&summary.f1);
    let (precision, precision_ci) = interval(&summary.citation_precision);
    let (recall, recall_ci) = interval(&summary.retrieval_recall);
    (
        run.strategy.to_string(),
        summary.questions as i32,
        accuracy,
        accuracy_ci,
        f1,
        f1_ci,
        precision,
        precision_ci,
        recall,
        recall_ci,
        summary.no_passage as i32,
        finite(summary.p50_ms),
        finite(summary.p95_ms),
        finite(summary.retrieve_p50_ms),
        finite(summary.prompt_p50_ms),
        finite(summary.generate_p50_ms),
        finite(summary.mean_prompt_tokens),
        finite(summary.mean_generated_tokens),
        run.training_seconds,
        run.adapter_bytes,
        pgrx::JsonB(Value::Object(diffs)),
        pgrx::JsonB(Value::Array(run.answers.clone())),
    )
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
#[pg_extern(sql = false)]
fn ragtune_evaluate_strategies(
    questions: pg_sys::Oid,
    source: Option<&str>,
    question_column: &str,
    answer_column: &str,
    passage_column: Option<&str>,
    adapter: Option<&str>,
    train_adapter: Option<&str>,
    retrieval_adapter: Option<&str>,
    held_out_fraction: f64,
    max_questions: i32,
    seed: i64,
    k: i32,
    max_tokens: i32,
    model: Option<&str>,
    mode: Option<&str>,
    epochs: i32,
    rank: i32,
    strategies: Option<Vec<String>>,
    replace: bool,
) -> TableIterator<
    'static,
    (
        name!(strategy, String),
        name!(questions_scored, i32),
        name!(accuracy, Option<f64>),
        name!(accuracy_ci, Option<Vec<f64>>),
        name!(f1, Option<f64>),
        name!(f1_ci, Option<Vec<f64>>),
        name!(citation_precision, Option<f64>),
        name!(citation_precision_ci, Option<Vec<f64>>),
        name!(retrieval_recall, Option<f64>),
        name!(retrieval_recall_ci, Option<Vec<f64>>),
        name!(no_passage, i32),
        name!(p50_ms, Option<f64>),
        name!(p95_ms, Option<f64>),
        name!(retrieve_p50_ms, Option<f64>),
        name!(prompt_p50_ms, Option<f64>),
        name!(generate_p50_ms, Option<f64>),
        name!(prompt_tokens, Option<f64>),
        name!(generated_tokens, Option<f64>),
        name!(training_seconds, Option<f64>),
        name!(adapter_bytes, Option<i64>),
        name!(differences, pgrx::JsonB),
        name!(answers, pgrx::JsonB),
    ),
> {
    let started = Instant::now();
    if !(held_out_fraction > 0.0 && held_out_fraction < 1.0) {
        invalid(format!("held_out_fraction must be between 0 and 1 (exclusive), not {held_out_fraction}")).raise();
    }
    if !(1..=MAX_QUESTIONS).contains(&max_questions) {
        invalid(format!("max_questions must be between 1 and {MAX_QUESTIONS}, not {max_questions}")).raise();
    }
    if k < 1 {
        invalid(format!("k must be at least 1, not {k}")).raise();
    }
    if max_tokens < 1 {
        invalid(format!("max_tokens must be at least 1, not {max_tokens}")).raise();
    }
    if adapter.is_some() && train_adapter.is_some() {
        invalid("name either adapter (an adapter to evaluate) or train_adapter (a name for the one trained here), not both".into()).raise();
    }
    let chosen: Vec<&'static str> = match &strategies {
        Some(names) => names
            .iter()
            .map(|name| {
                STRATEGIES.iter().copied().find(|s| s == name).unwrap_or_else(|| {
                    invalid(format!("unknown strategy \"{name}\""))
                        .with_hint(format!("Strategies: {}.", STRATEGIES.join(", ")))
                        .raise()
                })
            })
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            }),
        None => STRATEGIES.iter().copied().filter(|s| *s != "rag_retrieval_adapter" || retrieval_adapter.is_some()).collect(),
    };
    if chosen.is_empty() {
        invalid("strategies names none".into()).raise();
    }
    if chosen.contains(&"rag_retrieval_adapter") && retrieval_adapter.is_none() {
        invalid("strategy rag_retrieval_adapter needs retrieval_adapter".into()).raise();
    }
    let queries = question_queries(questions, question_column, answer_column, passage_column).or_raise();
    let split = read_split(&queries, seed as u64, held_out_fraction, max_questions as usize);
    pgrx::notice!(
        "evaluate_strategies: {} rows of {} read: {} held out ({} scored), {} for training, {} without a question or answer",
        split.read,
        queries.relation,
        split.held_out,
        split.scored.len(),
        split.training,
        split.skipped
    );
    if split.scored.is_empty() {
        invalid(format!("no question of {} is held out for scoring", queries.relation))
            .with_hint("Raise held_out_fraction, or add rows with a question and an answer.")
            .raise();
    }
    let fine_tuned = chosen.iter().any(|s| s.contains("finetuned"));
    let mut training_seconds = 0.0;
    let adapter = fine_tuned.then(|| match adapter {
        Some(name) => named_adapter(name, model, &queries.relation, seed, held_out_fraction),
        None => {
            if split.training == 0 {
                invalid(format!("no question of {} is left for training the adapter", queries.relation))
                    .with_hint("Lower held_out_fraction, or name an adapter to evaluate.")
                    .raise();
            }
            let trained = train_on_training_split(
                train_adapter.unwrap_or("evaluate_strategies"),
                queries.training.clone(),
                queries.relation.clone(),
                (seed as u64, held_out_fraction),
                model,
                rank,
                epochs,
                seed,
            );
            training_seconds = trained.seconds();
            let weights = Arc::new(OutputAdapter::from_bytes(&trained.weights).or_raise());
            let bytes = trained.weights.len() as i64;
            if let Some(name) = train_adapter {
                crate::adapters::train::store(name, AdapterKind::Generator, trained, replace);
            }
            Adapter { weights, seconds: Some(training_seconds), bytes }
        }
    });
    let common = Common { source, model, k, max_tokens, mode };
    let runs: Vec<Run> =
        chosen.iter().map(|strategy| run_strategy(strategy, &split.scored, &common, adapter.as_ref(), retrieval_adapter)).collect();
    let answering: f64 = runs.iter().flat_map(|r| r.scores.iter()).map(QuestionScore::total_ms).sum::<f64>() / 1e3;
    pgrx::notice!(
        "evaluate_strategies: {:.1} s in all: answers {answering:.1} s, training {training_seconds:.1} s",
        started.elapsed().as_secs_f64()
    );
    let rows: Vec<Row> = runs
        .iter()
        .map(|run| {
            let others: Vec<&Run> = runs.iter().filter(|o| o.strategy != run.strategy).collect();
            row(run, &summarize(&run.scores, seed as u64), &others, seed as u64)
        })
        .collect();
    TableIterator::new(rows)
}
