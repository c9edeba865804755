//! The one error type of this crate. Every message is one line and names what
//! failed (the repo, the file, the URL or the path); causes are kept as sources.

use std::io;
use std::path::PathBuf;

/// Why a hub look-up or download failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The argument is not a valid `OWNER/NAME`.
    #[error("invalid Hugging Face repo id `{id}`: {reason}")]
    InvalidRepoId { id: String, reason: &'static str },

    /// The revision is not a branch, tag or commit name this client accepts.
    #[error(
        "invalid revision `{revision}`: use a branch, tag or commit name made of [A-Za-z0-9._-]"
    )]
    InvalidRevision { revision: String },

    /// `HF_ENDPOINT` (or the endpoint given) is not an http(s) URL.
    #[error("invalid hub endpoint `{endpoint}`: it must start with http:// or https://")]
    InvalidEndpoint { endpoint: String },

    /// None of `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME` or `HOME` is set.
    #[error("cannot locate the Hugging Face cache: set HF_HOME (or HF_HUB_CACHE)")]
    NoCacheDir,

    /// A file-system operation in the cache failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    /// The repo does not exist, or is private or gated and the token (if any) gives no access.
    #[error("{repo}: repository not found or not accessible (HTTP {status} from {url}); private and gated repos need HF_TOKEN")]
    RepoNotFound {
        repo: String,
        status: u16,
        url: String,
    },

    /// The revision does not exist in the repo.
    #[error("{repo}: revision `{revision}` not found ({url})")]
    RevisionNotFound {
        repo: String,
        revision: String,
        url: String,
    },

    /// A file the model needs is not in the repo.
    #[error("{repo}: the repo has no `{file}` at revision {revision}")]
    FileNotFound {
        repo: String,
        file: String,
        revision: String,
    },

    /// The server answered with an unexpected HTTP status.
    #[error("HTTP {status} from {url}")]
    HttpStatus { status: u16, url: String },

    /// The request failed below HTTP (TLS, protocol, too many redirects, ...).
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        source: Box<ureq::Error>,
    },

    /// The hub cannot be reached and the cache does not have what is needed.
    #[error(
        "cannot reach {url} and {repo} (revision {revision}) has no cached `{file}`: {source}"
    )]
    Unreachable {
        repo: String,
        revision: String,
        file: String,
        url: String,
        source: Box<ureq::Error>,
    },

    /// Offline mode (`HF_HUB_OFFLINE`) and the file is not in the cache.
    #[error("offline mode (HF_HUB_OFFLINE) and {repo} (revision {revision}) has no cached `{file}`; run once online to download it")]
    NotCached {
        repo: String,
        revision: String,
        file: String,
    },

    /// A reply lacks a header this protocol needs, or carries a malformed one.
    #[error("unexpected reply from {url}: {reason}")]
    BadReply { url: String, reason: String },

    /// The body ended early; the bytes received are kept and the next run resumes.
    #[error("download of {url} stopped after {got} of {expected} bytes; run again to resume (partial file {path})")]
    Truncated {
        url: String,
        path: PathBuf,
        got: u64,
        expected: u64,
    },

    /// Reading the body failed; the bytes received are kept and the next run resumes.
    #[error("download of {url} interrupted after {got} bytes: {source}; run again to resume")]
    Interrupted {
        url: String,
        got: u64,
        source: io::Error,
    },

    /// The server sent more bytes than it announced; the partial file is discarded.
    #[error("{url} sent more than the {expected} bytes it announced; the partial download was discarded")]
    Oversized { url: String, expected: u64 },
}

/// Result with [`HubError`].
pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Attach the path to an `io::Error`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> HubError {
    let path = path.into();
    move |source| HubError::Io { path, source }
}
