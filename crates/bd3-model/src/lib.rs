//! BD3-LM without a GPU: everything about a model that is plain data and arithmetic.
//!
//! Data flow: `config.json` → [`ModelConfig`] → [`Checkpoint`] (strict) → handed to `bd3-gpu`.
//! The noise schedule, masks and constant tables live here so the CPU tests and the GPU share them.

pub mod checkpoint;
pub mod config;
pub mod cpu_ref;
pub mod data;
pub mod error;
pub mod init;
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
pub use mask::AttentionMask;

/// A checkpoint folder: `config.json` + `model.safetensors`, checked against each other.
pub fn load_model_dir(dir: &std::path::Path, kind_override: Option<ModelKind>) -> Result<(ModelConfig, Checkpoint)> {
    if !dir.is_dir() {
        return Err(Error::Io { path: dir.display().to_string(), message: "not a model folder".into() });
    }
    let cfg = ModelConfig::load(&dir.join("config.json"), kind_override)?;
    let ckpt = Checkpoint::open(&dir.join("model.safetensors"), &cfg)?;
    Ok((cfg, ckpt))
}

/// Write `bytes` to `path` so that a reader (or a crash) sees the old file or the new one, never a
/// partial one: write a temporary file beside it, flush it to disk, then rename it over `path`.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let err = |e: std::io::Error| Error::Io { path: path.display().to_string(), message: e.to_string() };
    let name = path.file_name().ok_or_else(|| Error::Io { path: path.display().to_string(), message: "not a file path".into() })?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    std::fs::rename(&tmp, path).map_err(err)
}
