//! `bd3-wgpu export`: rewrite a model folder with another weight storage (F16 halves the file; how
//! the bundled model is stored). The config and tokenizer are copied unchanged; the checkpoint is
//! read strictly, like every load.

use crate::model_source::ModelSource;
use anyhow::{bail, Context, Result};
use bd3_model::checkpoint::expected_tensors;
use bd3_model::init::{to_safetensors_as, NamedTensor, Storage};
use bd3_model::write_atomically;
use std::path::PathBuf;

/// How weights are stored in the written model.safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    /// Matrices in F16, vectors in F32 (half the file; loaders convert to f32)
    F16,
    /// Everything in F32 (the official checkpoints' storage)
    F32,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The model folder to read, or an official checkpoint by name (OWNER/NAME)
    #[arg(long, value_name = "DIR|OWNER/NAME")]
    model: String,
    /// The folder to write (config.json, model.safetensors, tokenizer.json)
    #[arg(long)]
    out: PathBuf,
    /// The model kind, for a checkpoint without config.json whose tensors cannot tell (MDLM, SEDD)
    #[arg(long, value_enum)]
    kind: Option<crate::KindArg>,
    /// Weight storage of the written checkpoint
    #[arg(long, value_enum, default_value_t = Dtype::F16)]
    dtype: Dtype,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let source = ModelSource::resolve(Some(&a.model))?;
    let (model, out) = (source.dir.clone(), a.out);
    let storage = match a.dtype {
        Dtype::F16 => Storage::F16Matrices,
        Dtype::F32 => Storage::F32,
    };
    if out
        .canonicalize()
        .ok()
        .is_some_and(|o| model.canonicalize().ok() == Some(o))
    {
        bail!(
            "export --out must differ from --model (the source is read while the copy is written)"
        );
    }
    let (cfg, ckpt) = source.load(a.kind.map(Into::into))?;
    let mut tensors = Vec::new();
    for (name, shape) in expected_tensors(&cfg) {
        tensors.push(NamedTensor {
            data: ckpt.tensor_f32(&name)?,
            name: format!("backbone.{name}"),
            shape,
        });
    }
    let eps = ckpt.sampling_eps.map(|(a, b)| (a as f32, b as f32));
    let bytes = to_safetensors_as(&cfg, &tensors, eps, storage)?;
    std::fs::create_dir_all(&out)
        .with_context(|| format!("{}: cannot create the folder", out.display()))?;
    // The config unchanged; where the source had none (and it was inferred), the inferred one.
    let config = model.join("config.json");
    let config_bytes = if config.is_file() {
        bd3_model::error::read_file(&config)?
    } else {
        cfg.to_json().into_bytes()
    };
    write_atomically(&out.join("config.json"), &config_bytes)?;
    if let Some(tok) = &source.tokenizer {
        write_atomically(
            &out.join("tokenizer.json"),
            &bd3_model::error::read_file(tok)?,
        )?;
    }
    write_atomically(&out.join("model.safetensors"), &bytes)?;
    println!(
        "wrote {} ({:.1} MB, {:?})",
        out.join("model.safetensors").display(),
        bytes.len() as f64 / 1e6,
        storage
    );
    Ok(())
}
