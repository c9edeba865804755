//! `bd3-wgpu export`: rewrite a model folder with another weight storage (F16 halves the file; how
//! the bundled model is stored). The config and tokenizer are copied unchanged; the checkpoint is
//! read strictly, like every load.

use bd3_model::checkpoint::expected_tensors;
use bd3_model::init::{to_safetensors_as, NamedTensor, Storage};
use bd3_model::{write_atomically, Error, Result};
use std::path::PathBuf;

pub const USAGE: &str = "export --model DIR --out DIR [--dtype f16|f32]";

pub fn run(args: &[String]) -> Result<()> {
    let (mut model, mut out, mut storage) = (None, None, Storage::F16Matrices);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| Error::Invalid(format!("{flag} needs a value")));
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--dtype" => {
                storage = match value()?.as_str() {
                    "f16" => Storage::F16Matrices,
                    "f32" => Storage::F32,
                    other => return Err(Error::Invalid(format!("--dtype `{other}`: expected f16 or f32"))),
                }
            }
            other => return Err(Error::Invalid(format!("unknown option `{other}`; usage: bd3-wgpu {USAGE}"))),
        }
    }
    let model = model.ok_or_else(|| Error::Invalid(format!("export needs --model DIR; usage: bd3-wgpu {USAGE}")))?;
    let out = out.ok_or_else(|| Error::Invalid(format!("export needs --out DIR; usage: bd3-wgpu {USAGE}")))?;
    if out.canonicalize().ok().is_some_and(|o| model.canonicalize().ok() == Some(o)) {
        return Err(Error::Invalid("export --out must differ from --model (the source is read while the copy is written)".into()));
    }
    let bd3_model::ModelDir { config: cfg, checkpoint: ckpt, .. } = bd3_model::load_model_dir(&model, None)?;
    let mut tensors = Vec::new();
    for (name, shape) in expected_tensors(&cfg) {
        tensors.push(NamedTensor { data: ckpt.tensor_f32(&name)?, name: format!("backbone.{name}"), shape });
    }
    let eps = ckpt.sampling_eps.map(|(a, b)| (a as f32, b as f32));
    let bytes = to_safetensors_as(&cfg, &tensors, eps, storage)?;
    std::fs::create_dir_all(&out).map_err(|source| Error::Io { path: out.clone(), source })?;
    for file in ["config.json", "tokenizer.json"] {
        let src = model.join(file);
        if src.is_file() {
            write_atomically(&out.join(file), &bd3_model::error::read_file(&src)?)?;
        }
    }
    write_atomically(&out.join("model.safetensors"), &bytes)?;
    println!("wrote {} ({:.1} MB, {:?})", out.join("model.safetensors").display(), bytes.len() as f64 / 1e6, storage);
    Ok(())
}
