//! The one error type of the engine: every bad argument at the public API comes back as an
//! `Error` that names the problem, never as a panic.

use std::fmt;

/// Everything that can go wrong in the engine, worded for the person who called it.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Two shapes that must agree do not; `op` names the operation.
    ShapeMismatch {
        op: &'static str,
        expected: String,
        got: Vec<usize>,
    },
    /// A tensor has a dimension of size zero, which no op accepts.
    ZeroSizedDim { op: &'static str, shape: Vec<usize> },
    /// An op got the wrong number of inputs.
    WrongInputCount {
        op: &'static str,
        expected: String,
        got: usize,
    },
    /// An argument is out of its valid range; the message says which and why.
    InvalidArgument { op: &'static str, message: String },
    /// A gradient was asked for a variable that does not belong to this tape.
    UnknownVar(usize),
    /// Reading or writing a file failed.
    Io { path: String, message: String },
    /// A file had the wrong format or contents.
    Format { path: String, message: String },
}

impl Error {
    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            op,
            message: message.into(),
        }
    }

    /// Shorthand for an [`Error::ShapeMismatch`].
    pub fn shape(op: &'static str, expected: impl Into<String>, got: &[usize]) -> Error {
        Error::ShapeMismatch {
            op,
            expected: expected.into(),
            got: got.to_vec(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { op, expected, got } => {
                write!(f, "{op}: expected shape {expected}, got {got:?}")
            }
            Error::ZeroSizedDim { op, shape } => {
                write!(f, "{op}: shape {shape:?} has a dimension of size zero")
            }
            Error::WrongInputCount { op, expected, got } => {
                write!(f, "{op}: expected {expected} inputs, got {got}")
            }
            Error::InvalidArgument { op, message } => write!(f, "{op}: {message}"),
            Error::UnknownVar(id) => write!(f, "variable #{id} does not belong to this tape"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::Format { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
