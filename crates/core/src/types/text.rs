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
        // Bounds the allocation by the type's limit, not by the length of the input.
        super::ops::check_dim_of(type_name, elements.len() + 1)?;
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

/// Appends `value` exactly as Postgres's `float4out` prints it (and so as pgvector does):
/// the shortest decimal that reads back as `value` (Ryu with exclusive bounds, as
/// PostgreSQL builds it), small integers printed exactly, plain notation for decimal
/// exponents -4..5 and `d.ddde+XX` otherwise.
pub fn push_float(out: &mut String, value: f32) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_sign_negative() {
        out.push('-');
    }
    if value.is_infinite() {
        out.push_str("Infinity");
        return;
    }
    if value == 0.0 {
        out.push('0');
        return;
    }
    let (mut digits, exponent) = ryu::shortest(value.abs());
    let mut length = ryu::decimal_length(digits);
    let display_exponent = exponent + length as i32 - 1;
    if (-4..6).contains(&display_exponent) {
        let text = digits.to_string();
        if exponent >= 0 {
            out.push_str(&text);
            out.extend(std::iter::repeat_n('0', exponent as usize));
        } else {
            let integer_digits = exponent + length as i32;
            if integer_digits <= 0 {
                out.push_str("0.");
                out.extend(std::iter::repeat_n('0', (-integer_digits) as usize));
                out.push_str(&text);
            } else {
                out.push_str(&text[..integer_digits as usize]);
                out.push('.');
                out.push_str(&text[integer_digits as usize..]);
            }
        }
        return;
    }
    // Exact small integers may carry trailing zeros that belong in the exponent.
    if exponent == 0 {
        while digits % 10 == 0 {
            digits /= 10;
            length -= 1;
        }
    }
    let text = digits.to_string();
    out.push_str(&text[..1]);
    if length > 1 {
        out.push('.');
        out.push_str(&text[1..]);
    }
    let sign = if display_exponent < 0 { '-' } else { '+' };
    out.push_str(&format!("e{sign}{:02}", display_exponent.abs()));
}

/// Shortest round-trip digits of an f32 (Ulf Adams' Ryu, "f2s"), in the variant
/// PostgreSQL compiles: the interval bounds are never accepted, so a result never lies
/// exactly halfway to a neighbouring float.
mod ryu {
    use std::sync::OnceLock;

    const MANTISSA_BITS: i32 = 23;
    const BIAS: i32 = 127;
    const POW5_INV_BITCOUNT: i32 = 59;
    const POW5_BITCOUNT: i32 = 61;

    /// `5^i` normalized to 61 bits, and `2^k / 5^q` (+1) normalized to 59 bits: the
    /// fixed-point factors Ryu multiplies by, computed exactly in 128-bit arithmetic.
    pub(super) struct Tables {
        pub pow5: [u64; 47],
        pub pow5_inv: [u64; 31],
    }

