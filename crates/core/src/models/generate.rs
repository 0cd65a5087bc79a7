//! Text generation with a decoder-only ONNX graph and its key/value cache.
//!
//! The graph has the layout of Hugging Face optimum / onnx-community "decoder with past"
//! exports (and of scripts/gguf_to_onnx.py): inputs `input_ids`, `attention_mask`,
//! optionally `position_ids` (int64 `[batch, seq]`, mask `[batch, past + seq]`) and
//! `logits_to_keep` (int64 `[1]`: logits for that many last positions), and
//! `past_key_values.{i}.key` / `.value` (float32 `[batch, kv_heads, past, head_dim]`);
//! outputs `logits` (`[batch, seq or kept or 1, vocab]`: the last position is read, and
//! the last few where a step checks drafted tokens),
//! `present.{i}.key` / `.value`, and optionally `hidden_states` (`[batch, seq, hidden]`,
//! for adapters). Grouped-query attention only shows as kv_heads, which is read from
//! the graph.
//!
//! One generation: [`Generator::start`] encodes nothing itself; it takes prompt token ids,
//! runs the whole prompt in one call (prefill, empty past) and chooses the first token;
//! then each [`Generator::next_piece`] feeds the last token back with the cache and
//! returns the next piece of text, until a stop token, a stop string or the token limit.
//! Where drafting is on ([`Decoding::set_draft_tokens`]), a step also feeds tokens drafted
//! from the prompt and keeps those the model agrees with.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ort::session::{Session, SessionInputValue};
use ndarray::Array2;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::chat::{Message, Role};
use super::config::{GeneratorConfig, ModelConfig};
use super::cancel::{run_cancellable, CancelCheck};
use super::draft::draft;
use super::kv::truncated;
use super::runtime::Runtime;
use super::sampling::{Sampler, SamplingParams};
use super::tokenizer::Tokenizer;
use crate::error::{Error, ErrorKind};
use crate::finetune::{OutputAdapter, PromptKeys};
use crate::rag::prompt::Grounding;

pub struct Generator {
    session: Session,
    pub(crate) text: GeneratorText,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    has_position_ids: bool,
    /// The graph has a `logits_to_keep` input: how many last positions get logits.
    has_logits_to_keep: bool,
    /// One call gives the logits of several positions (asked for, or always every one):
    /// drafted tokens can be checked.
    checks_drafts: bool,
    /// Width of the `hidden_states` output, when the graph has one (adapters need it).
    hidden_size: Option<usize>,
    /// (past_key_values.{i}.key|value, present.{i}.key|value) per layer: each step's cache
    /// input and the output that becomes it for the next step.
    pub(crate) cache_names: Vec<(String, String)>,
}

/// The text side of a generator: its tokenizer and config, which make prompts and read
/// answers. Enough for a backend that sends token ids to the model service and never
/// loads the model itself.
pub struct GeneratorText {
    pub(crate) tokenizer: Tokenizer,
    pub(crate) config: GeneratorConfig,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced one of its stop tokens.
    StopToken,
    /// The text reached one of the caller's stop strings (not included in the text).
    StopString,
    /// max_tokens were generated, or the context window is full.
    Length,
}

/// A generator adapter applied to one generation.
pub struct AppliedAdapter {
    pub adapter: Arc<OutputAdapter>,
    /// The prompt's tokens from here on are what its copy head may quote
    /// ([`Generator::user_message_start`]).
    pub quotable_from: usize,
}

/// One generation in progress: the cache and what was produced so far.
pub struct Decoding {
    past: Vec<DynValue>,
    /// Tokens the cache holds.
    pub(crate) cached: usize,
    sampler: Sampler,
    max_tokens: usize,
    stop: Vec<String>,
    /// Chosen, not yet turned into text (several when drafted tokens were checked).
    pub(crate) pending: VecDeque<u32>,
    /// The prompt, where drafts are looked up.
    prompt: Vec<u32>,
    /// Most tokens drafted per step (0: none).
    draft_tokens: usize,
    /// Tokens drafted and checked so far, and those of them the model chose too.
    drafted: usize,
    drafts_accepted: usize,
    generated: Vec<u32>,
    /// The text of `generated`, up to a stop string.
    text: String,
    /// Bytes of `text` already returned.
    emitted: usize,
    finish: Option<Finish>,
    /// Corrects each step's logits from its final hidden state.
    adapter: Option<Arc<OutputAdapter>>,
    /// What the adapter's copy head may quote (empty without one) ...
    quotable: Vec<u32>,
    /// ... which starts at this prompt position ...
    pub(crate) quotable_from: usize,
    /// ... and its pointer's view of it, made from the prompt's hidden states.
    pointer: Arc<PromptKeys>,
}

impl Decoding {
    pub fn generated_tokens(&self) -> usize {
        self.generated.len()
    }

    /// Lets each step draft up to `most` tokens from the prompt and check them in the same
    /// model call ([`super::draft`]), where that leaves the text unchanged: greedy, without
    /// an adapter (whose corrections depend on every token before), on a graph that gives
    /// logits for several positions. 0 turns it off.
    pub fn set_draft_tokens(&mut self, most: usize) {
        self.draft_tokens = most.min(MAX_DRAFT_TOKENS);
    }

    /// (tokens drafted, of which the model chose as well).
    pub fn draft_counts(&self) -> (usize, usize) {
        (self.drafted, self.drafts_accepted)
    }
}

/// Most tokens one step drafts: beyond a few, a call costs more than the tokens it may save.
pub const MAX_DRAFT_TOKENS: usize = 16;

fn unusable(message: String) -> Error {
    Error::new(ErrorKind::DataException, message)
}

fn run_failed(e: ort::Error) -> Error {
    Error::new(ErrorKind::ExternalRoutineException, "the generator model failed").with_detail(e.to_string())
}

/// `[batch, a, b, c]` dimensions of a float tensor input/output, -1 where symbolic.
fn float_shape(dtype: &ValueType) -> Option<Vec<i64>> {
    match dtype {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Some(shape.iter().copied().collect()),
        _ => None,
    }
}

