//! `config.json` of the official Hugging Face checkpoints (`configuration_bd3lm.py`, `configuration_mdlm.py`
//! of kuleshov-group/bd3lm-owt-block_size4 and mdlm-owt) and the model kind it implies.
//!
//! The released BD3LM configs omit `adaln` and `causal`; the class defaults (adaln = true,
//! causal = false) apply. `cond_dim` must be read from the file: the class default (129) is not
//! what the checkpoints use. Nothing in the weights tells SEDD from MDLM, so SEDD needs the
//! field `"parameterization": "sedd"` (or the caller's override).

use crate::error::{Error, Result};
use crate::json::Typed;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which model family a checkpoint belongs to; decides masks, conditioning and output head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// Block diffusion (SUBS), sigma = 0, trained on x_t ⊕ x_0 with the block-diffusion mask.
    Bd3lm,
    /// Masked diffusion (SUBS) with full attention over L tokens.
    Mdlm,
    /// Score-entropy discrete diffusion: full attention, conditioned on sigma, log-score output.
    Sedd,
    /// Autoregressive: causal attention, no adaLN.
    Ar,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Bd3lm => "bd3lm",
            ModelKind::Mdlm => "mdlm",
            ModelKind::Sedd => "sedd",
            ModelKind::Ar => "ar",
        }
    }

    pub fn parse(s: &str) -> Option<ModelKind> {
        match s {
            "bd3lm" => Some(ModelKind::Bd3lm),
            "mdlm" | "subs" => Some(ModelKind::Mdlm),
            "sedd" => Some(ModelKind::Sedd),
            "ar" => Some(ModelKind::Ar),
            _ => None,
        }
    }

    /// adaLN modulation (and the sigma_map conditioning MLP) is on for every non-causal model
    /// (`models/dit.py:DIT.__init__`: `adaLN = (not causal) or adaln`).
    pub fn has_adaln(self) -> bool {
        self != ModelKind::Ar
    }
}

/// The small set of numbers that define the network, named as in `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub vocab_size: usize,
    pub hidden_dim: usize,
    pub n_heads: usize,
    pub n_blocks: usize,
    pub cond_dim: usize,
    /// Context length L the model was trained with (1024 for the official checkpoints).
    pub model_length: usize,
    /// L' of BD3LM; L for MDLM/SEDD, 1 for AR.
    pub block_size: usize,
    /// Whether sigma reaches the conditioning MLP (SEDD); otherwise it is zero.
    pub time_conditioning: bool,
    pub dropout: f64,
    /// Clip window of t stored in the BD3LM config (sampling_eps_min/max).
    pub sampling_eps_min: f64,
    pub sampling_eps_max: f64,
}

/// The width of the sinusoidal timestep features fed to `sigma_map.mlp.0`
/// (`models/dit.py:TimestepEmbedder.timestep_embedding`).
pub const TIMESTEP_FEATURES: usize = 256;
/// Largest head dimension the attention kernel is built for.
pub const MAX_HEAD_DIM: usize = 128;

