//! Official checkpoints by name: a native Hugging Face hub client.
//!
//! [`Hub::model`] fetches a model repo's `config.json`, `model.safetensors` and
//! `tokenizer.json` into the standard Hugging Face cache
//! (`$HF_HOME/hub/models--OWNER--NAME/{blobs,snapshots,refs}`), the layout that
//! Python's `huggingface_hub` reads and writes, so downloads are shared both
//! ways. It behaves like `huggingface_hub.hf_hub_download`:
//!
//! - `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE` and `HF_TOKEN`
//!   are honoured ([`Hub::from_env`]);
//! - a file already in the cache is not downloaded again; a download goes to
//!   `blobs/{etag}.incomplete`, resumes with `Range` after an interruption, is
//!   checked against the announced size and only then renamed to its final name;
//! - when the hub cannot be reached, a cached revision is used and stderr says
//!   so in one line; offline mode never touches the network.
//!
//! The official BD3-LM repos (kuleshov-group/bd3lm-*) ship no tokenizer: they
//! use GPT-2's, so a repo without `tokenizer.json` gets the one of
//! [`FALLBACK_TOKENIZER_REPO`] ([`TokenizerFile::Fallback`]). The no-EOS
//! baselines (e.g. kuleshov-group/sedd-noeos-owt) ship no `config.json`:
//! [`ModelFiles::config`] is then `None` and the caller infers the config.
//!
//! Why not the `hf-hub` crate: its builder honours `HF_HOME` and `HF_ENDPOINT`
//! but not `HF_HUB_OFFLINE` (crates built on it implement that themselves), and
//! it has no fall-back on the cache when the network fails, nor the record of
//! absent files (`.no_exist/`) that lets an offline run tell "the repo has no
//! config.json" from "not downloaded". The protocol is two requests per file (a
//! HEAD for the metadata, a GET for the bytes), so it is written here on `ureq` (blocking, rustls with webpki
//! roots: https works without system certificates), whose per-agent redirect
//! limit gives the HEAD-without-redirects that the metadata request needs.
//!
//! Native only: nothing here builds for wasm32.

mod cache;
mod error;
mod http;
mod progress;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{HubError, Result};
pub use progress::Progress;

use cache::{Cached, RepoCache};
use http::{Fail, Head};

/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision used when none is asked for.
pub const DEFAULT_REVISION: &str = "main";
/// The model config, optional (the official no-EOS baselines have none).
pub const CONFIG_FILE: &str = "config.json";
/// The weights, required.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer, optional in a repo (see [`FALLBACK_TOKENIZER_REPO`]).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Where the tokenizer comes from when a repo has none: BD3-LM, MDLM and SEDD
/// checkpoints on OpenWebText use GPT-2's tokenizer.
pub const FALLBACK_TOKENIZER_REPO: &str = "openai-community/gpt2";

/// `huggingface_hub`'s limit on repo id length.
const MAX_REPO_ID_LEN: usize = 96;

/// A validated model repo id, `OWNER/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoId {
    owner: String,
    name: String,
}

