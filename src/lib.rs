//! ragtune: vectors, an HNSW index, in-database embeddings, RAG and fine-tuning for
//! PostgreSQL.
//!
//! Layout: pure algorithms (`kernels`, `types::ops`, `types::text`, `models`) know nothing of
//! Postgres and are covered by plain `cargo test`; the rest is thin pgrx glue. The SQL
//! declarations are hand-written in `sql/` so the surface matches pgvector exactly.

pub mod adapters;
pub mod catalog;
pub mod catalog_changes;
pub mod embed;
pub mod error;
pub mod finetune;
pub mod generate;
pub mod hnsw;
pub mod kernels;
pub mod models;
pub mod rag;
pub mod rng;
#[doc(hidden)]
pub mod testing;
pub mod types;

::pgrx::pg_module_magic!(name, version);

::pgrx::extension_sql_file!("../sql/types.sql", name = "types", bootstrap);
::pgrx::extension_sql_file!("../sql/hnsw.sql", name = "hnsw", requires = ["types"]);
::pgrx::extension_sql_file!("../sql/models.sql", name = "models", requires = ["types"]);
::pgrx::extension_sql_file!("../sql/rag.sql", name = "rag", requires = ["models"]);
::pgrx::extension_sql_file!("../sql/adapters.sql", name = "adapters", requires = ["rag"]);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hnsw::init();
    catalog::init();
    rag::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