/// Upper bounds on `config.json`, checked before anything is sized from it: far above every
/// released checkpoint (vocabulary 50258, width 768, 12 blocks, L = 1024), far below what would
/// make a size computation overflow or an allocation abort.
pub const MAX_VOCAB_SIZE: usize = 1 << 22;
pub const MAX_HIDDEN_DIM: usize = 1 << 15;
pub const MAX_COND_DIM: usize = 1 << 15;
pub const MAX_N_BLOCKS: usize = 1 << 10;
pub const MAX_MODEL_LENGTH: usize = 1 << 20;
/// At most 2^32 parameters (16 GiB of f32 weights; training holds five copies of them).
pub const MAX_PARAMETERS: u64 = 1 << 32;
/// At most 2^32 values in one activation buffer of a forward (batch × rows × width), the bound a
/// batch size is checked against before any buffer is sized from it.
pub const MAX_ACTIVATION_VALUES: u64 = 1 << 32;

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_dim / self.n_heads
    }
    /// The mask token is the last vocabulary entry in every official checkpoint (50257 of 50258).
    pub fn mask_id(&self) -> u32 {
        (self.vocab_size - 1) as u32
    }
    /// BOS = EOS = vocab_size − 2 (GPT-2's 50256).
    pub fn bos_id(&self) -> u32 {
        (self.vocab_size - 2) as u32
    }

    /// The number of parameters of the network, computed without overflow (None when it does not fit u64).
    pub fn parameter_count(&self) -> Option<u64> {
        let mut total = 0u64;
        for (_, shape) in crate::checkpoint::expected_tensors(self) {
            let n = shape
                .iter()
                .try_fold(1u64, |acc, &x| acc.checked_mul(x as u64))?;
            total = total.checked_add(n)?;
        }
        Some(total)
    }

    /// Refuse a batch whose activations could not be allocated: `batch` sequences of `rows` tokens,
    /// each row holding the widest per-token vector of the forward (logits, MLP or QKV). Checked
    /// arithmetic; one line naming the batch size.
    pub fn check_batch(&self, batch: usize, rows: usize) -> Result<()> {
        let width = self.vocab_size.max(4 * self.hidden_dim) as u64;
        let values = (batch as u64)
            .checked_mul(rows as u64)
            .and_then(|x| x.checked_mul(width));
        match values {
            Some(v) if v <= MAX_ACTIVATION_VALUES => Ok(()),
            _ => Err(Error::Invalid(format!(
                "batch size {batch} is too large for this model: {batch} × {rows} tokens × {width} values per token exceeds the limit of {MAX_ACTIVATION_VALUES} values in one buffer"
            ))),
        }
    }

    /// Read and check `config.json`; `kind_override` is the caller's answer for checkpoints whose kind
    /// the file cannot tell (the SEDD baseline).
    pub fn load(path: &Path, kind_override: Option<ModelKind>) -> Result<ModelConfig> {
        let bytes = crate::error::read_file(path)?;
        Self::from_json_bytes(&bytes, &path.display().to_string(), kind_override)
    }

    pub fn from_json_bytes(
        bytes: &[u8],
        path: &str,
        kind_override: Option<ModelKind>,
    ) -> Result<ModelConfig> {
        let raw: RawConfig = crate::json::from_object(bytes).map_err(|source| {
            // A document that is JSON but not an object is reported as such, not as a syntax error.
            let message = if source.is_data() {
                "expected a JSON object"
            } else {
                "not valid JSON"
            };
            Error::Json {
                path: path.to_string(),
                message: message.into(),
                source,
            }
        })?;
        raw.validate(path, kind_override)
    }
}

/// The defaults of the official config classes (`configuration_bd3lm.py`, `configuration_mdlm.py`)
/// for fields a `config.json` may omit, and of the training recipe for what no file states.
pub mod defaults {
    /// Residual dropout of every released model (`configs/model/small.yaml`).
    pub const DROPOUT: f64 = 0.1;
    /// The clip window of t when `sampling_eps_min` / `sampling_eps_max` are absent.
    pub const SAMPLING_EPS_MIN: f64 = 1e-3;
    pub const SAMPLING_EPS_MAX: f64 = 1.0;
    /// The context length every OpenWebText checkpoint was trained with (`configs/model/small.yaml`).
    pub const MODEL_LENGTH: usize = 1024;
    /// The head width of the "small" DiT (768 / 12 heads).
    pub const HEAD_DIM: usize = 64;
}

/// `config.json` as written, under the official field names (`configuration_bd3lm.py`,
/// `configuration_mdlm.py`; `parameterization` is ours, for the kinds the weights cannot reveal).
/// Unknown fields (`architectures`, `auto_map`, `torch_dtype`, ...) are ignored. [`RawConfig::validate`]
/// turns it into a [`ModelConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a JSON object")]
pub(crate) struct RawConfig {
    pub model_type: Typed<String>,
    pub parameterization: Typed<String>,
    pub causal: Typed<bool>,
    pub adaln: Typed<bool>,
    pub vocab_size: Typed<u64>,
    pub hidden_dim: Typed<u64>,
    pub n_heads: Typed<u64>,
    pub n_blocks: Typed<u64>,
    pub model_length: Typed<u64>,
    pub cond_dim: Typed<u64>,
    pub block_size: Typed<u64>,
    pub time_conditioning: Typed<bool>,
    pub dropout: Typed<f64>,
    pub sampling_eps_min: Typed<f64>,
    pub sampling_eps_max: Typed<f64>,
}