    pub(super) fn tables() -> &'static Tables {
        static TABLES: OnceLock<Tables> = OnceLock::new();
        TABLES.get_or_init(|| {
            let bit_length = |x: u128| 128 - x.leading_zeros() as i32;
            let mut pow5 = [0u64; 47];
            for (i, entry) in pow5.iter_mut().enumerate() {
                let value = 5u128.pow(i as u32);
                let shift = bit_length(value) - POW5_BITCOUNT;
                *entry = if shift >= 0 { (value >> shift) as u64 } else { (value << -shift) as u64 };
            }
            let mut pow5_inv = [0u64; 31];
            for (q, entry) in pow5_inv.iter_mut().enumerate() {
                let divisor = 5u128.pow(q as u32);
                let k = bit_length(divisor) - 1 + POW5_INV_BITCOUNT;
                // floor(2^k / divisor) with k up to 128, without overflowing u128.
                let half = 1u128 << (k - 1);
                let quotient = 2 * (half / divisor) + (2 * (half % divisor)) / divisor;
                *entry = (quotient + 1) as u64;
            }
            Tables { pow5, pow5_inv }
        })
    }

    fn pow5bits(e: i32) -> i32 {
        (((e as u32) * 1_217_359) >> 19) as i32 + 1
    }

    fn log10_pow2(e: i32) -> u32 {
        ((e as u32) * 78_913) >> 18
    }

    fn log10_pow5(e: i32) -> u32 {
        ((e as u32) * 732_923) >> 20
    }

    fn multiple_of_pow5(mut value: u32, p: u32) -> bool {
        let mut count = 0;
        while value > 0 && value % 5 == 0 {
            value /= 5;
            count += 1;
        }
        count >= p
    }

    fn multiple_of_pow2(value: u32, p: u32) -> bool {
        value & ((1u32 << p) - 1) == 0
    }

    fn mul_shift(m: u32, factor: u64, shift: i32) -> u32 {
        let low = u64::from(m) * (factor & 0xFFFF_FFFF);
        let high = u64::from(m) * (factor >> 32);
        (((low >> 32) + high) >> (shift - 32)) as u32
    }

    pub fn decimal_length(value: u32) -> u32 {
        value.checked_ilog10().unwrap_or(0) + 1
    }

    /// Digits and decimal exponent of a finite, positive, non-zero value.
    pub fn shortest(value: f32) -> (u32, i32) {
        let bits = value.to_bits();
        let ieee_mantissa = bits & ((1 << MANTISSA_BITS) - 1);
        let ieee_exponent = bits >> MANTISSA_BITS;

        // Integers below 2^24 are printed exactly.
        let e2 = ieee_exponent as i32 - BIAS - MANTISSA_BITS;
        if (-MANTISSA_BITS..=0).contains(&e2) && ieee_mantissa & ((1u32 << -e2) - 1) == 0 {
            return (((1 << MANTISSA_BITS) | ieee_mantissa) >> -e2, 0);
        }

        let (e2, m2) = if ieee_exponent == 0 {
            (1 - BIAS - MANTISSA_BITS - 2, ieee_mantissa)
        } else {
            (ieee_exponent as i32 - BIAS - MANTISSA_BITS - 2, (1 << MANTISSA_BITS) | ieee_mantissa)
        };
        let t = tables();
        let mv = 4 * m2;
        let mp = 4 * m2 + 2;
        let mm = 4 * m2 - 1 - u32::from(ieee_mantissa != 0 || ieee_exponent <= 1);

        let (mut vr, mut vp, mut vm, e10);
        let mut vr_trailing_zeros = false;
        let mut last_removed_digit = 0;
        if e2 >= 0 {
            let q = log10_pow2(e2);
            e10 = q as i32;
            let k = POW5_INV_BITCOUNT + pow5bits(q as i32) - 1;
            let i = -e2 + q as i32 + k;
            let factor = t.pow5_inv[q as usize];
            vr = mul_shift(mv, factor, i);
            vp = mul_shift(mp, factor, i);
            vm = mul_shift(mm, factor, i);
            if q != 0 && (vp - 1) / 10 <= vm / 10 {
                let l = POW5_INV_BITCOUNT + pow5bits(q as i32 - 1) - 1;
                last_removed_digit = mul_shift(mv, t.pow5_inv[q as usize - 1], -e2 + q as i32 - 1 + l) % 10;
            }
            if q <= 9 {
                if mv % 5 == 0 {
                    vr_trailing_zeros = multiple_of_pow5(mv, q);
                } else {
                    vp -= u32::from(multiple_of_pow5(mp, q));
                }
            }
        } else {
            let q = log10_pow5(-e2);
            e10 = q as i32 + e2;
            let i = -e2 - q as i32;
            let k = pow5bits(i) - POW5_BITCOUNT;
            let j = q as i32 - k;
            let factor = t.pow5[i as usize];
            vr = mul_shift(mv, factor, j);
            vp = mul_shift(mp, factor, j);
            vm = mul_shift(mm, factor, j);
            if q != 0 && (vp - 1) / 10 <= vm / 10 {
                let j = q as i32 - 1 - (pow5bits(i + 1) - POW5_BITCOUNT);
                last_removed_digit = mul_shift(mv, t.pow5[i as usize + 1], j) % 10;
            }
            if q <= 1 {
                vr_trailing_zeros = true;
                vp -= 1;
            } else if q < 31 {
                vr_trailing_zeros = multiple_of_pow2(mv, q - 1);
            }
        }

        let mut removed = 0;
        while vp / 10 > vm / 10 {
            vr_trailing_zeros &= last_removed_digit == 0;
            last_removed_digit = vr % 10;
            vr /= 10;
            vp /= 10;
            vm /= 10;
            removed += 1;
        }
        // Round half to even when the exact value ends in ...50...0.
        if vr_trailing_zeros && last_removed_digit == 5 && vr % 2 == 0 {
            last_removed_digit = 4;
        }
        let output = vr + u32::from(vr == vm || last_removed_digit >= 5);
        (output, e10 + removed)
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
            // Exact ties round to even; bounds are exclusive, so 131197780 (halfway to the
            // next float) is not accepted and nine digits are needed.
            (158_268.125, "158268.12"),
            (131_197_776.0, "1.31197776e+08"),
            (16_777_216.0, "1.6777216e+07"),
            (16_777_215.0, "1.6777215e+07"),
            (1e10, "1e+10"),
            (f32::MIN_POSITIVE, "1.1754944e-38"),
            (f32::NAN, "NaN"),
            (f32::NEG_INFINITY, "-Infinity"),
        ];
        for &(value, expected) in cases {
            assert_eq!(shortest(value), expected, "formatting {value:e}");
        }
    }

    #[test]
    fn ryu_tables_match_the_published_constants() {
        // Entries of FLOAT_POW5_INV_SPLIT and FLOAT_POW5_SPLIT in Ryu's f2s.c.
        let tables = ryu::tables();
        assert_eq!(tables.pow5_inv[..2], [576_460_752_303_423_489, 461_168_601_842_738_791]);
        assert_eq!(tables.pow5[..2], [1_152_921_504_606_846_976, 1_441_151_880_758_558_720]);
    }

    #[test]
    fn printed_values_read_back_exactly() {
        let mut rng = crate::rng::Rng::new(5);
        for _ in 0..200_000 {
            let value = f32::from_bits(rng.next_u64() as u32);
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
        let too_many = format!("[{}]", vec!["0"; 16_001].join(","));
        let e = parse(&too_many, "halfvec").unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::ProgramLimitExceeded, "halfvec cannot have more than 16000 dimensions"));
        let most = format!("[{}]", vec!["0"; 16_000].join(","));
        assert_eq!(parse(&most, "vector").unwrap().len(), 16_000);
    }
}
