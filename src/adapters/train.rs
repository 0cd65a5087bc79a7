//! `CALL finetune_adapter(...)` and `evaluate_adapter()`: reading training rows with the
//! caller's rights, turning them into examples with the frozen base model (final hidden
//! states for a generator, embeddings for retrieval), training with `finetune`, and
//! reporting progress. sql/adapters.sql stores the result in the catalog.
//!
//! Rows stream through a cursor; what is kept per row (hidden states of the completion's
//! positions, or two embeddings) is capped at `maintenance_work_mem`: past it, the rest
//! of the table is not read, with a NOTICE. Rows are put in the order of a hash of their
//! texts and the seed before training, so a run repeats whatever order the table
//! returns its rows in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{s, Array2};
use pgrx::prelude::*;
use serde_json::{json, Value};

use super::progress::Progress;
use crate::catalog::adapters::{adapter_row, output_adapter, query_adapter};
use ragtune_core::finetune::AdapterKind;
use crate::catalog::large_objects::read_large_object;
use crate::catalog::{embedding_model, generator_model, lease_generator, lm_head_shape, with_embedder, ModelRow};
use crate::pg::error::OrRaiseSpi;
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::{OrRaise, Raise};
use ragtune_core::finetune::epochs::{split, BestEpoch, Held, Measure, Positions, RowPositions, RECALL_K};
use ragtune_core::finetune::{
    in_validation, recall_at_k, row_key, CompletionExample, CopyCandidates, EpochReport, KeyProjection, LmHead, OutputAdapter, OutputTrainer,
    PromptKeys, QueryAdapter, QueryExamples, QueryTrainer, TrainingOptions, DEFAULT_TEMPERATURE,
};
use crate::pg::error::raise_model_error;
use crate::pg::interrupts::cancel_pending;
use ragtune_core::models::chat::chat_messages;
use ragtune_core::models::Generator;
use ragtune_core::rag::evaluate::{is_held_out, question_key};
use ragtune_core::rng::Rng;

/// Rows fetched from the cursor at a time (and embedded in one call for retrieval).
const FETCH_ROWS: i64 = 32;
/// Rows of a RAG source mined per training query as hard negatives.
const HARD_NEGATIVES: i32 = 10;

fn interrupt() -> Result<(), Error> {
    pg_sys::check_for_interrupts!();
    Ok(())
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidParameterValue, message)
}

/// The query that reads (input, target) text pairs from a table or view the caller
/// names, after checking both columns exist and hold text.
pub(crate) struct TrainingRows {
    select: String,
    relation: String,
    /// Rows whose input evaluate_strategies() holds out for scoring (seed, fraction):
    /// never read for training.
    held_out: Option<(u64, f64)>,
}

impl TrainingRows {
    fn new(relation: pg_sys::Oid, input: &str, target: &str) -> Result<Self, Error> {
        let name = Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relation.into()]).or_raise_spi().unwrap_or_default();
        for column in [input, target] {
            // NULL when there is no such column.
            let found = Spi::get_one_with_args::<bool>(
                "SELECT (SELECT atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype) FROM pg_attribute \
                 WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
                &[relation.into(), column.into()],
            )
            .or_raise_spi();
            match found {
                None => {
                    return Err(Error::new(ErrorKind::UndefinedColumn, format!("column \"{column}\" of {name} does not exist")))
                }
                Some(false) => {
                    return Err(Error::new(ErrorKind::DatatypeMismatch, format!("column \"{column}\" of {name} is not a text column"))
                        .with_hint("Training reads text, varchar or char columns; cast others in a view."))
                }
                Some(true) => {}
            }
        }
        let select = Spi::get_one_with_args::<String>(
            "SELECT format('SELECT %I::text, %I::text FROM %s', $1, $2, $3::regclass)",
            &[input.into(), target.into(), relation.into()],
        )
        .or_raise_spi()
        .unwrap_or_default();
        Ok(Self { select, relation: name, held_out: None })
    }

    /// The rows of `select` (input, target) from `relation` whose input is not held out
    /// for scoring by `seed` and `fraction` (ragtune_core::rag::evaluate's split).
    pub(crate) fn training_split(select: String, relation: String, seed: u64, fraction: f64) -> Self {
        Self { select, relation, held_out: Some((seed, fraction)) }
    }

    fn is_held_out(&self, input: Option<&str>) -> bool {
        self.held_out.is_some_and(|(seed, fraction)| input.is_some_and(|q| is_held_out(question_key(seed, q), fraction)))
    }

    fn count(&self) -> i64 {
        Spi::get_one::<i64>(&format!("SELECT count(*) FROM {}", self.relation)).or_raise_spi().unwrap_or_default()
    }

    /// Calls `each` with every row, in batches, until it returns false.
    fn read(&self, mut each: impl FnMut(Vec<(Option<String>, Option<String>)>) -> Result<bool, Error>) -> Result<(), Error> {
        Spi::connect(|client| {
            let mut cursor = client.open_cursor(self.select.as_str(), &[]);
            loop {
                let fetched: Vec<_> = cursor
                    .fetch(FETCH_ROWS)
                    .or_raise_spi()
                    .map(|row| (row.get::<String>(1).or_raise_spi(), row.get::<String>(2).or_raise_spi()))
                    .collect();
                // SAFETY: the batch's tuple table is SPI's last result and nothing refers
                // to it any more; freeing it keeps memory flat however many rows there are.
                unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
                if fetched.is_empty() {
                    return Ok(());
                }
                let batch: Vec<_> = fetched.into_iter().filter(|(input, _)| !self.is_held_out(input.as_deref())).collect();
                if !batch.is_empty() && !each(batch)? {
                    return Ok(());
                }
            }
        })
    }
}

