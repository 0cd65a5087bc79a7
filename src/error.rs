//! The crate's error value: what went wrong, as Postgres will report it.
//!
//! Pure code returns `Result<_, Error>`; only the SQL glue turns an `Error` into an
//! `ereport(ERROR)`, so algorithms stay testable without a server.

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

    /// Raises this error as a Postgres ERROR; never returns.
    pub fn raise(self) -> ! {
        use pgrx::pg_sys::errcodes::PgSqlErrorCode as Code;
        use pgrx::pg_sys::panic::ErrorReport;
        let code = match self.kind {
            ErrorKind::InvalidTextRepresentation => Code::ERRCODE_INVALID_TEXT_REPRESENTATION,
            ErrorKind::InvalidBinaryRepresentation => Code::ERRCODE_INVALID_BINARY_REPRESENTATION,
            ErrorKind::DataException => Code::ERRCODE_DATA_EXCEPTION,
            ErrorKind::NumericValueOutOfRange => Code::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            ErrorKind::ProgramLimitExceeded => Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            ErrorKind::NullValueNotAllowed => Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            ErrorKind::InvalidParameterValue => Code::ERRCODE_INVALID_PARAMETER_VALUE,
            ErrorKind::UndefinedFile => Code::ERRCODE_UNDEFINED_FILE,
            ErrorKind::ExternalRoutineException => Code::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            ErrorKind::UndefinedObject => Code::ERRCODE_UNDEFINED_OBJECT,
            ErrorKind::WrongObjectType => Code::ERRCODE_WRONG_OBJECT_TYPE,
            ErrorKind::InsufficientPrivilege => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            ErrorKind::UndefinedColumn => Code::ERRCODE_UNDEFINED_COLUMN,
            ErrorKind::DatatypeMismatch => Code::ERRCODE_DATATYPE_MISMATCH,
            ErrorKind::QueryCanceled => Code::ERRCODE_QUERY_CANCELED,
        };
        let mut report = ErrorReport::new(code, self.message, "ragtune");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
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

/// Unwraps a result inside SQL glue, raising the error as a Postgres ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(error) => error.raise(),
        }
    }
}
