//! Text format of vectors, `[1,2.5,-3]`, parsed and printed exactly as pgvector does.

use crate::error::{Error, ErrorKind};

/// Parses the text form into f32 elements, checking syntax and range like pgvector's
/// `vector_in` (which uses `strtof`). Element checks (NaN, infinity, dimension limits)
/// are left to the caller, because they depend on the element type.
///
/// `type_name` only shapes the error messages ("vector", "halfvec").
pub fn parse(input: &str, type_name: &str) -> Result<Vec<f32>, Error> {
    let syntax_error =
        || Error::new(ErrorKind::InvalidTextRepresentation, format!("invalid input syntax for type {type_name}: \"{input}\""));
    let bytes = input.as_bytes();
    let mut pos = skip_space(bytes, 0);
    if bytes.get(pos) != Some(&b'[') {
        return Err(syntax_error().with_detail("Vector contents must start with \"[\"."));
    }
    pos = skip_space(bytes, pos + 1);
    if bytes.get(pos) == Some(&b']') {
        return Err(Error::new(ErrorKind::DataException, format!("{type_name} must have at least 1 dimension")));
    }
    let mut elements = Vec::new();
    loop {
        pos = skip_space(bytes, pos);
        let len = float_prefix_len(&bytes[pos..]);
        if len == 0 {
            return Err(syntax_error());
        }
        let literal = &input[pos..pos + len];
        let value = parse_float_literal(literal);
        if value.is_infinite() && !is_infinity_literal(literal) {
            return Err(Error::new(
                ErrorKind::NumericValueOutOfRange,
                format!("\"{literal}\" is out of range for type {type_name}"),
            ));
        }
        elements.push(value);
        pos = skip_space(bytes, pos + len);
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b']') => {
                pos += 1;
                break;
            }
            _ => return Err(syntax_error()),
        }
    }
    if skip_space(bytes, pos) != bytes.len() {
        return Err(syntax_error().with_detail("Junk after closing right brace."));
    }
    Ok(elements)
}

/// pgvector's notion of white space (that of C's `isspace` in the C locale).
fn skip_space(bytes: &[u8], mut pos: usize) -> usize {
    while matches!(bytes.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')) {
        pos += 1;
    }
    pos
}

/// Length of the longest prefix that `strtof` would consume: an optional sign, then
/// `inf`/`infinity`/`nan` in any case, or decimal digits with an optional point and exponent.
fn float_prefix_len(bytes: &[u8]) -> usize {
    let mut pos = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let rest = &bytes[pos..];
    for word in ["infinity", "inf", "nan"] {
        if rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word.as_bytes()) {
            return pos + word.len();
        }
    }
    let digits = |from: usize| bytes[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let integer_digits = digits(pos);
    pos += integer_digits;
    let mut fraction_digits = 0;
    if bytes.get(pos) == Some(&b'.') {
        fraction_digits = digits(pos + 1);
        if integer_digits + fraction_digits > 0 {
            pos += 1 + fraction_digits;
        }
    }
    if integer_digits + fraction_digits == 0 {
        return 0;
    }
    if matches!(bytes.get(pos), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(pos + 1), Some(b'+' | b'-')));
        let exponent_digits = digits(pos + 1 + sign);
        if exponent_digits > 0 {
            pos += 1 + sign + exponent_digits;
        }
    }
    pos
}

fn is_infinity_literal(literal: &str) -> bool {
    literal.trim_start_matches(['+', '-']).to_ascii_lowercase().starts_with("inf")
}

