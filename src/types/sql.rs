//! SQL-callable functions of `vector` and `halfvec`: thin glue from the function-call
//! interface to the generic code in `ops`. The SQL declarations live in `sql/`.

use super::datum::{BitString, VecArg, VecValue};
use ragtune_core::types::element::VectorElement;
use ragtune_core::types::{ops, text};
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::OrRaise;
use half::f16;
use pgrx::prelude::*;
use pgrx::Internal;
use std::ffi::{CStr, CString};

/// A detoasted array argument of any element type, read the way pgvector's casts read it.
pub struct ArrayArg(*mut pg_sys::ArrayType);

impl pgrx::FromDatum for ArrayArg {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        // SAFETY: the SQL signature guarantees an array datum.
        (!is_null).then(|| Self(unsafe { pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) }.cast()))
    }
}

unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for ArrayArg {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: forwarded caller contract; strict functions never see NULL.
        unsafe { arg.unbox_arg_using_from_datum() }.expect("strict function received NULL")
    }
}

unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for ArrayArg {
    const TYPE_IDENT: &'static str = "anyarray";
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("anyarray"));
    const RETURN_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Err(pgrx::pgrx_sql_entity_graph::metadata::ReturnsError::Datum);
}

impl ArrayArg {
    /// The integers of a type-modifier list (`cstring[]`), parsed by Postgres itself.
    fn integer_typmods(&self) -> Vec<i32> {
        let mut count = 0;
        // SAFETY: `self.0` is a detoasted cstring[]; Postgres raises ERROR on bad entries.
        unsafe {
            let values = pg_sys::ArrayGetIntegerTypmods(self.0, &mut count);
            std::slice::from_raw_parts(values, count as usize).to_vec()
        }
    }

    /// An aggregate state (`double precision[]` by its SQL signature), viewed in place.
    fn state(&self) -> ops::StateArray<'_> {
        // SAFETY: `self.0` is a valid detoasted float8 array for the whole call, and
        // without NULLs its data is `len()` contiguous, aligned f64s.
        unsafe {
            let mut array = pgrx::array::RawArray::from_ptr(std::ptr::NonNull::new_unchecked(self.0));
            let has_nulls = array.any_nulls();
            let values = if has_nulls { &[] } else { array.data::<f64>().as_ref() };
            ops::StateArray { ndim: array.dims().len(), has_nulls, values }
        }
    }

    /// Elements of a one-dimensional integer, real, double precision or numeric array
    /// (NaN and infinities pass through for the element checks to reject).
    fn float_elements<E: VectorElement>(&self) -> Result<Vec<f64>, Error> {
        // SAFETY: `self.0` is a valid detoasted ArrayType for the whole call.
        let (ndim, element_type) = unsafe { ((*self.0).ndim, (*self.0).elemtype) };
        if ndim > 1 {
            return Err(Error::new(ErrorKind::DataException, "array must be 1-D"));
        }
        let (mut length, mut by_value, mut align) = (0i16, false, 0 as std::ffi::c_char);
        let (mut datums, mut nulls, mut count) = (std::ptr::null_mut(), std::ptr::null_mut(), 0);
        // SAFETY: standard deconstruction of a valid array into palloc'd datum/null arrays.
        unsafe {
            pg_sys::get_typlenbyvalalign(element_type, &mut length, &mut by_value, &mut align);
            pg_sys::deconstruct_array(self.0, element_type, length.into(), by_value, align, &mut datums, &mut nulls, &mut count);
        }
        let count = count as usize;
        // Bounds what is collected below by the type's limit, not by the array's length.
        ops::check_dim::<E>(count)?;
        // SAFETY: deconstruct_array filled `count` entries in both arrays.
        let (datums, nulls) = unsafe {
            (std::slice::from_raw_parts(datums, count), std::slice::from_raw_parts(nulls, count))
        };
        if nulls.iter().any(|&null| null) {
            return Err(Error::new(ErrorKind::NullValueNotAllowed, "array must not contain nulls"));
        }
        let convert: fn(pg_sys::Datum) -> f64 = match element_type {
            pg_sys::INT4OID => |d| f64::from(d.value() as i32),
            pg_sys::FLOAT4OID => |d| f64::from(f32::from_bits(d.value() as u32)),
            pg_sys::FLOAT8OID => |d| f64::from_bits(d.value() as u64),
            // The no-overflow variant returns an infinity for huge numerics instead of an
            // ERROR, so every element type goes through the same range check below.
            pg_sys::NUMERICOID => |d| unsafe {
                pgrx::direct_function_call::<f64>(pg_sys::numeric_float8_no_overflow, &[Some(d)])
                    .expect("numeric_float8_no_overflow is strict")
            },
            _ => return Err(Error::new(ErrorKind::DataException, "unsupported array type")),
        };
        Ok(datums.iter().map(|&d| convert(d)).collect())
    }
}