impl RepoId {
    /// Parse `OWNER/NAME`: exactly one `/`, each part of `[A-Za-z0-9._-]`, no
    /// `..` or `--` (the cache folder separator), not starting or ending with
    /// `.` or `-` (the rules of `huggingface_hub`'s `validate_repo_id`).
    pub fn parse(id: &str) -> Result<RepoId> {
        let invalid = |reason| HubError::InvalidRepoId {
            id: id.to_string(),
            reason,
        };
        if id.len() > MAX_REPO_ID_LEN {
            return Err(invalid("longer than 96 characters"));
        }
        let Some((owner, name)) = id.split_once('/') else {
            return Err(invalid("expected OWNER/NAME"));
        };
        if name.contains('/') {
            return Err(invalid("expected exactly one `/`"));
        }
        for part in [owner, name] {
            if part.is_empty() {
                return Err(invalid("empty owner or name"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(invalid(
                    "only letters, digits, `.`, `_` and `-` are allowed",
                ));
            }
            if part.contains("..") || part.contains("--") {
                return Err(invalid("`..` and `--` are not allowed"));
            }
            if part.starts_with(['.', '-']) || part.ends_with(['.', '-']) {
                return Err(invalid("a part cannot start or end with `.` or `-`"));
            }
        }
        Ok(RepoId {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `models--OWNER--NAME`, the repo's folder in the cache.
    pub fn cache_folder_name(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Extensions of local checkpoint files: `dir/model.safetensors` that does not
/// exist is a mistyped path, not a repo, and deserves a file-not-found error.
const LOCAL_FILE_EXTENSIONS: [&str; 5] = [".safetensors", ".json", ".bin", ".pt", ".ckpt"];

/// Whether a command-line argument names a hub repo rather than a local file:
/// a valid `OWNER/NAME` for which no such local path exists, and whose name
/// does not end like a checkpoint file (`.safetensors`, `.json`, `.bin`, `.pt`, `.ckpt`).
pub fn looks_like_repo_id(arg: &str) -> bool {
    RepoId::parse(arg).is_ok()
        && !LOCAL_FILE_EXTENSIONS.iter().any(|ext| arg.ends_with(ext))
        && !Path::new(arg).exists()
}

/// Where the tokenizer of a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerFile {
    /// The repo's own `tokenizer.json`.
    Repo(PathBuf),
    /// The repo has none; this is `tokenizer.json` of another repo
    /// ([`FALLBACK_TOKENIZER_REPO`]).
    Fallback { repo: RepoId, path: PathBuf },
}

impl TokenizerFile {
    pub fn path(&self) -> &Path {
        match self {
            TokenizerFile::Repo(path) | TokenizerFile::Fallback { path, .. } => path,
        }
    }
}

/// A model's files in the cache. Every path is inside the snapshot folder
/// (a symlink to its blob), except a fallback tokenizer, which is in its own
/// repo's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    pub repo: RepoId,
    /// The commit the revision resolved to.
    pub commit: String,
    /// `…/models--OWNER--NAME/snapshots/{commit}`.
    pub dir: PathBuf,
    /// `None` when the repo has no `config.json`.
    pub config: Option<PathBuf>,
    pub weights: PathBuf,
    pub tokenizer: TokenizerFile,
}

/// A hub client: endpoint, cache folder, offline switch and token.
#[derive(Clone)]
pub struct Hub {
    endpoint: String,
    cache_root: PathBuf,
    offline: bool,
    token: Option<String>,
    progress: Progress,
    /// No redirects: the metadata request must see the hub's own reply.
    meta_agent: ureq::Agent,
    /// Follows redirects (CDNs may redirect again).
    data_agent: ureq::Agent,
}

impl std::fmt::Debug for Hub {
    // By hand, to keep the token out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint)
            .field("cache_root", &self.cache_root)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// `huggingface_hub`'s `_is_true` for boolean environment variables.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// The settings [`Hub::from_env`] reads, from any variable source (tests pass a map).
fn settings_from(
    var: impl Fn(&str) -> Option<String>,
) -> Result<(String, PathBuf, bool, Option<String>)> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                var("HOME")
                    .or_else(|| var("USERPROFILE"))
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .map(|cache| cache.join("huggingface"))
    });
    let cache_root = match var("HF_HUB_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => hf_home.clone().ok_or(HubError::NoCacheDir)?.join("hub"),
    };
    let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
    // `huggingface-cli login` stores the token in $HF_HOME/token.
    let token = var("HF_TOKEN").or_else(|| {
        let path = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| hf_home.map(|home| home.join("token")))?;
        let text = std::fs::read_to_string(path).ok()?;
        let token = text.trim();
        (!token.is_empty()).then(|| token.to_string())
    });
    Ok((endpoint, cache_root, offline, token))
}

/// Remembers which repos were already announced as served from the cache,
/// so that a model load says it once per repo.
#[derive(Default)]
struct Notices {
    cached: Vec<String>,
}

/// A file's state after a fetch.
enum Fetched {
    Present { commit: String, path: PathBuf },
    Absent { commit: Option<String> },
}

impl Hub {
    /// A client configured like `huggingface_hub`: `HF_ENDPOINT` (default
    /// <https://huggingface.co>), the cache in `HF_HUB_CACHE` or `$HF_HOME/hub`
    /// (`HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, then
    /// `~/.cache/huggingface`), `HF_HUB_OFFLINE=1` for no network at all, and
    /// `HF_TOKEN` (or the token file of `huggingface-cli login`) sent as
    /// `Authorization: Bearer` to the hub (never to the CDN). Progress: a bar
    /// on a terminal, lines otherwise.
    pub fn from_env() -> Result<Hub> {
        let (endpoint, cache_root, offline, token) =
            settings_from(|name| std::env::var(name).ok())?;
        Ok(Hub::with(&endpoint, &cache_root, offline)?
            .token(token)
            .progress(Progress::Auto))
    }

    /// A client with an explicit endpoint, hub cache folder (the folder that
    /// holds `models--*`, i.e. `$HF_HOME/hub`) and offline switch; no token,
    /// and plain progress lines (set others with [`Hub::token`], [`Hub::progress`]).
    pub fn with(endpoint: &str, cache_root: &Path, offline: bool) -> Result<Hub> {
        let endpoint = endpoint.trim().trim_end_matches('/');
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
            || endpoint.contains('?')
        {
            return Err(HubError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
            });
        }
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(30)))
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(concat!("bd3-hub/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Ok(Hub {
            endpoint: endpoint.to_string(),
            cache_root: cache_root.to_path_buf(),
            offline,
            token: None,
            progress: Progress::Plain,
            meta_agent: agent(0),
            data_agent: agent(10),
        })
    }

    /// Send this token to the hub (`Authorization: Bearer`).
    pub fn token(mut self, token: Option<String>) -> Hub {
        self.token = token;
        self
    }

    /// How downloads report progress on stderr.
    pub fn progress(mut self, progress: Progress) -> Hub {
        self.progress = progress;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The hub cache folder (holding `models--*`).
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// Fetch (or find in the cache) a model's `model.safetensors`, `config.json`
    /// and tokenizer at `revision` (a branch, tag or commit; usually
    /// [`DEFAULT_REVISION`]). The revision is resolved to a commit by the first
    /// request, and the other files are fetched at that commit, so all come
    /// from one snapshot.
    pub fn model(&self, repo: &RepoId, revision: &str) -> Result<ModelFiles> {
        validate_revision(revision)?;
        let mut notices = Notices::default();
        let (commit, weights) = match self.fetch(repo, revision, WEIGHTS_FILE, &mut notices)? {
            Fetched::Present { commit, path } => (commit, path),
            Fetched::Absent { .. } => {
                return Err(HubError::FileNotFound {
                    repo: repo.to_string(),
                    file: WEIGHTS_FILE.to_string(),
                    revision: revision.to_string(),
                })
            }
        };
        let config = match self.fetch(repo, &commit, CONFIG_FILE, &mut notices)? {
            Fetched::Present { path, .. } => Some(path),
            Fetched::Absent { .. } => None,
        };
        let tokenizer = match self.fetch(repo, &commit, TOKENIZER_FILE, &mut notices)? {
            Fetched::Present { path, .. } => TokenizerFile::Repo(path),
            Fetched::Absent { .. } => {
                let fallback = RepoId::parse(FALLBACK_TOKENIZER_REPO)?;
                match self.fetch(&fallback, DEFAULT_REVISION, TOKENIZER_FILE, &mut notices)? {
                    Fetched::Present { path, .. } => TokenizerFile::Fallback {
                        repo: fallback,
                        path,
                    },
                    Fetched::Absent { .. } => {
                        return Err(HubError::FileNotFound {
                            repo: FALLBACK_TOKENIZER_REPO.to_string(),
                            file: TOKENIZER_FILE.to_string(),
                            revision: DEFAULT_REVISION.to_string(),
                        })
                    }
                }
            }
        };
        Ok(ModelFiles {
            dir: RepoCache::new(&self.cache_root, repo).snapshot(&commit),
            repo: repo.clone(),
            commit,
            config,
            weights,
            tokenizer,
        })
    }

    /// One file, the way `hf_hub_download` gets it: a cached commit is used as
    /// is; offline, only the cache is read; online, the metadata decides whether
    /// to download, and a network failure falls back on the cache.
    fn fetch(
        &self,
        repo: &RepoId,
        revision: &str,
        file: &str,
        notices: &mut Notices,
    ) -> Result<Fetched> {
        let cache = RepoCache::new(&self.cache_root, repo);
        if cache::is_commit_hash(revision) {
            if let Cached::Present { commit, path } = cache.lookup(revision, file) {
                return Ok(Fetched::Present { commit, path });
            }
        }
        if self.offline {
            return match cache.lookup(revision, file) {
                Cached::Present { commit, path } => Ok(Fetched::Present { commit, path }),
                Cached::Absent { commit } => Ok(Fetched::Absent {
                    commit: Some(commit),
                }),
                Cached::Unknown => Err(HubError::NotCached {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    file: file.to_string(),
                }),
            };
        }
        let url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint);
        let meta = match self.head(&url, &repo.to_string(), revision) {
            Ok(Head::Found(meta)) => meta,
            Ok(Head::Missing { commit }) => {
                if let Some(commit) = &commit {
                    cache.mark_absent(commit, file)?;
                    cache.write_ref(revision, commit)?;
                }
                return Ok(Fetched::Absent { commit });
            }
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Network { url, source }) => {
                let found = match cache.lookup(revision, file) {
                    Cached::Present { commit, path } => Fetched::Present { commit, path },
                    Cached::Absent { commit } => Fetched::Absent {
                        commit: Some(commit),
                    },
                    Cached::Unknown => {
                        return Err(HubError::Unreachable {
                            repo: repo.to_string(),
                            revision: revision.to_string(),
                            file: file.to_string(),
                            url,
                            source,
                        })
                    }
                };
                let name = repo.to_string();
                if !notices.cached.contains(&name) {
                    let commit = match &found {
                        Fetched::Present { commit, .. } => commit.as_str(),
                        Fetched::Absent { commit } => commit.as_deref().unwrap_or("?"),
                    };
                    eprintln!(
                        "cannot reach {} ({source}); using the cached {name} at commit {commit}",
                        self.endpoint
                    );
                    notices.cached.push(name);
                }
                return Ok(found);
            }
        };
        cache.write_ref(revision, &meta.commit)?;
        let pointer = cache.pointer(&meta.commit, file);
        let blob = cache.blob(&meta.etag);
        let complete =
            |p: &Path| std::fs::metadata(p).is_ok_and(|m| meta.size.is_none_or(|s| m.len() == s));
        if complete(&pointer) && complete(&blob) {
            return Ok(Fetched::Present {
                commit: meta.commit,
                path: pointer,
            });
        }
        self.download(&cache, &meta, file)?;
        let path = cache.link(&meta.etag, &meta.commit, file)?;
        Ok(Fetched::Present {
            commit: meta.commit,
            path,
        })
    }
}