/// Counts of what happened to the rows read.
#[derive(Default)]
struct RowCounts {
    read: i64,
    skipped_null: i64,
    skipped_too_long: i64,
    train: i64,
    validation: i64,
    /// Rows were left unread because what was held reached maintenance_work_mem.
    stopped_at_memory_limit: bool,
}

impl RowCounts {
    fn json(&self) -> Value {
        json!({"read": self.read, "used": self.train + self.validation, "skipped_null": self.skipped_null,
               "skipped_too_long": self.skipped_too_long, "train": self.train, "validation": self.validation,
               "stopped_at_memory_limit": self.stopped_at_memory_limit})
    }

    fn notice_skipped(&self) {
        if self.skipped_null > 0 {
            pgrx::notice!("{} rows with a NULL input or target were skipped", self.skipped_null);
        }
        if self.skipped_too_long > 0 {
            pgrx::notice!("{} rows longer than the model's context window were skipped", self.skipped_too_long);
        }
    }
}

/// Floats the examples may hold: maintenance_work_mem.
fn memory_cap_floats() -> usize {
    // SAFETY: reading an int setting.
    let kilobytes = unsafe { pg_sys::maintenance_work_mem }.max(64) as usize;
    kilobytes * 1024 / 4
}

fn notice_memory_limit(read: i64) {
    pgrx::notice!(
        "maintenance_work_mem is full after {read} rows: the rest of the training data was not read"
    );
    pgrx::notice!("raise maintenance_work_mem to train on more rows");
}

/// Reads prompt/completion rows and runs each through the generator once, keeping the
/// final hidden states of the positions that predict the completion and its end token,
/// and what a copy head could quote from the prompt at each.
fn completion_positions(
    generator: &mut Generator,
    pointer: Option<&KeyProjection>,
    rows: &TrainingRows,
    system: Option<&str>,
    seed: u64,
    validation_fraction: f64,
    progress: &mut Progress,
) -> Result<(Positions, Positions, RowCounts), Error> {
    let hidden = generator.hidden_size().ok_or_else(no_hidden_state)?;
    let end = *generator.text().config().stop_token_ids.first().ok_or_else(|| invalid("the model has no stop token".into()))?;
    let window = generator.text().config().context_window;
    let cap = memory_cap_floats();
    let mut counts = RowCounts::default();
    let mut held = Vec::new();
    let mut floats = 0usize;
    rows.read(|batch| {
        for (input, target) in batch {
            interrupt()?;
            counts.read += 1;
            progress.rows_read(counts.read);
            let (Some(input), Some(target)) = (input, target) else {
                counts.skipped_null += 1;
                continue;
            };
            let messages = chat_messages(system, &input);
            let prompt = generator.text().prompt_ids(&messages)?;
            let quotable_from = generator.text().user_message_start(&messages, &prompt)?;
            let quotable = &prompt[quotable_from..];
            let completion = generator.text().tokenizer().encode_plain(&target)?;
            let Some(example) = CompletionExample::new(&prompt, &completion, end).filter(|e| e.tokens.len() <= window) else {
                counts.skipped_too_long += 1;
                continue;
            };
            let states = raise_model_error(generator.final_hidden_states(&example.tokens, &cancel_pending));
            let kept = states.slice(s![example.first.., ..]).iter().copied().collect::<Vec<f32>>();
            let keys = Arc::new(pointer.map_or_else(PromptKeys::default, |projection| {
                projection.prompt_keys(&prompt, quotable_from, states.as_slice().expect("a standard layout array"))
            }));
            let copies: Vec<CopyCandidates> = (0..example.targets.len())
                .map(|i| CopyCandidates::find_or_point(quotable, &completion[..i], &keys))
                .collect();
            let held_floats = kept.len() + keys.floats() + copies.iter().map(CopyCandidates::floats).sum::<usize>();
            if floats + held_floats > cap {
                counts.stopped_at_memory_limit = true;
                notice_memory_limit(counts.read - 1);
                return Ok(false);
            }
            floats += held_floats;
            let key = row_key(seed, &input, &target);
            let validation = in_validation(key, validation_fraction);
            *(if validation { &mut counts.validation } else { &mut counts.train }) += 1;
            held.push(Held { key, validation, item: RowPositions { hidden: kept, targets: example.targets, copies } });
        }
        Ok(true)
    })?;
    let (train, validation) = split(held);
    Ok((Positions::stack(train, hidden), Positions::stack(validation, hidden), counts))
}