impl Generator {
    /// Builds a generator from a stored model: ONNX bytes, tokenizer.json and a generator
    /// config. Checks the graph's inputs and outputs against the layout above.
    pub fn new(
        runtime: &Runtime,
        model: &[u8],
        tokenizer: &[u8],
        config: &ModelConfig,
        intra_threads: usize,
    ) -> Result<Self, Error> {
        let text = GeneratorText::new(tokenizer, config)?;
        let session = runtime.session(model, intra_threads)?;

        let mut layers = 0;
        let mut kv_shape = None;
        let mut has_position_ids = false;
        let mut has_logits_to_keep = false;
        for input in session.inputs() {
            let name = input.name();
            match name {
                "input_ids" | "attention_mask" | "position_ids" | "logits_to_keep" => {
                    if input.dtype().tensor_type() != Some(TensorElementType::Int64) {
                        return Err(unusable(format!("model input \"{name}\" is {}, not int64", input.dtype())));
                    }
                    has_position_ids |= name == "position_ids";
                    has_logits_to_keep |= name == "logits_to_keep";
                }
                _ => {
                    let layer = name
                        .strip_prefix("past_key_values.")
                        .and_then(|rest| rest.strip_suffix(".key").or_else(|| rest.strip_suffix(".value")))
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| {
                            unusable(format!(
                                "model input \"{name}\" is not one of input_ids, attention_mask, position_ids, logits_to_keep, past_key_values.N.key/value"
                            ))
                        })?;
                    let shape = float_shape(input.dtype())
                        .filter(|s| s.len() == 4 && s[1] > 0 && s[3] > 0)
                        .ok_or_else(|| {
                            unusable(format!(
                                "model input \"{name}\" is {}, not float32 [batch, kv_heads, past, head_dim]",
                                input.dtype()
                            ))
                        })?;
                    layers = layers.max(layer + 1);
                    kv_shape = Some((shape[1] as usize, shape[3] as usize));
                }
            }
        }
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !names.contains(&required) {
                return Err(unusable(format!("model has no {required} input")));
            }
        }
        let (kv_heads, head_dim) =
            kv_shape.ok_or_else(|| unusable("model has no past_key_values inputs: it is not a decoder with a cache".into()))?;
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for i in 0..layers {
            for part in ["key", "value"] {
                if !names.contains(&format!("past_key_values.{i}.{part}").as_str()) {
                    return Err(unusable(format!("model has no input past_key_values.{i}.{part}")));
                }
                if !outputs.contains(&format!("present.{i}.{part}").as_str()) {
                    return Err(unusable(format!("model has no output present.{i}.{part}")));
                }
            }
        }
        let logits = session.outputs().iter().find(|o| o.name() == "logits").ok_or_else(|| unusable("model has no logits output".into()))?;
        // [batch, positions, vocab]: a positions dimension fixed at 1 means the last only.
        let checks_drafts = has_logits_to_keep || float_shape(logits.dtype()).is_some_and(|s| s.len() == 3 && s[1] != 1);
        let hidden_size = match session.outputs().iter().find(|o| o.name() == "hidden_states") {
            None => None,
            Some(output) => Some(
                float_shape(output.dtype())
                    .filter(|s| s.len() == 3 && s[2] > 0)
                    .map(|s| s[2] as usize)
                    .ok_or_else(|| unusable(format!("model output \"hidden_states\" is {}, not float32 [batch, seq, hidden]", output.dtype())))?,
            ),
        };
        let cache_names = (0..layers)
            .flat_map(|i| ["key", "value"].map(|part| (format!("past_key_values.{i}.{part}"), format!("present.{i}.{part}"))))
            .collect();
        Ok(Self { session, text, kv_heads, head_dim, has_position_ids, has_logits_to_keep, checks_drafts, hidden_size, cache_names })
    }

    /// The width of the final hidden states, when the graph outputs them.
    pub fn hidden_size(&self) -> Option<usize> {
        self.hidden_size
    }

    /// The final-normed hidden state of every position of `tokens`, run as one prompt
    /// from an empty cache: `[tokens, hidden]`. What generator adapters train on.
    pub fn final_hidden_states(&mut self, tokens: &[u32], cancel: CancelCheck<'_>) -> Result<Array2<f32>, Error> {
        let hidden = self.hidden_size.ok_or_else(|| self.no_hidden_states())?;
        if tokens.is_empty() || tokens.len() > self.text.config.context_window {
            return Err(Error::new(
                ErrorKind::ProgramLimitExceeded,
                format!("{} tokens do not fit the context window of {}", tokens.len(), self.text.config.context_window),
            ));
        }
        let positions: Vec<i64> = (0..tokens.len() as i64).collect();
        let outputs = self.run(tokens, &positions, vec![1; tokens.len()], 1, 1, self.empty_cache(1)?, cancel)?;
        let (_, states) = outputs
            .get("hidden_states")
            .ok_or_else(|| unusable("no output hidden_states".into()))?
            .try_extract_tensor::<f32>()
            .map_err(run_failed)?;
        if states.len() != tokens.len() * hidden {
            return Err(unusable(format!("output hidden_states has {} values for {} positions", states.len(), tokens.len())));
        }
        Ok(Array2::from_shape_vec((tokens.len(), hidden), states.to_vec()).expect("length checked"))
    }

    fn no_hidden_states(&self) -> Error {
        Error::new(ErrorKind::WrongObjectType, "the model has no hidden_states output, which adapters need")
            .with_hint("Convert it with scripts/gguf_to_onnx.py, which adds the output.")
    }

    /// An empty key/value cache for a new sequence.
    pub(crate) fn empty_cache(&self, rows: usize) -> Result<Vec<DynValue>, Error> {
        (0..self.cache_names.len())
            .map(|_| {
                Tensor::<f32>::from_array(([rows, self.kv_heads, 0, self.head_dim], Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(run_failed)
            })
            .collect()
    }

    /// Bytes of keys and values one cached token takes (float32, every layer).
    pub fn cache_bytes_per_token(&self) -> usize {
        self.cache_names.len() * self.kv_heads * self.head_dim * 4
    }

    pub fn text(&self) -> &GeneratorText {
        &self.text
    }

    /// Runs the prompt and chooses the first token. `max_tokens` is cut to what the
    /// context window leaves; a prompt that leaves no room is an error (the caller
    /// shortens prompts beforehand, see [`Generator::prompt_budget`]). An adapter, when
    /// given, corrects every step's logits (and its copy head quotes the prompt).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: SamplingParams,
        stop: &[String],
        adapter: Option<AppliedAdapter>,
        cancel: CancelCheck<'_>,
    ) -> Result<Decoding, Error> {
        let mut decoding = self.begin(prompt, max_tokens, sampling, stop, adapter)?;
        if decoding.finish.is_none() {
            self.forward(&mut decoding, prompt, cancel)?;
        }
        Ok(decoding)
    }

    /// A generation of `prompt` checked and set up, before any model call: what
    /// [`Generator::start`] does first, and what the batched service prefills in chunks.
    pub fn begin(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: SamplingParams,
        stop: &[String],
        adapter: Option<AppliedAdapter>,
    ) -> Result<Decoding, Error> {
        sampling.validate()?;
        if prompt.is_empty() {
            return Err(Error::new(ErrorKind::InvalidParameterValue, "the prompt has no tokens"));
        }
        let window = self.text.config.context_window;
        if prompt.len() >= window {
            return Err(Error::new(
                ErrorKind::ProgramLimitExceeded,
                format!("the prompt has {} tokens, more than the context window of {window} leaves room for", prompt.len()),
            ));
        }
        if adapter.is_some() && self.hidden_size.is_none() {
            return Err(self.no_hidden_states());
        }
        let mut decoding = Decoding {
            past: self.empty_cache(1)?,
            cached: 0,
            sampler: Sampler::new(sampling),
            max_tokens: max_tokens.min(window - prompt.len()),
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: VecDeque::new(),
            prompt: prompt.to_vec(),
            draft_tokens: 0,
            drafted: 0,
            drafts_accepted: 0,
            generated: Vec::new(),
            text: String::new(),
            emitted: 0,
            finish: None,
            quotable: match &adapter {
                Some(applied) if applied.adapter.has_copy_head() => prompt[applied.quotable_from.min(prompt.len())..].to_vec(),
                _ => Vec::new(),
            },
            quotable_from: adapter.as_ref().map_or(0, |applied| applied.quotable_from.min(prompt.len())),
            pointer: Arc::default(),
            adapter: adapter.map(|applied| applied.adapter),
        };
        if decoding.max_tokens == 0 {
            decoding.finish = Some(Finish::Length);
        }
        Ok(decoding)
    }

}