fn vec_in<E: VectorElement>(input: &CStr, typmod: i32) -> VecValue<E> {
    let input = input.to_string_lossy();
    let values = text::parse(&input, E::TYPE_NAME).or_raise();
    VecValue(ops::from_f32s(values.into_iter(), typmod).or_raise())
}

fn vec_out<E: VectorElement>(v: VecArg<E>) -> CString {
    CString::new(text::format(v.as_slice().iter().map(|e| e.to_f32()))).expect("vector text has no NUL")
}

fn vec_recv<E: VectorElement>(buffer: Internal, typmod: i32) -> VecValue<E> {
    let buffer = buffer.unwrap().expect("receive buffer").cast_mut_ptr::<pg_sys::StringInfoData>();
    // SAFETY: pq_getmsgbytes checks the remaining length and raises ERROR when it is short.
    let read = |count: usize| unsafe {
        std::slice::from_raw_parts(pg_sys::pq_getmsgbytes(buffer, count as i32).cast::<u8>(), count)
    };
    let header: [u8; 4] = read(4).try_into().expect("4 header bytes");
    let dim = ops::decode_binary_header::<E>(header, typmod).or_raise();
    VecValue(ops::decode_binary_elements(read(dim * E::SIZE)).or_raise())
}

fn vec_typmod_cast<E: VectorElement>(v: VecArg<E>, typmod: i32) -> VecValue<E> {
    ops::check_expected_dim(typmod, v.dim()).or_raise();
    VecValue(v.as_slice().to_vec())
}

fn vec_convert<From: VectorElement, To: VectorElement>(v: VecArg<From>, typmod: i32) -> VecValue<To> {
    VecValue(ops::from_f32s(v.as_slice().iter().map(|e| e.to_f32()), typmod).or_raise())
}

fn vec_from_array<E: VectorElement>(array: ArrayArg, typmod: i32) -> VecValue<E> {
    let values: Vec<f32> =
        array.float_elements::<E>().or_raise().into_iter().map(ops::narrow_f64::<E>).collect::<Result<_, _>>().or_raise();
    VecValue(ops::from_f32s(values.into_iter(), typmod).or_raise())
}

