//! Checks and arithmetic shared by `vector` and `halfvec`, free of Postgres so plain
//! `cargo test` covers them. Messages and SQLSTATEs follow pgvector.

use super::element::{VectorElement, MAX_DIM};
use super::text;
use crate::error::{Error, ErrorKind};
use crate::kernels;
use std::cmp::Ordering;

pub fn check_dim<E: VectorElement>(dim: usize) -> Result<(), Error> {
    check_dim_of(E::TYPE_NAME, dim)
}

/// `check_dim` for code that knows the type only by name (the text parser).
pub fn check_dim_of(type_name: &str, dim: usize) -> Result<(), Error> {
    if dim < 1 {
        return Err(Error::new(ErrorKind::DataException, format!("{type_name} must have at least 1 dimension")));
    }
    if dim > MAX_DIM {
        return Err(Error::new(
            ErrorKind::ProgramLimitExceeded,
            format!("{type_name} cannot have more than {MAX_DIM} dimensions"),
        ));
    }
    Ok(())
}

/// Checks the header of a stored value against its size, so that a value corrupted on disk
/// (or written by a build that lacked the dimension checks) is an ERROR, not a wild read.
pub fn check_stored<E: VectorElement>(dim: i16, size: usize) -> Result<usize, Error> {
    let dim = usize::try_from(dim).unwrap_or(0);
    if !(1..=MAX_DIM).contains(&dim) || size != 8 + dim * E::SIZE {
        return Err(Error::new(
            ErrorKind::DataException,
            format!("invalid {} value: {dim} dimensions in {size} bytes", E::TYPE_NAME),
        ));
    }
    Ok(dim)
}

/// Checks a value against the column's `typmod` (-1: no declared dimensions).
pub fn check_expected_dim(typmod: i32, dim: usize) -> Result<(), Error> {
    if typmod != -1 && typmod as i64 != dim as i64 {
        return Err(Error::new(ErrorKind::DataException, format!("expected {typmod} dimensions, not {dim}")));
    }
    Ok(())
}

pub fn check_same_dims<E: VectorElement>(a: &[E], b: &[E]) -> Result<(), Error> {
    if a.len() != b.len() {
        return Err(Error::new(
            ErrorKind::DataException,
            format!("different {} dimensions {} and {}", E::TYPE_NAME, a.len(), b.len()),
        ));
    }
    Ok(())
}

/// Checks the modifier list of `vector(n)` / `halfvec(n)`, already read as integers.
pub fn typmod_in<E: VectorElement>(modifiers: &[i32]) -> Result<i32, Error> {
    let &[dim] = modifiers else {
        return Err(Error::new(ErrorKind::InvalidParameterValue, "invalid type modifier"));
    };
    if dim < 1 {
        return Err(Error::new(
            ErrorKind::InvalidParameterValue,
            format!("dimensions for type {} must be at least 1", E::TYPE_NAME),
        ));
    }
    if dim as usize > MAX_DIM {
        return Err(Error::new(
            ErrorKind::InvalidParameterValue,
            format!("dimensions for type {} cannot exceed {MAX_DIM}", E::TYPE_NAME),
        ));
    }
    Ok(dim)
}

/// Converts one f32 into an element, rejecting NaN, infinity and values the element
/// type cannot hold.
pub fn to_element<E: VectorElement>(value: f32) -> Result<E, Error> {
    if value.is_nan() {
        return Err(Error::new(ErrorKind::DataException, format!("NaN not allowed in {}", E::TYPE_NAME)));
    }
    if value.is_infinite() {
        return Err(Error::new(ErrorKind::DataException, format!("infinite value not allowed in {}", E::TYPE_NAME)));
    }
    let element = E::from_f32(value);
    if element.to_f32().is_infinite() {
        let mut shown = String::new();
        text::push_float(&mut shown, value);
        return Err(Error::new(
            ErrorKind::NumericValueOutOfRange,
            format!("\"{shown}\" is out of range for type {}", E::TYPE_NAME),
        ));
    }
    Ok(element)
}

/// Narrows a finite f64 to f32, rejecting values beyond the f32 range.
pub fn narrow_f64<E: VectorElement>(value: f64) -> Result<f32, Error> {
    let narrowed = value as f32;
    if narrowed.is_infinite() && value.is_finite() {
        return Err(Error::new(
            ErrorKind::NumericValueOutOfRange,
            format!("\"{value:e}\" is out of range for type {}", E::TYPE_NAME),
        ));
    }
    Ok(narrowed)
}

