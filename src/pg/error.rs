//! Raising ragtune's [`Error`] as a Postgres ERROR with its SQLSTATE.

use pgrx::pg_sys;
use ragtune_core::error::{Error, ErrorKind};

/// Raises an error as a Postgres ERROR; never returns.
pub trait Raise {
    fn raise(self) -> !;
}

impl Raise for Error {
    fn raise(self) -> ! {
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
            ErrorKind::OutOfMemory => Code::ERRCODE_OUT_OF_MEMORY,
            ErrorKind::InsufficientResources => Code::ERRCODE_INSUFFICIENT_RESOURCES,
            ErrorKind::ObjectNotInPrerequisiteState => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
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

/// Raises a model error; a model call stopped by a cancel request raises Postgres's own
/// error for it ("canceling statement due to statement timeout", ...).
pub fn raise_model_error<T>(result: Result<T, Error>) -> T {
    result.unwrap_or_else(|error| {
        pg_sys::check_for_interrupts!();
        error.raise()
    })
}

/// SPI failures are bugs or broken catalogs; report them as errors, not panics.
pub trait OrRaiseSpi<T> {
    fn or_raise_spi(self) -> T;
}

impl<T> OrRaiseSpi<T> for Result<T, pgrx::spi::SpiError> {
    fn or_raise_spi(self) -> T {
        self.unwrap_or_else(|e| Error::new(ErrorKind::ExternalRoutineException, format!("SPI failed: {e}")).raise())
    }
}
