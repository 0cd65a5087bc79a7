//! Bytes kept as large objects (models' graphs, adapters' weights) and server files read
//! into them, always with the caller's rights.

use super::PIECE;
use crate::pg::error::OrRaiseSpi;
use crate::pg::spi::select_one;
use crate::pg::error::{OrRaise, Raise};
use pgrx::prelude::*;
use ragtune_core::error::{Error, ErrorKind};
use std::io::Read;

/// Whether the caller has SELECT on large object `oid` (models' graphs, adapters'
/// weights: what using them needs).
pub fn may_read_large_object(oid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup in the current transaction; a missing large object
    // raises Postgres's own error.
    let result = unsafe {
        pg_sys::pg_largeobject_aclcheck_snapshot(oid, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode, std::ptr::null_mut())
    };
    result == pg_sys::AclResult::ACLCHECK_OK
}

/// All bytes of large object `oid`, read with the caller's rights.
pub fn read_large_object(oid: pg_sys::Oid) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        pg_sys::check_for_interrupts!();
        let piece = select_one::<Vec<u8>>(
            "SELECT pg_catalog.lo_get($1, $2, $3)",
            &[oid.into(), (bytes.len() as i64).into(), (PIECE as i32).into()],
        )
        .unwrap_or_default();
        let last = piece.len() < PIECE;
        // A large object can be larger than the memory there is: an ERROR, not an abort.
        if bytes.try_reserve(piece.len()).is_err() {
            Error::new(ErrorKind::ProgramLimitExceeded, format!("out of memory reading large object {} past {} bytes", oid.to_u32(), bytes.len()))
                .raise();
        }
        bytes.extend_from_slice(&piece);
        if last {
            return bytes;
        }
    }
}

/// Reading server files is for superusers and members of pg_read_server_files.
fn check_may_read_server_files() -> Result<(), Error> {
    // SAFETY: plain catalog lookups in a transaction.
    let allowed = unsafe {
        pg_sys::superuser() || pg_sys::has_privs_of_role(pg_sys::GetUserId(), pg_sys::Oid::from(pg_sys::ROLE_PG_READ_SERVER_FILES))
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InsufficientPrivilege, "permission denied to read server files")
            .with_detail("Only superusers and members of pg_read_server_files may register models from server files.")
            .with_hint("Register the model from its bytes with register_model() instead."))
    }
}

fn open_server_file(path: &str) -> Result<std::fs::File, Error> {
    check_may_read_server_files()?;
    std::fs::File::open(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound { ErrorKind::UndefinedFile } else { ErrorKind::ExternalRoutineException };
        Error::new(kind, format!("could not open file \"{path}\": {e}"))
    })
}

#[pg_extern(sql = false)]
fn ragtune_read_file(path: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    open_server_file(path)
        .and_then(|mut file| {
            file.read_to_end(&mut bytes)
                .map_err(|e| Error::new(ErrorKind::ExternalRoutineException, format!("could not read file \"{path}\": {e}")))
        })
        .or_raise();
    bytes
}

/// Streams a server file into a new large object (any size), returning its oid; None
/// for a missing file when `missing_ok`.
#[pg_extern(sql = false)]
fn ragtune_file_to_large_object(path: &str, missing_ok: bool) -> Option<pg_sys::Oid> {
    let mut file = match open_server_file(path) {
        Err(e) if missing_ok && e.kind == ErrorKind::UndefinedFile => return None,
        opened => opened.or_raise(),
    };
    let oid = Spi::get_one::<pg_sys::Oid>("SELECT lo_create(0)").or_raise_spi().expect("lo_create returns an oid");
    let mut piece = vec![0u8; PIECE];
    let mut offset = 0i64;
    loop {
        pg_sys::check_for_interrupts!();
        let mut filled = 0;
        while filled < PIECE {
            match file.read(&mut piece[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => Error::new(ErrorKind::ExternalRoutineException, format!("could not read file \"{path}\": {e}")).raise(),
            }
        }
        if filled == 0 {
            return Some(oid);
        }
        Spi::run_with_args("SELECT lo_put($1, $2, $3)", &[oid.into(), offset.into(), piece[..filled].to_vec().into()])
            .or_raise_spi();
        offset += filled as i64;
    }
}