/// Builds a checked vector from f32 values (text input, arrays, casts between types).
pub fn from_f32s<E: VectorElement>(values: impl ExactSizeIterator<Item = f32>, typmod: i32) -> Result<Vec<E>, Error> {
    let dim = values.len();
    check_dim::<E>(dim)?;
    check_expected_dim(typmod, dim)?;
    values.map(to_element).collect()
}

/// Rejects elements that binary input must never smuggle in.
pub fn check_elements<E: VectorElement>(elements: &[E]) -> Result<(), Error> {
    elements.iter().try_for_each(|e| to_element::<E>(e.to_f32()).map(drop))
}

/// Binary wire format (pgvector's): int16 dim, int16 unused, big-endian elements.
pub fn encode_binary<E: VectorElement>(elements: &[E]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + elements.len() * E::SIZE);
    out.extend_from_slice(&(elements.len() as i16).to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    for &e in elements {
        e.write_be(&mut out);
    }
    out
}

/// Reads the 4-byte binary header, returning how many elements follow.
pub fn decode_binary_header<E: VectorElement>(header: [u8; 4], typmod: i32) -> Result<usize, Error> {
    let dim = i16::from_be_bytes([header[0], header[1]]);
    let unused = i16::from_be_bytes([header[2], header[3]]);
    let dim = usize::try_from(dim).unwrap_or(0);
    check_dim::<E>(dim)?;
    check_expected_dim(typmod, dim)?;
    if unused != 0 {
        return Err(Error::new(ErrorKind::DataException, format!("expected unused to be 0, not {unused}")));
    }
    Ok(dim)
}

/// Decodes the big-endian elements that follow the binary header.
pub fn decode_binary_elements<E: VectorElement>(bytes: &[u8]) -> Result<Vec<E>, Error> {
    let elements: Vec<E> = bytes.chunks_exact(E::SIZE).map(E::read_be).collect();
    check_elements(&elements)?;
    Ok(elements)
}

fn overflow() -> Error {
    Error::new(ErrorKind::NumericValueOutOfRange, "value out of range: overflow")
}

fn underflow() -> Error {
    Error::new(ErrorKind::NumericValueOutOfRange, "value out of range: underflow")
}

#[derive(Clone, Copy, Debug)]
pub enum Arithmetic {
    Add,
    Subtract,
    Multiply,
}

/// VectorElement-wise arithmetic; overflow (and underflow for products) is an error, as in Postgres.
pub fn elementwise<E: VectorElement>(a: &[E], b: &[E], op: Arithmetic) -> Result<Vec<E>, Error> {
    check_same_dims(a, b)?;
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let (xf, yf) = (x.to_f32(), y.to_f32());
            let result = E::from_f32(match op {
                Arithmetic::Add => xf + yf,
                Arithmetic::Subtract => xf - yf,
                Arithmetic::Multiply => xf * yf,
            });
            if result.to_f32().is_infinite() {
                return Err(overflow());
            }
            if matches!(op, Arithmetic::Multiply) && result.is_zero() && !(x.is_zero() || y.is_zero()) {
                return Err(underflow());
            }
            Ok(result)
        })
        .collect()
}

pub fn concat<E: VectorElement>(a: &[E], b: &[E]) -> Result<Vec<E>, Error> {
    check_dim::<E>(a.len() + b.len())?;
    Ok([a, b].concat())
}

/// `subvector(v, start, count)`: 1-based like `substring`, clipped to the vector.
pub fn subvector<E: VectorElement>(v: &[E], start: i32, count: i32) -> Result<Vec<E>, Error> {
    if count < 1 {
        return Err(Error::new(ErrorKind::DataException, format!("{} must have at least 1 dimension", E::TYPE_NAME)));
    }
    let end = (i64::from(start) + i64::from(count)).min(v.len() as i64 + 1);
    let first = i64::from(start).max(1);
    if end <= first {
        return Err(Error::new(ErrorKind::DataException, format!("{} must have at least 1 dimension", E::TYPE_NAME)));
    }
    Ok(v[(first - 1) as usize..(end - 1) as usize].to_vec())
}

/// Euclidean norm, accumulated in f64 as pgvector does.
pub fn norm<E: VectorElement>(v: &[E]) -> f64 {
    v.iter().map(|&x| f64::from(x.to_f32()).powi(2)).sum::<f64>().sqrt()
}