/// A prompt's token ids, as [`GeneratorText::make_prompt`] made them.
#[derive(Debug, Clone, PartialEq)]
pub struct MadePrompt {
    pub ids: Vec<u32>,
    /// Tokens dropped from the start of the last user message to fit the context window.
    pub dropped: usize,
    /// Where the last user message starts: what comes before it (template and system
    /// message) is what other requests share, and an adapter's copy head quotes from here.
    pub user_start: usize,
}

impl GeneratorText {
    /// The prompt for `messages`, followed by the user message of `grounding` when given,
    /// leaving room for `max_tokens` new tokens ([`GeneratorText::chat_prompt`]).
    pub fn make_prompt(&self, messages: &[Message], grounding: Option<&Grounding>, max_tokens: usize) -> Result<MadePrompt, Error> {
        let mut messages = messages.to_vec();
        if let Some(grounding) = grounding {
            messages.push(Message::new(Role::User, grounding.user_message(&self.tokenizer)?));
        }
        let (ids, dropped) = self.chat_prompt(&messages, max_tokens)?;
        let user_start = self.user_message_start(&messages, &ids)?;
        Ok(MadePrompt { ids, dropped, user_start })
    }

    pub fn new(tokenizer: &[u8], config: &ModelConfig) -> Result<Self, Error> {
        config.validate()?;
        let config = config.generator()?.clone();
        let tokenizer = Tokenizer::from_bytes(tokenizer, config.context_window)?;
        Ok(Self { tokenizer, config })
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Most prompt tokens that leave room for `max_tokens` new ones; at most half the
    /// context window is kept for them, so that a large max_tokens does not crowd out the
    /// prompt (generation then ends when the window is full).
    pub fn prompt_budget(&self, max_tokens: usize) -> usize {
        let window = self.config.context_window;
        window - max_tokens.clamp(1, window / 2)
    }

    /// Where the last user message starts in `prompt`, the ids [`Generator::chat_prompt`]
    /// made of `messages`: what an adapter's copy head may quote begins there, after
    /// the system message (0 when the ids before it cannot be told apart).
    pub fn user_message_start(&self, messages: &[Message], prompt: &[u32]) -> Result<usize, Error> {
        let before = self.tokenizer.encode_prompt(&self.config.chat_format.before_last_user(messages))?;
        Ok(if prompt.starts_with(&before) { before.len() } else { 0 })
    }

    /// The token ids of the whole prompt for `messages`, however long: the template's
    /// special tokens as their ids, the messages' content as text.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, Error> {
        self.tokenizer.encode_prompt(&self.config.chat_format.render(messages))
    }

    /// The prompt's token ids for `messages`, leaving room for `max_tokens` new tokens.
    /// When it is too long, the first tokens of the last user message go (a question
    /// usually comes last); returns the ids and how many tokens were dropped.
    pub fn chat_prompt(&self, messages: &[Message], max_tokens: usize) -> Result<(Vec<u32>, usize), Error> {
        let budget = self.prompt_budget(max_tokens);
        let ids = self.prompt_ids(messages)?;
        if ids.len() <= budget {
            return Ok((ids, 0));
        }
        let too_long = || {
            Error::new(
                ErrorKind::ProgramLimitExceeded,
                format!(
                    "the prompt does not fit the context window of {} tokens with room for {} new tokens",
                    self.config.context_window,
                    self.config.context_window - budget
                ),
            )
            .with_hint("Shorten the system message or ask for fewer tokens.")
        };
        let last_user = messages.iter().rposition(|m| m.role == Role::User).ok_or_else(too_long)?;
        let content = self.tokenizer.encode_plain(&messages[last_user].content)?;
        let mut messages = messages.to_vec();
        let mut dropped = ids.len() - budget;
        // Re-encoding the shortened text can merge tokens differently: retry a few times.
        for _ in 0..4 {
            if dropped >= content.len() {
                return Err(too_long());
            }
            messages[last_user].content = self.tokenizer.decode(&content[dropped..])?;
            let ids = self.prompt_ids(&messages)?;
            if ids.len() <= budget {
                return Ok((ids, dropped));
            }
            dropped += ids.len() - budget;
        }
        Err(too_long())
    }
}

impl Generator {
    /// The next piece of text (never empty), or None once the generation has ended.
    pub fn next_piece(&mut self, decoding: &mut Decoding, cancel: CancelCheck<'_>) -> Result<Option<String>, Error> {
        loop {
            if decoding.finish.is_some() {
                return Ok(decoding.rest());
            }
            let token = match decoding.pending.pop_front() {
                Some(token) => token,
                None => {
                    let drafts = self.drafts(decoding, 0);
                    if drafts.is_empty() {
                        let last = decoding.last_token();
                        self.forward(decoding, &[last], cancel)?;
                    } else {
                        let past = std::mem::take(&mut decoding.past);
                        let mask = vec![1; decoding.cached];
                        decoding.past = self.check_drafts(decoding, past, mask, &drafts, cancel)?;
                    }
                    decoding.pending.pop_front().expect("a step chooses a token")
                }
            };
            if let Some(piece) = self.text.accept(decoding, token)? {
                return Ok(Some(piece));
            }
        }
    }

    /// Runs `tokens` through the model on top of the cache and chooses the next token.
    fn forward(&mut self, decoding: &mut Decoding, tokens: &[u32], cancel: CancelCheck<'_>) -> Result<(), Error> {
        let past = std::mem::take(&mut decoding.past);
        let cached = decoding.cached;
        let positions: Vec<i64> = (cached as i64..(cached + tokens.len()) as i64).collect();
        let mut outputs = self.run(tokens, &positions, vec![1; cached + tokens.len()], 1, 1, past, cancel)?;
        for (_, output) in &self.cache_names {
            let present = outputs.remove(output).ok_or_else(|| unusable(format!("no output {output}")))?;
            decoding.past.push(present);
        }
        decoding.cached += tokens.len();
        let logits = Outputs::logits(&outputs)?;
        let states = if decoding.adapter.is_some() { Some(Outputs::hidden_states(&outputs)?) } else { None };
        if cached == 0 {
            decoding.read_prompt(tokens, states.unwrap_or_default());
        }
        let hidden = decoding.adapter.as_ref().map_or(0, |adapter| adapter.hidden());
        let last_state = states.map(|states| &states[states.len().saturating_sub(hidden)..]);
        let token = self.choose(decoding, logits, last_state)?;
        decoding.pending.push_back(token);
        Ok(())
    }

