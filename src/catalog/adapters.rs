//! Adapters in the catalog (sql/adapters.sql): looking one up as the caller may use it,
//! checking it fits the model a call uses, and reading its weights (a generator
//! adapter's once per backend while its row is unchanged).
//!
//! An adapter's weights are a large object, like a model's graph: pg_dump and streaming
//! replicas carry them, and using one needs SELECT on it (grant_adapter() gives it).

use std::sync::Arc;

use pgrx::prelude::*;

use super::large_objects::{may_read_large_object, read_large_object};
use super::cache::{BackendCache, Lease};
use crate::pg::error::OrRaiseSpi;
use ragtune_core::error::{Error, ErrorKind};
use ragtune_core::finetune::AdapterKind;
use ragtune_core::finetune::{OutputAdapter, QueryAdapter};

/// An adapter's catalog row, read with the caller's rights.
pub struct AdapterRow {
    pub name: String,
    pub kind: AdapterKind,
    pub base_model: String,
    /// The system message a generator adapter was trained with.
    pub system: Option<String>,
    weights: pg_sys::Oid,
    version: i64,
}

/// Reads `name`'s row and checks the caller may use it (SELECT on its weights).
pub fn adapter_row(name: &str) -> Result<AdapterRow, Error> {
    let row = Spi::connect(|client| {
        let table = client
            .select(
                "SELECT kind, base_model, weights, version, options ->> 'system' FROM ragtune_adapters WHERE name = $1",
                Some(1),
                &[name.into()],
            )
            .or_raise_spi();
        table.into_iter().next().map(|row| {
            (
                row.get::<String>(1).or_raise_spi().unwrap_or_default(),
                row.get::<String>(2).or_raise_spi().unwrap_or_default(),
                row.get::<pg_sys::Oid>(3).or_raise_spi().unwrap_or(pg_sys::InvalidOid),
                row.get::<i64>(4).or_raise_spi().unwrap_or_default(),
                row.get::<String>(5).or_raise_spi(),
            )
        })
    });
    let Some((kind, base_model, weights, version, system)) = row else {
        return Err(Error::new(ErrorKind::UndefinedObject, format!("adapter \"{name}\" does not exist"))
            .with_hint("SELECT name, kind, base_model FROM ragtune_adapters lists the adapters."));
    };
    if !may_read_large_object(weights) {
        return Err(Error::new(ErrorKind::InsufficientPrivilege, format!("permission denied for adapter \"{name}\""))
            .with_hint(format!("The adapter's owner can allow it with grant_adapter('{name}', role).")));
    }
    Ok(AdapterRow { name: name.to_string(), kind: AdapterKind::parse(&kind)?, base_model, system, weights, version })
}

impl AdapterRow {
    /// An error unless this adapter is of `kind` and was trained on `model`.
    pub fn check_fits(&self, kind: AdapterKind, model: &str) -> Result<(), Error> {
        if self.kind != kind {
            return Err(Error::new(
                ErrorKind::WrongObjectType,
                format!("adapter \"{}\" is a {} adapter, not a {} adapter", self.name, self.kind.name(), kind.name()),
            ));
        }
        if self.base_model != model {
            return Err(Error::new(
                ErrorKind::WrongObjectType,
                format!("adapter \"{}\" was trained for model \"{}\", not \"{model}\"", self.name, self.base_model),
            )
            .with_hint("An adapter only works with its base model; train one for this model with finetune_adapter()."));
        }
        Ok(())
    }
}

thread_local! {
    /// Generator adapters this backend has read, by name, with their weights' large
    /// object and version.
    static OUTPUT_ADAPTERS: BackendCache<(pg_sys::Oid, i64), Arc<OutputAdapter>> = BackendCache::default();
}

/// The generator adapter of `row` for generator `model` (read once per backend while
/// its row is unchanged).
pub fn output_adapter(row: &AdapterRow, model: &str) -> Result<Arc<OutputAdapter>, Error> {
    row.check_fits(AdapterKind::Generator, model)?;
    let mut lease = Lease::take(&OUTPUT_ADAPTERS, &row.name, (row.weights, row.version), || {
        Ok(Arc::new(OutputAdapter::from_bytes(&read_large_object(row.weights))?))
    })?;
    Ok(lease.get().clone())
}

/// The retrieval adapter of `row` for embedding model `model`.
pub fn query_adapter(row: &AdapterRow, model: &str) -> Result<QueryAdapter, Error> {
    row.check_fits(AdapterKind::Retrieval, model)?;
    QueryAdapter::from_bytes(&read_large_object(row.weights))
}
