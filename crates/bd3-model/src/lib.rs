//! BD3-LM without a GPU: everything about a model that is plain data and arithmetic.
//!
//! Data flow: `config.json` → [`ModelConfig`] → [`Checkpoint`] (strict) → handed to `bd3-gpu`.
//! The noise schedule, masks and constant tables live here so the CPU tests and the GPU share them.

pub mod checkpoint;
pub mod config;
pub mod cpu_ref;
pub mod data;
pub mod error;
pub mod infer;
pub mod init;
mod json;
pub mod mask;
pub mod objective;
pub mod sampler;
pub mod schedule;
pub mod tables;
pub mod tensor_file;
pub mod tokenizer;

pub use checkpoint::Checkpoint;
pub use config::{ModelConfig, ModelKind};
pub use error::{Error, Result};
pub use infer::InferredField;
pub use mask::AttentionMask;

/// A loaded checkpoint folder.
pub struct ModelDir {
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
    /// The fields that were inferred because the folder has no `config.json` (empty when it has one);
    /// [`ModelDir::inferred_summary`] puts them on one line for the user.
    pub inferred: Vec<InferredField>,
}

impl ModelDir {
    /// `config.json absent: inferred kind sedd (given); vocab_size 50258, ... (from the tensors); ...`,
    /// or None when the config was read from `config.json`.
    pub fn inferred_summary(&self) -> Option<String> {
        (!self.inferred.is_empty()).then(|| infer::summary(&self.inferred))
    }
}

/// A checkpoint folder: `config.json` + `model.safetensors`, checked against each other. Without a
/// `config.json` (the official no-EOS baselines ship none) the config is inferred from the tensors
/// and the documented defaults ([`infer::infer_config`]); `kind_override` is then needed where the
/// tensors cannot tell the kind (MDLM or SEDD). With a `config.json` it overrides the kind it names.
pub fn load_model_dir(dir: &std::path::Path, kind_override: Option<ModelKind>) -> Result<ModelDir> {
    if !dir.is_dir() {
        return Err(Error::File {
            path: dir.to_path_buf(),
            message: "not a model folder".into(),
        });
    }
    let (config_path, weights_path) = (dir.join("config.json"), dir.join("model.safetensors"));
    // Anything at the name (an unreadable file, a dangling link) counts as a config.json: reading it
    // then fails with its own error rather than a guess.
    if std::fs::symlink_metadata(&config_path).is_ok() {
        let config = ModelConfig::load(&config_path, kind_override)?;
        let checkpoint = Checkpoint::open(&weights_path, &config)?;
        return Ok(ModelDir {
            config,
            checkpoint,
            inferred: Vec::new(),
        });
    }
    if std::fs::symlink_metadata(&weights_path).is_err() {
        return Err(Error::File {
            path: dir.to_path_buf(),
            message: "not a model folder (no config.json, no model.safetensors)".into(),
        });
    }
    let bytes = error::read_file(&weights_path)?;
    let shown = weights_path.display().to_string();
    let entries = checkpoint::check_file(&bytes, &shown)?;
    let (config, inferred) = infer::infer_config(&entries, &shown, kind_override)?;
    let checkpoint = Checkpoint::from_bytes(bytes, &shown, &config)?;
    Ok(ModelDir {
        config,
        checkpoint,
        inferred,
    })
}

/// Write `bytes` to `path` so that a reader (or a crash) sees the old file or the new one, never a
/// partial one: write a temporary file beside it, flush it to disk, rename it over `path`, then flush
/// the folder so the rename itself is durable.
///
/// The temporary file `.NAME.tmp-PID-RANDOM` is created exclusively (`create_new`, O_EXCL: an existing
/// file or a planted symlink at that name makes the open fail instead of being followed) under a name
/// that cannot be predicted. Temporaries of `path` left by earlier runs that were killed mid-save
/// (their process is gone) are removed first.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let err = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| Error::File {
        path: path.to_path_buf(),
        message: "not a file path".into(),
    })?;
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    remove_stale_temporaries(path, &prefix);
    let (tmp, mut f) = {
        let mut attempt = 0;
        loop {
            let tmp = path.with_file_name(format!(
                "{prefix}{}-{:016x}",
                std::process::id(),
                random_u64()
            ));
            match open_exclusive(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1
                }
                Err(e) => return Err(err(e)),
            }
        }
    };
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    sync_parent_dir(path).map_err(err)
}

/// Create `path` for writing only if nothing (not even a dangling symlink) is there: O_CREAT|O_EXCL.
fn open_exclusive(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// 64 bits no other process can predict: the standard library's per-process random SipHash keys,
/// mixed with the time and a counter.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(unix)]
fn sync_parent_dir(path: &std::path::Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent_dir(_: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

/// Remove `PREFIX…` temporaries beside `path` whose writer is gone: the PID in the name is not a
/// running process (Linux), or, where that cannot be told, the file is over an hour old. A live
/// writer's temporary is left alone.
fn remove_stale_temporaries(path: &std::path::Path, prefix: &str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let gone = match pid {
            Some(p) if p == std::process::id() => false,
            Some(p) if std::path::Path::new("/proc/self").exists() => {
                !std::path::Path::new(&format!("/proc/{p}")).exists()
            }
            _ => e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600),
        };
        // symlink_metadata: a planted symlink is removed itself, never followed.
        if gone && std::fs::symlink_metadata(e.path()).is_ok_and(|m| !m.is_dir()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bd3-model-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let d = scratch("atomic");
        let p = d.join("state.bin");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["state.bin"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept() {
        let d = scratch("stale");
        let p = d.join("train_state.safetensors");
        // A PID far above any pid_max is no running process: a run killed mid-save.
        let dead = d.join(".train_state.safetensors.tmp-4294967295-0123456789abcdef");
        let old_style = d.join(".train_state.safetensors.tmp-4294967294");
        let mine = d.join(format!(
            ".train_state.safetensors.tmp-{}-feedfacefeedface",
            std::process::id()
        ));
        let other = d.join(".other.tmp-4294967295-00");
        for f in [&dead, &old_style, &mine, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_atomically(&p, b"new").unwrap();
        assert!(
            !dead.exists() && !old_style.exists(),
            "stale temporaries must go"
        );
        assert!(mine.exists(), "a live writer's temporary stays");
        assert!(other.exists(), "temporaries of other files are not touched");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlinks_are_never_followed() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = d.join("model.safetensors");
        // Links at every name an older scheme would have used, for this and dead processes.
        let links: Vec<_> = [
            format!(".model.safetensors.tmp-{}", std::process::id()),
            ".model.safetensors.tmp-4294967295-00".into(),
        ]
        .into_iter()
        .map(|n| d.join(n))
        .collect();
        for l in &links {
            std::os::unix::fs::symlink(&victim, l).unwrap();
        }
        for _ in 0..20 {
            write_atomically(&p, b"weights").unwrap();
        }
        // Had an attacker guessed the name, the exclusive open fails rather than following the link
        // (dangling links included).
        let guessed = d.join(".model.safetensors.tmp-guessed");
        std::os::unix::fs::symlink(&victim, &guessed).unwrap();
        assert!(open_exclusive(&guessed).is_err());
        let dangling = d.join(".model.safetensors.tmp-dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(open_exclusive(&dangling).is_err());
        assert!(!d.join("nowhere").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&p).unwrap(), b"weights");
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn temporary_names_are_unpredictable() {
        let names: std::collections::HashSet<u64> = (0..100).map(|_| random_u64()).collect();
        assert_eq!(names.len(), 100);
    }
}