fn no_hidden_state() -> Error {
    Error::new(ErrorKind::WrongObjectType, "the base model exposes no hidden state: its graph has no hidden_states output")
        .with_hint("Generator adapters need it; scripts/gguf_to_onnx.py adds it when converting a model.")
}

/// The generator's output projection from the catalog.
fn lm_head(model: &ModelRow, generator: &Generator) -> Result<LmHead, Error> {
    let oid = model.lm_head.ok_or_else(|| {
        Error::new(ErrorKind::WrongObjectType, format!("model \"{}\" has no lm_head", model.name))
            .with_hint("Register it with its lm_head.f16 (register_model_from_files() reads it from the model's directory).")
    })?;
    let bytes = read_large_object(oid);
    let (vocab, hidden) = lm_head_shape(bytes.len() as i64, generator.hidden_size(), generator.text().config().vocab_size)?;
    LmHead::from_le_bytes(&bytes, vocab, hidden)
}

/// Options of a run, checked.
struct Run<'a> {
    name: &'a str,
    rank: usize,
    epochs: usize,
    training: TrainingOptions,
    validation_fraction: f64,
    seed: u64,
    /// As given (the training options keep f32).
    learning_rate: f64,
    system: Option<&'a str>,
    hard_negatives_from: Option<&'a str>,
    /// Generator adapters: with a copy head.
    copy_from_prompt: bool,
    /// Store the new adapter only where its validation figure is at least as good as the
    /// stored adapter's of that name on the same validation rows.
    replace_if_better: bool,
}

/// The validation figure of the stored adapter `run.name` (the one a gated run may
/// replace), measured by `measure`; None when there is none or the run is not gated.
fn stored_figure<A>(
    run: &Run<'_>,
    read: impl FnOnce(&crate::catalog::adapters::AdapterRow) -> Result<A, Error>,
    measure: impl FnOnce(&A) -> Result<Option<f64>, Error>,
) -> Result<Option<f64>, Error> {
    if !run.replace_if_better {
        return Ok(None);
    }
    match adapter_row(run.name) {
        Ok(row) => measure(&read(&row)?),
        Err(e) if e.kind == ErrorKind::UndefinedObject => Ok(None),
        Err(e) => Err(e),
    }
}

/// The gate's verdict in the metrics: whether the new adapter replaces the stored one.
fn gate(run: &Run<'_>, measure: Measure, stored: Option<f64>, new: Option<f64>) -> Value {
    let replaces = match (stored, new) {
        (Some(stored), Some(new)) => match measure {
            Measure::Loss => new <= stored,
            Measure::Recall => new >= stored,
        },
        _ => true,
    };
    json!({"gated": run.replace_if_better, "stored_validation": stored, "new_validation": new, "replaces": replaces})
}

/// The adapter kept from a run: the epoch with the best validation figure (the last one
/// without validation rows), and every epoch's figures.
struct Trained<A> {
    adapter: A,
    epoch: usize,
    validation: Option<f64>,
    epochs: Vec<Value>,
}

