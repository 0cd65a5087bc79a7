//! Text embeddings: tokenize a batch, run the ONNX graph once, pool the token states
//! into one vector per text.
//!
//! The graph must take some of `input_ids`, `attention_mask` and `token_type_ids` (int64
//! `[batch, tokens]`; `input_ids` required), named as Hugging Face exports name them, and
//! produce token states `[batch, tokens, dimensions]`: the output `last_hidden_state`,
//! or else its first output.

use std::borrow::Cow;

use ndarray::{ArrayView2, Axis, Ix3};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::cancel::{self, run_cancellable, CancelCheck};
use super::config::{EmbeddingConfig, ModelConfig, Pooling};
use super::runtime::Runtime;
use super::tokenizer::{Batch, Tokenizer};
use crate::error::{Error, ErrorKind};
use crate::types::ops::l2_normalize;

pub struct Embedder {
    session: Session,
    tokenizer: Tokenizer,
    config: EmbeddingConfig,
    /// The graph's inputs, in its own order, and what feeds each.
    inputs: Vec<(String, Input)>,
    output: String,
}

/// Batches of more tokens than this (padding included) release the arena's working
/// memory after the call. A backend lives long and would otherwise keep its largest
/// batch's (about 1 GB after 32 texts of 256 tokens); single texts keep theirs, which is
/// small and saves reallocating it on every call.
const SHRINK_ABOVE_TOKENS: usize = 2048;

/// Tokens (at `max_tokens` per text) of one model call: a batch of any size runs in
/// sub-batches of this many, so its working memory does not grow with the batch.
const CALL_TOKENS: usize = 8192;

/// The most bytes the embeddings of one batch may take as a PostgreSQL array of vectors
/// (MaxAllocSize, 1 GB): a larger batch is an error before any work is done.
const MAX_RESULT_BYTES: usize = (1 << 30) - 1;

fn run_failed(e: ort::Error) -> Error {
    Error::new(ErrorKind::ExternalRoutineException, "the embedding model failed").with_detail(e.to_string())
}

#[derive(Clone, Copy)]
enum Input {
    Ids,
    Mask,
    TypeIds,
}

impl Input {
    fn column(self, batch: &Batch) -> ArrayView2<'_, i64> {
        match self {
            Input::Ids => batch.input_ids.view(),
            Input::Mask => batch.attention_mask.view(),
            Input::TypeIds => batch.token_type_ids.view(),
        }
    }
}

fn unusable(message: String) -> Error {
    Error::new(ErrorKind::DataException, message)
}

impl Embedder {
    /// Builds an embedder from a stored model: its ONNX bytes, its tokenizer.json and its
    /// config, which must be an embedding config. `intra_threads` as in
    /// [`Runtime::session`].
    pub fn new(
        runtime: &Runtime,
        model: &[u8],
        tokenizer: &[u8],
        config: &ModelConfig,
        intra_threads: usize,
    ) -> Result<Self, Error> {
        config.validate()?;
        let config = config.embedding()?.clone();
        let tokenizer = Tokenizer::from_bytes(tokenizer, config.max_tokens)?;
        let session = runtime.session(model, intra_threads)?;

        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            let input = match outlet.name() {
                "input_ids" => Input::Ids,
                "attention_mask" => Input::Mask,
                "token_type_ids" => Input::TypeIds,
                other => {
                    return Err(unusable(format!(
                        "model input \"{other}\" is not one of input_ids, attention_mask, token_type_ids"
                    )))
                }
            };
            if outlet.dtype().tensor_type() != Some(TensorElementType::Int64) {
                return Err(unusable(format!(
                    "model input \"{}\" is {}, not an int64 tensor",
                    outlet.name(),
                    outlet.dtype()
                )));
            }
            inputs.push((outlet.name().to_string(), input));
        }
        if !inputs.iter().any(|(_, input)| matches!(input, Input::Ids)) {
            return Err(unusable("model has no input_ids input".into()));
        }