/// Correctly rounded conversion (as `strtof`) of a literal accepted by `float_prefix_len`.
fn parse_float_literal(literal: &str) -> f32 {
    // Rust's parser rejects a trailing "." ("5.") that strtof accepts.
    let trimmed = literal.strip_suffix('.').unwrap_or(literal);
    let lower = trimmed.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    let negative = lower.starts_with('-');
    let magnitude = if unsigned.starts_with("inf") {
        f32::INFINITY
    } else if unsigned == "nan" {
        f32::NAN
    } else {
        unsigned.parse::<f32>().unwrap_or(f32::NAN)
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// Appends the shortest text that reads back as `value`, in the layout of Postgres's
/// `float4out` (and so of pgvector): plain digits for decimal exponents -4..5,
/// otherwise `d.ddde+XX`.
pub fn push_float(out: &mut String, value: f32) {
    use std::fmt::Write;
    if value == 0.0 {
        out.push_str(if value.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    if !value.is_finite() {
        out.push_str(if value.is_nan() {
            "NaN"
        } else if value > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
        return;
    }
    // `{:e}` yields the shortest round-trip digits, e.g. "-1.25e-7".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("LowerExp always has an exponent");
    let exponent: i32 = exponent.parse().expect("LowerExp exponent is an integer");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if negative {
        out.push('-');
    }
    if (-4..6).contains(&exponent) {
        if exponent < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
            out.push_str(&digits);
        } else {
            let integer_len = exponent as usize + 1;
            if digits.len() <= integer_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', integer_len - digits.len()));
            } else {
                out.push_str(&digits[..integer_len]);
                out.push('.');
                out.push_str(&digits[integer_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs());
    }
}

/// Formats elements as `[a,b,c]`.
pub fn format(elements: impl IntoIterator<Item = f32>) -> String {
    let mut out = String::from("[");
    for (i, value) in elements.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_float(&mut out, value);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shortest(value: f32) -> String {
        let mut out = String::new();
        push_float(&mut out, value);
        out
    }

    #[test]
    fn prints_like_float4out() {
        // Expected strings are what `SELECT x::float4::text` prints on PostgreSQL 15.
        let cases: &[(f32, &str)] = &[
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (100000.0, "100000"),
            (123456.0, "123456"),
            (1000000.0, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (3.4028235e38, "3.4028235e+38"),
            (1e-45, "1e-45"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1.0 / 3.0, "0.33333334"),
        ];
        for &(value, expected) in cases {
            assert_eq!(shortest(value), expected, "formatting {value:e}");
        }
    }

    #[test]
    fn printed_values_read_back_exactly() {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = f32::from_bits(state as u32);
            if !value.is_finite() {
                continue;
            }
            let text = format([value]);
            let parsed = parse(&text, "vector").unwrap();
            assert_eq!(parsed[0].to_bits(), value.to_bits(), "{text}");
        }
    }

    #[test]
    fn parses_pgvector_syntax() {
        assert_eq!(parse("[1,2,3]", "vector").unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(parse("  [ 1.5 , -2e3,+.5, 5. ]\n", "vector").unwrap(), vec![1.5, -2000.0, 0.5, 5.0]);
        assert_eq!(parse("[1e-50]", "vector").unwrap(), vec![0.0]);
        assert!(parse("[NaN]", "vector").unwrap()[0].is_nan());
        assert_eq!(parse("[-Infinity]", "vector").unwrap(), vec![f32::NEG_INFINITY]);
    }

    #[test]
    fn rejects_bad_text_with_pgvector_errors() {
        let err = |s: &str| parse(s, "vector").unwrap_err();
        let e = err("1,2");
        assert_eq!(e.kind, ErrorKind::InvalidTextRepresentation);
        assert_eq!(e.message, "invalid input syntax for type vector: \"1,2\"");
        assert_eq!(e.detail.as_deref(), Some("Vector contents must start with \"[\"."));
        assert_eq!(err("[]").message, "vector must have at least 1 dimension");
        assert_eq!(err("[ ]").kind, ErrorKind::DataException);
        assert_eq!(err("[1,]").kind, ErrorKind::InvalidTextRepresentation);
        assert_eq!(err("[1,,2]").kind, ErrorKind::InvalidTextRepresentation);
        assert_eq!(err("[1 2]").kind, ErrorKind::InvalidTextRepresentation);
        assert_eq!(err("[1").kind, ErrorKind::InvalidTextRepresentation);
        assert_eq!(err("[1]x").detail.as_deref(), Some("Junk after closing right brace."));
        assert_eq!(err("[a]").kind, ErrorKind::InvalidTextRepresentation);
        assert_eq!(err("[.]").kind, ErrorKind::InvalidTextRepresentation);
        let e = err("[1e39]");
        assert_eq!(e.kind, ErrorKind::NumericValueOutOfRange);
        assert_eq!(e.message, "\"1e39\" is out of range for type vector");
        assert_eq!(parse("[1e39]", "halfvec").unwrap_err().message, "\"1e39\" is out of range for type halfvec");
    }
}