/// Runs `run.epochs` epochs of `epoch` (which returns its report, the validation figure
/// and the adapter as it now is), with a NOTICE and a progress update after each.
fn train_epochs<A>(
    run: &Run<'_>,
    progress: &mut Progress,
    measure: Measure,
    base: Option<f64>,
    mut epoch: impl FnMut() -> Result<(EpochReport, Option<f64>, A), Error>,
) -> Result<Trained<A>, Error> {
    progress.set_phase("training");
    let started = progress.elapsed();
    let mut epochs = Vec::new();
    let mut best = BestEpoch::new(measure);
    for number in 1..=run.epochs {
        let epoch_started = Instant::now();
        let (report, validation, adapter) = epoch()?;
        best.offer(number, validation, adapter);
        let seconds = epoch_started.elapsed().as_secs_f64();
        let eta = (progress.elapsed() - started) / number as f64 * (run.epochs - number) as f64;
        let shown = match (validation, base) {
            (Some(value), Some(base)) => format!(", {} (base model: {base:.4})", measure.show(value)),
            _ => String::new(),
        };
        pgrx::notice!(
            "adapter \"{}\": epoch {number}/{}: training loss {:.4}{shown}, {seconds:.1} s, about {eta:.0} s left",
            run.name,
            run.epochs,
            report.mean_loss
        );
        progress.report.epoch = number as i32;
        progress.report.train_loss = Some(report.mean_loss);
        match measure {
            Measure::Loss => progress.report.validation_loss = validation,
            Measure::Recall => progress.report.validation_recall = validation,
        }
        progress.report.eta_seconds = Some(eta);
        progress.write();
        epochs.push(json!({"epoch": number, "train_loss": report.mean_loss, measure.key(): validation, "seconds": seconds}));
    }
    let (epoch, validation, adapter) = best.kept().expect("at least one epoch");
    if epoch < run.epochs {
        pgrx::notice!("adapter \"{}\": keeping epoch {epoch}, the best on the validation rows", run.name);
    }
    Ok(Trained { adapter, epoch, validation, epochs })
}

fn train_generator(run: &Run<'_>, rows: &TrainingRows, base_model: Option<&str>, progress: &mut Progress) -> Result<(Vec<u8>, String, Value), Error> {
    let model = generator_model(base_model)?;
    progress.report.base_model = model.name.clone();
    let mut lease = lease_generator(&model)?;
    let generator = lease.get();
    generator.hidden_size().ok_or_else(no_hidden_state)?;
    let head = lm_head(&model, generator)?;
    let read_started = progress.elapsed();
    let pointer = run.copy_from_prompt.then(|| KeyProjection::new(generator.hidden_size().expect("checked above")));
    let (train, validation, counts) =
        completion_positions(generator, pointer.as_ref(), rows, run.system, run.seed, run.validation_fraction, progress)?;
    drop(lease);
    let read_seconds = progress.elapsed() - read_started;
    counts.notice_skipped();
    if train.targets.is_empty() {
        return Err(empty_training_set(&counts));
    }
    pgrx::notice!(
        "adapter \"{}\": {} training rows ({} positions), {} validation rows, read in {read_seconds:.1} s",
        run.name,
        counts.train,
        train.targets.len(),
        counts.validation
    );
    let mut rng = Rng::new(run.seed);
    let alpha = 2.0 * run.rank as f32;
    let adapter = OutputAdapter::new(&head, run.rank, alpha, &mut rng)?;
    let adapter = if run.copy_from_prompt { adapter.with_copy_head() } else { adapter };
    let (train_examples, validation_examples) = (train.examples()?, validation.examples()?);
    let batch = run.training.batch_size;
    let evaluate = |adapter: &OutputAdapter| -> Result<Option<f64>, Error> {
        if validation_examples.is_empty() {
            return Ok(None);
        }
        Ok(Some(adapter.evaluate(&head, &validation_examples, batch, &mut interrupt)?.mean_nll))
    };
    let base_nll = evaluate(&OutputAdapter::new(&head, run.rank, alpha, &mut Rng::new(0))?)?;
    progress.report.validation_loss = base_nll;
    let mut trainer = OutputTrainer::new(adapter, &run.training, rng)?;
    let train_started = progress.elapsed();
    let trained = train_epochs(run, progress, Measure::Loss, base_nll, || {
        let report = trainer.train_epoch(&head, &train_examples, &mut interrupt)?;
        Ok((report, evaluate(trainer.adapter())?, trainer.adapter().clone()))
    })?;
    let train_seconds = progress.elapsed() - train_started;
    let stored = stored_figure(run, |row| output_adapter(row, &model.name), |previous| evaluate(previous))?;
    let metrics = json!({
        "rows": counts.json(),
        "gate": gate(run, Measure::Loss, stored, trained.validation),
        "positions": {"train": train.targets.len(), "validation": validation.targets.len()},
        "base_validation_nll": base_nll,
        "validation_nll": trained.validation,
        "kept_epoch": trained.epoch,
        "epochs": trained.epochs,
        "alpha": alpha,
        "seconds": {"read": read_seconds, "train": train_seconds},
    });
    Ok((trained.adapter.to_bytes(), model.name, metrics))
}

fn empty_training_set(counts: &RowCounts) -> Error {
    Error::new(ErrorKind::InvalidParameterValue, "the training data has no usable rows")
        .with_detail(format!(
            "{} rows read: {} with a NULL, {} too long, {} held out for validation.",
            counts.read, counts.skipped_null, counts.skipped_too_long, counts.validation
        ))
}