/// Scales to unit length; a zero vector stays zero.
pub fn l2_normalize<E: VectorElement>(v: &[E]) -> Result<Vec<E>, Error> {
    let norm = norm(v);
    if norm == 0.0 {
        return Ok(v.to_vec());
    }
    v.iter()
        .map(|&x| {
            let scaled = E::from_f32((f64::from(x.to_f32()) / norm) as f32);
            if scaled.to_f32().is_infinite() {
                Err(overflow())
            } else {
                Ok(scaled)
            }
        })
        .collect()
}

/// One bit per element, set when the element is positive; most significant bit first.
pub fn binary_quantize<E: VectorElement>(v: &[E]) -> Vec<u8> {
    let mut bytes = vec![0u8; v.len().div_ceil(8)];
    for (i, x) in v.iter().enumerate() {
        if x.to_f32() > 0.0 {
            bytes[i / 8] |= 0x80 >> (i % 8);
        }
    }
    bytes
}

/// Total order for btree: element by element, then shorter first.
pub fn compare<E: VectorElement>(a: &[E], b: &[E]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.to_f32().partial_cmp(&y.to_f32()) {
            Some(Ordering::Equal) | None => continue,
            Some(order) => return order,
        }
    }
    a.len().cmp(&b.len())
}

pub fn l2_distance<E: VectorElement>(a: &[E], b: &[E]) -> Result<f64, Error> {
    Ok(f64::from(l2_squared_distance(a, b)?).sqrt())
}

pub fn l2_squared_distance<E: VectorElement>(a: &[E], b: &[E]) -> Result<f32, Error> {
    check_same_dims(a, b)?;
    Ok(E::l2_squared(a, b))
}

pub fn inner_product<E: VectorElement>(a: &[E], b: &[E]) -> Result<f64, Error> {
    check_same_dims(a, b)?;
    Ok(f64::from(E::dot(a, b)))
}

pub fn cosine_distance<E: VectorElement>(a: &[E], b: &[E]) -> Result<f64, Error> {
    check_same_dims(a, b)?;
    let (dot, norm_a, norm_b) = E::cosine_terms(a, b);
    Ok(kernels::cosine_distance_from_terms(dot, norm_a, norm_b))
}

pub fn l1_distance<E: VectorElement>(a: &[E], b: &[E]) -> Result<f64, Error> {
    check_same_dims(a, b)?;
    Ok(f64::from(E::l1(a, b)))
}

/// What the SQL glue reads off a `double precision[]` aggregate state.
#[derive(Clone, Copy, Debug)]
pub struct StateArray<'a> {
    pub ndim: usize,
    pub has_nulls: bool,
    /// All elements, in storage order.
    pub values: &'a [f64],
}

/// Splits an `avg` state, `[count, sum_1, ..., sum_dim]` in float8 as pgvector keeps it,
/// into its count and sums. Anything else (not 1-D, NULLs, empty, a count that is not a
/// finite non-negative number) is rejected with pgvector's message, naming `caller`.
pub fn split_state<'a>(caller: &str, state: StateArray<'a>) -> Result<(f64, &'a [f64]), Error> {
    let malformed = || Error::new(ErrorKind::DataException, format!("{caller}: expected state array"));
    if state.ndim != 1 || state.has_nulls {
        return Err(malformed());
    }
    match state.values.split_first() {
        Some((&count, sums)) if count.is_finite() && count >= 0.0 => Ok((count, sums)),
        _ => Err(malformed()),
    }
}

fn checked_sum(a: f64, b: f64) -> Result<f64, Error> {
    let total = a + b;
    if total.is_infinite() {
        return Err(overflow());
    }
    Ok(total)
}

/// Transition step of `avg`. As in pgvector, a state without sums starts from `v` and one
/// with sums must match `v`'s dimensions.
pub fn accumulate<E: VectorElement>(caller: &str, state: StateArray, v: &[E]) -> Result<Vec<f64>, Error> {
    let (count, sums) = split_state(caller, state)?;
    let mut next = Vec::with_capacity(v.len() + 1);
    next.push(checked_sum(count, 1.0)?);
    if sums.is_empty() {
        next.extend(v.iter().map(|x| f64::from(x.to_f32())));
    } else {
        check_expected_dim(sums.len() as i32, v.len())?;
        for (&sum, x) in sums.iter().zip(v) {
            next.push(checked_sum(sum, f64::from(x.to_f32()))?);
        }
    }
    Ok(next)
}

