//! Read-only queries. pgrx's `Spi::get_one*` run their query as an update, which assigns a
//! transaction id: on a hot standby that is an ERROR, and on a primary it burns an XID for
//! every model load. What only reads goes through here instead; what writes checks first
//! that this server is not a hot standby.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::prelude::*;

use super::error::OrRaiseSpi;

/// The first column of the first row of read-only query `sql` (None when there is no row
/// or it is NULL); an SPI failure is raised.
pub fn select_one<A: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<A> {
    Spi::connect(|client| client.select(sql, Some(1), args).or_raise_spi().first().get_one::<A>().or_raise_spi())
}

/// On a hot standby, raises ragtune_require_primary()'s ERROR for `what` (the function
/// that was called). It must come before anything that writes: pgrx's update-mode SPI
/// would fail there first, with an ERROR about transaction ids.
pub fn require_primary(what: &str) {
    // SAFETY: reads the shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        Spi::connect(|client| {
            client.select("SELECT ragtune_require_primary($1)", None, &[what.into()]).or_raise_spi();
        });
    }
}