    /// What the next step of `decoding` may check beside its last token: tokens drafted
    /// from the prompt ([`Decoding::set_draft_tokens`]), no more than the token limit and
    /// the context window leave room for; `padding` is the cache slots before the
    /// sequence's own (a batch's left padding).
    pub(crate) fn drafts(&self, decoding: &Decoding, padding: usize) -> Vec<u32> {
        let can = decoding.draft_tokens > 0 && self.checks_drafts && decoding.adapter.is_none() && decoding.sampler.is_greedy();
        if !can || decoding.finish.is_some() {
            return Vec::new();
        }
        // The step yields one token more than it drafts.
        let left = decoding.max_tokens.saturating_sub(decoding.generated.len() + 1);
        let room = self.text.config.context_window.saturating_sub(padding + decoding.cached + 1);
        draft(&decoding.prompt, &decoding.generated, decoding.draft_tokens.min(left).min(room))
    }

    /// One step that checks `drafts`: runs the last token and the drafts on top of `past`
    /// (`mask`: its slots, 1 where real), queues the model's choice after the last token
    /// and after every draft it agreed with up to the first it did not (greedy: exactly
    /// the tokens steps of one would choose), and returns the cache cut back to the
    /// agreed tokens.
    pub(crate) fn check_drafts(
        &mut self,
        decoding: &mut Decoding,
        past: Vec<DynValue>,
        mut mask: Vec<i64>,
        drafts: &[u32],
        cancel: CancelCheck<'_>,
    ) -> Result<Vec<DynValue>, Error> {
        let tokens: Vec<u32> = std::iter::once(decoding.last_token()).chain(drafts.iter().copied()).collect();
        let cached = decoding.cached;
        let positions: Vec<i64> = (cached as i64..(cached + tokens.len()) as i64).collect();
        let slots = mask.len();
        mask.resize(slots + tokens.len(), 1);
        let mut outputs = self.run(&tokens, &positions, mask, 1, tokens.len(), past, cancel)?;
        let mut cache = Vec::with_capacity(self.cache_names.len());
        for (_, output) in &self.cache_names {
            cache.push(outputs.remove(output).ok_or_else(|| unusable(format!("no output {output}")))?);
        }
        let (vocab, logits) = Outputs::last_rows(&outputs, "logits", tokens.len())?;
        let mut agreed = 0;
        for (row, next) in logits.chunks_exact(vocab).zip(drafts.iter().map(Some).chain([None])) {
            let token = self.choose(decoding, row, None)?;
            decoding.pending.push_back(token);
            if next != Some(&token) {
                break;
            }
            agreed += 1;
        }
        decoding.drafted += drafts.len();
        decoding.drafts_accepted += agreed;
        decoding.cached += 1 + agreed;
        if agreed < drafts.len() {
            cache = truncated(&cache, slots + 1 + agreed, self)?;
        }
        Ok(cache)
    }

    /// The next token of `decoding` from one position's `logits` (and its final hidden
    /// state, which a generator adapter needs).
    pub(crate) fn choose(&self, decoding: &mut Decoding, logits: &[f32], state: Option<&[f32]>) -> Result<u32, Error> {
        let vocab = self.text.config.vocab_size.map_or(logits.len(), |v| v.min(logits.len()));
        check_logits(&logits[..vocab])?;
        Ok(match &decoding.adapter {
            None => decoding.sampler.choose(&logits[..vocab]),
            Some(adapter) => {
                let state = state.ok_or_else(|| unusable("no output hidden_states".into()))?;
                if state.len() != adapter.hidden() {
                    return Err(unusable(format!("output hidden_states has {} values, not {}", state.len(), adapter.hidden())));
                }
                let mut adapted = logits.to_vec();
                adapter.adapt_logits(state, &decoding.quotable, &decoding.pointer, &decoding.generated, &mut adapted)?;
                decoding.sampler.choose(&adapted[..vocab])
            }
        })
    }

    /// One model call: `rows` sequences of `tokens.len() / rows` new tokens each, at
    /// `positions`, on top of the cache `past` holds; `mask` (`[rows, past + new]`) says
    /// which cache slots hold real tokens (batches are left-padded). `keep`: logits for
    /// at least that many last positions of each row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &mut self,
        tokens: &[u32],
        positions: &[i64],
        mask: Vec<i64>,
        rows: usize,
        keep: usize,
        past: Vec<DynValue>,
        cancel: CancelCheck<'_>,
    ) -> Result<HashMap<String, DynValue>, Error> {
        let n = tokens.len() / rows;
        let total = mask.len() / rows;
        let ids = Tensor::from_array(([rows, n], tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()));
        let mask = Tensor::from_array(([rows, total], mask));
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), ids.map_err(run_failed)?.into()),
            ("attention_mask".into(), mask.map_err(run_failed)?.into()),
        ];
        if self.has_position_ids {
            inputs.push(("position_ids".into(), Tensor::from_array(([rows, n], positions.to_vec())).map_err(run_failed)?.into()));
        }
        if self.has_logits_to_keep {
            inputs.push(("logits_to_keep".into(), Tensor::from_array(([1], vec![keep as i64])).map_err(run_failed)?.into()));
        }
        inputs.extend(self.cache_names.iter().zip(past).map(|((input, _), value)| (input.as_str().into(), value.into())));
        run_cancellable(&mut self.session, inputs, |_| Ok(()), run_failed, cancel)
    }
}

/// Reading a model call's outputs.
pub(crate) struct Outputs;

impl Outputs {
    /// `logits`, `[rows, 1, vocab]` (or `[rows, positions, vocab]`: the last position of
    /// each row is read), as one row of `vocab` values per sequence.
    pub(crate) fn logits(outputs: &HashMap<String, DynValue>) -> Result<&[f32], Error> {
        Self::last_positions(outputs, "logits").map(|(_, logits)| logits)
    }

    pub(crate) fn hidden_states(outputs: &HashMap<String, DynValue>) -> Result<&[f32], Error> {
        let (_, states) = outputs
            .get("hidden_states")
            .ok_or_else(|| unusable("no output hidden_states".into()))?
            .try_extract_tensor::<f32>()
            .map_err(run_failed)?;
        Ok(states)
    }

