//! The on-disk and in-memory layout of `vector` and `halfvec` values, and their passage
//! through the function-call interface.
//!
//! Layout, identical to pgvector's so that dumps and binary tools agree: a 4-byte varlena
//! header, `int16 dim`, `int16 unused` (always 0), then `dim` elements.

use ragtune_core::types::element::VectorElement;
use ragtune_core::types::ops;
use crate::pg::error::OrRaise;
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::FromDatum;
use std::marker::PhantomData;
use std::ptr::NonNull;

const HEADER_SIZE: usize = 8;

/// A vector argument, detoasted, borrowed for the duration of the call.
pub struct VecArg<'a, E> {
    varlena: NonNull<u8>,
    _elements: PhantomData<&'a [E]>,
}

impl<'a, E: VectorElement> VecArg<'a, E> {
    /// The number of elements (checked against the value's size when it was borrowed).
    pub fn dim(&self) -> usize {
        // SAFETY: a detoasted value always has the full 8-byte header.
        let dim = unsafe { self.varlena.as_ptr().add(4).cast::<i16>().read() };
        dim as usize
    }

    pub fn as_slice(&self) -> &'a [E] {
        // SAFETY: the type's alignment is int4 and the detoasted header is 8 bytes, so the
        // elements are aligned for f32 and f16; `dim` elements follow the header.
        unsafe { std::slice::from_raw_parts(self.varlena.as_ptr().add(HEADER_SIZE).cast::<E>(), self.dim()) }
    }

    /// Borrows a datum known to hold this vector type (for example an index key).
    ///
    /// # Safety
    /// `datum` must be a non-null `vector`/`halfvec` datum matching `E`, valid for `'a`.
    pub unsafe fn from_datum_unchecked(datum: pg_sys::Datum) -> Self {
        let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
        // Values stored in place with a plain 4-byte header (VARATT_IS_4B_U: the low two
        // bits of the first byte are 0 on little-endian) need no detoasting. Checking that
        // here skips a guarded FFI call per row, which matters in sequential scans.
        // SAFETY: a varlena datum has at least one readable header byte.
        let plain = cfg!(target_endian = "little") && unsafe { ptr.cast::<u8>().read() } & 0x03 == 0;
        let varlena = if plain {
            ptr
        } else {
            // SAFETY: caller's contract; detoasting returns a palloc'd copy that lives in
            // the current memory context.
            unsafe { pg_sys::pg_detoast_datum(ptr) }
        };
        let varlena = NonNull::new(varlena.cast::<u8>()).expect("detoasted vector is not null");
        // SAFETY: a detoasted value has a 4-byte header; the int16 dimension count after it
        // is read only when the size says it is there.
        let (size, dim) = unsafe {
            let size = pgrx::varlena::varsize_4b(varlena.as_ptr().cast());
            (size, if size >= HEADER_SIZE { varlena.as_ptr().add(4).cast::<i16>().read() } else { 0 })
        };
        ops::check_stored::<E>(dim, size).or_raise();
        Self { varlena, _elements: PhantomData }
    }
}

impl<E: VectorElement> FromDatum for VecArg<'_, E> {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        // SAFETY: the SQL signature guarantees the argument's type.
        (!is_null).then(|| unsafe { Self::from_datum_unchecked(datum) })
    }
}

unsafe impl<'fcx, E: VectorElement> ArgAbi<'fcx> for VecArg<'fcx, E> {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: forwarded caller contract.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

/// A vector produced in Rust, copied into a palloc'd varlena when returned to Postgres.
pub struct VecValue<E>(pub Vec<E>);

/// Builds a palloc'd `vector`/`halfvec` varlena in the current memory context.
/// Every constructor ends here, so the dimension bounds hold for every value written.
pub fn to_datum<E: VectorElement>(elements: &[E]) -> pg_sys::Datum {
    ops::check_dim::<E>(elements.len()).or_raise();
    let size = HEADER_SIZE + std::mem::size_of_val(elements);
    // SAFETY: palloc0 returns `size` zeroed bytes (so `unused` is 0), suitably aligned.
    unsafe {
        let ptr = pg_sys::palloc0(size).cast::<u8>();
        pgrx::varlena::set_varsize_4b(ptr.cast(), size as i32);
        ptr.add(4).cast::<i16>().write(elements.len() as i16);
        std::ptr::copy_nonoverlapping(elements.as_ptr(), ptr.add(HEADER_SIZE).cast::<E>(), elements.len());
        pg_sys::Datum::from(ptr)
    }
}

unsafe impl<E: VectorElement> BoxRet for VecValue<E> {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: the datum is a freshly built value of the declared return type.
        unsafe { fcinfo.return_raw_datum(to_datum(&self.0)) }
    }
}

/// A `bit(n)` value (Postgres's VarBit: varlena header, int32 bit length, bits MSB first).
pub struct BitString {
    pub bytes: Vec<u8>,
    pub bit_len: usize,
}

unsafe impl BoxRet for BitString {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        let size = 4 + 4 + self.bytes.len();
        // SAFETY: writes exactly `size` bytes into a fresh palloc'd buffer.
        unsafe {
            let ptr = pg_sys::palloc0(size).cast::<u8>();
            pgrx::varlena::set_varsize_4b(ptr.cast(), size as i32);
            ptr.add(4).cast::<i32>().write(self.bit_len as i32);
            std::ptr::copy_nonoverlapping(self.bytes.as_ptr(), ptr.add(8), self.bytes.len());
            fcinfo.return_raw_datum(pg_sys::Datum::from(ptr))
        }
    }
}

/// A `vector[]` built from Rust vectors (None for NULL elements).
pub struct VectorArray(pub Vec<Option<Vec<f32>>>);

unsafe impl BoxRet for VectorArray {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: the function is declared to return vector[]; its element type and
        // storage come from the catalog, and every element is a fresh vector datum.
        unsafe {
            let array_type = pg_sys::get_fn_expr_rettype((*fcinfo.as_mut_ptr()).flinfo);
            let element_type = pg_sys::get_element_type(array_type);
            let (mut length, mut by_value, mut align) = (0i16, false, 0 as std::ffi::c_char);
            pg_sys::get_typlenbyvalalign(element_type, &mut length, &mut by_value, &mut align);
            let mut elements: Vec<pg_sys::Datum> =
                self.0.iter().map(|v| v.as_deref().map_or(pg_sys::Datum::from(0), to_datum)).collect();
            let mut nulls: Vec<bool> = self.0.iter().map(Option::is_none).collect();
            let mut dims = [elements.len() as i32];
            let mut lower_bounds = [1i32];
            let array = pg_sys::construct_md_array(
                elements.as_mut_ptr(),
                nulls.as_mut_ptr(),
                1,
                dims.as_mut_ptr(),
                lower_bounds.as_mut_ptr(),
                element_type,
                length.into(),
                by_value,
                align,
            );
            fcinfo.return_raw_datum(pg_sys::Datum::from(array))
        }
    }
}


macro_rules! sql_type {
    ($rust:ty, $sql:expr) => {
        unsafe impl SqlTranslatable for $rust {
            const TYPE_IDENT: &'static str = $sql;
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal($sql));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal($sql)));
        }
    };
}

sql_type!(VecArg<'_, f32>, "vector");
sql_type!(VecValue<f32>, "vector");
sql_type!(VecArg<'_, half::f16>, "halfvec");
sql_type!(VecValue<half::f16>, "halfvec");
sql_type!(BitString, "bit");
sql_type!(VectorArray, "vector[]");