/// Query embeddings with the index of their passage among the distinct passages, and of
/// their hard negatives.
struct Pairs {
    queries: Array2<f32>,
    positives: Vec<u32>,
    negatives: Vec<Vec<u32>>,
}

/// One pair as read: query embedding, its passage, its hard negatives.
type Pair = (Vec<f32>, u32, Vec<u32>);

impl Pairs {
    fn stack(rows: Vec<Pair>, width: usize) -> Self {
        let positives = rows.iter().map(|(_, p, _)| *p).collect::<Vec<_>>();
        let mut negatives = Vec::with_capacity(rows.len());
        let mut values = Vec::with_capacity(rows.len() * width);
        for (query, _, hard) in rows {
            values.extend(query);
            negatives.push(hard);
        }
        Self { queries: Array2::from_shape_vec((positives.len(), width), values).expect("one row per pair"), positives, negatives }
    }

    fn examples<'a>(&'a self, passages: &'a Array2<f32>) -> Result<QueryExamples<'a>, Error> {
        QueryExamples::new(self.queries.view(), passages.view(), &self.positives)?.with_negatives(&self.negatives)
    }
}

/// Distinct passages by text, with their embeddings.
#[derive(Default)]
struct PassagePool {
    index: HashMap<String, u32>,
    embeddings: Vec<f32>,
    width: usize,
}

impl PassagePool {
    fn add(&mut self, text: &str, embedding: Vec<f32>) -> u32 {
        if let Some(&at) = self.index.get(text) {
            return at;
        }
        self.width = embedding.len();
        let at = (self.embeddings.len() / self.width) as u32;
        self.index.insert(text.to_string(), at);
        self.embeddings.extend(embedding);
        at
    }

    fn into_matrix(self) -> Array2<f32> {
        let rows = self.embeddings.len() / self.width.max(1);
        Array2::from_shape_vec((rows, self.width), self.embeddings).expect("whole rows")
    }
}

/// Reads query/passage rows and embeds both with the embedding model; passages are
/// embedded once however many queries name them. With `hard_negatives_from` (a RAG
/// source over the same model), the source's rows nearest to each training query that
/// are not its passage become its hard negatives.
fn query_pairs(
    model: &crate::catalog::ModelRow,
    rows: &TrainingRows,
    seed: u64,
    validation_fraction: f64,
    hard_negatives_from: Option<&str>,
    progress: &mut Progress,
) -> Result<(Pairs, Pairs, Array2<f32>, RowCounts), Error> {
    let cap = memory_cap_floats();
    let mut counts = RowCounts::default();
    let mut pool = PassagePool::default();
    let mut held = Vec::new();
    rows.read(|batch| {
        interrupt()?;
        let fetched = batch.len() as i64;
        counts.read += fetched;
        progress.rows_read(counts.read);
        let pairs: Vec<(String, String)> = batch
            .into_iter()
            .filter_map(|pair| match pair {
                (Some(query), Some(passage)) => Some((query, passage)),
                _ => None,
            })
            .collect();
        counts.skipped_null += fetched - pairs.len() as i64;
        if pairs.is_empty() {
            return Ok(true);
        }
        let new: Vec<&str> = {
            let mut seen = std::collections::HashSet::new();
            pairs.iter().map(|(_, p)| p.as_str()).filter(|p| !pool.index.contains_key(*p) && seen.insert(*p)).collect()
        };
        let queries: Vec<&str> = pairs.iter().map(|(q, _)| q.as_str()).collect();
        let (query_vectors, passage_vectors) = raise_model_error(with_embedder(model, |embedder| {
            Ok((embedder.embed_batch(&queries, &cancel_pending)?, embedder.embed_batch(&new, &cancel_pending)?))
        }));
        for (text, vector) in new.iter().zip(passage_vectors) {
            pool.add(text, vector);
        }
        for ((query, passage), vector) in pairs.iter().zip(query_vectors) {
            let key = row_key(seed, query, passage);
            let validation = in_validation(key, validation_fraction);
            *(if validation { &mut counts.validation } else { &mut counts.train }) += 1;
            held.push(Held { key, validation, item: (vector, pool.index[passage.as_str()], Vec::new()) });
        }
        let per_pair = if hard_negatives_from.is_some() { 1 + HARD_NEGATIVES as usize } else { 1 };
        if pool.embeddings.len() + held.len() * per_pair * pool.width > cap {
            counts.stopped_at_memory_limit = true;
            notice_memory_limit(counts.read);
            return Ok(false);
        }
        Ok(true)
    })?;
    if let Some(source) = hard_negatives_from {
        progress.set_phase("mining hard negatives");
        let training: Vec<&mut Held<Pair>> = held.iter_mut().filter(|h| !h.validation).collect();
        let queries: Vec<Vec<f32>> = training.iter().map(|h| h.item.0.clone()).collect();
        let nearest = crate::rag::nearest_rows(source, &model.name, &queries, HARD_NEGATIVES + 1)?;
        for (pair, rows) in training.into_iter().zip(nearest) {
            let own = pair.item.1;
            pair.item.2 = rows.into_iter().map(|(text, embedding)| pool.add(&text, embedding)).filter(|&p| p != own).collect();
        }
    }
    let (train, validation) = split(held);
    let width = pool.width;
    Ok((Pairs::stack(train, width), Pairs::stack(validation, width), pool.into_matrix(), counts))
}