    /// Output `name` as float32: its shape, values and last dimension (0 when none).
    fn float_output<'a>(outputs: &'a HashMap<String, DynValue>, name: &str) -> Result<(Vec<i64>, &'a [f32], usize), Error> {
        let (shape, values) = outputs
            .get(name)
            .ok_or_else(|| unusable(format!("no output {name}")))?
            .try_extract_tensor::<f32>()
            .map_err(run_failed)?;
        let width = shape.last().map_or(0, |&w| w.max(0) as usize);
        Ok((shape.to_vec(), values, width))
    }

    /// The last `n` positions of `name` for one sequence, `[1, >= n, width]`: `n` rows of
    /// `width` values, with the width.
    pub(crate) fn last_rows<'a>(outputs: &'a HashMap<String, DynValue>, name: &str, n: usize) -> Result<(usize, &'a [f32]), Error> {
        let (shape, values, width) = Self::float_output(outputs, name)?;
        if shape.len() != 3 || shape[0] != 1 || (shape[1].max(0) as usize) < n || width == 0 || values.len() < n * width {
            return Err(unusable(format!("model output {name} has shape {shape:?}, not [1, {n} or more, width]")));
        }
        Ok((width, &values[values.len() - n * width..]))
    }

    /// `name`'s values, checked to be `[rows, positions, width]`, with its width.
    pub(crate) fn last_positions<'a>(outputs: &'a HashMap<String, DynValue>, name: &str) -> Result<(usize, &'a [f32]), Error> {
        let (shape, values, width) = Self::float_output(outputs, name)?;
        if shape.len() != 3 || width == 0 || values.len() < width {
            return Err(unusable(format!("model output {name} has shape {shape:?}, not [batch, positions, width]")));
        }
        let positions = shape[1].max(1) as usize;
        if positions == 1 {
            return Ok((width, values));
        }
        if shape[0] != 1 {
            return Err(unusable(format!("model output {name} has shape {shape:?}: several positions of several rows")));
        }
        Ok((width, &values[values.len() - width..]))
    }
}

impl GeneratorText {
    /// Takes the chosen `token` into `decoding`: a piece of text to show, or None when
    /// the text held back (or the generation ended: then `decoding.finish` says why).
    pub(crate) fn accept(&self, decoding: &mut Decoding, token: u32) -> Result<Option<String>, Error> {
        if self.config.stop_token_ids.contains(&token) {
            decoding.finish = Some(Finish::StopToken);
            return Ok(None);
        }
        decoding.generated.push(token);
        if decoding.generated.len() >= decoding.max_tokens {
            decoding.finish = Some(Finish::Length);
        }
        let text = self.tokenizer.decode(&decoding.generated)?;
        // The search may start a stop string's length before the new text.
        let searched_from = floor_char_boundary(&text, decoding.text.len().saturating_sub(longest(&decoding.stop)));
        decoding.text = text;
        if let Some(at) = first_stop(&decoding.text, searched_from, &decoding.stop) {
            decoding.text.truncate(at);
            decoding.finish = Some(Finish::StopString);
            return Ok(None);
        }
        if decoding.finish.is_some() {
            return Ok(None);
        }
        let safe = safe_end(&decoding.text, &decoding.stop);
        if safe > decoding.emitted {
            let piece = decoding.text[decoding.emitted..safe].to_string();
            decoding.emitted = safe;
            return Ok(Some(piece));
        }
        Ok(None)
    }
}

impl Decoding {
    /// The token the next step feeds back.
    pub(crate) fn last_token(&self) -> u32 {
        *self.generated.last().expect("a cache step follows a generated token")
    }

    /// What the adapter's copy head needs from the prompt's run: the final hidden state
    /// of every prompt token (`[prompt, hidden]`), or nothing without a copy head.
    pub(crate) fn read_prompt(&mut self, prompt: &[u32], states: &[f32]) {
        if let (Some(adapter), false) = (&self.adapter, self.quotable.is_empty()) {
            self.pointer = Arc::new(adapter.prompt_keys(prompt, self.quotable_from, states));
        }
    }

    /// The width of the hidden states its adapter reads, when it has one.
    pub(crate) fn adapter_hidden(&self) -> Option<usize> {
        self.adapter.as_ref().map(|adapter| adapter.hidden())
    }

    pub(crate) fn wants_prompt_states(&self) -> bool {
        self.adapter.is_some() && !self.quotable.is_empty()
    }

    /// What remains of the text once generation has ended (held-back text included).
    pub fn rest(&mut self) -> Option<String> {
        if self.emitted >= self.text.len() {
            return None;
        }
        let rest = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        Some(rest)
    }

    pub fn finish(&self) -> Option<Finish> {
        self.finish
    }
}

/// NaN logits are never chosen and +inf wins greedy but turns the softmax into NaN
/// (whole rows of NaN would choose token 0): a model that gives either is broken, and
/// its answer would be noise. -inf only masks a token.
fn check_logits(logits: &[f32]) -> Result<(), Error> {
    if logits.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
        return Err(unusable("the generator model returned NaN or infinite logits".into()));
    }
    Ok(())
}

fn longest(stop: &[String]) -> usize {
    stop.iter().map(String::len).max().unwrap_or(0)
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Where the earliest stop string starts in `text[from..]`, as an offset in `text`.
fn first_stop(text: &str, from: usize, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text[from..].find(s.as_str()).map(|at| from + at)).min()
}

