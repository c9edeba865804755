//! The config of a checkpoint that ships without `config.json`, read off its tensor names and shapes.
//!
//! The official no-EOS baselines (`kuleshov-group/mdlm-noeos-owt`, `sedd-noeos-owt`, `ar-noeos-owt`)
//! hold only `model.safetensors`. Their tensors give the vocabulary and width (`vocab_embed.embedding`),
//! the number of blocks, `cond_dim` (`sigma_map.mlp.0.weight`), the head width
//! (`rotary_emb.inv_freq` holds head_dim / 2 frequencies) and whether the model has adaLN: every
//! non-causal DiT does, the AR model has neither `sigma_map` nor `adaLN_modulation`
//! (`models/dit.py:DIT.__init__`). MDLM and SEDD have identical tensors, so between those the
//! caller must say which; the context length is not in the weights and takes the documented 1024.

use crate::checkpoint::HeaderEntry;
use crate::config::{defaults, ModelConfig, ModelKind, RawConfig, TIMESTEP_FEATURES};
use crate::error::{Error, Result};
use crate::json::Typed;

/// Where an inferred value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferredFrom {
    /// Read off the tensor names and shapes.
    Tensors,
    /// The caller's `kind` (the weights cannot tell MDLM from SEDD).
    Caller,
    /// A documented default of the official models (see [`defaults`]).
    Default,
}

/// One field of a config that was not read from a `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct InferredField {
    /// The `config.json` name of the field (`hidden_dim`, ...), or `kind`.
    pub field: &'static str,
    pub value: String,
    pub from: InferredFrom,
}

impl std::fmt::Display for InferredField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.value)
    }
}

