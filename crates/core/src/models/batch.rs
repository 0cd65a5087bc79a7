//! Continuous batching: many generations share each model call.
//!
//! A step of [`Batch::step`] runs one chunk of the first waiting prompt (prefill, alone,
//! so that a long prompt never stalls the others for more than a chunk) and then one
//! decode step for every running sequence together: the weights are read once for all
//! of them. Running sequences keep their keys and values in one left-padded cache
//! (`[rows, kv_heads, width, head_dim]` per layer, with an attention mask saying which
//! slots are real), which each decode step extends in place; it is rebuilt only when a
//! sequence joins or leaves. Each sequence keeps its own sampler, stop strings, token
//! limit and generator adapter ([`Decoding`]), exactly as a generation of its own.
//!
//! Prefix cache: a request may say how many of its first tokens are shared with others
//! (the chat template and system message); the cache of those tokens is kept, and so is
//! that of each prompt once it is prefilled (repeated questions, passages retrieved
//! again in the same order), up to a byte budget, least recently used first out. A new
//! request copies the longest cached start of its prompt and prefills only the rest.
//! What it copies ends where one of its own prefill chunks would end (chunks start at
//! the shared prefix), so the rest runs in the same chunks as without the cache and the
//! answer is the same to the bit.

use std::collections::VecDeque;

use ort::value::DynValue;

use super::cancel::CancelCheck;
use super::generate::{AppliedAdapter, Decoding, Finish, Generator, Outputs};
use super::kv::{cache_values, first_positions, tensor};
use super::sampling::SamplingParams;
use crate::error::{Error, ErrorKind};

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most sequences decoded together (running, joining and prefilling).
    pub max_batch: usize,
    /// Most prompt tokens one prefill call runs.
    pub prefill_chunk: usize,
    /// Most bytes of keys and values the prefix cache keeps.
    pub prefix_cache_bytes: usize,
}

/// One generation asked of the batch.
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub adapter: Option<AppliedAdapter>,
    /// How many first tokens of the prompt other requests are likely to share (0: none).
    pub shared_prefix: usize,
    /// Only requests of the same scope share prefix-cache entries (the service gives each
    /// role its own: a hit shows in the time to first token).
    pub cache_scope: u32,
    /// Most tokens a step drafts from the prompt while the sequence runs alone
    /// ([`Decoding::set_draft_tokens`]; 0: none).
    pub draft_tokens: usize,
}

/// What a step produced for one sequence.
#[derive(Debug)]
pub enum Event<K> {
    /// A piece of its text (never empty).
    Piece(K, String),
    /// It ended (its last piece came before), after generating this many tokens.
    Finished(K, Finish, usize),
    /// It failed; it is no longer in the batch.
    Failed(K, Error),
}

/// Counters since the batch was made.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchStats {
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub decode_steps: u64,
    /// Requests that looked for a cached start of their prompt, and those that found one ...
    pub prefix_lookups: u64,
    pub prefix_hits: u64,
    /// ... and the prompt tokens that were therefore not run.
    pub prefix_tokens_reused: u64,
    /// Tokens drafted from prompts and checked, and those of them the model chose as well.
    pub drafted_tokens: u64,
    pub drafts_accepted: u64,
}

struct Prefill<K> {
    key: K,
    decoding: Decoding,
    prompt: Vec<u32>,
    /// Prompt tokens run so far (or copied from the prefix cache).
    done: usize,
    /// Their keys and values, `[1, kv_heads, done, head_dim]` per layer.
    cache: Vec<DynValue>,
    shared_prefix: usize,
    cache_scope: u32,
    /// Hidden states of the prompt, for an adapter's copy head.
    states: Vec<f32>,
}

/// A prefilled sequence waiting for the running cache to be rebuilt with it.
struct Joining<K> {
    key: K,
    decoding: Decoding,
    cache: Vec<DynValue>,
}

struct Row<K> {
    key: K,
    decoding: Decoding,
}

struct PrefixEntry {
    tokens: Vec<u32>,
    /// The shared prefix of the request it came from (where that request's chunks began)
    /// and its cache scope: it serves requests with the same two.
    shared: usize,
    scope: u32,
    /// `[kv_heads, tokens, head_dim]` per cache input.
    layers: Vec<Vec<f32>>,
    last_used: u64,
}

impl PrefixEntry {
    fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.len() * 4).sum()
    }
}

pub struct Batch<K> {
    options: BatchOptions,
    waiting: VecDeque<Prefill<K>>,
    joining: Vec<Joining<K>>,
    rows: Vec<Row<K>>,
    /// The running rows' cache, `[rows, kv_heads, width, head_dim]` per layer, and the
    /// mask of its real slots, `[rows, width]`.
    cache: Vec<DynValue>,
    mask: Vec<i64>,
    width: usize,
    prefixes: Vec<PrefixEntry>,
    clock: u64,
    stats: BatchStats,
}

