//! The Hugging Face cache layout, as `huggingface_hub` (file_download.py,
//! `hf_hub_download`) writes and reads it, so that both share downloads:
//!
//! ```text
//! {cache}/models--OWNER--NAME/
//!     blobs/{etag}                  the file's bytes, named by its etag
//!     blobs/{etag}.incomplete       a download in progress (resumed with Range)
//!     refs/{revision}               the commit hash the branch or tag pointed to
//!     snapshots/{commit}/{file}  -> ../../blobs/{etag}   (relative symlink)
//!     .no_exist/{commit}/{file}     empty: the repo has no such file at that commit
//! {cache}/.locks/models--OWNER--NAME/{etag}.lock
//!                                   held while downloading (flock, like Python's filelock)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};
use crate::RepoId;

/// `huggingface_hub`'s REGEX_COMMIT_HASH: a full 40-hex git commit.
pub(crate) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A commit name from a server or a `refs/` file is used as a directory name:
/// only hex is accepted, which also rules out `..` and separators.
pub(crate) fn is_safe_commit(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An etag names a blob file: hub etags are hex (git sha1 or sha256); a few other
/// filename-safe characters are allowed for mirrors, nothing that could be a path.
pub(crate) fn is_safe_etag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'='))
}

/// What the cache knows about one file of a repo at a revision.
pub(crate) enum Cached {
    /// The snapshot has the file (and its blob exists).
    Present { commit: String, path: PathBuf },
    /// A previous look-up found that the repo has no such file at this commit.
    Absent { commit: String },
    /// Nothing is known.
    Unknown,
}

/// One repo's folder in the cache.
pub(crate) struct RepoCache {
    dir: PathBuf,
    locks: PathBuf,
}

impl RepoCache {
    pub(crate) fn new(cache_root: &Path, repo: &RepoId) -> RepoCache {
        RepoCache {
            dir: cache_root.join(repo.cache_folder_name()),
            locks: cache_root.join(".locks").join(repo.cache_folder_name()),
        }
    }

    pub(crate) fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub(crate) fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub(crate) fn lock(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    pub(crate) fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub(crate) fn pointer(&self, commit: &str, file: &str) -> PathBuf {
        self.snapshot(commit).join(file)
    }

    fn no_exist(&self, commit: &str, file: &str) -> PathBuf {
        self.dir.join(".no_exist").join(commit).join(file)
    }

    /// The commit a revision resolves to from the cache alone: a full commit hash
    /// is itself, a branch or tag is read from `refs/`.
    pub(crate) fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_safe_commit(commit).then(|| commit.to_string())
    }

    pub(crate) fn lookup(&self, revision: &str, file: &str) -> Cached {
        let Some(commit) = self.commit_for(revision) else {
            return Cached::Unknown;
        };
        let pointer = self.pointer(&commit, file);
        // `exists` follows the symlink: a dangling pointer (blob removed) is not a hit.
        if pointer.exists() {
            Cached::Present {
                commit,
                path: pointer,
            }
        } else if self.no_exist(&commit, file).exists() {
            Cached::Absent { commit }
        } else {
            Cached::Unknown
        }
    }

    /// Record where a branch or tag points (nothing to record for a commit hash).
    /// Written to a temporary file and renamed, so that a reader never sees half a hash.
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let refs = self.dir.join("refs");
        fs::create_dir_all(&refs).map_err(io_err(&refs))?;
        let path = refs.join(revision);
        if fs::read_to_string(&path).is_ok_and(|old| old.trim() == commit) {
            return Ok(());
        }
        let tmp = refs.join(format!(".{revision}.{}.tmp", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(commit.as_bytes()).map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Remember that the repo has no `file` at `commit` (an empty marker file, as
    /// `huggingface_hub` does), so that offline runs know it is absent, not missing.
    pub(crate) fn mark_absent(&self, commit: &str, file: &str) -> Result<()> {
        let path = self.no_exist(commit, file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::File::create(&path).map_err(io_err(&path))?;
        Ok(())
    }

    /// Point `snapshots/{commit}/{file}` at `blobs/{etag}` and return the pointer.
    pub(crate) fn link(&self, etag: &str, commit: &str, file: &str) -> Result<PathBuf> {
        let snapshot = self.snapshot(commit);
        fs::create_dir_all(&snapshot).map_err(io_err(&snapshot))?;
        let pointer = snapshot.join(file);
        // Made beside the pointer and renamed over it: replacing a stale pointer is atomic.
        let tmp = snapshot.join(format!(".{file}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        make_link(etag, &self.blob(etag), &tmp)?;
        fs::rename(&tmp, &pointer).map_err(io_err(&pointer))?;
        Ok(pointer)
    }
}

/// A relative link (`../../blobs/{etag}`): it survives moving the whole cache, and
/// is what `huggingface_hub` creates (`_create_symlink`).
#[cfg(unix)]
fn make_link(etag: &str, _blob: &Path, at: &Path) -> Result<()> {
    let target = Path::new("..").join("..").join("blobs").join(etag);
    std::os::unix::fs::symlink(target, at).map_err(io_err(at))
}

/// Without (unprivileged) symlinks, `huggingface_hub` falls back to copying the blob.
#[cfg(not(unix))]
fn make_link(_etag: &str, blob: &Path, at: &Path) -> Result<()> {
    fs::copy(blob, at).map(|_| ()).map_err(io_err(at))
}
