//! The model catalog seen from a backend: settings, reading a model's row and bytes with
//! the caller's rights, ONNX Runtime loaded on first use, and one session per model kept
//! until the model's row changes (its `version`). SQL declarations: sql/models.sql.
//! Large objects and server files: `large_objects`; every catalog change: `changes`.

pub mod adapters;
pub mod cache;
pub mod changes;
pub mod large_objects;


use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::{OrRaise, OrRaiseSpi, Raise};
use crate::pg::spi::select_one;
use ragtune_core::models::{runtime, Embedder, Generator, GeneratorText, ModelConfig, ModelKind, Runtime, Tokenizer};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::thread::LocalKey;
use std::ffi::CString;
use cache::{BackendCache, Lease};
use large_objects::{may_read_large_object, read_large_object};
use std::path::Path;

/// `ragtune.onnxruntime_path`: ONNX Runtime's shared library (superuser-only: loading a
/// library runs its code in the server). scripts/setup.sh installs it here.
pub static ONNXRUNTIME_PATH: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(ragtune_core::models::runtime::DEFAULT_LIBRARY_PATH));
/// `ragtune.intra_op_threads`: threads one model call may use (superuser-only: the
/// host's cores are shared by every session).
pub static INTRA_OP_THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
/// `ragtune.draft_tokens`: most tokens a greedy generation drafts from its prompt and
/// checks in each step's model call (0: one token per call). Chosen by bench/rag_quality.sh.
pub static DRAFT_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(6);
/// `ragtune.answer_format`: how rag_answer() returns the generator's text, its Markdown
/// read as plain text (clean_text's Markdown rules) or as the model wrote it.
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AnswerFormat {
    #[name = c"text"]
    Text,
    #[name = c"markdown"]
    Markdown,
}
pub static ANSWER_FORMAT: GucSetting<AnswerFormat> = GucSetting::<AnswerFormat>::new(AnswerFormat::Text);
/// `ragtune.default_embedding_model`: the model `embed()` and `chunk()` use when none is named.
pub static DEFAULT_EMBEDDING_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"all-MiniLM-L6-v2"));
/// `ragtune.default_generator`: the model `generate()` and `rag_answer()` use when none is named.
pub static DEFAULT_GENERATOR: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"qwen2.5-coder-0.5b-instruct"));

/// Large objects are read and written in pieces of this size.
pub(crate) const PIECE: usize = 32 << 20;

pub fn init() {
    GucRegistry::define_string_guc(
        c"ragtune.onnxruntime_path",
        c"Path of ONNX Runtime's shared library (libonnxruntime.so)",
        c"Read when a backend first runs a model.",
        &ONNXRUNTIME_PATH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ragtune.intra_op_threads",
        c"Threads one ONNX Runtime call may use",
        c"Sessions are rebuilt when it changes. Superusers only: threads are shared by every session.",
        &INTRA_OP_THREADS,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ragtune.draft_tokens",
        c"Most tokens a greedy generation drafts from its prompt and checks in one model call",
        c"0 runs one token per call. Greedy answers are the same either way; only generations without a generator adapter draft, and through the model service only while one runs alone.",
        &DRAFT_TOKENS,
        0,
        ragtune_core::models::generate::MAX_DRAFT_TOKENS as i32,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"ragtune.answer_format",
        c"How rag_answer() returns the model's text: text (its Markdown read as plain text) or markdown (as written)",
        c"text keeps the words and code of code spans, fences, emphasis and links and drops their markup.",
        &ANSWER_FORMAT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ragtune.default_embedding_model",
        c"Embedding model used when none is named",
        c"A name from ragtune_models.",
        &DEFAULT_EMBEDDING_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ragtune.default_generator",
        c"Text generator used when none is named",
        c"A name from ragtune_models.",
        &DEFAULT_GENERATOR,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: plain call during library load.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"ragtune".as_ptr()) };
}

/// The process's ONNX Runtime, loaded from `ragtune.onnxruntime_path` on first use.
pub fn onnx_runtime() -> Result<&'static Runtime, Error> {
    let path = ONNXRUNTIME_PATH.get();
    let path = path.as_deref().and_then(|p| p.to_str().ok()).filter(|p| !p.is_empty()).ok_or_else(|| {
        Error::new(ErrorKind::InvalidParameterValue, format!("{} is not set", runtime::LIBRARY_SETTING))
            .with_hint("Set it to the path of libonnxruntime.so.")
    })?;
    runtime::load(Path::new(path))
}

/// What a backend needs to know about a model to decide whether its session is current.
pub struct ModelRow {
    pub name: String,
    pub config: ModelConfig,
    pub onnx: pg_sys::Oid,
    /// A generator's output projection (float16), when it was registered.
    pub lm_head: Option<pg_sys::Oid>,
    pub version: i64,
    /// The row was written by this transaction, so no other process (the model service)
    /// can see it yet.
    pub written_here: bool,
}

