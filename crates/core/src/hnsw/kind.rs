//! How an index compares vectors (its operator class), and the vector as it stores it.

use super::graph::Metric;
use crate::error::{Error, ErrorKind};
use crate::types::element::VectorElement;

/// What an index's operator class decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexKind {
    /// halfvec (f16) rather than vector (f32) elements.
    pub half: bool,
    pub metric: Metric,
    /// Cosine: vectors are stored normalized and compared by inner product.
    pub normalize: bool,
}

/// The vector as the index stores it: dimensions checked, normalized for cosine.
/// `None` for a zero vector under cosine, which has no direction and is not indexed.
pub fn prepare<E: VectorElement>(vector: &[E], dimensions: usize, kind: IndexKind) -> Result<Option<Vec<E>>, Error> {
    if vector.len() != dimensions {
        return Err(Error::new(ErrorKind::DataException, format!("expected {dimensions} dimensions, not {}", vector.len())));
    }
    if !kind.normalize {
        return Ok(Some(vector.to_vec()));
    }
    if crate::types::ops::norm(vector) == 0.0 {
        return Ok(None);
    }
    crate::types::ops::l2_normalize(vector).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COSINE: IndexKind = IndexKind { half: false, metric: Metric::InnerProduct, normalize: true };
    const L2: IndexKind = IndexKind { half: false, metric: Metric::L2, normalize: false };

    #[test]
    fn prepare_checks_dimensions_and_normalizes_for_cosine() {
        assert_eq!(prepare(&[3.0f32, 4.0], 2, L2).unwrap(), Some(vec![3.0, 4.0]));
        let unit = prepare(&[3.0f32, 4.0], 2, COSINE).unwrap().unwrap();
        assert!((unit[0] - 0.6).abs() < 1e-6 && (unit[1] - 0.8).abs() < 1e-6);
        assert_eq!(prepare(&[0.0f32, 0.0], 2, COSINE).unwrap(), None);
        assert_eq!(prepare(&[0.0f32, 0.0], 2, L2).unwrap(), Some(vec![0.0, 0.0]));
        let error = prepare(&[1.0f32], 2, L2).unwrap_err();
        assert_eq!((error.kind, error.message.as_str()), (ErrorKind::DataException, "expected 2 dimensions, not 1"));
    }
}
