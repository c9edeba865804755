//! One error type for everything a user can get wrong: each variant renders as one line that names
//! the file and, where there is one, the tensor or field at fault.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Reading a file failed (missing, unreadable).
    Io { path: String, message: String },
    /// `config.json` is not valid JSON, lacks a field, or holds a value we cannot run.
    Config { path: String, message: String },
    /// `model.safetensors` is malformed, truncated, or its tensors do not match the config.
    Checkpoint { path: String, tensor: Option<String>, message: String },
    /// Any other invalid input (a token id out of range, a shape that does not fit).
    Invalid(String),
    /// The GPU said no: no adapter, a validation error, a lost device, an allocation failure.
    Gpu(String),
    /// The user stopped the work (a Stop button).
    Cancelled,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::Config { path, message } => write!(f, "{path}: {message}"),
            Error::Checkpoint { path, tensor: Some(t), message } => write!(f, "{path}: tensor `{t}`: {message}"),
            Error::Checkpoint { path, tensor: None, message } => write!(f, "{path}: {message}"),
            Error::Invalid(message) => write!(f, "{message}"),
            Error::Gpu(message) => write!(f, "GPU: {message}"),
            Error::Cancelled => write!(f, "stopped"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Read a whole file; the error names the path.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), message: e.to_string() })
}
