//! Writing model folders the official Hugging Face classes load (`config.json` + `model.safetensors`,
//! official names, plus `tokenizer.json`) and the training state needed to resume. Every file is
//! written atomically (temporary file, fsync, rename), the training state first: a kill at any
//! moment leaves each file either the previous complete version or the new one.

use bd3_gpu::train::read_tensors;
use bd3_gpu::{GpuContext, Weights};
use bd3_model::{write_atomically, Error, ModelConfig, Result};
use std::collections::HashMap;
use std::path::Path;

/// `model.safetensors` of weights on the GPU: shared with the page's checkpoint download.
pub use bd3_gpu::train_loop::model_bytes;

/// The folder a user (or the official classes) loads: config.json, model.safetensors, tokenizer.json.
pub fn write_model_dir(
    dir: &Path,
    cfg: &ModelConfig,
    model_safetensors: &[u8],
    tokenizer_json: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomically(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    write_atomically(&dir.join("config.json"), cfg.to_json().as_bytes())?;
    write_atomically(&dir.join("model.safetensors"), model_safetensors)
}

/// Training state: named groups of tensors (weights, ema, adam_m, adam_v) plus string metadata.
pub async fn state_bytes(
    ctx: &GpuContext,
    groups: &[(&str, &Weights)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut all: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (prefix, w) in groups {
        for (name, shape, data) in read_tensors(ctx, w).await? {
            all.push((format!("{prefix}.{name}"), shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = all
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    s.clone(),
                    bytemuck::cast_slice(d),
                )
                .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Invalid(format!("cannot serialise the training state: {e}")))
}

/// A training state read from disk: string metadata and group → tensor name → values. Every tensor
/// was checked to be F32 with a `group.name` name; [`TrainState::group`] checks a group against the
/// model it is written into.
pub struct TrainState {
    pub path: String,
    pub meta: HashMap<String, String>,
    pub groups: HashMap<String, HashMap<String, Vec<f32>>>,
}

/// Read a training state, checked like a checkpoint: the same header/offset validation, F32 tensors
/// only, non-finite values refused.
pub fn read_state(path: &Path) -> Result<TrainState> {
    let shown = path.display().to_string();
    let fail = |tensor: Option<&str>, message: String| Error::Checkpoint {
        path: shown.clone(),
        tensor: tensor.map(str::to_string),
        message,
    };
    let bytes = bd3_model::error::read_file(path)?;
    bd3_model::checkpoint::check_file(&bytes, &shown)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| fail(None, format!("not a readable safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| fail(None, format!("not a readable safetensors file ({e})")))?;
    let mut groups: HashMap<String, HashMap<String, Vec<f32>>> = HashMap::new();
    for (name, view) in st.tensors() {
        let (group, rest) = name.split_once('.').ok_or_else(|| {
            fail(
                Some(&name),
                "unexpected tensor (expected GROUP.NAME)".into(),
            )
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(
                Some(&name),
                format!("dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let values = bd3_model::checkpoint::to_f32(view.dtype(), view.data());
        bd3_model::checkpoint::check_finite(&values, &shown, &name)?;
        groups
            .entry(group.to_string())
            .or_default()
            .insert(rest.to_string(), values);
    }
    Ok(TrainState {
        path: shown,
        meta: meta.metadata().clone().unwrap_or_default(),
        groups,
    })
}

impl TrainState {
    /// The tensors of `group`, which must be exactly those of `like` (same names, same sizes).
    pub fn group(&self, group: &str, like: &Weights) -> Result<&HashMap<String, Vec<f32>>> {
        let fail = |tensor: Option<String>, message: String| Error::Checkpoint {
            path: self.path.clone(),
            tensor,
            message,
        };
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| fail(None, format!("the training state has no `{group}` tensors")))?;
        let wanted = like.tensors();
        for t in &wanted {
            let n: usize = t.shape.iter().product();
            match g.get(&t.name) {
                None => return Err(fail(Some(format!("{group}.{}", t.name)), "missing".into())),
                Some(v) if v.len() != n => {
                    return Err(fail(
                        Some(format!("{group}.{}", t.name)),
                        format!("{} values, expected {n} (shape {:?})", v.len(), t.shape),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = g.keys().find(|k| !wanted.iter().any(|t| &t.name == *k)) {
            return Err(fail(
                Some(format!("{group}.{extra}")),
                "unexpected tensor for this model".into(),
            ));
        }
        Ok(g)
    }
}
