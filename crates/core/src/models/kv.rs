//! The key/value cache's tensors, `[rows, kv_heads, positions, head_dim]` per layer, as
//! plain values: what the batch copies between sequences and a checked draft cuts back.

use ort::value::{DynValue, Tensor};

use super::generate::Generator;
use crate::error::{Error, ErrorKind};

/// The first `tokens` positions of a cache layer `[kv_heads, stored, head_dim]`: one copy,
/// reserved fallibly.
pub(crate) fn first_positions(layer: &[f32], kv_heads: usize, stored: usize, head_dim: usize, tokens: usize) -> Result<Vec<f32>, Error> {
    let mut kept = Vec::new();
    kept.try_reserve_exact(kv_heads * tokens * head_dim)
        .map_err(|_| Error::new(ErrorKind::OutOfMemory, "out of memory for the keys and values of a sequence"))?;
    for h in 0..kv_heads {
        kept.extend_from_slice(&layer[h * stored * head_dim..(h * stored + tokens) * head_dim]);
    }
    Ok(kept)
}

/// A cache tensor's width and values, checked to be `[rows, kv_heads, width, head_dim]`.
pub(crate) fn cache_values<'a>(value: &'a DynValue, rows: usize, generator: &Generator) -> Result<(usize, &'a [f32]), Error> {
    let invalid = |message: String| Error::new(ErrorKind::DataException, message);
    let (shape, values) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| invalid(format!("the model's cache output is not float32: {e}")))?;
    let ok = shape.len() == 4
        && shape[0] as usize == rows
        && shape[1] as usize == generator.kv_heads
        && shape[3] as usize == generator.head_dim;
    if !ok {
        return Err(invalid(format!("the model's cache output has shape {shape:?}")));
    }
    Ok((shape[2] as usize, values))
}

pub(crate) fn tensor(shape: [usize; 4], values: Vec<f32>) -> Result<DynValue, Error> {
    Tensor::from_array((shape, values))
        .map(|t| t.into_dyn())
        .map_err(|e| Error::new(ErrorKind::OutOfMemory, "could not make a cache tensor").with_detail(e.to_string()))
}

/// One sequence's cache (`rows` 1) cut back to its first `keep` positions (a checked
/// draft's rejected tokens leave each step).
pub(crate) fn truncated(cache: &[DynValue], keep: usize, generator: &Generator) -> Result<Vec<DynValue>, Error> {
    let (kv, head) = (generator.kv_heads, generator.head_dim);
    cache
        .iter()
        .map(|value| {
            let (stored, values) = cache_values(value, 1, generator)?;
            let keep = keep.min(stored);
            tensor([1, kv, keep, head], first_positions(values, kv, stored, head, keep)?)
        })
        .collect()
}