        let outputs = session.outputs();
        let output = outputs
            .iter()
            .find(|o| o.name() == "last_hidden_state")
            .or(outputs.first())
            .ok_or_else(|| unusable("model has no outputs".into()))?;
        let shape = match output.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 3 => shape,
            other => {
                return Err(unusable(format!(
                    "model output \"{}\" is {other}, not float32 token states [batch, tokens, dimensions]",
                    output.name()
                )))
            }
        };
        // A symbolic dimension reads as -1 and is checked when the model runs.
        if shape[2] >= 0 {
            check_dimensions(shape[2] as usize, &config)?;
        }
        let output = output.name().to_string();
        Ok(Self { session, tokenizer, config, inputs, output })
    }

    pub fn config(&self) -> &EmbeddingConfig {
        &self.config
    }

    /// The model's tokenizer, for chunking texts the way the model sees them.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// One embedding per text, in order, from model calls of at most [`CALL_TOKENS`]
    /// tokens. Texts longer than `max_tokens` are embedded from their first tokens.
    /// `cancel` is asked between texts and during each model call.
    pub fn embed_batch(&mut self, texts: &[&str], cancel: CancelCheck<'_>) -> Result<Vec<Vec<f32>>, Error> {
        let bytes = texts.len().saturating_mul(8 + 4 * self.config.dimensions);
        if bytes > MAX_RESULT_BYTES {
            return Err(Error::new(
                ErrorKind::ProgramLimitExceeded,
                format!("the embeddings of {} texts would take more than 1 GB", texts.len()),
            )
            .with_hint("Embed fewer texts at a time."));
        }
        let mut embeddings = Vec::new();
        embeddings.try_reserve_exact(texts.len()).map_err(|_| {
            Error::new(ErrorKind::ProgramLimitExceeded, format!("out of memory for the embeddings of {} texts", texts.len()))
        })?;
        let per_call = (CALL_TOKENS / self.tokenizer.max_tokens()).max(1);
        for call in texts.chunks(per_call) {
            embeddings.extend(self.embed_call(call, cancel)?);
        }
        Ok(embeddings)
    }

    fn embed_call(&mut self, texts: &[&str], cancel: CancelCheck<'_>) -> Result<Vec<Vec<f32>>, Error> {
        let batch = self.tokenizer.encode_batch(texts, cancel)?;
        cancel::check(cancel)?;
        let inputs = self
            .inputs
            .iter()
            .map(|(name, input)| {
                Ok((Cow::from(name.as_str()), SessionInputValue::from(TensorRef::from_array_view(input.column(&batch))?)))
            })
            .collect::<Result<Vec<_>, ort::Error>>()
            .map_err(run_failed)?;
        let (rows, columns) = batch.input_ids.dim();
        let shrink = rows * columns > SHRINK_ABOVE_TOKENS;
        let outputs = run_cancellable(
            &mut self.session,
            inputs,
            |options| if shrink { options.set("memory.enable_memory_arena_shrinkage", "cpu:0") } else { Ok(()) },
            run_failed,
            cancel,
        )?;
        let output = outputs.get(self.output.as_str()).ok_or_else(|| unusable(format!("no output {}", self.output)))?;
        let states = output.try_extract_array::<f32>().map_err(run_failed)?;

        let states = match states.into_dimensionality::<Ix3>() {
            Ok(states) if states.dim().0 == rows && states.dim().1 == columns => states,
            _ => return Err(unusable(format!("model output has shape {:?} for {rows} texts of {columns} tokens", output.shape()))),
        };
        check_dimensions(states.dim().2, &self.config)?;

        let mut embeddings = Vec::with_capacity(rows);
        for (text_states, mask) in states.outer_iter().zip(batch.attention_mask.outer_iter()) {
            let pooled = match self.config.pooling {
                Pooling::Cls => text_states.index_axis(Axis(0), 0).to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; self.config.dimensions];
                    let mut count = 0usize;
                    for (token, _) in text_states.outer_iter().zip(mask).filter(|(_, &m)| m != 0) {
                        sum.iter_mut().zip(token).for_each(|(s, x)| *s += x);
                        count += 1;
                    }
                    // Without special tokens an empty text has no tokens: it pools to zeros.
                    sum.iter().map(|s| s / count.max(1) as f32).collect()
                }
            };
            check_finite(&pooled)?;
            embeddings.push(if self.config.normalize { l2_normalize(&pooled)? } else { pooled });
        }
        Ok(embeddings)
    }

    /// The embedding of one text.
    pub fn embed(&mut self, text: &str, cancel: CancelCheck<'_>) -> Result<Vec<f32>, Error> {
        Ok(self.embed_batch(&[text], cancel)?.remove(0))
    }
}

/// A model whose states hold NaN or infinity (a broken or adversarial graph, or an
/// overflow) must not hand them on as an embedding: they poison every distance.
fn check_finite(embedding: &[f32]) -> Result<(), Error> {
    if embedding.iter().all(|x| x.is_finite()) {
        return Ok(());
    }
    Err(Error::new(ErrorKind::DataException, "the embedding model returned NaN or infinity"))
}

