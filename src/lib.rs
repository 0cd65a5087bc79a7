//! ragtune: vectors, an HNSW index, in-database embeddings, RAG and fine-tuning for
//! PostgreSQL.
//!
//! Layout: everything that needs no server lives in `crates/core` (ragtune-core: kernels,
//! vector maths, HNSW graphs, models, adapters' maths), tested with plain
//! `cargo test -p ragtune-core`; this crate is the pgrx glue around it. The SQL
//! declarations are hand-written in `sql/` so the surface matches pgvector exactly.

pub mod adapters;
pub mod catalog;
pub mod evaluate;
pub mod hnsw;
pub mod models;
pub mod pg;
pub mod rag;
pub mod service;
pub mod types;

::pgrx::pg_module_magic!(name, version);

::pgrx::extension_sql_file!("../sql/types.sql", name = "types", bootstrap);
::pgrx::extension_sql_file!("../sql/hnsw.sql", name = "hnsw", requires = ["types"]);
::pgrx::extension_sql_file!("../sql/models.sql", name = "models", requires = ["types"]);
::pgrx::extension_sql_file!("../sql/generate.sql", name = "generate", requires = ["models"]);
::pgrx::extension_sql_file!("../sql/rag.sql", name = "rag", requires = ["generate"]);
::pgrx::extension_sql_file!("../sql/adapters.sql", name = "adapters", requires = ["rag"]);
::pgrx::extension_sql_file!("../sql/service.sql", name = "service", requires = ["adapters"]);
::pgrx::extension_sql_file!("../sql/evaluate.sql", name = "evaluate", requires = ["service"]);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hnsw::init();
    catalog::init();
    rag::init();
    service::init();
    rag::answer_stats::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The model service, as the demo and the other test clusters run it.
        vec!["shared_preload_libraries = 'ragtune'"]
    }
}