impl RawConfig {
    /// Every check of a config, one line naming the field at fault; `kind_override` is the caller's
    /// answer for checkpoints whose kind the file cannot tell (the SEDD baseline).
    pub(crate) fn validate(
        self,
        path: &str,
        kind_override: Option<ModelKind>,
    ) -> Result<ModelConfig> {
        let err = |message: String| Error::Config {
            path: path.to_string(),
            message,
        };
        let positive = |key: &str, x: Typed<u64>| -> Result<u64> {
            match x.get() {
                Ok(None) => Err(err(format!("missing field `{key}`"))),
                Ok(Some(n)) if n > 0 => Ok(n),
                Ok(Some(n)) => Err(err(format!(
                    "field `{key}` must be a positive integer, found {n}"
                ))),
                Err(x) => Err(err(format!(
                    "field `{key}` must be a positive integer, found {x}"
                ))),
            }
        };
        let bounded = |key: &str, x: Typed<u64>, max: usize| -> Result<usize> {
            // Compared before narrowing: on wasm32 a u64 does not fit usize.
            let n = positive(key, x)?;
            if n > max as u64 {
                return Err(err(format!(
                    "field `{key}` is {n}, more than the supported maximum {max}"
                )));
            }
            Ok(n as usize)
        };
        let boolean = |key: &str, x: Typed<bool>, default: bool| -> Result<bool> {
            x.get()
                .map(|b| b.unwrap_or(default))
                .map_err(|x| err(format!("field `{key}` must be true or false, found {x}")))
        };
        let number = |key: &str, x: Typed<f64>, default: f64| -> Result<f64> {
            x.get()
                .map(|v| v.unwrap_or(default))
                .map_err(|x| err(format!("field `{key}` must be a number, found {x}")))
        };
        let string = |key: &str, x: Typed<String>| -> Result<Option<String>> {
            x.get()
                .map_err(|x| err(format!("field `{key}` must be a string, found {x}")))
        };

        let model_type = string("model_type", self.model_type)?.ok_or_else(|| {
            err("missing field `model_type` (expected \"bd3lm\" or \"mdlm\")".into())
        })?;
        let parameterization = string("parameterization", self.parameterization)?;
        let causal = boolean("causal", self.causal, false)?;
        let adaln = boolean("adaln", self.adaln, true)?;

        let detected = match (model_type.as_str(), parameterization.as_deref()) {
            (_, Some("ar")) => ModelKind::Ar,
            (_, Some("sedd")) => ModelKind::Sedd,
            ("bd3lm", Some("subs") | None) if causal => ModelKind::Ar,
            ("bd3lm", Some("subs") | None) => ModelKind::Bd3lm,
            ("mdlm", Some("subs") | None) => ModelKind::Mdlm,
            (_, Some(p)) if !matches!(p, "subs") => {
                return Err(err(format!(
                    "unknown `parameterization` \"{p}\" (expected \"subs\", \"sedd\" or \"ar\")"
                )))
            }
            (t, _) => {
                return Err(err(format!(
                    "unknown `model_type` \"{t}\" (expected \"bd3lm\" or \"mdlm\")"
                )))
            }
        };
        let kind = kind_override.unwrap_or(detected);
        if kind == ModelKind::Ar && adaln {
            return Err(err(
                "an autoregressive (causal) model must have `adaln: false`".into(),
            ));
        }
        if kind != ModelKind::Ar && (!adaln || causal) {
            return Err(err(format!(
                "a {} model needs adaLN and non-causal attention (`adaln: true`, `causal: false`)",
                kind.name()
            )));
        }

        let vocab_size = bounded("vocab_size", self.vocab_size, MAX_VOCAB_SIZE)?;
        let hidden_dim = bounded("hidden_dim", self.hidden_dim, MAX_HIDDEN_DIM)?;
        let n_heads = bounded("n_heads", self.n_heads, MAX_HIDDEN_DIM)?;
        let n_blocks = bounded("n_blocks", self.n_blocks, MAX_N_BLOCKS)?;
        let model_length = bounded("model_length", self.model_length, MAX_MODEL_LENGTH)?;
        let cond_dim = if kind.has_adaln() {
            bounded("cond_dim", self.cond_dim, MAX_COND_DIM)?
        } else {
            // Nothing of an AR model reads it; whatever the file says is ignored unless it is usable.
            match self.cond_dim {
                Typed::Ok(n) if n <= MAX_COND_DIM as u64 => n as usize,
                _ => 0,
            }
        };
        let block_size = match kind {
            ModelKind::Bd3lm => bounded("block_size", self.block_size, model_length)?,
            ModelKind::Ar => 1,
            ModelKind::Mdlm | ModelKind::Sedd => model_length,
        };
        let time_conditioning =
            boolean("time_conditioning", self.time_conditioning, false)? || kind == ModelKind::Sedd;

        if vocab_size < 3 {
            return Err(err(format!(
                "`vocab_size` {vocab_size} is too small (needs room for BOS and the mask token)"
            )));
        }
        if hidden_dim % n_heads != 0 {
            return Err(err(format!(
                "`hidden_dim` {hidden_dim} is not a multiple of `n_heads` {n_heads}"
            )));
        }
        let head_dim = hidden_dim / n_heads;
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(err(format!(
                "head dimension {head_dim} must be even and at most {MAX_HEAD_DIM}"
            )));
        }
        if model_length % block_size != 0 {
            return Err(err(format!(
                "`model_length` {model_length} is not a multiple of `block_size` {block_size}"
            )));
        }
        let dropout = number("dropout", self.dropout, defaults::DROPOUT)?;
        if !(0.0..1.0).contains(&dropout) {
            return Err(err(format!(
                "field `dropout` is {dropout}, expected a number in [0, 1)"
            )));
        }
        let sampling_eps_min = number(
            "sampling_eps_min",
            self.sampling_eps_min,
            defaults::SAMPLING_EPS_MIN,
        )?;
        let sampling_eps_max = number(
            "sampling_eps_max",
            self.sampling_eps_max,
            defaults::SAMPLING_EPS_MAX,
        )?;
        if !(sampling_eps_min.is_finite() && sampling_eps_max.is_finite()) {
            return Err(err(format!("`sampling_eps_min` {sampling_eps_min} and `sampling_eps_max` {sampling_eps_max} must be finite")));
        }
        let cfg = ModelConfig {
            kind,
            vocab_size,
            hidden_dim,
            n_heads,
            n_blocks,
            cond_dim,
            model_length,
            block_size,
            time_conditioning,
            dropout,
            sampling_eps_min,
            sampling_eps_max,
        };
        match cfg.parameter_count() {
            Some(n) if n <= MAX_PARAMETERS => Ok(cfg),
            n => Err(err(format!(
                "the model would have {} parameters, more than the supported maximum {MAX_PARAMETERS}",
                n.map_or("more than 2^64".to_string(), |n| n.to_string())
            ))),
        }
    }
}