/// Reads `name`'s row and checks the caller may read its bytes (SELECT on its large
/// object), on every call, so a revoked grant takes effect at once even for a session
/// the backend already holds.
pub fn model_row(name: &str) -> Result<ModelRow, Error> {
    let row = Spi::connect(|client| {
        let table = client
            .select(
                "SELECT config::text, onnx, version, lm_head, xmin::text FROM ragtune_models WHERE name = $1",
                Some(1),
                &[name.into()],
            )
            .or_raise_spi();
        table.into_iter().next().map(|row| {
            (
                row.get::<String>(1).or_raise_spi().unwrap_or_default(),
                row.get::<pg_sys::Oid>(2).or_raise_spi().unwrap_or(pg_sys::InvalidOid),
                row.get::<i64>(3).or_raise_spi().unwrap_or_default(),
                row.get::<pg_sys::Oid>(4).or_raise_spi(),
                row.get::<String>(5).or_raise_spi().and_then(|x| x.parse::<u32>().ok()).unwrap_or(0),
            )
        })
    });
    let Some((config, onnx, version, lm_head, xmin)) = row else {
        return Err(Error::new(ErrorKind::UndefinedObject, format!("model \"{name}\" does not exist"))
            .with_hint("SELECT name FROM ragtune_models lists the registered models."));
    };
    if !may_read_large_object(onnx) {
        return Err(Error::new(ErrorKind::InsufficientPrivilege, format!("permission denied for model \"{name}\""))
            .with_hint(format!("The model's owner can allow it with grant_model('{name}', role).")));
    }
    let config = ModelConfig::from_json(&config)?;
    // SAFETY: plain lookup of a transaction id in this backend's transaction state.
    let written_here = unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xmin.into()) };
    Ok(ModelRow { name: name.to_string(), config, onnx, lm_head, version, written_here })
}

/// The model's tokenizer.json, from the same version of its row.
pub fn tokenizer_bytes(model: &ModelRow) -> Vec<u8> {
    select_one::<Vec<u8>>(
        "SELECT tokenizer FROM ragtune_models WHERE name = $1 AND version = $2",
        &[model.name.as_str().into(), model.version.into()],
    )
    .unwrap_or_default()
}

/// Checks a model before registration (reading its graph with the caller's rights) and
/// returns its config, normalized. A generator's lm_head (`lm_head_bytes` long) must be
/// float16 `[vocab, hidden]` for the graph's hidden_states output.
pub(crate) fn check_model(onnx: pg_sys::Oid, tokenizer: &[u8], config: &pgrx::JsonB, lm_head_bytes: Option<i64>) -> pgrx::JsonB {
    let config = ModelConfig::from_json(&config.0.to_string()).or_raise();
    config.validate().or_raise();
    let bytes = read_large_object(onnx);
    match &config {
        ModelConfig::Embedding(_) => {
            if lm_head_bytes.is_some() {
                Error::new(ErrorKind::InvalidParameterValue, "only generators have an lm_head").raise();
            }
            Embedder::new(onnx_runtime().or_raise(), &bytes, tokenizer, &config, 1).or_raise();
        }
        ModelConfig::Generator(generator) => {
            let loaded = Generator::new(onnx_runtime().or_raise(), &bytes, tokenizer, &config, 1).or_raise();
            if let Some(size) = lm_head_bytes {
                lm_head_shape(size, loaded.hidden_size(), generator.vocab_size).or_raise();
            }
        }
    }
    pgrx::JsonB(serde_json::from_str(&config.to_json()).expect("config serializes to JSON"))
}

/// `[vocab, hidden]` of a generator's lm_head of `size` bytes (float16), for a graph
/// whose hidden_states output is `hidden` wide; at least `vocab_size` rows.
pub fn lm_head_shape(size: i64, hidden: Option<usize>, vocab_size: Option<usize>) -> Result<(usize, usize), Error> {
    let hidden = hidden.ok_or_else(|| {
        Error::new(ErrorKind::InvalidParameterValue, "the model has an lm_head but its graph has no hidden_states output")
    })?;
    let size = size.max(0) as usize;
    let vocab = size / (2 * hidden);
    if size == 0 || size % (2 * hidden) != 0 || vocab < vocab_size.unwrap_or(0) {
        return Err(Error::new(
            ErrorKind::InvalidParameterValue,
            format!("lm_head has {size} bytes, not float16 [vocab, {hidden}] for a vocabulary of at least {}", vocab_size.unwrap_or(1)),
        ));
    }
    Ok((vocab, hidden))
}

/// A backend's loaded model (a session and its tokenizer) is good while the model's row
/// (its graph's large object and version: only the extension's functions write them)
/// and the thread setting stay as they were.
pub type ModelIdentity = (pg_sys::Oid, i64, usize);