/// Declares the SQL-callable functions of one vector type. Each entry names the Rust
/// function (its C symbol is `<name>_wrapper`, which `sql/` refers to).
macro_rules! vector_functions {
    ($E:ty {
        in: $input:ident, out: $output:ident, typmod_in: $typmod_in:ident, recv: $recv:ident, send: $send:ident,
        l2_distance: $l2:ident, l2_squared_distance: $l2sq:ident, inner_product: $ip:ident,
        negative_inner_product: $nip:ident, cosine_distance: $cos:ident, l1_distance: $l1:ident,
        dims: $dims:ident, norm: $norm:ident, l2_normalize: $normalize:ident,
        binary_quantize: $quantize:ident, subvector: $subvector:ident,
        add: $add:ident, sub: $sub:ident, mul: $mul:ident, concat: $concat:ident,
        lt: $lt:ident, le: $le:ident, eq: $eq:ident, ne: $ne:ident, ge: $ge:ident, gt: $gt:ident, cmp: $cmp:ident,
        accum: $accum:ident, avg: $avg:ident, typmod_cast: $cast:ident, from_array: $from_array:ident,
        to_float4: $to_float4:ident,
    }) => {
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $input(input: &CStr, _type_oid: pg_sys::Oid, typmod: i32) -> VecValue<$E> {
            vec_in(input, typmod)
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $output(v: VecArg<$E>) -> CString {
            vec_out(v)
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $typmod_in(modifiers: ArrayArg) -> i32 {
            ops::typmod_in::<$E>(&modifiers.integer_typmods()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $recv(buffer: Internal, _type_oid: pg_sys::Oid, typmod: i32) -> VecValue<$E> {
            vec_recv(buffer, typmod)
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $send(v: VecArg<$E>) -> Vec<u8> {
            ops::encode_binary(v.as_slice())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $l2(a: VecArg<$E>, b: VecArg<$E>) -> f64 {
            ops::l2_distance(a.as_slice(), b.as_slice()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $l2sq(a: VecArg<$E>, b: VecArg<$E>) -> f64 {
            f64::from(ops::l2_squared_distance(a.as_slice(), b.as_slice()).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $ip(a: VecArg<$E>, b: VecArg<$E>) -> f64 {
            ops::inner_product(a.as_slice(), b.as_slice()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $nip(a: VecArg<$E>, b: VecArg<$E>) -> f64 {
            -ops::inner_product(a.as_slice(), b.as_slice()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $cos(a: VecArg<$E>, b: VecArg<$E>) -> f64 {
            ops::cosine_distance(a.as_slice(), b.as_slice()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $l1(a: VecArg<$E>, b: VecArg<$E>) -> f64 {
            ops::l1_distance(a.as_slice(), b.as_slice()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $dims(v: VecArg<$E>) -> i32 {
            v.dim() as i32
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $norm(v: VecArg<$E>) -> f64 {
            ops::norm(v.as_slice())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $normalize(v: VecArg<$E>) -> VecValue<$E> {
            VecValue(ops::l2_normalize(v.as_slice()).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $quantize(v: VecArg<$E>) -> BitString {
            BitString { bytes: ops::binary_quantize(v.as_slice()), bit_len: v.dim() }
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $subvector(v: VecArg<$E>, start: i32, count: i32) -> VecValue<$E> {
            VecValue(ops::subvector(v.as_slice(), start, count).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $add(a: VecArg<$E>, b: VecArg<$E>) -> VecValue<$E> {
            VecValue(ops::elementwise(a.as_slice(), b.as_slice(), ops::Arithmetic::Add).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $sub(a: VecArg<$E>, b: VecArg<$E>) -> VecValue<$E> {
            VecValue(ops::elementwise(a.as_slice(), b.as_slice(), ops::Arithmetic::Subtract).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $mul(a: VecArg<$E>, b: VecArg<$E>) -> VecValue<$E> {
            VecValue(ops::elementwise(a.as_slice(), b.as_slice(), ops::Arithmetic::Multiply).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $concat(a: VecArg<$E>, b: VecArg<$E>) -> VecValue<$E> {
            VecValue(ops::concat(a.as_slice(), b.as_slice()).or_raise())
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $lt(a: VecArg<$E>, b: VecArg<$E>) -> bool {
            ops::compare(a.as_slice(), b.as_slice()).is_lt()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $le(a: VecArg<$E>, b: VecArg<$E>) -> bool {
            ops::compare(a.as_slice(), b.as_slice()).is_le()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $eq(a: VecArg<$E>, b: VecArg<$E>) -> bool {
            ops::compare(a.as_slice(), b.as_slice()).is_eq()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $ne(a: VecArg<$E>, b: VecArg<$E>) -> bool {
            ops::compare(a.as_slice(), b.as_slice()).is_ne()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $ge(a: VecArg<$E>, b: VecArg<$E>) -> bool {
            ops::compare(a.as_slice(), b.as_slice()).is_ge()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $gt(a: VecArg<$E>, b: VecArg<$E>) -> bool {
            ops::compare(a.as_slice(), b.as_slice()).is_gt()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $cmp(a: VecArg<$E>, b: VecArg<$E>) -> i32 {
            ops::compare(a.as_slice(), b.as_slice()) as i32
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $accum(state: ArrayArg, v: VecArg<$E>) -> Vec<f64> {
            ops::accumulate(stringify!($accum), state.state(), v.as_slice()).or_raise()
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $avg(state: ArrayArg) -> Option<VecValue<$E>> {
            ops::average::<$E>(stringify!($avg), state.state()).or_raise().map(VecValue)
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $cast(v: VecArg<$E>, typmod: i32, _explicit: bool) -> VecValue<$E> {
            vec_typmod_cast(v, typmod)
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $from_array(array: ArrayArg, typmod: i32, _explicit: bool) -> VecValue<$E> {
            vec_from_array(array, typmod)
        }
        #[pg_extern(immutable, strict, parallel_safe, sql = false)]
        fn $to_float4(v: VecArg<$E>, _typmod: i32, _explicit: bool) -> Vec<f32> {
            v.as_slice().iter().map(|e| e.to_f32()).collect()
        }
    };
}

vector_functions!(f32 {
    in: vector_in, out: vector_out, typmod_in: vector_typmod_in, recv: vector_recv, send: vector_send,
    l2_distance: vector_l2_distance, l2_squared_distance: vector_l2_squared_distance,
    inner_product: vector_inner_product, negative_inner_product: vector_negative_inner_product,
    cosine_distance: vector_cosine_distance, l1_distance: vector_l1_distance,
    dims: vector_dims, norm: vector_norm, l2_normalize: vector_l2_normalize,
    binary_quantize: vector_binary_quantize, subvector: vector_subvector,
    add: vector_add, sub: vector_sub, mul: vector_mul, concat: vector_concat,
    lt: vector_lt, le: vector_le, eq: vector_eq, ne: vector_ne, ge: vector_ge, gt: vector_gt, cmp: vector_cmp,
    accum: vector_accum, avg: vector_avg, typmod_cast: vector_typmod_cast, from_array: array_to_vector,
    to_float4: vector_to_float4,
});

vector_functions!(f16 {
    in: halfvec_in, out: halfvec_out, typmod_in: halfvec_typmod_in, recv: halfvec_recv, send: halfvec_send,
    l2_distance: halfvec_l2_distance, l2_squared_distance: halfvec_l2_squared_distance,
    inner_product: halfvec_inner_product, negative_inner_product: halfvec_negative_inner_product,
    cosine_distance: halfvec_cosine_distance, l1_distance: halfvec_l1_distance,
    dims: halfvec_dims, norm: halfvec_l2_norm, l2_normalize: halfvec_l2_normalize,
    binary_quantize: halfvec_binary_quantize, subvector: halfvec_subvector,
    add: halfvec_add, sub: halfvec_sub, mul: halfvec_mul, concat: halfvec_concat,
    lt: halfvec_lt, le: halfvec_le, eq: halfvec_eq, ne: halfvec_ne, ge: halfvec_ge, gt: halfvec_gt, cmp: halfvec_cmp,
    accum: halfvec_accum, avg: halfvec_avg, typmod_cast: halfvec_typmod_cast, from_array: array_to_halfvec,
    to_float4: halfvec_to_float4,
});

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn vector_combine(a: ArrayArg, b: ArrayArg) -> Vec<f64> {
    ops::combine_states(a.state(), b.state()).or_raise()
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn vector_to_halfvec(v: VecArg<f32>, typmod: i32, _explicit: bool) -> VecValue<f16> {
    vec_convert(v, typmod)
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn halfvec_to_vector(v: VecArg<f16>, typmod: i32, _explicit: bool) -> VecValue<f32> {
    vec_convert(v, typmod)
}
