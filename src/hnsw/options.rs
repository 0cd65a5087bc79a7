//! Index options (`WITH (m = 16, ef_construction = 64)`), the `hnsw.*` settings, and
//! their registration when the library loads.

use ragtune_core::error::{Error, ErrorKind};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

pub const DEFAULT_M: i32 = 16;
pub const DEFAULT_EF_CONSTRUCTION: i32 = 64;
pub const DEFAULT_EF_SEARCH: i32 = 40;

/// `hnsw.ef_search`: candidates kept while searching; more means better recall, slower.
pub static EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_EF_SEARCH);

/// `hnsw.iterative_scan`: whether a scan that ran out of results searches further
/// (for filtered queries), and whether it keeps results in distance order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum IterativeScan {
    #[name = c"off"]
    Off,
    /// Later batches may return rows nearer than rows already returned.
    #[name = c"relaxed_order"]
    RelaxedOrder,
    /// Rows nearer than one already returned are dropped, so the order is exact.
    #[name = c"strict_order"]
    StrictOrder,
}

pub static ITERATIVE_SCAN: GucSetting<IterativeScan> = GucSetting::<IterativeScan>::new(IterativeScan::Off);

/// `hnsw.max_scan_tuples`: elements an iterative scan may score before it stops.
pub static MAX_SCAN_TUPLES: GucSetting<i32> = GucSetting::<i32>::new(20_000);

static RELOPT_KIND: AtomicU32 = AtomicU32::new(0);

/// Layout of the parsed options, as `build_reloptions` fills it.
#[repr(C)]
struct Options {
    varlena_header: i32,
    m: i32,
    ef_construction: i32,
}

/// Registers the index options and settings; called from `_PG_init`.
pub fn init() {
    // SAFETY: runs once while the library loads, before any index uses the kind.
    unsafe {
        let kind = pg_sys::add_reloption_kind();
        RELOPT_KIND.store(kind, Ordering::Relaxed);
        let lock = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
        pg_sys::add_int_reloption(kind, c"m".as_ptr(), c"Max number of connections".as_ptr(), DEFAULT_M, 2, 100, lock);
        pg_sys::add_int_reloption(
            kind,
            c"ef_construction".as_ptr(),
            c"Size of the dynamic candidate list for construction".as_ptr(),
            DEFAULT_EF_CONSTRUCTION,
            4,
            1000,
            lock,
        );
    }
    GucRegistry::define_int_guc(
        c"hnsw.ef_search",
        c"Sets the size of the dynamic candidate list for search",
        c"Valid range is 1..1000.",
        &EF_SEARCH,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"hnsw.iterative_scan",
        c"Sets the mode for iterative scans",
        c"off, relaxed_order or strict_order.",
        &ITERATIVE_SCAN,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"hnsw.max_scan_tuples",
        c"Sets the max number of tuples to visit for iterative scans",
        c"Counts index elements scored; the scan ends after the batch that reaches it.",
        &MAX_SCAN_TUPLES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: plain call during library load.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"hnsw".as_ptr()) };
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amoptions(reloptions: pg_sys::Datum, validate: bool) -> *mut pg_sys::bytea {
    let table = [
        pg_sys::relopt_parse_elt {
            optname: c"m".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, m) as i32,
        },
        pg_sys::relopt_parse_elt {
            optname: c"ef_construction".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, ef_construction) as i32,
        },
    ];
    // SAFETY: the table describes `Options` exactly.
    unsafe {
        pg_sys::build_reloptions(
            reloptions,
            validate,
            RELOPT_KIND.load(Ordering::Relaxed),
            std::mem::size_of::<Options>(),
            table.as_ptr(),
            table.len() as i32,
        )
        .cast()
    }
}

/// `m` and `ef_construction` of an index, validated together.
///
/// # Safety
/// `index` must be an open index relation of this access method.
pub unsafe fn index_options(index: pg_sys::Relation) -> Result<(usize, usize), Error> {
    // SAFETY: rd_options is null or an `Options` built by `amoptions`.
    let (m, ef_construction) = unsafe {
        let options = (*index).rd_options.cast::<Options>();
        if options.is_null() {
            (DEFAULT_M, DEFAULT_EF_CONSTRUCTION)
        } else {
            ((*options).m, (*options).ef_construction)
        }
    };
    if ef_construction < 2 * m {
        return Err(Error::new(ErrorKind::InvalidParameterValue, "ef_construction must be greater than or equal to 2 * m"));
    }
    Ok((m as usize, ef_construction as usize))
}

/// Operator classes are declared by the extension script; nothing to check beyond that.
#[pg_guard]
pub unsafe extern "C-unwind" fn amvalidate(_opclass: pg_sys::Oid) -> bool {
    true
}