fn train_retrieval(run: &Run<'_>, rows: &TrainingRows, base_model: Option<&str>, progress: &mut Progress) -> Result<(Vec<u8>, String, Value), Error> {
    let model = embedding_model(base_model)?;
    progress.report.base_model = model.name.clone();
    let read_started = progress.elapsed();
    let (train, validation, passages, counts) =
        query_pairs(&model, rows, run.seed, run.validation_fraction, run.hard_negatives_from, progress)?;
    let read_seconds = progress.elapsed() - read_started;
    counts.notice_skipped();
    if train.positives.is_empty() {
        return Err(empty_training_set(&counts));
    }
    pgrx::notice!(
        "adapter \"{}\": {} training pairs, {} validation pairs, {} distinct passages, embedded in {read_seconds:.1} s",
        run.name,
        counts.train,
        counts.validation,
        passages.nrows()
    );
    let train_examples = train.examples(&passages)?;
    let validation_examples = validation.examples(&passages)?;
    let recall = |adapter: Option<&QueryAdapter>| -> Result<Option<f64>, Error> {
        if validation_examples.is_empty() {
            return Ok(None);
        }
        recall_at_k(&validation_examples, adapter, RECALL_K, &mut interrupt).map(Some)
    };
    let base_recall = recall(None)?;
    let mut trainer = QueryTrainer::new(QueryAdapter::new(passages.ncols())?, &run.training, DEFAULT_TEMPERATURE, Rng::new(run.seed))?;
    let train_started = progress.elapsed();
    let trained = train_epochs(run, progress, Measure::Recall, base_recall, || {
        let report = trainer.train_epoch(&train_examples, &mut interrupt)?;
        Ok((report, recall(Some(trainer.adapter()))?, trainer.adapter().clone()))
    })?;
    let train_seconds = progress.elapsed() - train_started;
    let stored = stored_figure(run, |row| query_adapter(row, &model.name), |previous| recall(Some(previous)))?;
    let metrics = json!({
        "rows": counts.json(),
        "gate": gate(run, Measure::Recall, stored, trained.validation),
        "passages": passages.nrows(),
        "hard_negatives": train.negatives.iter().map(Vec::len).sum::<usize>(),
        "validation_recall_at_5": {"base": base_recall, "adapter": trained.validation},
        "kept_epoch": trained.epoch,
        "epochs": trained.epochs,
        "temperature": DEFAULT_TEMPERATURE,
        "seconds": {"read": read_seconds, "train": train_seconds},
    });
    Ok((trained.adapter.to_bytes(), model.name, metrics))
}

/// The columns a kind reads when none are named.
fn columns<'a>(kind: AdapterKind, input: Option<&'a str>, target: Option<&'a str>) -> (&'a str, &'a str) {
    let (input_default, target_default) = match kind {
        AdapterKind::Generator => ("prompt", "completion"),
        AdapterKind::Retrieval => ("query", "passage"),
    };
    (input.unwrap_or(input_default), target.unwrap_or(target_default))
}