/// `config.json` as this project writes it: the layout of the official Hugging Face checkpoints
/// (BD3LM / MDLM classes), keys in the official files' (alphabetical) order, with `parameterization`
/// added for the kinds the weights cannot reveal (SEDD, AR).
#[derive(Serialize)]
struct ConfigJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    adaln: Option<bool>,
    architectures: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    attn_backend: Option<&'static str>,
    auto_map: AutoMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causal: Option<bool>,
    cond_dim: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    cross_attn: Option<bool>,
    dropout: f64,
    hidden_dim: usize,
    model_length: usize,
    model_type: &'static str,
    n_blocks: usize,
    n_heads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameterization: Option<&'static str>,
    return_dict: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling_eps_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling_eps_min: Option<f64>,
    time_conditioning: bool,
    torch_dtype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    var_min: Option<bool>,
    vocab_size: usize,
}

#[derive(Serialize)]
struct AutoMap {
    #[serde(rename = "AutoConfig")]
    auto_config: &'static str,
    #[serde(rename = "AutoModelForMaskedLM")]
    auto_model_for_masked_lm: &'static str,
}

impl ModelConfig {
    /// `config.json` in the layout of the official Hugging Face checkpoints (BD3LM / MDLM classes),
    /// with `parameterization` added for the kinds the weights cannot reveal (SEDD, AR).
    pub fn to_json(&self) -> String {
        let bd3lm_class = matches!(self.kind, ModelKind::Bd3lm | ModelKind::Ar);
        let (bd3lm, ar) = (self.kind == ModelKind::Bd3lm, self.kind == ModelKind::Ar);
        let json = ConfigJson {
            adaln: bd3lm_class.then_some(bd3lm),
            architectures: [if bd3lm_class { "BD3LM" } else { "MDLM" }],
            attn_backend: bd3lm_class.then_some("sdpa"),
            auto_map: if bd3lm_class {
                AutoMap {
                    auto_config: "configuration_bd3lm.BD3LMConfig",
                    auto_model_for_masked_lm: "modeling_bd3lm.BD3LM",
                }
            } else {
                AutoMap {
                    auto_config: "configuration_mdlm.MDLMConfig",
                    auto_model_for_masked_lm: "modeling_mdlm.MDLM",
                }
            },
            block_size: bd3lm_class.then_some(self.block_size),
            causal: bd3lm_class.then_some(ar),
            cond_dim: self.cond_dim.max(1),
            cross_attn: bd3lm_class.then_some(bd3lm),
            dropout: self.dropout,
            hidden_dim: self.hidden_dim,
            model_length: self.model_length,
            model_type: if bd3lm_class { "bd3lm" } else { "mdlm" },
            n_blocks: self.n_blocks,
            n_heads: self.n_heads,
            parameterization: match self.kind {
                ModelKind::Sedd => Some("sedd"),
                ModelKind::Ar => Some("ar"),
                _ => None,
            },
            return_dict: false,
            sampling_eps_max: bd3lm_class.then_some(self.sampling_eps_max),
            sampling_eps_min: bd3lm_class.then_some(self.sampling_eps_min),
            time_conditioning: self.time_conditioning,
            torch_dtype: "float32",
            var_min: bd3lm_class.then_some(bd3lm),
            vocab_size: self.vocab_size,
        };
        serde_json::to_string_pretty(&json).expect("a config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_bytes(s.as_bytes(), "config.json", None)
    }

    #[test]
    fn official_bd3lm_config_parses_with_class_defaults() {
        let c = parse(r#"{"architectures":["BD3LM"],"model_type":"bd3lm","block_size":4,"cond_dim":128,"cross_attn":true,
            "dropout":0.1,"hidden_dim":768,"model_length":1024,"n_blocks":12,"n_heads":12,"sampling_eps_max":0.999,
            "sampling_eps_min":0.001,"time_conditioning":false,"var_min":true,"vocab_size":50258}"#).unwrap();
        assert_eq!(c.kind, ModelKind::Bd3lm);
        assert_eq!((c.head_dim(), c.mask_id(), c.bos_id()), (64, 50257, 50256));
    }

    #[test]
    fn mdlm_and_ar_and_sedd_are_told_apart() {
        let mdlm = parse(r#"{"model_type":"mdlm","cond_dim":128,"hidden_dim":768,"model_length":1024,"n_blocks":12,"n_heads":12,"vocab_size":50258}"#).unwrap();
        assert_eq!((mdlm.kind, mdlm.block_size), (ModelKind::Mdlm, 1024));
        let ar = parse(r#"{"model_type":"bd3lm","causal":true,"adaln":false,"block_size":1,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#).unwrap();
        assert_eq!(ar.kind, ModelKind::Ar);
        let sedd = parse(r#"{"model_type":"mdlm","parameterization":"sedd","cond_dim":32,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#).unwrap();
        assert!(sedd.kind == ModelKind::Sedd && sedd.time_conditioning);
    }

    #[test]
    fn written_configs_read_back_the_same() {
        for text in [
            r#"{"model_type":"bd3lm","block_size":4,"cond_dim":32,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
            r#"{"model_type":"mdlm","cond_dim":32,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
            r#"{"model_type":"mdlm","parameterization":"sedd","cond_dim":32,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
            r#"{"model_type":"bd3lm","causal":true,"adaln":false,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
        ] {
            let c = parse(text).unwrap();
            let back = parse(&c.to_json()).unwrap();
            assert_eq!(back.kind, c.kind);
            assert_eq!(
                (
                    back.block_size,
                    back.hidden_dim,
                    back.vocab_size,
                    back.time_conditioning
                ),
                (
                    c.block_size,
                    c.hidden_dim,
                    c.vocab_size,
                    c.time_conditioning
                )
            );
        }
    }

    #[test]
    fn bad_configs_are_one_line_errors() {
        for (text, needle) in [
            ("{not json", "not valid JSON"),
            (r#"{"model_type":"gpt2"}"#, "unknown `model_type`"),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "missing field `model_length`",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":60,"model_length":16,"n_blocks":2,"n_heads":8,"vocab_size":128}"#,
                "not a multiple",
            ),
            (
                r#"{"model_type":"bd3lm","block_size":5,"cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "block_size",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":"64","model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "positive integer",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":1099511627776,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "`model_length` is 1099511627776, more than the supported maximum",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":1000000000,"n_heads":4,"vocab_size":128}"#,
                "`n_blocks` is 1000000000",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":18446744073709551615}"#,
                "`vocab_size`",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":32768,"model_length":16,"n_blocks":1024,"n_heads":256,"vocab_size":128}"#,
                "parameters, more than the supported maximum",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128,"dropout":1.5}"#,
                "`dropout`",
            ),
            // A present field of the wrong type is named with what was found, `null` included
            // (null is not taken for "absent").
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":null,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "field `hidden_dim` must be a positive integer, found null",
            ),
            (
                r#"{"model_type":"mdlm","adaln":null,"cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "field `adaln` must be true or false, found null",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2.5,"n_heads":4,"vocab_size":128}"#,
                "field `n_blocks` must be a positive integer, found 2.5",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":0,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "field `cond_dim` must be a positive integer, found 0",
            ),
            (
                r#"{"model_type":7}"#,
                "field `model_type` must be a string, found 7",
            ),
            (
                r#"{"model_type":"mdlm","cond_dim":8,"dropout":"0.1","hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#,
                "field `dropout` must be a number, found \"0.1\"",
            ),
            ("[1, 2]", "expected a JSON object"),
            ("[\"mdlm\", 8]", "expected a JSON object"),
        ] {
            let e = parse(text).unwrap_err().report();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    /// What `to_json` writes is the official layout: the fixtures' config.json files (written by
    /// the Python reference classes) read and written back give the same fields and values, except
    /// those that name the writer (`_name_or_path`, `transformers_version`) or a runtime choice
    /// (`attn_backend`).
    #[test]
    fn written_configs_match_the_official_files() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-a");
        for sub in ["", "sedd", "ar"] {
            let path = root.join(sub).join("config.json");
            let text = std::fs::read(&path).unwrap();
            let ours = ModelConfig::from_json_bytes(&text, "config.json", None)
                .unwrap()
                .to_json();
            let strip = |mut v: serde_json::Value| {
                for k in ["_name_or_path", "transformers_version", "attn_backend"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            };
            let official = strip(serde_json::from_slice(&text).unwrap());
            assert_eq!(
                strip(serde_json::from_str(&ours).unwrap()),
                official,
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn batches_are_checked_against_the_activation_bound() {
        let c = parse(r#"{"model_type":"mdlm","cond_dim":32,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#).unwrap();
        assert!(c.check_batch(64, 32).is_ok());
        for batch in [
            1usize << 62,
            usize::MAX,
            (MAX_ACTIVATION_VALUES / (32 * 256)) as usize + 1,
        ] {
            let e = c.check_batch(batch, 32).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("batch size {batch} is too large")),
                "{e}"
            );
        }
        assert_eq!(
            c.parameter_count(),
            Some(
                crate::checkpoint::expected_tensors(&c)
                    .iter()
                    .map(|(_, s)| s.iter().product::<usize>() as u64)
                    .sum()
            )
        );
    }
}