/// How much of `text` can be shown: not a trailing incomplete character (decoded as
/// U+FFFD until its last byte arrives), nor a tail that could begin a stop string.
fn safe_end(text: &str, stop: &[String]) -> usize {
    let shown = text.trim_end_matches('\u{FFFD}');
    let held = stop
        .iter()
        .flat_map(|s| s.char_indices().skip(1).map(move |(at, _)| &s[..at]))
        .filter(|prefix| shown.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0);
    shown.len() - held
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::models::chat;
    use crate::models::test_files;

    #[derive(Deserialize)]
    struct Fixture {
        stop_token_ids: Vec<u32>,
        max_new_tokens: usize,
        prompts: Vec<Prompt>,
        tokenizer: Vec<TokenizedText>,
    }

    #[derive(Deserialize)]
    struct Prompt {
        name: String,
        messages: Option<Vec<FixtureMessage>>,
        text: String,
        ids: Vec<u32>,
        greedy: Vec<u32>,
    }

    #[derive(Deserialize)]
    struct FixtureMessage {
        role: String,
        content: String,
    }

    #[derive(Deserialize)]
    struct TokenizedText {
        text: String,
        ids: Vec<u32>,
    }

    fn never() -> bool {
        false
    }

    fn fixture(name: &str) -> Fixture {
        let path = format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn greedy_tokens(generator: &mut Generator, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
        drafted_greedy(generator, prompt, max_tokens, 0).0
    }

    /// Greedy tokens with up to `drafts` drafted per step, and (drafted, accepted).
    fn drafted_greedy(generator: &mut Generator, prompt: &[u32], max_tokens: usize, drafts: usize) -> (Vec<u32>, (usize, usize)) {
        let mut decoding = generator.start(prompt, max_tokens, SamplingParams::default(), &[], None, &never).unwrap();
        decoding.set_draft_tokens(drafts);
        while generator.next_piece(&mut decoding, &never).unwrap().is_some() {}
        let counts = decoding.draft_counts();
        (decoding.generated, counts)
    }

    /// Questions over passages, as rag_answer() lays them out: answers that quote them.
    fn grounded_prompts(text: &GeneratorText) -> Vec<Vec<u32>> {
        let passages = [
            (
                "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
                "Whose company designed and built the Eiffel Tower?",
            ),
            (
                "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose and release oxygen. It takes place in the chloroplasts of leaf cells.",
                "Where does photosynthesis take place?",
            ),
            (
                "The Danube is the second-longest river in Europe. It flows through ten countries, from the Black Forest in Germany to the Black Sea, passing through Vienna, Budapest and Belgrade.",
                "Which capital cities does the Danube pass through?",
            ),
        ];
        let system = [Message::new(Role::System, "Answer the question from the sources, in one sentence.")];
        passages
            .iter()
            .map(|(passage, question)| {
                let grounding = Grounding {
                    passages: vec![passage.to_string()],
                    question: question.to_string(),
                    passage_tokens: 200,
                    order: crate::rag::prompt::PassageOrder::BestFirst,
                };
                text.make_prompt(&system, Some(&grounding), 48).unwrap().ids
            })
            .collect()
    }

    /// Steps that check drafted tokens choose what steps of one token choose: the same
    /// greedy tokens on the fixtures' prompts and on grounded ones, where most drafts are
    /// accepted (so the check is exercised, not skipped).
    fn check_drafted_generation(model: &str, fixture_file: &str) {
        let mut generator = test_files::generator(model, 1);
        let mut prompts: Vec<Vec<u32>> = fixture(fixture_file).prompts.iter().map(|p| p.ids.clone()).collect();
        prompts.extend(grounded_prompts(&generator.text));
        let (mut drafted, mut accepted) = (0, 0);
        for (i, prompt) in prompts.iter().enumerate() {
            let plain = greedy_tokens(&mut generator, prompt, 40);
            for most in [1, 6] {
                let (tokens, (d, a)) = drafted_greedy(&mut generator, prompt, 40, most);
                assert_eq!(tokens, plain, "{model} prompt {i}, {most} drafts: {:?} vs {:?}", generator.text.tokenizer.decode(&tokens), generator.text.tokenizer.decode(&plain));
                assert!(a <= d);
                drafted += d;
                accepted += a;
            }
        }
        assert!(accepted > 20 && accepted * 4 > drafted / 2, "{model}: {accepted} of {drafted} drafts accepted");
    }

    #[test]
    fn drafted_steps_give_the_same_greedy_tokens_smollm2() {
        check_drafted_generation("smollm2-135m-instruct", "smollm2_greedy.json");
    }

    #[test]
    fn drafted_steps_give_the_same_greedy_tokens_qwen2_5_coder() {
        check_drafted_generation("qwen2.5-coder-0.5b-instruct", "qwen2_5_coder_0_5b_greedy.json");
    }

    /// Sampled generations, and those of a graph that gives the last position's logits
    /// only, draft nothing.
    #[test]
    fn only_greedy_generations_draft() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let prompt = grounded_prompts(&generator.text).remove(0);
        let sampling = SamplingParams { temperature: 0.8, top_p: 0.95, top_k: 40, seed: 3 };
        let mut decoding = generator.start(&prompt, 24, sampling, &[], None, &never).unwrap();
        decoding.set_draft_tokens(6);
        while generator.next_piece(&mut decoding, &never).unwrap().is_some() {}
        assert_eq!(decoding.draft_counts(), (0, 0));
        assert!(decoding.generated_tokens() > 0);
        generator.checks_drafts = false;
        assert_eq!(drafted_greedy(&mut generator, &prompt, 24, 6).1, (0, 0));
    }

    /// Greedy tokens as the reference's, except where a weight format that is not exact
    /// (model.json `onnx.activations`) moves logits by up to its tolerance: there one prompt
    /// may part from the reference at a near-tie.
    fn check_against_fixture(model: &str, fixture_file: &str) {
        let mut generator = test_files::generator(model, 1);
        let fixture = fixture(fixture_file);
        let description: serde_json::Value = serde_json::from_slice(&test_files::generator_file(model, "model.json")).unwrap();
        let tolerance = if description["onnx"]["activations"] == "int8 rows" { 1.0 } else { 0.0 };
        let mut parted = 0;
        let mut stops = generator.text.config.stop_token_ids.clone();
        stops.sort();
        assert_eq!(stops, fixture.stop_token_ids);
        for text in &fixture.tokenizer {
            // The reference encodes with special tokens recognised: as a template does.
            let template = [chat::Part::Template(text.text.clone())];
            assert_eq!(generator.text.tokenizer.encode_prompt(&template).unwrap(), text.ids, "{:?}", text.text);
            // As text, a special token's spelling is ordinary characters.
            let plain = generator.text.tokenizer.encode_plain(&text.text).unwrap();
            assert_eq!(plain == text.ids, !text.text.contains("<|im_start|>"), "{:?}", text.text);
        }
        for prompt in &fixture.prompts {
            if let Some(messages) = &prompt.messages {
                let messages: Vec<Message> = messages
                    .iter()
                    .map(|m| {
                        let role = match m.role.as_str() {
                            "system" => Role::System,
                            "user" => Role::User,
                            _ => Role::Assistant,
                        };
                        Message::new(role, m.content.clone())
                    })
                    .collect();
                assert_eq!(chat::text(&generator.text.config.chat_format.render(&messages)), prompt.text, "{}", prompt.name);
                assert_eq!(generator.text.prompt_ids(&messages).unwrap(), prompt.ids, "{}", prompt.name);
            } else {
                assert_eq!(generator.text.tokenizer.encode_plain(&prompt.text).unwrap(), prompt.ids, "{}", prompt.name);
            }
            let mut decoding =
                generator.start(&prompt.ids, fixture.max_new_tokens, SamplingParams::default(), &[], None, &never).unwrap();
            let mut text = String::new();
            while let Some(piece) = generator.next_piece(&mut decoding, &never).unwrap() {
                assert!(!piece.is_empty());
                text.push_str(&piece);
            }
            let expected = &prompt.greedy;
            let ends_with_stop = expected.last().is_some_and(|t| fixture.stop_token_ids.contains(t));
            let expected_tokens = &expected[..expected.len() - usize::from(ends_with_stop)];
            if let Some(step) = decoding.generated.iter().zip(expected_tokens).position(|(a, b)| a != b) {
                // Where two tokens' logits are closer than the conversion's tolerance either
                // may be chosen (tests/generator/test_converter.py): teacher-forced on the
                // reference's prefix, the reference's token is within it of this model's.
                let ids: Vec<u32> = prompt.ids.iter().chain(&expected[..step]).copied().collect();
                let positions: Vec<i64> = (0..ids.len() as i64).collect();
                let past = generator.empty_cache(1).unwrap();
                let outputs = generator.run(&ids, &positions, vec![1; ids.len()], 1, 1, past, &never).unwrap();
                let logits = Outputs::logits(&outputs).unwrap();
                let margin = logits[decoding.generated[step] as usize] - logits[expected[step] as usize];
                assert!(margin < tolerance, "{}: parted at token {step} by {margin}", prompt.name);
                parted += 1;
                continue;
            }
            assert_eq!(decoding.generated, expected_tokens, "{}", prompt.name);
            assert_eq!(
                decoding.finish,
                Some(if ends_with_stop { Finish::StopToken } else { Finish::Length }),
                "{}",
                prompt.name
            );
            assert_eq!(text, generator.text.tokenizer.decode(expected_tokens).unwrap());
        }
        assert!(parted <= 1, "{parted} prompts parted from the reference");
    }

    /// A RAG prompt made from its grounding: the passages cut to their budget and numbered,
    /// and everything before the user message shared by prompts of other questions.
    #[test]
    fn prompts_made_from_a_grounding_share_what_precedes_the_user_message() {
        let text = test_files::generator("smollm2-135m-instruct", 1).text;
        let system = [Message::new(Role::System, "Answer from the sources.")];
        let grounding = |question: &str| Grounding {
            passages: vec!["Paris is the capital of France. ".repeat(40), "Lyon is a city.".into()],
            question: question.into(),
            passage_tokens: 12,
            order: crate::rag::prompt::PassageOrder::BestFirst,
        };
        let a = text.make_prompt(&system, Some(&grounding("Capital of France?")), 16).unwrap();
        let b = text.make_prompt(&system, Some(&grounding("A city?")), 16).unwrap();
        let user = grounding("Capital of France?").user_message(&text.tokenizer).unwrap();
        // The first passage is cut back to its last sentence in the budget.
        assert!(user.starts_with("Sources:\n\n[1] Paris is the capital") && user.contains("France.\n\n[2] Lyon is a city."), "{user}");
        assert!(user.len() < 200 && !user.contains("..."), "{user}");
        let whole = [system[0].clone(), Message::new(Role::User, user)];
        assert_eq!(a.ids, text.prompt_ids(&whole).unwrap());
        assert_eq!(a.dropped, 0);
        assert!(a.user_start > 0 && a.user_start < a.ids.len());
        assert_eq!(a.user_start, b.user_start);
        assert_eq!(a.ids[..a.user_start], b.ids[..b.user_start]);
        assert_ne!(a.ids[a.user_start..], b.ids[b.user_start..]);
        // Without a grounding, the messages alone.
        let plain = text.make_prompt(&whole, None, 16).unwrap();
        assert_eq!(plain, a);
    }

    #[test]
    fn smollm2_greedy_matches_the_reference() {
        check_against_fixture("smollm2-135m-instruct", "smollm2_greedy.json");
    }

    #[test]
    fn qwen2_5_coder_greedy_matches_the_reference() {
        check_against_fixture("qwen2.5-coder-0.5b-instruct", "qwen2_5_coder_0_5b_greedy.json");
    }

    /// The output projection applied to the graph's final hidden states reproduces the
    /// reference's greedy tokens at every position, teacher-forced: what adapters train
    /// on is what the model's own logits come from.
    #[test]
    fn hidden_states_through_lm_head_give_the_reference_tokens() {
        use half::f16;
        let model = "smollm2-135m-instruct";
        let mut generator = test_files::generator(model, 1);
        let hidden = generator.hidden_size().expect("the converter adds hidden_states");
        let head: Vec<f32> = test_files::generator_file(model, "lm_head.f16")
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let vocab = head.len() / hidden;
        let fixture = fixture("smollm2_greedy.json");
        let mut checked = 0;
        for prompt in &fixture.prompts {
            let tokens: Vec<u32> = prompt.ids.iter().chain(&prompt.greedy).copied().collect();
            let states = generator.final_hidden_states(&tokens[..tokens.len() - 1], &never).unwrap();
            for position in prompt.ids.len() - 1..tokens.len() - 1 {
                let state = states.row(position);
                let state = state.as_slice().unwrap();
                let best = (0..vocab)
                    .map(|v| (v, crate::kernels::dot(&head[v * hidden..(v + 1) * hidden], state)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap()
                    .0;
                assert_eq!(best as u32, tokens[position + 1], "{} position {position}", prompt.name);
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
    }

    /// A generator adapter trained to answer one token after a prompt changes the greedy
    /// answer to it; without the adapter the answer is the base model's.
    #[test]
    fn an_adapter_changes_greedy_generation() {
        use crate::finetune::{LmHead, OutputAdapter, OutputTrainer, TokenExamples, TrainingOptions};
        use crate::rng::Rng;
        let model = "smollm2-135m-instruct";
        let mut generator = test_files::generator(model, 1);
        let hidden = generator.hidden_size().unwrap();
        let bytes = test_files::generator_file(model, "lm_head.f16");
        let head = LmHead::from_le_bytes(&bytes, bytes.len() / 2 / hidden, hidden).unwrap();
        let prompt = generator.text.prompt_ids(&[Message::new(Role::User, "What is the capital of France?")]).unwrap();
        let base = greedy_tokens(&mut generator, &prompt, 1);
        let wanted = generator.text.tokenizer.encode_plain(" Ahoy").unwrap()[0];
        assert_ne!(base[0], wanted);
        let states = generator.final_hidden_states(&prompt, &never).unwrap();
        let last = states.slice(ndarray::s![prompt.len() - 1.., ..]);
        let targets = [wanted];
        let examples = TokenExamples::new(last, &targets, None).unwrap();
        let mut rng = Rng::new(1);
        let adapter = OutputAdapter::new(&head, 4, 8.0, &mut rng).unwrap();
        let options = TrainingOptions { learning_rate: 1e-2, batch_size: 1, ..TrainingOptions::default() };
        let mut trainer = OutputTrainer::new(adapter, &options, rng).unwrap();
        for _ in 0..30 {
            trainer.train_epoch(&head, &examples, &mut || Ok(())).unwrap();
        }
        let adapter = Arc::new(trainer.into_adapter());
        let applied = AppliedAdapter { adapter, quotable_from: 0 };
        let mut decoding = generator.start(&prompt, 1, SamplingParams::default(), &[], Some(applied), &never).unwrap();
        while generator.next_piece(&mut decoding, &never).unwrap().is_some() {}
        assert_eq!(decoding.generated, vec![wanted]);
        assert_eq!(greedy_tokens(&mut generator, &prompt, 1), base);
    }

    #[test]
    fn stop_strings_limits_and_sampling() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let prompt = generator.text.prompt_ids(&[Message::new(Role::User, "Count from 1 to 20, separated by commas.")]).unwrap();
        let collect = |generator: &mut Generator, max_tokens, sampling, stop: &[String]| {
            let mut decoding = generator.start(&prompt, max_tokens, sampling, stop, None, &never).unwrap();
            let mut pieces = Vec::new();
            while let Some(piece) = generator.next_piece(&mut decoding, &never).unwrap() {
                pieces.push(piece);
            }
            (pieces.concat(), decoding)
        };
        let (full, decoding) = collect(&mut generator, 60, SamplingParams::default(), &[]);
        assert!(full.contains('5') && full.len() > 20, "{full}");
        assert_eq!(full, generator.text.tokenizer.decode(&decoding.generated).unwrap());

        // A stop string ends the text before it, wherever tokens split it: take one
        // from the middle of the full answer.
        let middle = full.char_indices().map(|(at, _)| at).nth(full.chars().count() / 2).unwrap();
        let stop: String = full[middle..].chars().take(3).collect();
        let (stopped, decoding) = collect(&mut generator, 60, SamplingParams::default(), &[stop.clone()]);
        assert_eq!(decoding.finish, Some(Finish::StopString));
        assert_eq!(stopped, full[..full.find(&stop).unwrap()]);

        // max_tokens counts generated tokens.
        let (_, decoding) = collect(&mut generator, 3, SamplingParams::default(), &[]);
        assert_eq!((decoding.generated.len(), decoding.finish), (3, Some(Finish::Length)));
        let (empty, decoding) = collect(&mut generator, 0, SamplingParams::default(), &[]);
        assert_eq!((empty.as_str(), decoding.finish), ("", Some(Finish::Length)));

        // Sampling repeats with a seed and differs with another.
        let sampled = |generator: &mut Generator, seed| {
            collect(generator, 24, SamplingParams { temperature: 1.2, top_p: 0.95, top_k: 50, seed }, &[]).0
        };
        let first = sampled(&mut generator, 11);
        assert_eq!(first, sampled(&mut generator, 11));
        assert_ne!(first, sampled(&mut generator, 12));
    }

    #[test]
    fn context_window_and_cancellation() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        let window = generator.text.config.context_window;
        let too_long = vec![42u32; window];
        let error = generator.start(&too_long, 8, SamplingParams::default(), &[], None, &never).err().unwrap();
        assert_eq!(error.kind, ErrorKind::ProgramLimitExceeded);
        assert_eq!(generator.text.prompt_budget(100), window - 100);
        assert_eq!(generator.text.prompt_budget(0), window - 1);
        assert_eq!(generator.text.prompt_budget(window * 2), window / 2);

        // max_tokens is cut to the room left.
        let prompt = vec![42u32; window - 2];
        let mut decoding = generator.start(&prompt[..10], 1 << 20, SamplingParams::default(), &[], None, &never).unwrap();
        assert_eq!(decoding.max_tokens, window - 10);
        while generator.next_piece(&mut decoding, &never).unwrap().is_some() {
            if decoding.generated.len() > 3 {
                break;
            }
        }

        // A cancelled call stops and says so.
        let cancelled = || true;
        let error = generator.start(&prompt[..2000], 8, SamplingParams::default(), &[], None, &cancelled).err().unwrap();
        assert_eq!(error.kind, ErrorKind::QueryCanceled);
        // The generator still works afterwards.
        assert!(!greedy_tokens(&mut generator, &prompt[..5], 2).is_empty());
    }

    #[test]
    fn long_prompts_lose_the_start_of_the_user_message() {
        let mut generator = test_files::generator("smollm2-135m-instruct", 1);
        generator.text.config.context_window = 96;
        let question = "What is the capital of France?";
        let short = [Message::new(Role::User, question)];
        let (ids, dropped) = generator.text.chat_prompt(&short, 16).unwrap();
        assert_eq!((ids.len(), dropped), (generator.text.prompt_ids(&short).unwrap().len(), 0));

        let context: String = (1..=60).map(|i| format!("Fact number {i} is unrelated. ")).collect();
        let long = [Message::new(Role::System, "Be brief."), Message::new(Role::User, format!("{context}{question}"))];
        let (ids, dropped) = generator.text.chat_prompt(&long, 16).unwrap();
        assert!(ids.len() <= 80 && ids.len() > 60, "{}", ids.len());
        assert!(dropped > 100, "{dropped}");
        let text = generator.text.tokenizer.decode(&ids).unwrap();
        assert!(text.contains("Be brief.") && text.contains(question) && !text.contains("number 1 is"), "{text}");
        assert!(generator.start(&ids, 16, SamplingParams::default(), &[], None, &never).is_ok());

        // Nothing to drop from, or not even the template fits.
        let system_only = [Message::new(Role::System, context.clone())];
        assert_eq!(generator.text.chat_prompt(&system_only, 16).err().unwrap().kind, ErrorKind::ProgramLimitExceeded);
        let long_system = [Message::new(Role::System, context.clone()), Message::new(Role::User, question)];
        let error = generator.text.chat_prompt(&long_system, 16).err().unwrap();
        assert_eq!(error.message, "the prompt does not fit the context window of 96 tokens with room for 16 new tokens");
        // At most half the window is kept for new tokens.
        assert!(generator.text.chat_prompt(&short, 1000).unwrap().0.len() <= 48);
    }

    #[test]
    fn non_finite_logits_are_errors() {
        assert!(check_logits(&[0.5, f32::NEG_INFINITY, -3.0]).is_ok());
        for bad in [f32::NAN, f32::INFINITY] {
            let error = check_logits(&[0.5, bad, -3.0]).err().unwrap();
            assert_eq!((error.kind, error.message.as_str()), (ErrorKind::DataException, "the generator model returned NaN or infinite logits"));
        }
    }

    #[test]
    fn holds_back_what_may_start_a_stop_string() {
        let stop = vec!["</answer>".to_string()];
        assert_eq!(safe_end("Paris</ans", &stop), 5);
        assert_eq!(safe_end("Paris<", &stop), 5);
        assert_eq!(safe_end("Paris", &stop), 5);
        assert_eq!(safe_end("caf\u{FFFD}", &[]), 3);
        assert_eq!(first_stop("a</answer>b</answer>", 0, &stop), Some(1));
        assert_eq!(first_stop("abc", 0, &stop), None);
        assert_eq!(floor_char_boundary("é", 1), 0);
    }

    #[test]
    fn refuses_graphs_that_are_not_decoders() {
        let error = Generator::new(
            test_files::runtime(),
            &test_files::minilm("model.onnx"),
            &test_files::generator_file("smollm2-135m-instruct", "tokenizer.json"),
            &test_files::generator_config("smollm2-135m-instruct"),
            1,
        )
        .err()
        .unwrap();
        assert_eq!(error.kind, ErrorKind::DataException);
        assert!(error.message.contains("token_type_ids"), "{}", error.message);
        let error = Generator::new(
            test_files::runtime(),
            &test_files::minilm("model.onnx"),
            &test_files::minilm("tokenizer.json"),
            &test_files::minilm_config(),
            1,
        )
        .err()
        .unwrap();
        assert_eq!(error.message, "model is an embedding model, not a generator model");
    }
}