/// Merges two partial `avg` states (parallel aggregation; shared by `vector` and `halfvec`).
pub fn combine_states(a: StateArray, b: StateArray) -> Result<Vec<f64>, Error> {
    const CALLER: &str = "vector_combine";
    let (count_a, sums_a) = split_state(CALLER, a)?;
    let (count_b, sums_b) = split_state(CALLER, b)?;
    // As in pgvector: the first state with sums sets the dimensions, the other must match.
    let dim = if sums_a.is_empty() { sums_b.len() } else { sums_a.len() };
    if dim > 0 {
        check_dim::<f32>(dim)?;
    }
    let mut merged = Vec::with_capacity(dim + 1);
    merged.push(checked_sum(count_a, count_b)?);
    match (sums_a.is_empty(), sums_b.is_empty()) {
        (true, _) => merged.extend_from_slice(sums_b),
        (_, true) => merged.extend_from_slice(sums_a),
        _ => {
            check_expected_dim(sums_a.len() as i32, sums_b.len())?;
            for (&x, &y) in sums_a.iter().zip(sums_b) {
                merged.push(checked_sum(x, y)?);
            }
        }
    }
    Ok(merged)
}

/// Final step of `avg`: `None` (SQL NULL) when no rows were seen.
pub fn average<E: VectorElement>(caller: &str, state: StateArray) -> Result<Option<Vec<E>>, Error> {
    let (count, sums) = split_state(caller, state)?;
    if count == 0.0 {
        return Ok(None);
    }
    check_dim::<E>(sums.len())?;
    sums.iter().map(|sum| to_element::<E>((sum / count) as f32)).collect::<Result<_, _>>().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn halves(values: &[f32]) -> Vec<f16> {
        values.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn dimension_checks() {
        assert_eq!(check_dim::<f32>(0).unwrap_err().message, "vector must have at least 1 dimension");
        assert_eq!(check_dim::<f16>(16_001).unwrap_err().kind, ErrorKind::ProgramLimitExceeded);
        assert!(check_dim::<f32>(16_000).is_ok());
        assert_eq!(check_expected_dim(3, 2).unwrap_err().message, "expected 3 dimensions, not 2");
        assert!(check_expected_dim(-1, 7).is_ok());
        assert_eq!(
            check_same_dims(&[1.0f32, 2.0], &[1.0]).unwrap_err().message,
            "different vector dimensions 2 and 1"
        );
    }

    #[test]
    fn typmods() {
        assert_eq!(typmod_in::<f32>(&[3]), Ok(3));
        assert_eq!(typmod_in::<f32>(&[0]).unwrap_err().message, "dimensions for type vector must be at least 1");
        assert_eq!(typmod_in::<f16>(&[16_001]).unwrap_err().message, "dimensions for type halfvec cannot exceed 16000");
        assert_eq!(typmod_in::<f32>(&[1, 2]).unwrap_err().message, "invalid type modifier");
    }

    #[test]
    fn element_checks() {
        assert_eq!(to_element::<f32>(f32::NAN).unwrap_err().message, "NaN not allowed in vector");
        assert_eq!(to_element::<f16>(f32::INFINITY).unwrap_err().message, "infinite value not allowed in halfvec");
        let e = to_element::<f16>(70000.0).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::NumericValueOutOfRange, "\"70000\" is out of range for type halfvec"));
        assert_eq!(to_element::<f16>(65504.0).unwrap().to_f32(), 65504.0);
    }

    #[test]
    fn narrowing_from_double() {
        assert_eq!(narrow_f64::<f32>(1.5), Ok(1.5));
        assert!(narrow_f64::<f32>(f64::NAN).unwrap().is_nan());
        let e = narrow_f64::<f32>(1e300).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::NumericValueOutOfRange, "\"1e300\" is out of range for type vector"));
    }

    #[test]
    fn arithmetic_overflows_are_errors() {
        let big = [3e38f32];
        assert_eq!(elementwise(&big, &big, Arithmetic::Add).unwrap_err().message, "value out of range: overflow");
        let tiny = [1e-30f32];
        assert_eq!(elementwise(&tiny, &tiny, Arithmetic::Multiply).unwrap_err().message, "value out of range: underflow");
        assert_eq!(elementwise(&[1.0f32, 2.0], &[3.0, 4.0], Arithmetic::Subtract).unwrap(), vec![-2.0, -2.0]);
        let h = halves(&[60000.0]);
        assert!(elementwise(&h, &h, Arithmetic::Add).is_err());
        assert!(elementwise(&halves(&[1e-4]), &halves(&[1e-4]), Arithmetic::Multiply).is_err());
    }

    #[test]
    fn subvector_clips_like_substring() {
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(subvector(&v, 1, 3).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(subvector(&v, 3, 2).unwrap(), vec![3.0, 4.0]);
        assert_eq!(subvector(&v, -1, 3).unwrap(), vec![1.0]);
        assert_eq!(subvector(&v, 4, 10).unwrap(), vec![4.0, 5.0]);
        assert!(subvector(&v, 6, 1).is_err());
        assert!(subvector(&v, 3, 0).is_err());
        assert!(subvector(&v, -3, 3).is_err());
        assert_eq!(subvector(&v, i32::MAX, i32::MAX).unwrap_err().kind, ErrorKind::DataException);
    }

    #[test]
    fn normalize_and_quantize() {
        assert_eq!(l2_normalize(&[3.0f32, 4.0]).unwrap(), vec![0.6, 0.8]);
        assert_eq!(l2_normalize(&[0.0f32, 0.0]).unwrap(), vec![0.0, 0.0]);
        assert_eq!(binary_quantize(&[1.0f32, -1.0, 0.0, 2.0, 0.5, -3.0, 1.0, 1.0, 7.0]), vec![0b1001_1011, 0b1000_0000]);
    }

    #[test]
    fn ordering_is_elementwise_then_length() {
        assert_eq!(compare(&[1.0f32, 2.0], &[1.0, 3.0]), Ordering::Less);
        assert_eq!(compare(&[1.0f32, 2.0], &[1.0]), Ordering::Greater);
        assert_eq!(compare(&[1.0f32], &[1.0]), Ordering::Equal);
    }

    fn state(values: &[f64]) -> StateArray<'_> {
        StateArray { ndim: usize::from(!values.is_empty()), has_nulls: false, values }
    }

    #[test]
    fn average_aggregation() {
        let state1 = accumulate("vector_accum", state(&[0.0]), &[1.0f32, 2.0]).unwrap();
        let state2 = accumulate("vector_accum", state(&state1), &[3.0f32, 6.0]).unwrap();
        assert_eq!(state2, vec![2.0, 4.0, 8.0]);
        let e = accumulate("vector_accum", state(&state2), &[1.0f32]).unwrap_err();
        assert_eq!(e.message, "expected 2 dimensions, not 1");
        let merged = combine_states(state(&state2), state(&[1.0, 2.0, 1.0])).unwrap();
        assert_eq!(merged, vec![3.0, 6.0, 9.0]);
        assert_eq!(combine_states(state(&[0.0]), state(&state2)).unwrap(), state2);
        assert_eq!(combine_states(state(&state2), state(&[0.0])).unwrap(), state2);
        assert_eq!(combine_states(state(&[0.0]), state(&[0.0])).unwrap(), vec![0.0]);
        assert_eq!(average::<f32>("vector_avg", state(&merged)).unwrap(), Some(vec![2.0, 3.0]));
        assert_eq!(average::<f32>("vector_avg", state(&[0.0])).unwrap(), None);
        assert!(average::<f16>("halfvec_avg", state(&[1.0, 1e6])).is_err());
    }

    #[test]
    fn malformed_states_are_rejected() {
        let expected = |e: Error| {
            assert_eq!(e.kind, ErrorKind::DataException);
            e.message
        };
        let nulls = StateArray { ndim: 1, has_nulls: true, values: &[1.0, 2.0] };
        let matrix = StateArray { ndim: 2, has_nulls: false, values: &[1.0, 2.0] };
        for bad in [state(&[]), nulls, matrix, state(&[-1.0, 2.0]), state(&[f64::NAN, 2.0]), state(&[f64::INFINITY])] {
            assert_eq!(expected(split_state("vector_avg", bad).unwrap_err()), "vector_avg: expected state array");
            assert_eq!(expected(accumulate("halfvec_accum", bad, &[1.0f32]).unwrap_err()), "halfvec_accum: expected state array");
            assert_eq!(expected(combine_states(bad, state(&[0.0])).unwrap_err()), "vector_combine: expected state array");
            assert_eq!(expected(combine_states(state(&[0.0]), bad).unwrap_err()), "vector_combine: expected state array");
            assert_eq!(expected(average::<f16>("halfvec_avg", bad).unwrap_err()), "halfvec_avg: expected state array");
        }
        // pgvector's rule: sums present means the dimensions are fixed.
        assert_eq!(accumulate("vector_accum", state(&[0.0, 0.0]), &[1.0f32, 2.0, 3.0]).unwrap_err().message, "expected 1 dimensions, not 3");
        assert_eq!(accumulate("vector_accum", state(&[0.0, 0.0, 0.0, 0.0]), &[1.0f32, 2.0, 3.0]).unwrap(), vec![1.0, 1.0, 2.0, 3.0]);
        assert_eq!(combine_states(state(&[1.0, 2.0]), state(&[3.0, 4.0, 5.0])).unwrap_err().message, "expected 1 dimensions, not 2");
    }

    #[test]
    fn states_beyond_the_dimension_limit_are_rejected() {
        // 32769 sums once became a vector whose int16 dimension count wrapped negative.
        let huge = vec![1.0; 32_770];
        let e = average::<f32>("vector_avg", state(&huge)).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::ProgramLimitExceeded, "vector cannot have more than 16000 dimensions"));
        assert_eq!(average::<f16>("halfvec_avg", state(&huge[..16_002])).unwrap_err().message, "halfvec cannot have more than 16000 dimensions");
        assert_eq!(average::<f32>("vector_avg", state(&huge[..16_001])).unwrap().unwrap().len(), 16_000);
        assert_eq!(average::<f32>("vector_avg", state(&[2.0])).unwrap_err().message, "vector must have at least 1 dimension");
        for (a, b) in [(&huge[..], &[0.0][..]), (&[0.0][..], &huge[..]), (&huge[..16_002], &huge[..16_002])] {
            assert_eq!(combine_states(state(a), state(b)).unwrap_err().message, "vector cannot have more than 16000 dimensions");
        }
        assert_eq!(accumulate("vector_accum", state(&huge), &[1.0f32]).unwrap_err().message, "expected 32769 dimensions, not 1");
        let big_count = accumulate("vector_accum", state(&[f64::MAX, 1.0]), &[1.0f32]).unwrap();
        assert_eq!(big_count[0], f64::MAX);
        assert_eq!(combine_states(state(&[f64::MAX, 1.0]), state(&[f64::MAX, 1.0])).unwrap_err().message, "value out of range: overflow");
    }

    #[test]
    fn stored_headers_must_match_their_size() {
        assert_eq!(check_stored::<f32>(3, 8 + 12), Ok(3));
        assert_eq!(check_stored::<f16>(3, 8 + 6), Ok(3));
        assert_eq!(check_stored::<f32>(3, 8 + 6).unwrap_err().message, "invalid vector value: 3 dimensions in 14 bytes");
        assert!(check_stored::<f32>(-32767, 8 + 4 * 32769).is_err());
        assert!(check_stored::<f16>(0, 8).is_err());
        assert!(check_stored::<f16>(16_001, 8 + 2 * 16_001).is_err());
        assert_eq!(check_stored::<f16>(16_000, 8 + 2 * 16_000), Ok(16_000));
    }

    #[test]
    fn binary_round_trip_matches_pgvector_layout() {
        let bytes = encode_binary(&[1.0f32, -2.0]);
        assert_eq!(bytes, [0, 2, 0, 0, 0x3f, 0x80, 0, 0, 0xc0, 0, 0, 0]);
        assert_eq!(decode_binary_header::<f32>(bytes[..4].try_into().unwrap(), -1), Ok(2));
        assert_eq!(decode_binary_elements::<f32>(&bytes[4..]).unwrap(), vec![1.0, -2.0]);
        let half_bytes = encode_binary(&halves(&[1.0, -2.0]));
        assert_eq!(half_bytes, [0, 2, 0, 0, 0x3c, 0x00, 0xc0, 0x00]);
        assert_eq!(decode_binary_header::<f32>([0, 2, 0, 1], -1).unwrap_err().message, "expected unused to be 0, not 1");
        assert_eq!(decode_binary_header::<f32>([0xff, 0xff, 0, 0], -1).unwrap_err().kind, ErrorKind::DataException);
        assert_eq!(decode_binary_header::<f32>([0, 2, 0, 0], 3).unwrap_err().message, "expected 3 dimensions, not 2");
        let nan = f32::NAN.to_be_bytes();
        assert_eq!(decode_binary_elements::<f32>(&nan).unwrap_err().message, "NaN not allowed in vector");
    }

    #[test]
    fn distances() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 2.0];
        assert!((l2_distance(&a, &b).unwrap() - 5f64.sqrt()).abs() < 1e-6);
        assert_eq!(inner_product(&a, &b).unwrap(), 0.0);
        assert!((cosine_distance(&a, &b).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(l1_distance(&a, &b).unwrap(), 3.0);
        assert!(l1_distance(&a, &[1.0]).is_err());
    }
}