/// One line for the user: `config.json absent: inferred kind mdlm (given), vocab_size 50258, ...`.
pub fn summary(inferred: &[InferredField]) -> String {
    let group = |from: InferredFrom, label: &str| {
        let items: Vec<String> = inferred
            .iter()
            .filter(|f| f.from == from)
            .map(|f| f.to_string())
            .collect();
        (!items.is_empty()).then(|| format!("{} ({label})", items.join(", ")))
    };
    let parts: Vec<String> = [
        group(InferredFrom::Caller, "given"),
        group(InferredFrom::Tensors, "from the tensors"),
        group(InferredFrom::Default, "defaults"),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("config.json absent: inferred {}", parts.join("; "))
}

/// The config of the checkpoint whose header entries are `entries` (as [`crate::checkpoint::check_file`]
/// returns them), with the fields that were inferred. `kind` is the caller's answer where the tensors
/// cannot tell (MDLM or SEDD); `path` names the checkpoint in errors. The result still goes through
/// every check of a `config.json`, and the strict loader then holds every tensor against it.
pub fn infer_config(
    entries: &[HeaderEntry],
    path: &str,
    kind: Option<ModelKind>,
) -> Result<(ModelConfig, Vec<InferredField>)> {
    let fail = |message: String| Error::Checkpoint {
        path: path.to_string(),
        tensor: None,
        message,
    };
    let prefix = if entries.iter().any(|e| e.0.starts_with("backbone.")) {
        "backbone."
    } else {
        ""
    };
    let shape = |name: &str| {
        entries
            .iter()
            .find(|e| e.0.strip_prefix(prefix) == Some(name))
            .map(|e| e.2.as_slice())
    };

    let Some(&[vocab_size, hidden_dim]) = shape("vocab_embed.embedding") else {
        return Err(fail(
            "config.json is absent and the tensors are not in the official layout (no 2-D `vocab_embed.embedding`): the config cannot be inferred".into(),
        ));
    };
    let n_blocks = (0..)
        .take_while(|i| shape(&format!("blocks.{i}.norm1.weight")).is_some())
        .count();
    if n_blocks == 0 {
        return Err(fail("config.json is absent and the tensors are not in the official layout (no `blocks.0.norm1.weight`): the config cannot be inferred".into()));
    }
    // BD3LM's clip buffers sit outside the backbone: never prefixed.
    let eps_buffers = entries
        .iter()
        .any(|e| matches!(e.0.as_str(), "sampling_eps_min" | "sampling_eps_max"));
    if eps_buffers || kind == Some(ModelKind::Bd3lm) {
        return Err(fail(
            "a BD3LM checkpoint needs its config.json: the block size is not in the weights".into(),
        ));
    }
    // adaLN-conditioned (MDLM, SEDD) or not (AR): the conditioning MLP `sigma_map` maps the timestep
    // features to cond_dim, each block's `adaLN_modulation` maps cond_dim to 6 × hidden.
    let cond_dim = match (
        shape("sigma_map.mlp.0.weight"),
        shape("blocks.0.adaLN_modulation.weight"),
    ) {
        (None, None) => None,
        (Some(&[c, w]), _) if w == TIMESTEP_FEATURES => Some(c),
        (None, Some(&[w, c])) if w == 6 * hidden_dim => Some(c),
        (Some(s), _) | (None, Some(s)) => {
            return Err(fail(format!(
                "cannot read `cond_dim` off a conditioning tensor of shape {s:?}"
            )))
        }
    };
    let mut inferred = Vec::new();
    let mut note = |field: &'static str, value: String, from: InferredFrom| {
        inferred.push(InferredField { field, value, from })
    };

    let kind = match (cond_dim, kind) {
        (None, None | Some(ModelKind::Ar)) => {
            note("kind", ModelKind::Ar.name().into(), if kind.is_some() { InferredFrom::Caller } else { InferredFrom::Tensors });
            ModelKind::Ar
        }
        (None, Some(k)) => {
            return Err(fail(format!("the tensors have no adaLN layers (`sigma_map`, `adaLN_modulation`), the layout of an AR model, but kind {} was given", k.name())))
        }
        (Some(_), Some(ModelKind::Ar)) => return Err(fail("the tensors have adaLN layers (`sigma_map`, `adaLN_modulation`), so kind ar does not fit them".into())),
        (Some(_), None) => {
            return Err(fail(
                "config.json is absent and the tensors of an MDLM and a SEDD model are the same: give the model `kind` (mdlm or sedd)".into(),
            ))
        }
        (Some(_), Some(k)) => {
            note("kind", k.name().into(), InferredFrom::Caller);
            k
        }
    };
    note("vocab_size", vocab_size.to_string(), InferredFrom::Tensors);
    note("hidden_dim", hidden_dim.to_string(), InferredFrom::Tensors);
    note("n_blocks", n_blocks.to_string(), InferredFrom::Tensors);
    if let Some(c) = cond_dim {
        note("cond_dim", c.to_string(), InferredFrom::Tensors);
    }
    // `rotary_emb.inv_freq` holds one frequency per pair of head dimensions.
    let n_heads = match shape("rotary_emb.inv_freq") {
        Some(&[half]) if half > 0 && hidden_dim % (2 * half) == 0 => {
            note("n_heads", (hidden_dim / (2 * half)).to_string(), InferredFrom::Tensors);
            hidden_dim / (2 * half)
        }
        Some(s) => return Err(fail(format!("`rotary_emb.inv_freq` of shape {s:?} does not give a head width that divides the hidden size {hidden_dim}"))),
        None => {
            note("n_heads", format!("{} (hidden / {})", hidden_dim / defaults::HEAD_DIM, defaults::HEAD_DIM), InferredFrom::Default);
            hidden_dim / defaults::HEAD_DIM
        }
    };
    note(
        "model_length",
        defaults::MODEL_LENGTH.to_string(),
        InferredFrom::Default,
    );
    note(
        "dropout",
        defaults::DROPOUT.to_string(),
        InferredFrom::Default,
    );

    let num = |n: usize| Typed::Ok(n as u64);
    let raw = RawConfig {
        model_type: Typed::Ok(
            if kind == ModelKind::Ar {
                "bd3lm"
            } else {
                "mdlm"
            }
            .into(),
        ),
        parameterization: match kind {
            ModelKind::Sedd => Typed::Ok("sedd".into()),
            ModelKind::Ar => Typed::Ok("ar".into()),
            _ => Typed::Absent,
        },
        causal: Typed::Ok(kind == ModelKind::Ar),
        adaln: Typed::Ok(kind.has_adaln()),
        vocab_size: num(vocab_size),
        hidden_dim: num(hidden_dim),
        n_heads: num(n_heads),
        n_blocks: num(n_blocks),
        model_length: num(defaults::MODEL_LENGTH),
        cond_dim: cond_dim.map_or(Typed::Absent, num),
        ..RawConfig::default()
    };
    let cfg = raw.validate(path, Some(kind))?;
    Ok((cfg, inferred))
}