/// A revision becomes part of a URL and of a `refs/` file name.
fn validate_revision(revision: &str) -> Result<()> {
    let ok = !revision.is_empty()
        && revision.len() <= 128
        && !revision.starts_with('.')
        && !revision.contains("..")
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(HubError::InvalidRevision {
            revision: revision.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<(String, PathBuf, bool, Option<String>)> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings_from(|name| map.get(name).cloned())
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let (endpoint, root, offline, token) = settings(&[("HOME", "/home/u")]).unwrap();
        assert_eq!(endpoint, DEFAULT_ENDPOINT);
        assert_eq!(root, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!offline);
        assert_eq!(token, None);
        let (_, root, ..) = settings(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]).unwrap();
        assert_eq!(root, PathBuf::from("/xdg/huggingface/hub"));
        let (_, root, ..) = settings(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "/hf"),
        ])
        .unwrap();
        assert_eq!(root, PathBuf::from("/hf/hub"));
        let (_, root, ..) = settings(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]).unwrap();
        assert_eq!(root, PathBuf::from("/c"));
        assert!(matches!(settings(&[]), Err(HubError::NoCacheDir)));
    }

    #[test]
    fn endpoint_offline_and_token_come_from_the_environment() {
        let (endpoint, _, offline, token) = settings(&[
            ("HF_HOME", "/nonexistent-hf-home"),
            ("HF_ENDPOINT", "http://mirror.local"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_x"),
        ])
        .unwrap();
        assert_eq!(endpoint, "http://mirror.local");
        assert!(offline);
        assert_eq!(token.as_deref(), Some("hf_x"));
        for (value, expected) in [
            ("true", true),
            ("YES", true),
            ("on", true),
            ("0", false),
            ("no", false),
        ] {
            let (_, _, offline, _) =
                settings(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", value)]).unwrap();
            assert_eq!(offline, expected, "HF_HUB_OFFLINE={value}");
        }
    }

    #[test]
    fn endpoints_must_be_http() {
        let dir = Path::new("/nonexistent");
        assert!(matches!(
            Hub::with("ftp://x", dir, false),
            Err(HubError::InvalidEndpoint { .. })
        ));
        assert_eq!(
            Hub::with("https://hf.co/", dir, false).unwrap().endpoint(),
            "https://hf.co"
        );
    }

    #[test]
    fn revisions_are_validated() {
        for ok in [
            "main",
            "v1.0",
            "0123456789abcdef0123456789abcdef01234567",
            "my_branch-2",
        ] {
            assert!(validate_revision(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "refs%2Fpr"] {
            assert!(validate_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repo_ids_map_to_cache_folders() {
        let id = RepoId::parse("kuleshov-group/bd3lm-owt-block_size4").unwrap();
        assert_eq!(id.owner(), "kuleshov-group");
        assert_eq!(id.name(), "bd3lm-owt-block_size4");
        assert_eq!(
            id.cache_folder_name(),
            "models--kuleshov-group--bd3lm-owt-block_size4"
        );
        assert_eq!(id.to_string(), "kuleshov-group/bd3lm-owt-block_size4");
    }
}
