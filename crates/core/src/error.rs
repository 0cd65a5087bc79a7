//! The one error value: what went wrong, and the SQLSTATE Postgres will report it with.
//!
//! Everything here returns `Result<_, Error>`; only the extension's glue (`pg::error`)
//! turns an `Error` into an `ereport(ERROR)`, so algorithms stay testable without a server.

use std::fmt;

/// The SQLSTATE an error is reported with (the subset ragtune raises).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 22P02
    InvalidTextRepresentation,
    /// 22P03
    InvalidBinaryRepresentation,
    /// 22000
    DataException,
    /// 22003
    NumericValueOutOfRange,
    /// 54000
    ProgramLimitExceeded,
    /// 22004
    NullValueNotAllowed,
    /// 22023
    InvalidParameterValue,
    /// 58P01: a file the server was told to use (ONNX Runtime's library) is missing.
    UndefinedFile,
    /// 38000: ONNX Runtime failed outside of anything the caller passed in.
    ExternalRoutineException,
    /// 42704: an unknown model.
    UndefinedObject,
    /// 42809: a model of the wrong kind (a generator used for embedding).
    WrongObjectType,
    /// 42501
    InsufficientPrivilege,
    /// 42703
    UndefinedColumn,
    /// 42804
    DatatypeMismatch,
    /// 57014: a model call stopped by cancel or statement_timeout.
    QueryCanceled,
    /// 53200
    OutOfMemory,
    /// 53000: the model service is full, or not running.
    InsufficientResources,
    /// 55000: the server lacks something a function needs (shared_preload_libraries).
    ObjectNotInPrerequisiteState,
}

impl ErrorKind {
    /// Every kind, in a fixed order: a kind travels between processes as its index here.
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::InvalidTextRepresentation,
        ErrorKind::InvalidBinaryRepresentation,
        ErrorKind::DataException,
        ErrorKind::NumericValueOutOfRange,
        ErrorKind::ProgramLimitExceeded,
        ErrorKind::NullValueNotAllowed,
        ErrorKind::InvalidParameterValue,
        ErrorKind::UndefinedFile,
        ErrorKind::ExternalRoutineException,
        ErrorKind::UndefinedObject,
        ErrorKind::WrongObjectType,
        ErrorKind::InsufficientPrivilege,
        ErrorKind::UndefinedColumn,
        ErrorKind::DatatypeMismatch,
        ErrorKind::QueryCanceled,
        ErrorKind::OutOfMemory,
        ErrorKind::InsufficientResources,
        ErrorKind::ObjectNotInPrerequisiteState,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), detail: None, hint: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
