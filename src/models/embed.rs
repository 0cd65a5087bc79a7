//! SQL functions over embedding models: `embed(text)`, `embed(text[])` and `chunk()`
//! (which needs only the model's tokenizer, never its session), and `clean_text()`, which
//! prepares texts for them.
//! The work happens in `models`; this is the glue. Cancel requests and statement_timeout
//! stop the work between windows of text, sub-batches and chunks and inside model calls.

use crate::catalog::{embedding_model, with_embedder, with_embedding_tokenizer, ModelRow};
use crate::models::generate::model_ref;
use crate::pg::error::{raise_model_error, OrRaise, Raise};
use crate::service;
use crate::service::client::Call;
use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::service::{Reply, Request};
use crate::pg::interrupts::cancel_pending;
use ragtune_core::models;
use crate::types::datum::{VecValue, VectorArray};
use pgrx::prelude::*;

/// Embeddings of `texts` by `model` (whose row the caller may read): in the model
/// service when the server has it, batched with other sessions' texts, else on the
/// backend's own session (also for a model registered by this transaction, which the
/// service cannot see yet).
pub fn embed_with(model: &ModelRow, texts: &[&str]) -> Vec<Vec<f32>> {
    if !service::available() || model.written_here {
        return raise_model_error(with_embedder(model, |embedder| match texts {
            [text] => embedder.embed(text, &cancel_pending).map(|v| vec![v]),
            _ => embedder.embed_batch(texts, &cancel_pending),
        }));
    }
    let request = Request::Embed { model: model_ref(model), texts: texts.iter().map(|t| t.to_string()).collect() };
    let mut call = raise_model_error(Call::start(&request));
    match raise_model_error(call.receive()) {
        Reply::Embeddings(vectors) if vectors.len() == texts.len() => vectors,
        Reply::Failed(error) => raise_model_error(Err(error)),
        other => Error::new(ErrorKind::ExternalRoutineException, format!("unexpected reply from the model service: {other:?}")).raise(),
    }
}

#[pg_extern(sql = false)]
fn embed(input: Option<&str>, model: Option<&str>) -> Option<VecValue<f32>> {
    let input = input?;
    let model = embedding_model(model).or_raise();
    embed_with(&model, &[input]).pop().map(VecValue)
}

/// The non-NULL texts in sub-batches of bounded size; NULL texts give NULL embeddings.
#[pg_extern(sql = false)]
fn embed_texts(inputs: Option<Array<&str>>, model: Option<&str>) -> Option<VectorArray> {
    let array = inputs?;
    let inputs: Vec<Option<&str>> = array.iter().collect();
    let texts: Vec<&str> = inputs.iter().flatten().copied().collect();
    let model = embedding_model(model).or_raise();
    let mut vectors = if texts.is_empty() { Vec::new() } else { embed_with(&model, &texts) }.into_iter();
    Some(VectorArray(inputs.iter().map(|input| input.and_then(|_| vectors.next())).collect()))
}

#[pg_extern(sql = false)]
fn chunk(input: Option<&str>, max_tokens: i32, overlap: i32, model: Option<&str>) -> SetOfIterator<'static, String> {
    let Some(input) = input else {
        return SetOfIterator::new(Vec::new());
    };
    let model = embedding_model(model).or_raise();
    let pieces = raise_model_error(with_embedding_tokenizer(&model, |tokenizer| {
        models::chunk(input, max_tokens.max(0) as usize, overlap.max(0) as usize, tokenizer, &cancel_pending)
            .map(|pieces| pieces.into_iter().map(str::to_string).collect::<Vec<_>>())
    }));
    SetOfIterator::new(pieces)
}

#[pg_extern(sql = false)]
fn clean_text(input: &str, format: &str) -> String {
    let format = models::clean::Format::parse(format).or_raise();
    raise_model_error(models::clean::clean(input, format, &cancel_pending))
}

/// In-server: the SQL path (catalog, large object, cached session) gives the Python
/// onnxruntime reference's embeddings (tests/fixtures/minilm_embeddings.json).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use ragtune_core::models::test_files::{fixture, minilm_dir};
    use pgrx::prelude::*;

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[pg_test]
    fn embed_matches_the_python_reference() {
        let dir = minilm_dir().display().to_string();
        Spi::run_with_args("SELECT register_model_from_files('all-MiniLM-L6-v2', $1)", &[dir.as_str().into()]).unwrap();
        let sentences = fixture().sentences;
        assert!(sentences.len() >= 20);
        let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
        for sentence in &sentences {
            let one = Spi::get_one_with_args::<Vec<f32>>("SELECT embed($1)::real[]", &[sentence.text.as_str().into()])
                .unwrap()
                .unwrap();
            let similarity = cosine(&one, &sentence.embedding);
            assert!(similarity >= 0.9999, "{:?}: cosine {similarity}", sentence.text);
        }
        // The batched form, one model call for all (padded to the longest), agrees too.
        let batch = Spi::get_one_with_args::<Vec<String>>("SELECT embed($1)::text[]", &[texts.clone().into()]).unwrap().unwrap();
        for (text, sentence) in batch.iter().zip(&sentences) {
            let values: Vec<f32> = text.trim_matches(|c| c == '[' || c == ']').split(',').map(|v| v.parse().unwrap()).collect();
            let similarity = cosine(&values, &sentence.embedding);
            assert!(similarity >= 0.9999, "{:?} in a batch: cosine {similarity}", sentence.text);
        }
    }
}