thread_local! {
    /// Sessions of this backend, by model name. Never dropped: the backend's exit ends them.
    static EMBEDDERS: BackendCache<ModelIdentity, Embedder> = BackendCache::default();
    static GENERATORS: BackendCache<ModelIdentity, Generator> = BackendCache::default();
    /// Generators' tokenizers and configs, for backends whose model runs in the service.
    static GENERATOR_TEXTS: BackendCache<ModelIdentity, GeneratorText> = BackendCache::default();
    /// Embedding models' tokenizers, for chunk() (which needs no model session).
    static EMBEDDING_TOKENIZERS: BackendCache<ModelIdentity, Tokenizer> = BackendCache::default();
}

/// `name`, or else what the setting `default` names (None when it is empty).
pub(crate) fn name_or_setting(name: Option<&str>, default: &GucSetting<Option<CString>>) -> Option<String> {
    name.map(str::to_string).or_else(|| {
        default.get().as_deref().and_then(|n| n.to_str().ok()).filter(|n| !n.is_empty()).map(str::to_string)
    })
}

/// The model named `name`, or the one the setting `default` names, as the caller may use
/// it; an error unless it is of `kind`.
fn model_of_kind(name: Option<&str>, default: &GucSetting<Option<CString>>, setting: &str, kind: ModelKind) -> Result<ModelRow, Error> {
    let name = name_or_setting(name, default).ok_or_else(|| {
        Error::new(ErrorKind::InvalidParameterValue, format!("no model given and {setting} is not set"))
    })?;
    let row = model_row(&name)?;
    if row.config.kind() != kind {
        let article = |kind| if kind == ModelKind::Embedding { "an" } else { "a" };
        let found = row.config.kind();
        return Err(Error::new(
            ErrorKind::WrongObjectType,
            format!("model \"{name}\" is {} {found} model, not {} {kind} model", article(found), article(kind)),
        ));
    }
    Ok(row)
}

/// The generator a call names or, when it names none, `ragtune.default_generator`.
pub fn generator_name(name: Option<&str>) -> Option<String> {
    name_or_setting(name, &DEFAULT_GENERATOR)
}

/// The embedding model `name` (or the default one), as the caller may use it.
pub fn embedding_model(name: Option<&str>) -> Result<ModelRow, Error> {
    model_of_kind(name, &DEFAULT_EMBEDDING_MODEL, "ragtune.default_embedding_model", ModelKind::Embedding)
}

/// The generator `name` (or the default one), as the caller may use it.
pub fn generator_model(name: Option<&str>) -> Result<ModelRow, Error> {
    model_of_kind(name, &DEFAULT_GENERATOR, "ragtune.default_generator", ModelKind::Generator)
}

/// The backend's session of `model` from `cache`, loaded first if it is new or its row
/// changed.
fn lease_model<T: 'static>(
    cache: &'static LocalKey<BackendCache<ModelIdentity, T>>,
    model: &ModelRow,
    load: impl FnOnce(&Runtime, &[u8], &[u8], &ModelConfig, usize) -> Result<T, Error>,
) -> Result<Lease<ModelIdentity, T>, Error> {
    let threads = INTRA_OP_THREADS.get().max(1) as usize;
    Lease::take(cache, &model.name, (model.onnx, model.version, threads), || {
        let bytes = read_large_object(model.onnx);
        let tokenizer = tokenizer_bytes(model);
        load(onnx_runtime()?, &bytes, &tokenizer, &model.config, threads)
    })
}

/// Runs `f` with the backend's session of `model`, loading it first if it is new or
/// its row changed.
pub fn with_embedder<R>(model: &ModelRow, f: impl FnOnce(&mut Embedder) -> Result<R, Error>) -> Result<R, Error> {
    f(lease_model(&EMBEDDERS, model, Embedder::new)?.get())
}

/// Runs `f` with the tokenizer of embedding model `model` (no model session).
pub fn with_embedding_tokenizer<R>(model: &ModelRow, f: impl FnOnce(&Tokenizer) -> Result<R, Error>) -> Result<R, Error> {
    let mut lease = Lease::take(&EMBEDDING_TOKENIZERS, &model.name, (model.onnx, model.version, 0), || {
        model.config.validate()?;
        Tokenizer::from_bytes(&tokenizer_bytes(model), model.config.embedding()?.max_tokens)
    })?;
    f(lease.get())
}

/// The backend's session of generator `model`, for as long as the lease is held.
pub fn lease_generator(model: &ModelRow) -> Result<Lease<ModelIdentity, Generator>, Error> {
    lease_model(&GENERATORS, model, Generator::new)
}

/// The backend's tokenizer and config of generator `model` (no model session: what a
/// backend needs to make prompts for the model service).
pub fn lease_generator_text(model: &ModelRow) -> Result<Lease<ModelIdentity, GeneratorText>, Error> {
    Lease::take(&GENERATOR_TEXTS, &model.name, (model.onnx, model.version, 0), || {
        GeneratorText::new(&tokenizer_bytes(model), &model.config)
    })
}
