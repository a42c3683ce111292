//! The engine's one error type. Every planning error names the column,
//! table or clause it is about, so a user can fix the query from the
//! message alone.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// The query does not parse (the parser's message, with its position).
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// The query parses but cannot be planned: an unknown column, a type
    /// mismatch, an aggregate where none may be, an unsupported clause.
    #[error("planning error: {0}")]
    Plan(String),
    /// Reading a source failed (a missing file, a malformed CSV row).
    #[error("source error: {0}")]
    Source(String),
    /// An operator failed on data (a division by zero in a strict cast, a
    /// shuffle block that does not decode).
    #[error("execution error: {0}")]
    Execution(String),
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Shorthand for a planning error with a formatted message.
#[macro_export]
macro_rules! plan_err {
    ($($arg:tt)*) => { $crate::error::EngineError::Plan(format!($($arg)*)) };
}

/// Shorthand for an execution error with a formatted message.
#[macro_export]
macro_rules! exec_err {
    ($($arg:tt)*) => { $crate::error::EngineError::Execution(format!($($arg)*)) };
}
