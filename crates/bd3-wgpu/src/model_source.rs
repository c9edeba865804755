//! Where a `--model` comes from: a local folder, the bundled model, or an official checkpoint on the
//! Hugging Face hub by name (`kuleshov-group/bd3lm-owt-block_size4`), downloaded into the standard
//! hub cache (`$HF_HOME/hub/models--OWNER--NAME/…`, shared with Python's `huggingface_hub`).

use anyhow::{bail, Context, Result};
use bd3_model::{Checkpoint, ModelConfig, ModelKind};
use std::path::{Path, PathBuf};

/// Where the bundled model lives in the repository.
pub const BUNDLED_MODEL: &str = "models/fortunes-bd3lm";

/// A model folder ready to load, and the tokenizer that goes with it (official checkpoints ship
/// none: theirs is GPT-2's, fetched from `openai-community/gpt2`).
pub struct ModelSource {
    pub dir: PathBuf,
    pub tokenizer: Option<PathBuf>,
}

impl ModelSource {
    /// `--model` as given: `None` is the bundled model; an existing path is a local folder; an
    /// `OWNER/NAME` that is no local path is a hub repository.
    pub fn resolve(arg: Option<&str>) -> Result<ModelSource> {
        let Some(arg) = arg else {
            return Ok(ModelSource::local(bundled_model()?));
        };
        if Path::new(arg).exists() {
            return Ok(ModelSource::local(PathBuf::from(arg)));
        }
        if bd3_hub::looks_like_repo_id(arg) {
            let repo = bd3_hub::RepoId::parse(arg)?;
            let files = bd3_hub::Hub::from_env()?.model(&repo, bd3_hub::DEFAULT_REVISION)?;
            if let bd3_hub::TokenizerFile::Fallback { repo: from, .. } = &files.tokenizer {
                eprintln!("{repo} has no tokenizer.json: using {from}'s (the official code's GPT-2 tokenizer)");
            }
            return Ok(ModelSource {
                tokenizer: Some(files.tokenizer.path().to_path_buf()),
                dir: files.dir,
            });
        }
        bail!("{arg}: not a model folder (no such path) and not a Hugging Face repository name (OWNER/NAME)")
    }

    fn local(dir: PathBuf) -> ModelSource {
        let tok = dir.join("tokenizer.json");
        ModelSource {
            tokenizer: tok.is_file().then_some(tok),
            dir,
        }
    }

    /// The config and weights, checked against each other; a folder without config.json (the
    /// official no-EOS baselines) gets its config inferred from the tensors, said in one line.
    pub fn load(&self, kind: Option<ModelKind>) -> Result<(ModelConfig, Checkpoint)> {
        let loaded = bd3_model::load_model_dir(&self.dir, kind)?;
        if let Some(line) = loaded.inferred_summary() {
            eprintln!("{}: {line}", self.dir.display());
        }
        Ok((loaded.config, loaded.checkpoint))
    }

    /// The tokenizer, required (text in or out).
    pub fn require_tokenizer(&self) -> Result<&Path> {
        self.tokenizer
            .as_deref()
            .with_context(|| format!("{}: no tokenizer.json", self.dir.display()))
    }
}

/// The bundled model folder: under the current folder, else under the repository the binary was
/// built in (so `target/release/bd3-wgpu sample` works from anywhere in a checkout).
pub fn bundled_model() -> Result<PathBuf> {
    let here = PathBuf::from(BUNDLED_MODEL);
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(BUNDLED_MODEL);
    [here, built_in]
        .into_iter()
        .find(|p| p.join("config.json").is_file())
        .with_context(|| format!("{BUNDLED_MODEL}: the bundled model is not here; run from the repository root or pass --model DIR"))
}
