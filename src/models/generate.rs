//! SQL functions over generators: `generate()` and `generate_stream()`. The decoding loop
//! lives in `ragtune_core::models::generate`; this is the glue: arguments, NOTICEs, and
//! where the model runs: in the model service (`crate::service`) when the server has it,
//! else on the backend's own cached session. Cancellation: statement_timeout and cancel
//! requests stop a model call from a watcher thread, and are checked between tokens; a
//! service request is abandoned, and the service drops it at its next step.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::catalog::adapters::{adapter_row, output_adapter};
use crate::catalog::cache::Lease;
use crate::catalog::{generator_model, lease_generator, ModelIdentity, ModelRow};
use crate::pg::error::{raise_model_error, OrRaise, Raise};
use crate::service;
use crate::service::client::Call;
use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::service::{GenerateRequest, ModelRef, Reply, Request as ServiceRequest};
use crate::pg::interrupts::cancel_pending;
use ragtune_core::finetune::OutputAdapter;
use ragtune_core::models::chat::chat_messages;
use ragtune_core::models::{AppliedAdapter, Decoding, Generator, Message, SamplingParams};
use ragtune_core::rag::prompt::Grounding;

/// What a caller asked of one generation, checked.
pub struct Request {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// ragtune.draft_tokens when it was made.
    pub draft_tokens: usize,
}

impl Request {
    pub fn new(max_tokens: i32, temperature: f64, top_p: f64, top_k: i32, seed: Option<i64>, stop: Vec<String>) -> Result<Self, Error> {
        let invalid = |message: &str| Error::new(ErrorKind::InvalidParameterValue, message.to_string());
        if max_tokens < 0 {
            return Err(invalid("max_tokens must not be negative"));
        }
        if top_k < 0 {
            return Err(invalid("top_k must not be negative"));
        }
        let seed = seed.map_or_else(|| RandomState::new().build_hasher().finish(), |s| s as u64);
        let sampling = SamplingParams { temperature, top_p, top_k: top_k as usize, seed };
        sampling.validate()?;
        let draft_tokens = crate::catalog::DRAFT_TOKENS.get().max(0) as usize;
        Ok(Self { max_tokens: max_tokens as usize, sampling, stop, draft_tokens })
    }
}

/// A generation in progress; an iterator of text pieces.
pub struct Generation {
    stream: Stream,
    /// Known once the first piece came (the model service makes the prompt).
    pub prompt_tokens: usize,
    /// Time spent loading the model into this backend (0 when it was loaded already, or
    /// when the model service runs it).
    pub load_time: Duration,
}

enum Stream {
    /// In this backend, on its own copy of the model.
    Local { lease: Lease<ModelIdentity, Generator>, decoding: Decoding },
    /// In the model service; `generated` is known once it finished.
    Service { call: Call, model: ModelRow, generated: usize, finished: bool },
}

/// Where a generation will run: the model service tokenizes the prompt itself, so that
/// this backend loads nothing of the model.
enum Runner {
    Local(Lease<ModelIdentity, Generator>),
    Service,
}

/// A generator leased for one generation, with the adapter that will correct it.
pub struct Prepared {
    model: ModelRow,
    runner: Runner,
    adapter: Option<Arc<OutputAdapter>>,
    load_time: Duration,
}

/// The NOTICE of a prompt too long for the context window.
fn notice_dropped(dropped: usize, model: &ModelRow) {
    if dropped > 0 {
        let window = model.config.generator().map_or(0, |c| c.context_window);
        pgrx::notice!(
            "the prompt was shortened to fit the context window of {window} tokens: the first {dropped} tokens of the last user message were dropped"
        );
    }
}

impl Prepared {
    /// Starts generating the assistant's answer to `messages`, followed by the user
    /// message of `grounding` when given. A prompt too long for the context window loses
    /// the start of its last user message, with a NOTICE.
    pub fn start(self, messages: &[Message], grounding: Option<Grounding>, request: &Request) -> Generation {
        let (stream, prompt_tokens) = match self.runner {
            Runner::Local(mut lease) => {
                let made = lease.get().text().make_prompt(messages, grounding.as_ref(), request.max_tokens).or_raise();
                notice_dropped(made.dropped, &self.model);
                let adapter = self.adapter.map(|adapter| AppliedAdapter { adapter, quotable_from: made.user_start });
                let mut decoding = raise_model_error(lease.get().start(
                    &made.ids,
                    request.max_tokens,
                    request.sampling,
                    &request.stop,
                    adapter,
                    &cancel_pending,
                ));
                decoding.set_draft_tokens(request.draft_tokens);
                (Stream::Local { lease, decoding }, made.ids.len())
            }
            Runner::Service => {
                let request = ServiceRequest::Generate(GenerateRequest {
                    model: model_ref(&self.model),
                    messages: messages.to_vec(),
                    grounding,
                    max_tokens: request.max_tokens.min(u32::MAX as usize) as u32,
                    sampling: request.sampling,
                    stop: request.stop.clone(),
                    // SAFETY: plain read of the role in effect (SET ROLE included).
                    cache_scope: unsafe { pg_sys::GetUserId() }.to_u32(),
                    adapter: self.adapter.map(|adapter| adapter.to_bytes()),
                    draft_tokens: request.draft_tokens as u32,
                });
                let call = raise_model_error(Call::start(&request));
                (Stream::Service { call, model: self.model, generated: 0, finished: false }, 0)
            }
        };
        Generation { stream, prompt_tokens, load_time: self.load_time }
    }
}

