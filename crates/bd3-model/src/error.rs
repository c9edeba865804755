//! One error type for everything a user can get wrong: each variant renders as one line that names
//! the file and, where there is one, the tensor or field at fault.
//!
//! Where a lower-level error caused it (an `io::Error`, a JSON parse error, the `safetensors` or
//! `tokenizers` crate refusing a file), that error is the variant's [`source`](std::error::Error::source)
//! and is *not* repeated in its `Display`, as the Rust API guidelines ask. Print the whole chain on one
//! line with [`Error::report`] (or anyhow's `{:#}`), e.g. `config.json: No such file or directory (os error 2)`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or folder failed (missing, unreadable, a full disk).
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file or folder is there but cannot serve: not a model folder, not UTF-8, a corpus without text.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A JSON document (a `config.json`, a safetensors header, one line of a JSONL corpus) does not parse.
    #[error("{path}: {message}")]
    Json {
        path: String,
        message: String,
        source: serde_json::Error,
    },
    /// `config.json` lacks a field or holds a value we cannot run.
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    /// The `tokenizers` crate refused a tokenizer file.
    #[error("{path}: {message}")]
    Tokenizer {
        path: String,
        message: String,
        source: tokenizers::Error,
    },
    /// `model.safetensors` is malformed or truncated, or its tensors do not match the config.
    #[error("{path}: {}{message}", tensor_prefix(tensor))]
    Checkpoint {
        path: String,
        tensor: Option<String>,
        message: String,
    },
    /// The `safetensors` crate refused a file that passed our own header checks.
    #[error("{path}: {message}")]
    Safetensors {
        path: String,
        message: String,
        source: safetensors::SafeTensorError,
    },
    /// Any other invalid input (a token id out of range, a shape that does not fit).
    #[error("{0}")]
    Invalid(String),
    /// The GPU said no: no adapter, a validation error, a lost device, an allocation failure.
    #[error("GPU: {0}")]
    Gpu(String),
    /// The user stopped the work (a Stop button).
    #[error("stopped")]
    Cancelled,
}

fn tensor_prefix(tensor: &Option<String>) -> String {
    tensor
        .as_ref()
        .map_or(String::new(), |t| format!("tensor `{t}`: "))
}

impl Error {
    /// The error and every cause under it on one line, `outer: inner: …`: what a user should see.
    pub fn report(&self) -> String {
        report(self)
    }
}

/// Any error and its chain of sources on one line, joined by `": "` (what anyhow's `{:#}` prints).
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    // Some causes (serde_json's) can hold a line break; the message stays one line.
    out.replace('\n', " ")
}

pub type Result<T> = std::result::Result<T, Error>;

/// Read a whole file; the error names the path.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_kept_and_reported_once_on_one_line() {
        let e = read_file(std::path::Path::new("/nonexistent/config.json")).unwrap_err();
        let io = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the io::Error is the source");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "/nonexistent/config.json");
        let line = e.report();
        assert!(
            line.starts_with("/nonexistent/config.json: ") && line.ends_with(&io.to_string()),
            "{line}"
        );
        assert_eq!(line.matches(&io.to_string()).count(), 1, "{line}");

        let json = serde_json::from_slice::<serde_json::Value>(b"{not json").unwrap_err();
        let e = Error::Json {
            path: "config.json".into(),
            message: "not valid JSON".into(),
            source: json,
        };
        assert!(
            e.report()
                .starts_with("config.json: not valid JSON: key must be a string"),
            "{}",
            e.report()
        );
        let e = Error::Checkpoint {
            path: "m.safetensors".into(),
            tensor: Some("t".into()),
            message: "missing".into(),
        };
        assert_eq!(e.report(), "m.safetensors: tensor `t`: missing");
    }
}