/// Most prefill chunks one call runs for a prompt that nothing else waits behind: a
/// request that arrives meanwhile waits for at most that call.
const LONE_PREFILL_CHUNKS: usize = 8;

/// The last end of a prefill chunk at or before `n` tokens, for chunks of `chunk` tokens
/// that start at `shared` (the first chunk ends at `shared` itself): 0 when none.
fn chunk_end_at_most(n: usize, shared: usize, chunk: usize) -> usize {
    if n < shared {
        0
    } else {
        shared + (n - shared) / chunk * chunk
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::DataException, message)
}

impl<K: Copy + PartialEq> Batch<K> {
    pub fn new(options: BatchOptions) -> Self {
        Self {
            options: BatchOptions { max_batch: options.max_batch.max(1), prefill_chunk: options.prefill_chunk.max(1), ..options },
            waiting: VecDeque::new(),
            joining: Vec::new(),
            rows: Vec::new(),
            cache: Vec::new(),
            mask: Vec::new(),
            width: 0,
            prefixes: Vec::new(),
            clock: 0,
            stats: BatchStats::default(),
        }
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// Sequences in the batch: prefilling, joining and running.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.joining.len() + self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another sequence may be added now.
    pub fn has_room(&self) -> bool {
        self.len() < self.options.max_batch
    }

    /// Bytes of keys and values held: the running cache, prompts being prefilled and the
    /// prefix cache.
    pub fn cache_bytes(&self, generator: &Generator) -> usize {
        let per_token = generator.cache_bytes_per_token();
        let running = self.rows.len() * self.width + self.joining.iter().map(|j| j.decoding.cached).sum::<usize>();
        let prefilling: usize = self.waiting.iter().map(|p| p.done).sum();
        (running + prefilling) * per_token + self.prefixes.iter().map(PrefixEntry::bytes).sum::<usize>()
    }

    /// Adds a generation: checked as [`Generator::start`] checks it; it starts prefilling
    /// at the next step. A sequence with nothing to generate finishes at once.
    pub fn add(&mut self, key: K, generator: &Generator, sequence: Sequence) -> Result<Vec<Event<K>>, Error> {
        let mut decoding = generator.begin(&sequence.prompt, sequence.max_tokens, sequence.sampling, &sequence.stop, sequence.adapter)?;
        decoding.set_draft_tokens(sequence.draft_tokens);
        if let Some(finish) = decoding.finish() {
            return Ok(vec![Event::Finished(key, finish, 0)]);
        }
        let mut shared = sequence.shared_prefix.min(sequence.prompt.len() - 1);
        if decoding.wants_prompt_states() {
            // The copy head reads the prompt's states from here on: they must be run.
            shared = shared.min(decoding.quotable_from);
        }
        let mut prefill = Prefill {
            key,
            decoding,
            done: 0,
            cache: generator.empty_cache(1)?,
            shared_prefix: shared,
            cache_scope: sequence.cache_scope,
            states: Vec::new(),
            prompt: sequence.prompt,
        };
        // At least the last prompt token runs, for its logits; the copy head reads the
        // prompt's states from quotable_from on, so those must be run too.
        let mut reusable = prefill.prompt.len() - 1;
        if prefill.decoding.wants_prompt_states() {
            reusable = reusable.min(prefill.decoding.quotable_from);
        }
        self.stats.prefix_lookups += 1;
        self.clock += 1;
        let chunk = self.options.prefill_chunk;
        let best = self
            .prefixes
            .iter()
            .enumerate()
            .filter(|(_, e)| e.shared == shared && e.scope == prefill.cache_scope)
            .map(|(i, e)| {
                let common = e.tokens.iter().zip(&prefill.prompt[..reusable]).take_while(|(a, b)| a == b).count();
                (chunk_end_at_most(common, shared, chunk), i)
            })
            .max();
        if let Some((reused, i)) = best.filter(|&(reused, _)| reused > 0) {
            let entry = &mut self.prefixes[i];
            entry.last_used = self.clock;
            let (kv, head, stored) = (generator.kv_heads, generator.head_dim, entry.tokens.len());
            prefill.cache = entry
                .layers
                .iter()
                .map(|layer| tensor([1, kv, reused, head], first_positions(layer, kv, stored, head, reused)?))
                .collect::<Result<_, _>>()?;
            prefill.done = reused;
            self.stats.prefix_hits += 1;
            self.stats.prefix_tokens_reused += reused as u64;
        }
        if prefill.decoding.wants_prompt_states() {
            let hidden = generator.hidden_size().unwrap_or(0);
            prefill.states = vec![0.0; prefill.done * hidden];
        }
        self.waiting.push_back(prefill);
        Ok(Vec::new())
    }

    /// Takes `key` out of the batch (a cancelled or abandoned request); false when it is
    /// not in it.
    pub fn remove(&mut self, key: K, generator: &Generator) -> bool {
        if let Some(at) = self.waiting.iter().position(|p| p.key == key) {
            self.waiting.remove(at);
            return true;
        }
        if let Some(at) = self.joining.iter().position(|j| j.key == key) {
            self.joining.remove(at);
            return true;
        }
        if let Some(at) = self.rows.iter().position(|r| r.key == key) {
            let mut events = Vec::new();
            self.rebuild(generator, &[at], &mut events);
            return true;
        }
        false
    }

    /// One step: a prefill chunk of the first waiting prompt (all of it when nothing else
    /// runs or waits), then one token for every running sequence. Failures are events of
    /// the sequences they concern.
    pub fn step(&mut self, generator: &mut Generator, cancel: CancelCheck<'_>) -> Vec<Event<K>> {
        let mut events = Vec::new();
        if !self.waiting.is_empty() {
            if let Err(error) = self.prefill_chunk(generator, cancel, &mut events) {
                let failed = self.waiting.pop_front().expect("the chunk's prompt");
                events.push(Event::Failed(failed.key, error));
            }
        }
        if !self.joining.is_empty() {
            self.rebuild(generator, &[], &mut events);
        }
        if !self.rows.is_empty() {
            if let Err(error) = self.decode(generator, cancel, &mut events) {
                // One model call serves every row: all of them fail with it.
                for row in self.rows.drain(..) {
                    events.push(Event::Failed(row.key, error.clone()));
                }
                self.cache.clear();
                self.mask.clear();
                self.width = 0;
            }
        }
        events
    }

    fn prefill_chunk(&mut self, generator: &mut Generator, cancel: CancelCheck<'_>, events: &mut Vec<Event<K>>) -> Result<(), Error> {
        let chunk = self.options.prefill_chunk;
        // Chunks keep a long prompt from stalling the others; a prompt with nobody to stall
        // runs in one call (up to LONE_PREFILL_CHUNKS), as in a session of its own: fewer
        // calls, so a sooner first token. What the prefix cache keeps does not depend on
        // where calls end.
        let alone = self.rows.is_empty() && self.joining.is_empty() && self.waiting.len() == 1;
        let prefill = self.waiting.front_mut().expect("a waiting prompt");
        let start = prefill.done;
        let end = if alone {
            prefill.prompt.len().min(start + chunk * LONE_PREFILL_CHUNKS)
        } else {
            // The chunk ends at the shared prefix, so that its cache can be kept as it is.
            let limit = if start < prefill.shared_prefix { prefill.shared_prefix } else { prefill.prompt.len() };
            limit.min(start + chunk)
        };
        let positions: Vec<i64> = (start as i64..end as i64).collect();
        let past = std::mem::take(&mut prefill.cache);
        let mut outputs = generator.run(&prefill.prompt[start..end], &positions, vec![1; end], 1, 1, past, cancel)?;
        for (_, output) in &generator.cache_names {
            prefill.cache.push(outputs.remove(output).ok_or_else(|| invalid(format!("no output {output}")))?);
        }
        prefill.done = end;
        self.stats.prompt_tokens += (end - start) as u64;
        let wants_states = prefill.decoding.wants_prompt_states();
        let adapted = prefill.decoding.adapter_hidden().is_some();
        if wants_states {
            prefill.states.extend_from_slice(Outputs::hidden_states(&outputs)?);
        }
        // Kept: the shared prefix once a call reaches it, and the prompt up to its last
        // chunk end once it is run.
        let reached_shared = start < prefill.shared_prefix && end >= prefill.shared_prefix;
        let keep = if reached_shared || end == prefill.prompt.len() { chunk_end_at_most(end, prefill.shared_prefix, chunk) } else { 0 };
        if keep > 0 {
            let (kv, head) = (generator.kv_heads, generator.head_dim);
            let layers = prefill
                .cache
                .iter()
                .map(|value| cache_values(value, 1, generator).and_then(|(stored, values)| first_positions(values, kv, stored, head, keep)))
                .collect::<Result<Vec<_>, _>>()?;
            let entry = PrefixEntry { tokens: prefill.prompt[..keep].to_vec(), shared: prefill.shared_prefix, scope: prefill.cache_scope, layers, last_used: self.clock };
            self.keep_prefix(entry);
        }
        let prefill = self.waiting.front_mut().expect("a waiting prompt");
        if end < prefill.prompt.len() {
            return Ok(());
        }
        prefill.decoding.cached = end;
        let states = std::mem::take(&mut prefill.states);
        prefill.decoding.read_prompt(&prefill.prompt, &states);
        let logits = Outputs::logits(&outputs)?;
        let last_state = if adapted {
            let states = Outputs::hidden_states(&outputs)?;
            let hidden = prefill.decoding.adapter_hidden().unwrap_or(0);
            Some(&states[states.len().saturating_sub(hidden)..])
        } else {
            None
        };
        let token = generator.choose(&mut prefill.decoding, logits, last_state)?;
        let mut prefill = self.waiting.pop_front().expect("a waiting prompt");
        let finished = Self::accept(generator, prefill.key, &mut prefill.decoding, token, events)?;
        if !finished {
            self.joining.push(Joining { key: prefill.key, decoding: prefill.decoding, cache: prefill.cache });
        }
        Ok(())
    }

    /// Takes `token` into `decoding`, with the events it makes; true when it finished.
    fn accept(generator: &Generator, key: K, decoding: &mut Decoding, token: u32, events: &mut Vec<Event<K>>) -> Result<bool, Error> {
        if let Some(piece) = generator.text.accept(decoding, token)? {
            events.push(Event::Piece(key, piece));
        }
        let Some(finish) = decoding.finish() else { return Ok(false) };
        if let Some(rest) = decoding.rest() {
            events.push(Event::Piece(key, rest));
        }
        events.push(Event::Finished(key, finish, decoding.generated_tokens()));
        Ok(true)
    }

    fn keep_prefix(&mut self, entry: PrefixEntry) {
        // An entry that starts with the same tokens serves every request this one would.
        let same_kind = |e: &PrefixEntry| e.shared == entry.shared && e.scope == entry.scope;
        let covered = self.prefixes.iter().any(|e| same_kind(e) && e.tokens.starts_with(&entry.tokens));
        if entry.bytes() > self.options.prefix_cache_bytes || covered {
            return;
        }
        // ... and this one serves those of entries it starts with.
        self.prefixes.retain(|e| !(same_kind(e) && entry.tokens.starts_with(&e.tokens)));
        self.prefixes.push(entry);
        while self.prefixes.iter().map(PrefixEntry::bytes).sum::<usize>() > self.options.prefix_cache_bytes {
            let oldest = (0..self.prefixes.len()).min_by_key(|&i| self.prefixes[i].last_used).expect("entries");
            self.prefixes.swap_remove(oldest);
        }
    }

    /// Makes the running cache anew: without the rows at `leaving`, with the joining
    /// sequences, trimmed to the longest row. A failure fails every row.
    fn rebuild(&mut self, generator: &Generator, leaving: &[usize], events: &mut Vec<Event<K>>) {
        if let Err(error) = self.try_rebuild(generator, leaving) {
            for row in self.rows.drain(..) {
                events.push(Event::Failed(row.key, error.clone()));
            }
            for joining in self.joining.drain(..) {
                events.push(Event::Failed(joining.key, error.clone()));
            }
            self.cache.clear();
            self.mask.clear();
            self.width = 0;
        }
    }

    fn try_rebuild(&mut self, generator: &Generator, leaving: &[usize]) -> Result<(), Error> {
        let (kv, head) = (generator.kv_heads, generator.head_dim);
        let old_rows = self.rows.len();
        let old_width = self.width;
        let kept: Vec<usize> = (0..old_rows).filter(|r| !leaving.contains(r)).collect();
        let joining = std::mem::take(&mut self.joining);
        let width = kept
            .iter()
            .map(|&r| self.rows[r].decoding.cached)
            .chain(joining.iter().map(|j| j.decoding.cached))
            .max()
            .unwrap_or(0);
        let rows = kept.len() + joining.len();
        let old_cache = std::mem::take(&mut self.cache);
        let mut cache = Vec::with_capacity(generator.cache_names.len());
        for layer in 0..generator.cache_names.len() {
            let mut values = Vec::new();
            values.try_reserve_exact(rows * kv * width * head).map_err(|_| {
                Error::new(ErrorKind::OutOfMemory, format!("out of memory for the keys and values of {rows} sequences"))
            })?;
            values.resize(rows * kv * width * head, 0.0);
            let mut place = |row: usize, source: &[f32], source_row: usize, source_width: usize, length: usize| {
                for h in 0..kv {
                    let from = ((source_row * kv + h) * source_width + source_width - length) * head;
                    let to = ((row * kv + h) * width + width - length) * head;
                    values[to..to + length * head].copy_from_slice(&source[from..from + length * head]);
                }
            };
            if !kept.is_empty() {
                let (stored, old) = cache_values(&old_cache[layer], old_rows, generator)?;
                debug_assert_eq!(stored, old_width);
                for (row, &r) in kept.iter().enumerate() {
                    place(row, &old, r, old_width, self.rows[r].decoding.cached);
                }
            }
            for (i, join) in joining.iter().enumerate() {
                let (stored, own) = cache_values(&join.cache[layer], 1, generator)?;
                place(kept.len() + i, &own, 0, stored, join.decoding.cached);
            }
            cache.push(tensor([rows, kv, width, head], values)?);
        }
        let mut old_rows_taken: Vec<Option<Row<K>>> = std::mem::take(&mut self.rows).into_iter().map(Some).collect();
        self.rows = kept.iter().map(|&r| old_rows_taken[r].take().expect("kept once")).collect();
        self.rows.extend(joining.into_iter().map(|j| Row { key: j.key, decoding: j.decoding }));
        self.mask = self
            .rows
            .iter()
            .flat_map(|row| (0..width).map(move |slot| i64::from(slot >= width - row.decoding.cached)))
            .collect();
        self.cache = cache;
        self.width = width;
        Ok(())
    }

    fn decode(&mut self, generator: &mut Generator, cancel: CancelCheck<'_>, events: &mut Vec<Event<K>>) -> Result<(), Error> {
        // A sequence with nothing beside it checks drafted tokens in its step; batched
        // rows share their steps' weight reads instead.
        if let ([row], true, true) = (&self.rows[..], self.waiting.is_empty(), self.joining.is_empty()) {
            let drafts = generator.drafts(&row.decoding, self.width - row.decoding.cached);
            if !drafts.is_empty() {
                return self.decode_with_drafts(generator, &drafts, cancel, events);
            }
        }
        let rows = self.rows.len();
        let tokens: Vec<u32> = self.rows.iter().map(|row| row.decoding.last_token()).collect();
        let positions: Vec<i64> = self.rows.iter().map(|row| row.decoding.cached as i64).collect();
        let width = self.width + 1;
        let mask: Vec<i64> = self.mask.chunks(self.width.max(1)).take(rows).flat_map(|row| row.iter().copied().chain([1])).collect();
        let mask = if self.width == 0 { vec![1; rows] } else { mask };
        let past = std::mem::take(&mut self.cache);
        let mut outputs = generator.run(&tokens, &positions, mask.clone(), rows, 1, past, cancel)?;
        for (_, output) in &generator.cache_names {
            self.cache.push(outputs.remove(output).ok_or_else(|| invalid(format!("no output {output}")))?);
        }
        self.mask = mask;
        self.width = width;
        self.stats.decode_steps += 1;
        let logits = Outputs::logits(&outputs)?;
        if logits.len() % rows != 0 {
            return Err(invalid(format!("the model returned {} logits for {rows} sequences", logits.len())));
        }
        let vocab = logits.len() / rows;
        let states = if self.rows.iter().any(|row| row.decoding.adapter_hidden().is_some()) {
            Some(Outputs::hidden_states(&outputs)?)
        } else {
            None
        };
        let mut finished = Vec::new();
        for (r, row) in self.rows.iter_mut().enumerate() {
            row.decoding.cached += 1;
            self.stats.generated_tokens += 1;
            let state = match (states, row.decoding.adapter_hidden()) {
                (Some(states), Some(hidden)) if states.len() == rows * hidden => Some(&states[r * hidden..(r + 1) * hidden]),
                (Some(states), Some(hidden)) => {
                    return Err(invalid(format!("output hidden_states has {} values for {rows} rows of {hidden}", states.len())))
                }
                _ => None,
            };
            let outcome = generator
                .choose(&mut row.decoding, &logits[r * vocab..(r + 1) * vocab], state)
                .and_then(|token| Self::accept(generator, row.key, &mut row.decoding, token, events));
            match outcome {
                Ok(false) => {}
                Ok(true) => finished.push(r),
                Err(error) => {
                    events.push(Event::Failed(row.key, error));
                    finished.push(r);
                }
            }
        }
        if !finished.is_empty() {
            self.rebuild(generator, &finished, events);
        }
        Ok(())
    }

    /// The step of a lone running sequence, checking `drafts` in the same call: it may
    /// take several tokens, each with its events, up to where the sequence finishes.
    fn decode_with_drafts(&mut self, generator: &mut Generator, drafts: &[u32], cancel: CancelCheck<'_>, events: &mut Vec<Event<K>>) -> Result<(), Error> {
        let row = &mut self.rows[0];
        let before = row.decoding.cached;
        let past = std::mem::take(&mut self.cache);
        self.cache = generator.check_drafts(&mut row.decoding, past, self.mask.clone(), drafts, cancel)?;
        // The slots it added are all the sequence's own.
        let added = row.decoding.cached - before;
        self.width += added;
        self.mask.resize(self.width, 1);
        self.stats.decode_steps += 1;
        self.stats.drafted_tokens += drafts.len() as u64;
        self.stats.drafts_accepted += (added - 1) as u64;
        let mut finished = false;
        while let Some(token) = row.decoding.pending.pop_front() {
            self.stats.generated_tokens += 1;
            match Self::accept(generator, row.key, &mut row.decoding, token, events) {
                Ok(false) => {}
                Ok(true) => {
                    finished = true;
                    break;
                }
                Err(error) => {
                    events.push(Event::Failed(row.key, error));
                    finished = true;
                    break;
                }
            }
        }
        if finished {
            self.rebuild(generator, &[0], events);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_files;
    use crate::models::{Message, Role};

    fn never() -> bool {
        false
    }

    fn options(max_batch: usize) -> BatchOptions {
        BatchOptions { max_batch, prefill_chunk: 16, prefix_cache_bytes: 64 << 20 }
    }

    /// Runs the batch until it is empty: each key's text and how it ended.
    fn drain(batch: &mut Batch<usize>, generator: &mut Generator, results: &mut [(String, Option<Finish>)]) {
        let mut steps = 0;
        while !batch.is_empty() {
            for event in batch.step(generator, &never) {
                match event {
                    Event::Piece(key, piece) => results[key].0.push_str(&piece),
                    Event::Finished(key, finish, _) => results[key].1 = Some(finish),
                    Event::Failed(key, error) => panic!("{key}: {error:?}"),
                }
            }
            steps += 1;
            assert!(steps < 10_000);
        }
    }

    fn alone(generator: &mut Generator, prompt: &[u32], max_tokens: usize, sampling: SamplingParams, stop: &[String]) -> (String, Finish) {
        let mut decoding = generator.start(prompt, max_tokens, sampling, stop, None, &never).unwrap();
        let mut text = String::new();
        while let Some(piece) = generator.next_piece(&mut decoding, &never).unwrap() {
            text.push_str(&piece);
        }
        (text, decoding.finish().unwrap())
    }

    /// A prompt with nothing else in the batch runs in one call; one that arrives while
    /// another decodes runs a chunk per step.
    #[test]
    fn a_lone_prompt_runs_in_one_call() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let question = "Why is the sky blue? Explain in one paragraph for a child who likes science and asks a lot of questions.";
        let prompt = generator.text().prompt_ids(&[Message::new(Role::User, question)]).unwrap();
        assert!(prompt.len() > 2 * 16, "{}", prompt.len());
        let sequence = |cache_scope| Sequence {
            prompt: prompt.clone(),
            max_tokens: 8,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            adapter: None,
            shared_prefix: 0,
            cache_scope,
            draft_tokens: 0,
        };
        let mut batch = Batch::new(options(4));
        assert!(batch.add(0, &generator, sequence(0)).unwrap().is_empty());
        batch.step(&mut generator, &never);
        assert_eq!(batch.stats().prompt_tokens, prompt.len() as u64);
        assert_eq!(batch.stats().decode_steps, 1);
        // Another scope, so that the prefix cache does not serve the same prompt.
        assert!(batch.add(1, &generator, sequence(1)).unwrap().is_empty());
        batch.step(&mut generator, &never);
        assert_eq!(batch.stats().prompt_tokens, prompt.len() as u64 + 16);
        assert_eq!(batch.stats().decode_steps, 2);
    }

    /// A sequence running alone checks drafted tokens in its steps and gives the text it
    /// gives without them; beside another, it decodes a token per step in the batch.
    #[test]
    fn a_lone_sequence_checks_drafts() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let passage = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.";
        let question = format!("Sources:\n\n[1] {passage}\n\nQuestion: Whose company designed and built the Eiffel Tower?");
        let prompt = generator.text().prompt_ids(&[Message::new(Role::User, question)]).unwrap();
        let expected = alone(&mut generator, &prompt, 32, SamplingParams::default(), &[]);
        let sequence = |cache_scope, draft_tokens| Sequence {
            prompt: prompt.clone(),
            max_tokens: 32,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            adapter: None,
            shared_prefix: 0,
            cache_scope,
            draft_tokens,
        };
        let mut batch = Batch::new(options(4));
        let mut results = vec![(String::new(), None)];
        batch.add(0, &generator, sequence(0, 6)).unwrap();
        drain(&mut batch, &mut generator, &mut results);
        assert_eq!((results[0].0.as_str(), results[0].1), (expected.0.as_str(), Some(expected.1)));
        let stats = batch.stats();
        assert!(stats.drafts_accepted > 4 && stats.drafts_accepted <= stats.drafted_tokens, "{stats:?}");
        assert!(stats.decode_steps + 1 < stats.generated_tokens, "{stats:?}");

        // Two at once: one token per row and step, no drafts, the same texts.
        let mut batch = Batch::new(options(4));
        let mut results = vec![(String::new(), None); 2];
        batch.add(0, &generator, sequence(1, 6)).unwrap();
        batch.add(1, &generator, sequence(2, 6)).unwrap();
        while batch.len() == 2 {
            for event in batch.step(&mut generator, &never) {
                match event {
                    Event::Piece(key, piece) => results[key].0.push_str(&piece),
                    Event::Finished(key, finish, _) => results[key].1 = Some(finish),
                    Event::Failed(key, error) => panic!("{key}: {error:?}"),
                }
            }
        }
        assert_eq!(batch.stats().drafted_tokens, 0);
        drain(&mut batch, &mut generator, &mut results);
        for (text, finish) in &results {
            assert_eq!((text.as_str(), *finish), (expected.0.as_str(), Some(expected.1)));
        }
    }

    /// Sequences of different lengths, limits, stop strings and sampling, joining the
    /// batch at different steps and leaving at different steps, give exactly what each
    /// gives alone (the single-sequence path, itself checked against the reference).
    #[test]
    fn batched_generations_match_generations_alone() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let system = Message::new(Role::System, "You are a helpful assistant. Answer briefly.");
        let questions = [
            "What is the capital of France?",
            "Count from 1 to 20, separated by commas.",
            "Name three colours.",
            "Why is the sky blue? Explain in one paragraph for a child who likes science and asks a lot of questions.",
            "What is 2 + 2?",
        ];
        let requests: Vec<(Vec<u32>, usize, SamplingParams, Vec<String>)> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let prompt = generator.text().prompt_ids(&[system.clone(), Message::new(Role::User, *q)]).unwrap();
                let sampling = if i == 2 { SamplingParams { temperature: 0.9, top_p: 0.9, top_k: 40, seed: 7 } } else { SamplingParams::default() };
                let stop = if i == 1 { vec!["12.".to_string()] } else { Vec::new() };
                (prompt, [24, 60, 20, 40, 1][i], sampling, stop)
            })
            .collect();
        let expected: Vec<(String, Finish)> =
            requests.iter().map(|(p, m, s, stop)| alone(&mut generator, p, *m, *s, stop)).collect();
        assert_eq!(expected[1].1, Finish::StopString, "{:?}", expected[1].0);

        let shared = generator.text().prompt_ids(&[system.clone()]).unwrap().len() - 2;
        let mut batch = Batch::new(options(4));
        let mut results = vec![(String::new(), None); requests.len()];
        let mut pending: VecDeque<usize> = (0..requests.len()).collect();
        let mut steps = 0;
        while !pending.is_empty() || !batch.is_empty() {
            // Join at different steps: one new request every third step, while there is room.
            if steps % 3 == 0 && batch.has_room() {
                if let Some(key) = pending.pop_front() {
                    let (prompt, max_tokens, sampling, stop) = requests[key].clone();
                    let sequence = Sequence { prompt, max_tokens, sampling, stop, adapter: None, shared_prefix: shared, cache_scope: 0, draft_tokens: 0 };
                    assert!(batch.add(key, &generator, sequence).unwrap().is_empty());
                }
            }
            for event in batch.step(&mut generator, &never) {
                match event {
                    Event::Piece(key, piece) => {
                        assert!(!piece.is_empty());
                        results[key].0.push_str(&piece)
                    }
                    Event::Finished(key, finish, _) => results[key].1 = Some(finish),
                    Event::Failed(key, error) => panic!("{key}: {error:?}"),
                }
            }
            steps += 1;
            assert!(steps < 10_000);
        }
        for (key, ((text, finish), (want_text, want_finish))) in results.iter().zip(&expected).enumerate() {
            assert_eq!((text, finish.unwrap()), (want_text, *want_finish), "request {key}: {:?}", questions[key]);
        }
        let stats = batch.stats();
        assert_eq!((stats.prefix_lookups, stats.prefix_hits), (5, 4), "{stats:?}");
        assert_eq!(stats.prefix_tokens_reused, 4 * shared as u64);
        assert!(stats.decode_steps < expected.iter().map(|(t, _)| t.len() as u64).sum::<u64>());
        // Each prompt's start up to its last chunk end is kept, or one that starts with it.
        for (prompt, ..) in &requests {
            let start = &prompt[..chunk_end_at_most(prompt.len(), shared, 16)];
            assert!(batch.prefixes.iter().any(|e| e.tokens.starts_with(start)));
        }
        let kept: usize = batch.prefixes.iter().map(|e| e.tokens.len()).sum();
        assert_eq!(batch.cache_bytes(&generator), kept * generator.cache_bytes_per_token());
    }

    /// A prompt asked again, or one that starts with another's passage, copies the
    /// cached start of the earlier prompt up to one of its own chunk ends and runs only
    /// the rest; each answer is the prompt's answer alone.
    #[test]
    fn repeated_prompts_reuse_their_cached_start() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let system = Message::new(Role::System, "Answer from the passage.");
        let passage = "Passage: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. \
            It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.";
        let prompts: Vec<Vec<u32>> = ["Who designed the tower?", "Who designed the tower?", "When was it built?"]
            .iter()
            .map(|q| {
                let user = Message::new(Role::User, format!("{passage}\n\nQuestion: {q}"));
                generator.text().prompt_ids(&[system.clone(), user]).unwrap()
            })
            .collect();
        let shared = generator.text().prompt_ids(&[system.clone()]).unwrap().len() - 2;
        let expected: Vec<(String, Finish)> =
            prompts.iter().map(|p| alone(&mut generator, p, 12, SamplingParams::default(), &[])).collect();

        let mut batch = Batch::new(options(4));
        let mut results = vec![(String::new(), None); prompts.len()];
        let mut reused = Vec::new();
        for (key, prompt) in prompts.iter().enumerate() {
            let before = batch.stats();
            let sequence = Sequence { prompt: prompt.clone(), max_tokens: 12, sampling: SamplingParams::default(), stop: Vec::new(), adapter: None, shared_prefix: shared, cache_scope: 0, draft_tokens: 0 };
            batch.add(key, &generator, sequence).unwrap();
            reused.push((batch.stats().prefix_tokens_reused - before.prefix_tokens_reused) as usize);
            let run = batch.stats().prompt_tokens;
            drain(&mut batch, &mut generator, &mut results);
            assert_eq!((batch.stats().prompt_tokens - run) as usize, prompt.len() - reused[key], "request {key}");
        }
        for (key, (result, want)) in results.iter().zip(&expected).enumerate() {
            assert_eq!((&result.0, result.1), (&want.0, Some(want.1)), "request {key}");
        }
        assert_eq!(reused[0], 0);
        // The same prompt again: everything up to the last chunk end before its last token.
        assert_eq!(reused[1], chunk_end_at_most(prompts[1].len() - 1, shared, 16));
        assert!(reused[1] >= shared + 3 * 16, "{reused:?}, shared {shared}");
        // Another question on the same passage: the passage's whole chunks.
        let common = prompts[0].iter().zip(&prompts[2]).take_while(|(a, b)| a == b).count();
        assert_eq!(reused[2], chunk_end_at_most(common, shared, 16));
        assert!(reused[2] > shared, "{reused:?}, shared {shared}");
        assert_eq!((batch.stats().prefix_lookups, batch.stats().prefix_hits), (3, 2));

        // Another cache scope (another role) reuses none of it, and gets the same answer.
        let mut results = vec![(String::new(), None)];
        let sequence = Sequence { prompt: prompts[1].clone(), max_tokens: 12, sampling: SamplingParams::default(), stop: Vec::new(), adapter: None, shared_prefix: shared, cache_scope: 1, draft_tokens: 0 };
        let before = batch.stats();
        batch.add(0, &generator, sequence).unwrap();
        drain(&mut batch, &mut generator, &mut results);
        assert_eq!(batch.stats().prefix_tokens_reused, before.prefix_tokens_reused);
        assert_eq!(batch.stats().prompt_tokens - before.prompt_tokens, prompts[1].len() as u64);
        assert_eq!((&results[0].0, results[0].1), (&expected[1].0, Some(expected[1].1)));
    }

    #[test]
    fn chunk_ends() {
        assert_eq!(chunk_end_at_most(5, 10, 16), 0);
        assert_eq!(chunk_end_at_most(10, 10, 16), 10);
        assert_eq!(chunk_end_at_most(25, 10, 16), 10);
        assert_eq!(chunk_end_at_most(26, 10, 16), 26);
        assert_eq!(chunk_end_at_most(40, 0, 16), 32);
        let layer: Vec<f32> = (0..2 * 3 * 2).map(|v| v as f32).collect(); // [2 heads, 3 positions, 2]
        assert_eq!(first_positions(&layer, 2, 3, 2, 2).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0]);
    }

    /// A removed sequence leaves; the others go on unchanged. Nothing to generate
    /// finishes at once; a bad request is refused when it is added.
    #[test]
    fn removal_and_refusals() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let prompts: Vec<Vec<u32>> = ["Name a fruit.", "Name a city in Italy."]
            .iter()
            .map(|q| generator.text().prompt_ids(&[Message::new(Role::User, *q)]).unwrap())
            .collect();
        let expected = alone(&mut generator, &prompts[1], 12, SamplingParams::default(), &[]);
        let mut batch = Batch::new(options(8));
        for (key, prompt) in prompts.iter().enumerate() {
            let sequence = Sequence { prompt: prompt.clone(), max_tokens: 12, sampling: SamplingParams::default(), stop: Vec::new(), adapter: None, shared_prefix: 0, cache_scope: 0, draft_tokens: 0 };
            batch.add(key, &generator, sequence).unwrap();
        }
        let mut results = vec![(String::new(), None); 2];
        for _ in 0..6 {
            for event in batch.step(&mut generator, &never) {
                if let Event::Piece(key, piece) = event {
                    results[key].0.push_str(&piece);
                }
            }
        }
        assert!(batch.remove(0, &generator));
        assert!(!batch.remove(0, &generator));
        assert_eq!(batch.len(), 1);
        drain(&mut batch, &mut generator, &mut results);
        assert_eq!((results[1].0.clone(), results[1].1), (expected.0, Some(expected.1)));
        assert_eq!(results[0].1, None);

        let none = Sequence { prompt: prompts[0].clone(), max_tokens: 0, sampling: SamplingParams::default(), stop: Vec::new(), adapter: None, shared_prefix: 0, cache_scope: 0, draft_tokens: 0 };
        assert!(matches!(batch.add(5, &generator, none).unwrap()[..], [Event::Finished(5, Finish::Length, 0)]));
        let empty = Sequence { prompt: Vec::new(), max_tokens: 4, sampling: SamplingParams::default(), stop: Vec::new(), adapter: None, shared_prefix: 0, cache_scope: 0, draft_tokens: 0 };
        assert_eq!(batch.add(6, &generator, empty).err().unwrap().kind, ErrorKind::InvalidParameterValue);
        assert!(batch.is_empty());
    }
}