/// A training run's options, checked.
#[allow(clippy::too_many_arguments)]
fn checked_run<'a>(
    name: &'a str,
    kind: AdapterKind,
    rank: i32,
    epochs: i32,
    learning_rate: f64,
    batch_size: i32,
    validation_fraction: f64,
    seed: i64,
    system: Option<&'a str>,
    hard_negatives_from: Option<&'a str>,
    copy_from_prompt: bool,
    replace_if_better: bool,
) -> Run<'a> {
    if !(1..=1000).contains(&epochs) {
        invalid(format!("epochs must be between 1 and 1000, not {epochs}")).raise();
    }
    if !(1..=65536).contains(&batch_size) {
        invalid(format!("batch_size must be between 1 and 65536, not {batch_size}")).raise();
    }
    if rank < 1 {
        invalid(format!("rank must be at least 1, not {rank}")).raise();
    }
    if !(0.0..=0.5).contains(&validation_fraction) {
        invalid(format!("validation_fraction must be between 0 and 0.5, not {validation_fraction}")).raise();
    }
    if replace_if_better && validation_fraction <= 0.0 {
        invalid("replace_if_better compares validation figures: validation_fraction must be above 0".into()).raise();
    }
    if system.is_some() && kind == AdapterKind::Retrieval {
        invalid("system is for generator adapters".into()).raise();
    }
    if hard_negatives_from.is_some() && kind == AdapterKind::Generator {
        invalid("hard_negatives_from is for retrieval adapters".into()).raise();
    }
    let training = TrainingOptions { learning_rate: learning_rate as f32, batch_size: batch_size as usize, ..TrainingOptions::default() };
    training.validate().or_raise();
    Run {
        name,
        rank: rank as usize,
        epochs: epochs as usize,
        training,
        validation_fraction,
        seed: seed as u64,
        learning_rate,
        system,
        hard_negatives_from,
        copy_from_prompt,
        replace_if_better,
    }
}

/// An adapter trained and measured, not yet stored.
pub(crate) struct TrainedAdapter {
    pub weights: Vec<u8>,
    pub base_model: String,
    pub metrics: Value,
    /// What it was trained with, as the catalog keeps it.
    pub options: Value,
}

impl TrainedAdapter {
    pub(crate) fn seconds(&self) -> f64 {
        self.metrics["seconds"]["total"].as_f64().unwrap_or(0.0)
    }

    /// Whether a gated run's adapter is to replace the stored one (always for others).
    fn replaces(&self) -> bool {
        self.metrics["gate"]["replaces"].as_bool().unwrap_or(true)
    }
}

/// Trains `kind` on `rows` with the caller's rights, reporting progress; errors raise.
fn train(run: &Run<'_>, kind: AdapterKind, rows: &TrainingRows, input: &str, target: &str, base_model: Option<&str>) -> TrainedAdapter {
    let mut progress = Progress::start(run.name, kind.name(), base_model.unwrap_or(""), run.epochs as i32);
    progress.report.rows_total = Some(rows.count());
    progress.write();
    let trained = match kind {
        AdapterKind::Generator => train_generator(run, rows, base_model, &mut progress),
        AdapterKind::Retrieval => train_retrieval(run, rows, base_model, &mut progress),
    };
    let (weights, model, mut metrics) = raise_model_error(trained);
    progress.set_phase("saving");
    let total = progress.elapsed();
    let used = metrics["rows"]["used"].as_f64().unwrap_or(0.0);
    let trained = metrics["rows"]["train"].as_f64().unwrap_or(0.0) * run.epochs as f64;
    let per_second = |rows: f64, seconds: f64| if seconds > 0.0 { rows / seconds } else { 0.0 };
    metrics["seconds"]["total"] = json!(total);
    // End to end (reading rows through the model, then every epoch), and epochs alone.
    metrics["rows_per_second"] = json!(per_second(used, total));
    metrics["training_rows_per_second"] = json!(per_second(trained, metrics["seconds"]["train"].as_f64().unwrap_or(0.0)));
    let mut options = json!({
        "training_data": rows.relation, "input_column": input, "target_column": target, "rank": run.rank,
        "epochs": run.epochs, "learning_rate": run.learning_rate, "batch_size": run.training.batch_size,
        "validation_fraction": run.validation_fraction, "seed": run.seed as i64, "system": run.system,
        "hard_negatives_from": run.hard_negatives_from,
        "copy_from_prompt": run.copy_from_prompt && kind == AdapterKind::Generator,
    });
    if let Some((seed, fraction)) = rows.held_out {
        // evaluate_strategies() checks this before scoring the adapter on the same table.
        options["held_out"] = json!({"seed": seed as i64, "fraction": fraction});
    }
    TrainedAdapter { weights, base_model: model, metrics, options }
}

/// Stores a trained adapter (replacing one as `replace` allows), unless a gated run's
/// adapter did no better than the stored one: then it says so and stores nothing.
pub(crate) fn store(name: &str, kind: AdapterKind, trained: TrainedAdapter, replace: bool) -> Value {
    if !trained.replaces() {
        let gate = &trained.metrics["gate"];
        pgrx::notice!(
            "adapter \"{name}\" kept: the new adapter's validation figure {} is not better than the stored adapter's {} on the same rows",
            gate["new_validation"],
            gate["stored_validation"]
        );
        return trained.metrics;
    }
    crate::catalog::changes::store_adapter(name, kind.name(), &trained.base_model, trained.weights, trained.options, trained.metrics.clone(), replace);
    trained.metrics
}