fn check_dimensions(produced: usize, config: &EmbeddingConfig) -> Result<(), Error> {
    if produced == config.dimensions {
        return Ok(());
    }
    Err(unusable(format!(
        "model produces {produced}-dimensional embeddings, but its config says {}",
        config.dimensions
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_files;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let (dot, aa, bb) = crate::kernels::cosine_terms(a, b);
        dot / (aa * bb).sqrt()
    }

    #[test]
    fn matches_python_onnxruntime_on_the_fixtures() {
        let fixture = test_files::fixture();
        let mut embedder = test_files::minilm_embedder();
        for sentence in &fixture.sentences {
            let embedding = embedder.embed(&sentence.text, &test_files::never).unwrap();
            assert_eq!(embedding.len(), 384);
            let similarity = cosine(&embedding, &sentence.embedding);
            assert!(similarity >= 0.9999, "cosine {similarity} for {:?}", sentence.text);
            let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
    }

    /// ENVIRONMENT.md's "known-good" 0.641 / 0.084 for these pairs do not reproduce: Python
    /// onnxruntime on these files gives 0.654 / 0.053, and the fp32 weights of the same
    /// model (run in plain numpy) give 0.655 / 0.055.
    #[test]
    fn similar_sentences_are_close() {
        let mut embedder = test_files::minilm_embedder();
        let [cat, kitten, stocks] = embedder
            .embed_batch(&[
                "A cat sits on the mat.",
                "A kitten is resting on a rug.",
                "Stock markets fell sharply today.",
            ], &test_files::never)
            .unwrap()
            .try_into()
            .unwrap();
        let (kitten, stocks) = (cosine(&cat, &kitten), cosine(&cat, &stocks));
        assert!((kitten - 0.654).abs() <= 0.005, "cos(cat, kitten) = {kitten}");
        assert!((stocks - 0.053).abs() <= 0.005, "cos(cat, stocks) = {stocks}");
    }

    #[test]
    fn a_batch_equals_one_text_at_a_time() {
        let fixture = test_files::fixture();
        let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
        let mut embedder = test_files::minilm_embedder();
        let batched = embedder.embed_batch(&texts, &test_files::never).unwrap();
        assert_eq!(batched.len(), texts.len());
        for (text, from_batch) in texts.iter().zip(&batched) {
            let alone = embedder.embed(text, &test_files::never).unwrap();
            let similarity = cosine(&alone, from_batch);
            assert!(similarity >= 0.99999, "cosine {similarity} for {text:?}");
            let largest = alone.iter().zip(from_batch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(largest < 1e-4, "largest difference {largest} for {text:?}");
        }
        assert!(embedder.embed_batch(&[], &test_files::never).unwrap().is_empty());
    }

    #[test]
    fn truncation_keeps_the_first_tokens() {
        let mut embedder = test_files::minilm_embedder();
        let head = "Databases store rows in pages. ".repeat(60);
        let [long, longer] = embedder
            .embed_batch(&[&head, &format!("{head} Completely different words about cooking pasta.")], &test_files::never)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(long, longer);
    }

    /// A text of megabytes is read only as far as its first tokens, and embeds as the
    /// reference embeds its first 256 tokens.
    #[test]
    fn a_huge_text_embeds_from_its_start() {
        let fixture = test_files::fixture();
        let long = fixture.sentences.iter().find(|s| s.input_ids.len() == 256).expect("a truncated sentence");
        let huge = format!("{} {}", long.text, "More words that come after the limit. ".repeat(100_000));
        assert!(huge.len() > 3_000_000);
        let mut embedder = test_files::minilm_embedder();
        let embedding = embedder.embed(&huge, &test_files::never).unwrap();
        assert!(cosine(&embedding, &long.embedding) >= 0.9999);
    }

    /// A batch larger than one model call runs in several and gives what single texts
    /// give; a cancel request stops it, and the embedder works afterwards.
    #[test]
    fn sub_batches_and_cancel() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let fixture = test_files::fixture();
        let texts: Vec<&str> = fixture.sentences.iter().cycle().take(70).map(|s| s.text.as_str()).collect();
        let mut embedder = test_files::minilm_embedder();
        assert!(texts.len() > CALL_TOKENS / embedder.tokenizer().max_tokens() * 2);
        let batched = embedder.embed_batch(&texts, &test_files::never).unwrap();
        assert_eq!(batched.len(), texts.len());
        for (text, from_batch) in texts.iter().zip(&batched) {
            assert!(cosine(&embedder.embed(text, &test_files::never).unwrap(), from_batch) >= 0.99999, "{text:?}");
        }
        // Stopped inside the second call's work.
        let asked = AtomicUsize::new(0);
        let later = || asked.fetch_add(1, Ordering::Relaxed) > 40;
        let error = embedder.embed_batch(&texts, &later).err().unwrap();
        assert_eq!((error.kind, error.message.as_str()), (ErrorKind::QueryCanceled, "the model call was cancelled"));
        assert_eq!(embedder.embed_batch(&texts, &|| true).err().unwrap().kind, ErrorKind::QueryCanceled);
        assert_eq!(embedder.embed(texts[0], &test_files::never).unwrap(), batched[0]);
    }

    #[test]
    fn batches_beyond_the_result_limit_are_refused() {
        let mut embedder = test_files::minilm_embedder();
        let texts = vec!["a"; MAX_RESULT_BYTES / (8 + 4 * 384) + 1];
        let error = embedder.embed_batch(&texts, &test_files::never).err().unwrap();
        assert_eq!(error.kind, ErrorKind::ProgramLimitExceeded);
        assert_eq!(error.message, format!("the embeddings of {} texts would take more than 1 GB", texts.len()));
    }

    /// Graphs whose states are NaN or infinite (tests/fixtures/*_embedder.onnx, made by
    /// scripts/make_nonfinite_models.py) give an error, not the values.
    #[test]
    fn non_finite_outputs_are_errors() {
        let tokenizer = test_files::minilm("tokenizer.json");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
        for model in ["nan_embedder.onnx", "inf_embedder.onnx"] {
            let bytes = std::fs::read(format!("{dir}/{model}")).unwrap();
            for normalize in [true, false] {
                let json = format!(r#"{{"kind": "embedding", "normalize": {normalize}, "max_tokens": 256, "dimensions": 1}}"#);
                let config = ModelConfig::from_json(&json).unwrap();
                let mut embedder = Embedder::new(test_files::runtime(), &bytes, &tokenizer, &config, 1).unwrap();
                let error = embedder.embed_batch(&["a cat", "sits"], &test_files::never).err().unwrap();
                assert_eq!((error.kind, error.message.as_str()), (ErrorKind::DataException, "the embedding model returned NaN or infinity"));
            }
        }
    }

    #[test]
    fn pooling_and_normalization_follow_the_config() {
        let runtime = test_files::runtime();
        let model = test_files::minilm("model.onnx");
        let tokenizer = test_files::minilm("tokenizer.json");
        let with = |json: &str| {
            let config = ModelConfig::from_json(json).unwrap();
            Embedder::new(runtime, &model, &tokenizer, &config, 1).unwrap().embed("A cat sits on the mat.", &test_files::never).unwrap()
        };
        let mean = with(r#"{"kind": "embedding", "max_tokens": 256, "dimensions": 384}"#);
        let raw = with(r#"{"kind": "embedding", "normalize": false, "max_tokens": 256, "dimensions": 384}"#);
        let cls = with(r#"{"kind": "embedding", "pooling": "cls", "max_tokens": 256, "dimensions": 384}"#);
        let raw_norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((raw_norm - 1.0).abs() > 0.01, "unnormalized norm {raw_norm}");
        assert!(cosine(&raw, &mean) > 0.99999);
        assert!(cosine(&cls, &mean) < 0.99);
    }

    #[test]
    fn unusable_models_are_errors() {
        let runtime = test_files::runtime();
        let model = test_files::minilm("model.onnx");
        let tokenizer = test_files::minilm("tokenizer.json");
        let config = test_files::minilm_config();
        let error = |model: &[u8], tokenizer: &[u8], config: &ModelConfig| {
            Embedder::new(runtime, model, tokenizer, config, 1).err().unwrap()
        };

        let corrupt = error(b"\x08\x07garbage", &tokenizer, &config);
        assert_eq!(
            (corrupt.kind, corrupt.message.as_str()),
            (ErrorKind::DataException, "could not load the ONNX model")
        );
        let truncated = error(&model[..model.len() / 2], &tokenizer, &config);
        assert_eq!(truncated.message, "could not load the ONNX model");

        let broken = error(&model, br#"{"model": "#, &config);
        assert_eq!(broken.message, "could not load the tokenizer");

        let generator = ModelConfig::from_json(
            r#"{"kind": "generator", "chat_format": {"message": "{content}", "generation_prompt": ""}, "stop_token_ids": [2], "context_window": 2048}"#,
        )
        .unwrap();
        let wrong_kind = error(&model, &tokenizer, &generator);
        assert_eq!(wrong_kind.message, "model is a generator model, not an embedding model");

        let wrong_size =
            ModelConfig::from_json(r#"{"kind": "embedding", "max_tokens": 256, "dimensions": 768}"#).unwrap();
        assert_eq!(
            error(&model, &tokenizer, &wrong_size).message,
            "model produces 384-dimensional embeddings, but its config says 768"
        );
    }
}
