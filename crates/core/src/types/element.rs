//! What distinguishes `vector` from `halfvec`: the element type, its wire encoding,
//! and which distance kernels apply. Everything else is shared, generic code.

use crate::kernels;
use half::f16;

/// Most dimensions a `vector` or `halfvec` may have (as in pgvector).
pub const MAX_DIM: usize = 16_000;

pub trait VectorElement: Copy + PartialEq + PartialOrd + Send + Sync + 'static {
    /// SQL type name, used in error messages.
    const TYPE_NAME: &'static str;
    /// Size in bytes of one element on disk and on the wire.
    const SIZE: usize;

    fn to_f32(self) -> f32;
    /// Rounds to the nearest element; out-of-range values become infinite.
    fn from_f32(value: f32) -> Self;
    fn is_zero(self) -> bool;
    fn write_be(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `SIZE` big-endian bytes.
    fn read_be(bytes: &[u8]) -> Self;

    fn l2_squared(a: &[Self], b: &[Self]) -> f32;
    fn dot(a: &[Self], b: &[Self]) -> f32;
    fn l1(a: &[Self], b: &[Self]) -> f32;
    fn cosine_terms(a: &[Self], b: &[Self]) -> (f32, f32, f32);
}

impl VectorElement for f32 {
    const TYPE_NAME: &'static str = "vector";
    const SIZE: usize = 4;

    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
    fn is_zero(self) -> bool {
        self == 0.0
    }
    fn write_be(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn read_be(bytes: &[u8]) -> Self {
        f32::from_be_bytes(bytes.try_into().expect("4 bytes per vector element"))
    }
    fn l2_squared(a: &[Self], b: &[Self]) -> f32 {
        kernels::l2_squared(a, b)
    }
    fn dot(a: &[Self], b: &[Self]) -> f32 {
        kernels::dot(a, b)
    }
    fn l1(a: &[Self], b: &[Self]) -> f32 {
        kernels::l1(a, b)
    }
    fn cosine_terms(a: &[Self], b: &[Self]) -> (f32, f32, f32) {
        kernels::cosine_terms(a, b)
    }
}

impl VectorElement for f16 {
    const TYPE_NAME: &'static str = "halfvec";
    const SIZE: usize = 2;

    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
    fn is_zero(self) -> bool {
        self.to_f32() == 0.0
    }
    fn write_be(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_be_bytes());
    }
    fn read_be(bytes: &[u8]) -> Self {
        f16::from_bits(u16::from_be_bytes(bytes.try_into().expect("2 bytes per halfvec element")))
    }
    fn l2_squared(a: &[Self], b: &[Self]) -> f32 {
        kernels::l2_squared_f16(a, b)
    }
    fn dot(a: &[Self], b: &[Self]) -> f32 {
        kernels::dot_f16(a, b)
    }
    fn l1(a: &[Self], b: &[Self]) -> f32 {
        kernels::l1_f16(a, b)
    }
    fn cosine_terms(a: &[Self], b: &[Self]) -> (f32, f32, f32) {
        kernels::cosine_terms_f16(a, b)
    }
}
