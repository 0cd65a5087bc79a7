//! Changes to the catalogs (`ragtune_models`, `ragtune_rag_sources`, `ragtune_adapters`,
//! `ragtune_embedded_columns`). PUBLIC may only read them. Each change is an internal
//! SQL function, `ragtune_<change>_as(caller, ...)`, that PUBLIC may not execute; the
//! entry points here run it as the extension's owner with the calling role as its first
//! argument, so that the function checks what that role may do (sql/models.sql has the
//! checks). A SECURITY DEFINER function could not do this: inside one, the role that
//! called it is no longer known.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use super::check_model;
use crate::pg::error::OrRaiseSpi;
use crate::pg::spi::require_primary;
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::Raise;

/// The extension's owner and its schema (quoted), from pg_extension.
fn extension() -> (pg_sys::Oid, String) {
    let (owner, schema) = Spi::get_two::<pg_sys::Oid, String>(
        "SELECT e.extowner, pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'ragtune'",
    )
    .or_raise_spi();
    match (owner, schema) {
        (Some(owner), Some(schema)) => (owner, schema),
        _ => Error::new(ErrorKind::UndefinedObject, "extension \"ragtune\" is not installed").raise(),
    }
}

/// Puts the saved user back when dropped (an ERROR's abort would restore it too).
struct RestoreUser {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for RestoreUser {
    fn drop(&mut self) {
        // SAFETY: restores what GetUserIdAndSecContext returned.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// Runs internal function `function` of the extension as the extension's owner, with the
/// calling role and then `args`; its result as text. `what` names the change for the ERROR
/// a hot standby gives.
fn call_as_owner(what: &str, function: &str, args: Vec<DatumWithOid>) -> Option<String> {
    require_primary(what);
    let (owner, schema) = extension();
    let placeholders: String = (2..=args.len() + 1).map(|i| format!(", ${i}")).collect();
    let sql = format!("SELECT {schema}.{function}($1{placeholders})::pg_catalog.text");
    // SAFETY: the current user, read in a transaction.
    let caller = unsafe { pg_sys::GetUserId() };
    let mut all: Vec<DatumWithOid> = vec![caller.into()];
    all.extend(args);
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: saving and switching the user as PostgreSQL's own RI checks do; the switch
    // also forbids SET ROLE while it lasts.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        RestoreUser { user, context }
    };
    Spi::get_one_with_args::<String>(&sql, &all).or_raise_spi()
}

/// A model's name is checked, and registering it is for superusers and members of
/// ragtune_admin: before its bytes are read, and again when it is stored.
fn check_registration(name: &str) {
    require_primary("register_model");
    // SAFETY: the current user, read in a transaction.
    let caller = unsafe { pg_sys::GetUserId() };
    Spi::run_with_args(
        "SELECT ragtune_check_name('model', $1), ragtune_require_admin($2, format('register model \"%s\"', $1))",
        &[name.into(), caller.into()],
    )
    .or_raise_spi();
}

#[pg_extern(sql = false)]
fn ragtune_register_model(
    name: &str,
    onnx: pg_sys::Oid,
    tokenizer: &[u8],
    config: pgrx::JsonB,
    replace: bool,
    lm_head: Option<pg_sys::Oid>,
) -> Option<String> {
    check_registration(name);
    let lm_head_bytes = lm_head.and_then(|oid| {
        Spi::get_one_with_args::<i64>("SELECT ragtune_large_object_size($1)", &[oid.into()]).or_raise_spi()
    });
    let checked = check_model(onnx, tokenizer, &config, lm_head_bytes);
    call_as_owner(
        "register_model",
        "ragtune_store_model_as",
        vec![name.into(), checked.into(), onnx.into(), tokenizer.to_vec().into(), lm_head.into(), replace.into()],
    )
}

#[pg_extern(sql = false)]
fn drop_model(name: &str) {
    call_as_owner("drop_model", "ragtune_drop_model_as", vec![name.into()]);
}

#[pg_extern(sql = false)]
fn grant_model(name: &str, role: &str) {
    call_as_owner("grant_model", "ragtune_model_privilege_as", vec![name.into(), role.into(), true.into()]);
}

#[pg_extern(sql = false)]
fn revoke_model(name: &str, role: &str) {
    call_as_owner("revoke_model", "ragtune_model_privilege_as", vec![name.into(), role.into(), false.into()]);
}

#[pg_extern(sql = false)]
fn ragtune_register_rag_source(
    name: Option<&str>,
    relation: pg_sys::Oid,
    id_column: &str,
    text_column: &str,
    embedding_column: &str,
    model: Option<&str>,
    replace: bool,
    text_search: Option<pg_sys::Oid>,
    tsvector_column: Option<&str>,
) -> Option<String> {
    call_as_owner(
        "register_rag_source",
        "ragtune_store_rag_source_as",
        vec![
            name.into(),
            relation.into(),
            id_column.into(),
            text_column.into(),
            embedding_column.into(),
            model.into(),
            replace.into(),
            text_search.into(),
            tsvector_column.into(),
        ],
    )
}

#[pg_extern(sql = false)]
fn drop_rag_source(name: &str) {
    call_as_owner("drop_rag_source", "ragtune_drop_rag_source_as", vec![name.into()]);
}

#[pg_extern(sql = false)]
fn grant_rag_source(name: &str, role: &str) {
    call_as_owner("grant_rag_source", "ragtune_rag_source_privilege_as", vec![name.into(), role.into(), true.into()]);
}

#[pg_extern(sql = false)]
fn revoke_rag_source(name: &str, role: &str) {
    call_as_owner("revoke_rag_source", "ragtune_rag_source_privilege_as", vec![name.into(), role.into(), false.into()]);
}

#[pg_extern(sql = false)]
fn drop_adapter(name: &str) {
    call_as_owner("drop_adapter", "ragtune_drop_adapter_as", vec![name.into()]);
}

#[pg_extern(sql = false)]
fn grant_adapter(name: &str, role: &str) {
    call_as_owner("grant_adapter", "ragtune_adapter_privilege_as", vec![name.into(), role.into(), true.into()]);
}

#[pg_extern(sql = false)]
fn revoke_adapter(name: &str, role: &str) {
    call_as_owner("revoke_adapter", "ragtune_adapter_privilege_as", vec![name.into(), role.into(), false.into()]);
}

/// Stores an adapter the caller trained (adapters' training calls it last).
pub(crate) fn store_adapter(
    name: &str,
    kind: &str,
    base_model: &str,
    weights: Vec<u8>,
    options: serde_json::Value,
    metrics: serde_json::Value,
    replace: bool,
) {
    call_as_owner(
        "finetune_adapter",
        "ragtune_store_adapter_as",
        vec![
            name.into(),
            kind.into(),
            base_model.into(),
            weights.into(),
            pgrx::JsonB(options).into(),
            pgrx::JsonB(metrics).into(),
            replace.into(),
        ],
    );
}

#[pg_extern(sql = false)]
fn ragtune_store_embedded_column(source: pg_sys::Oid, text_column: &str, embedding_column: &str, model: Option<&str>) {
    call_as_owner(
        "embed_column",
        "ragtune_store_embedded_column_as",
        vec![source.into(), text_column.into(), embedding_column.into(), model.into()],
    );
}

/// pg_largeobject's oid (LargeObjectRelationId), the class of a large object in pg_depend;
/// pgrx's bindings leave it out.
const LARGE_OBJECT_RELATION_ID: pg_sys::Oid = pg_sys::Oid::from_u32(2613);

/// Makes large object `large_object` go with the extension: DROP EXTENSION removes it.
/// Only the extension's owner may call it (sql/models.sql revokes it from PUBLIC).
#[pg_extern(sql = false)]
fn ragtune_large_object_depends_on_extension(large_object: pg_sys::Oid) {
    // SAFETY: catalog lookups and a pg_depend insert in the current transaction.
    unsafe {
        let extension = pg_sys::get_extension_oid(c"ragtune".as_ptr(), false);
        let depender = pg_sys::ObjectAddress {
            classId: LARGE_OBJECT_RELATION_ID,
            objectId: large_object,
            objectSubId: 0,
        };
        let referenced = pg_sys::ObjectAddress { classId: pg_sys::ExtensionRelationId, objectId: extension, objectSubId: 0 };
        pg_sys::recordDependencyOn(&depender, &referenced, pg_sys::DependencyType::DEPENDENCY_AUTO);
    }
}