/// Trains a generator adapter on the rows of `select` (question, reference) that are not
/// held out by `seed` and `held_out_fraction`: evaluate_strategies()' fine-tuned strategies.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_on_training_split(
    name: &str,
    select: String,
    relation: String,
    held_out: (u64, f64),
    base_model: Option<&str>,
    rank: i32,
    epochs: i32,
    seed: i64,
) -> TrainedAdapter {
    let run = checked_run(name, AdapterKind::Generator, rank, epochs, 0.001, 64, 0.1, seed, None, None, false, false);
    let rows = TrainingRows::training_split(select, relation, held_out.0, held_out.1);
    train(&run, AdapterKind::Generator, &rows, "question", "reference", base_model)
}

/// Trains an adapter with the caller's rights and stores it (finetune_adapter() in
/// sql/adapters.sql checks the name first); returns its metrics.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn ragtune_finetune_adapter(
    name: &str,
    training_data: pg_sys::Oid,
    kind: &str,
    input_column: Option<&str>,
    target_column: Option<&str>,
    base_model: Option<&str>,
    rank: i32,
    epochs: i32,
    learning_rate: f64,
    batch_size: i32,
    validation_fraction: f64,
    seed: i64,
    system: Option<&str>,
    hard_negatives_from: Option<&str>,
    copy_from_prompt: bool,
    replace: bool,
    replace_if_better: bool,
) -> pgrx::JsonB {
    let kind = AdapterKind::parse(kind).or_raise();
    let run = checked_run(
        name,
        kind,
        rank,
        epochs,
        learning_rate,
        batch_size,
        validation_fraction,
        seed,
        system,
        hard_negatives_from,
        copy_from_prompt,
        replace_if_better,
    );
    let (input, target) = columns(kind, input_column, target_column);
    let rows = TrainingRows::new(training_data, input, target).or_raise();
    let trained = train(&run, kind, &rows, input, target, base_model);
    pgrx::JsonB(store(name, kind, trained, replace || replace_if_better))
}

/// Measures adapter `name` on rows of `data`: mean NLL per completion token with and
/// without it (generator adapters, under the system message it was trained with), or
/// recall@k among the data's distinct passages (retrieval adapters).
#[pg_extern(sql = false)]
fn ragtune_evaluate_adapter(name: &str, data: pg_sys::Oid, input_column: Option<&str>, target_column: Option<&str>, k: i32) -> pgrx::JsonB {
    let row = adapter_row(name).or_raise();
    let (input, target) = columns(row.kind, input_column, target_column);
    let rows = TrainingRows::new(data, input, target).or_raise();
    let mut progress = Progress::start(name, row.kind.name(), &row.base_model, 0);
    progress.report.rows_total = Some(rows.count());
    progress.set_phase("evaluating");
    let result = match row.kind {
        AdapterKind::Generator => (|| {
            let adapter = output_adapter(&row, &row.base_model)?;
            let model = generator_model(Some(&row.base_model))?;
            let mut lease = lease_generator(&model)?;
            let head = lm_head(&model, lease.get())?;
            adapter.check_base(&head)?;
            let pointer = adapter.has_copy_head().then(|| KeyProjection::new(adapter.hidden()));
            let (_, all, counts) =
                completion_positions(lease.get(), pointer.as_ref(), &rows, row.system.as_deref(), 0, 1.0, &mut progress)?;
            counts.notice_skipped();
            let examples = all.examples()?;
            let fresh = OutputAdapter::new(&head, adapter.rank(), adapter.alpha(), &mut Rng::new(0))?;
            let base = fresh.evaluate(&head, &examples, 64, &mut interrupt)?;
            let adapted = adapter.evaluate(&head, &examples, 64, &mut interrupt)?;
            Ok(json!({"rows": counts.validation, "positions": base.positions, "base_nll": base.mean_nll,
                      "adapter_nll": adapted.mean_nll, "rows_skipped": counts.skipped_null + counts.skipped_too_long}))
        })(),
        AdapterKind::Retrieval => (|| {
            if k < 1 {
                return Err(invalid("k must be at least 1".into()));
            }
            let model = embedding_model(Some(&row.base_model))?;
            let adapter = query_adapter(&row, &model.name)?;
            let (_, all, passages, counts) = query_pairs(&model, &rows, 0, 1.0, None, &mut progress)?;
            counts.notice_skipped();
            let examples = all.examples(&passages)?;
            let base = recall_at_k(&examples, None, k as usize, &mut interrupt)?;
            let adapted = recall_at_k(&examples, Some(&adapter), k as usize, &mut interrupt)?;
            Ok(json!({"rows": counts.validation, "passages": passages.nrows(), "k": k, "base_recall": base, "adapter_recall": adapted}))
        })(),
    };
    pgrx::JsonB(raise_model_error(result))
}