/// How the service finds the row the caller was allowed to read.
pub fn model_ref(model: &ModelRow) -> ModelRef {
    ModelRef { name: model.name.clone(), onnx: model.onnx.to_u32(), version: model.version }
}

impl Generation {
    /// Leases generator `model` (the default one when None) and reads generator adapter
    /// `adapter`, both as the caller may use them. With the model service, nothing of the
    /// model is loaded here.
    pub fn prepare(model: Option<&str>, adapter: Option<&str>) -> Prepared {
        let model = generator_model(model).or_raise();
        let adapter = adapter.map(|name| output_adapter(&adapter_row(name)?, &model.name)).transpose().or_raise();
        Self::prepare_with(model, adapter)
    }

    /// As `prepare`, with the adapter's weights at hand (one trained for model, unstored).
    pub fn prepare_with(model: ModelRow, adapter: Option<Arc<OutputAdapter>>) -> Prepared {
        let leased_at = Instant::now();
        let runner = if service::available() && !model.written_here {
            Runner::Service
        } else {
            Runner::Local(raise_model_error(lease_generator(&model)))
        };
        Prepared { model, runner, adapter, load_time: leased_at.elapsed() }
    }

    pub fn generated_tokens(&self) -> usize {
        match &self.stream {
            Stream::Local { decoding, .. } => decoding.generated_tokens(),
            Stream::Service { generated, .. } => *generated,
        }
    }
}

impl Iterator for Generation {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        pg_sys::check_for_interrupts!();
        match &mut self.stream {
            Stream::Local { lease, decoding } => raise_model_error(lease.get().next_piece(decoding, &cancel_pending)),
            Stream::Service { finished: true, .. } => None,
            Stream::Service { call, model, generated, finished } => loop {
                match raise_model_error(call.receive()) {
                    Reply::Prompt { tokens, dropped } => {
                        self.prompt_tokens = tokens as usize;
                        notice_dropped(dropped as usize, model);
                    }
                    Reply::Piece(piece) => return Some(piece),
                    Reply::Finished { generated: count, .. } => {
                        *generated = count as usize;
                        *finished = true;
                        return None;
                    }
                    Reply::Failed(error) => raise_model_error(Err(error)),
                    other => {
                        Error::new(ErrorKind::ExternalRoutineException, format!("unexpected reply from the model service: {other:?}")).raise()
                    }
                }
            },
        }
    }
}

fn strings(array: Option<Array<&str>>) -> Vec<String> {
    array.map(|a| a.iter().flatten().map(str::to_string).collect()).unwrap_or_default()
}

/// The pieces of an answer, in order; generate() (sql/rag.sql) joins them.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn generate_stream(
    prompt: Option<&str>,
    model: Option<&str>,
    max_tokens: Option<i32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i32>,
    seed: Option<i64>,
    stop: Option<Array<&str>>,
    system: Option<&str>,
    adapter: Option<&str>,
) -> SetOfIterator<'static, String> {
    let Some(prompt) = prompt else {
        return SetOfIterator::new(Vec::new());
    };
    let request = Request::new(
        max_tokens.unwrap_or(256),
        temperature.unwrap_or(0.0),
        top_p.unwrap_or(1.0),
        top_k.unwrap_or(0),
        seed,
        strings(stop),
    )
    .or_raise();
    SetOfIterator::new(Generation::prepare(model, adapter).start(&chat_messages(system, prompt), None, &request))
}

/// In-server: generate() through the catalog (large object, cached session, chat format)
/// gives the reference's greedy answers (tests/fixtures/smollm2_greedy.json, made from the
/// GGUF by an independent numpy implementation).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use ragtune_core::models::test_files::generator_dir;
    use serde_json::Value;

    #[pg_test]
    fn generate_matches_the_reference() {
        let dir = generator_dir("smollm2-135m-instruct").display().to_string();
        Spi::run_with_args("SELECT register_model_from_files('smollm2', $1)", &[dir.as_str().into()]).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_greedy.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let max_tokens = fixture["max_new_tokens"].as_i64().unwrap() as i32;
        let mut checked = 0;
        for prompt in fixture["prompts"].as_array().unwrap() {
            let Some(messages) = prompt["messages"].as_array() else { continue };
            let content = |role: &str| messages.iter().find(|m| m["role"] == role).map(|m| m["content"].as_str().unwrap());
            let expected = prompt["greedy_text"].as_str().unwrap().trim_end_matches("<|im_end|>");
            let generated = Spi::get_one_with_args::<String>(
                "SELECT generate($1, 'smollm2', $2, system => $3)",
                &[content("user").unwrap().into(), max_tokens.into(), content("system").into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(generated, expected, "{}", prompt["name"]);
            let streamed = Spi::get_one_with_args::<String>(
                "SELECT string_agg(piece, '') FROM (SELECT generate_stream($1, 'smollm2', $2, system => $3) AS piece) pieces",
                &[content("user").unwrap().into(), max_tokens.into(), content("system").into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(streamed, expected, "{} streamed", prompt["name"]);
            checked += 1;
        }
        assert_eq!(checked, 4);
    }
}
