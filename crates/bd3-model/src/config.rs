//! `config.json` of the official Hugging Face checkpoints (spec §2.1, §2.3) and the model kind it implies.
//!
//! The released BD3LM configs omit `adaln` and `causal`; the class defaults (adaln = true,
//! causal = false) apply. `cond_dim` must be read from the file: the class default (129) is not
//! what the checkpoints use. Nothing in the weights tells SEDD from MDLM, so SEDD needs the
//! field `"parameterization": "sedd"` (or the caller's override).

use crate::error::{Error, Result};
use serde_json::Value;
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

    /// adaLN modulation (and the sigma_map conditioning MLP) is on for every non-causal model (spec §1.1).
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

/// The width of the sinusoidal timestep features fed to `sigma_map.mlp.0` (spec §1.2).
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
    pub fn mlp_dim(&self) -> usize {
        4 * self.hidden_dim
    }

    /// The number of parameters of the network, computed without overflow (None when it does not fit u64).
    pub fn parameter_count(&self) -> Option<u64> {
        let mut total = 0u64;
        for (_, shape) in crate::checkpoint::expected_tensors(self) {
            let n = shape.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x as u64))?;
            total = total.checked_add(n)?;
        }
        Some(total)
    }

    /// Refuse a batch whose activations could not be allocated: `batch` sequences of `rows` tokens,
    /// each row holding the widest per-token vector of the forward (logits, MLP or QKV). Checked
    /// arithmetic; one line naming `what` (the option that set the batch).
    pub fn check_batch(&self, batch: usize, rows: usize, what: &str) -> Result<()> {
        let width = self.vocab_size.max(4 * self.hidden_dim) as u64;
        let values = (batch as u64).checked_mul(rows as u64).and_then(|x| x.checked_mul(width));
        match values {
            Some(v) if v <= MAX_ACTIVATION_VALUES => Ok(()),
            _ => Err(Error::Invalid(format!(
                "{what} {batch} is too large for this model: {batch} × {rows} tokens × {width} values per token exceeds the limit of {MAX_ACTIVATION_VALUES} values in one buffer"
            ))),
        }
    }

    /// Read and check `config.json`; `kind_override` is the caller's answer for checkpoints whose kind
    /// the file cannot tell (the SEDD baseline).
    pub fn load(path: &Path, kind_override: Option<ModelKind>) -> Result<ModelConfig> {
        let bytes = crate::error::read_file(path)?;
        Self::from_json_bytes(&bytes, &path.display().to_string(), kind_override)
    }

    pub fn from_json_bytes(bytes: &[u8], path: &str, kind_override: Option<ModelKind>) -> Result<ModelConfig> {
        let err = |message: String| Error::Config { path: path.to_string(), message };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| err("expected a JSON object".into()))?;

        let get_usize = |key: &str| -> Result<usize> {
            match obj.get(key) {
                None => Err(err(format!("missing field `{key}`"))),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| err(format!("field `{key}` must be a positive integer, found {x}"))),
            }
        };
        let get_bool = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None => Ok(default),
                Some(x) => x.as_bool().ok_or_else(|| err(format!("field `{key}` must be true or false, found {x}"))),
            }
        };
        let get_f64 = |key: &str, default: f64| -> Result<f64> {
            match obj.get(key) {
                None => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| err(format!("field `{key}` must be a number, found {x}"))),
            }
        };

        let model_type = match obj.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(x) => return Err(err(format!("field `model_type` must be a string, found {x}"))),
            None => return Err(err("missing field `model_type` (expected \"bd3lm\" or \"mdlm\")".into())),
        };
        let parameterization = match obj.get("parameterization") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(x) => return Err(err(format!("field `parameterization` must be a string, found {x}"))),
        };
        let causal = get_bool("causal", false)?;
        let adaln = get_bool("adaln", true)?;

        let detected = match (model_type.as_str(), parameterization.as_deref()) {
            (_, Some("ar")) => ModelKind::Ar,
            (_, Some("sedd")) => ModelKind::Sedd,
            ("bd3lm", Some("subs") | None) if causal => ModelKind::Ar,
            ("bd3lm", Some("subs") | None) => ModelKind::Bd3lm,
            ("mdlm", Some("subs") | None) => ModelKind::Mdlm,
            (_, Some(p)) if !matches!(p, "subs") => {
                return Err(err(format!("unknown `parameterization` \"{p}\" (expected \"subs\", \"sedd\" or \"ar\")")))
            }
            (t, _) => return Err(err(format!("unknown `model_type` \"{t}\" (expected \"bd3lm\" or \"mdlm\")"))),
        };
        let kind = kind_override.unwrap_or(detected);
        if kind == ModelKind::Ar && adaln {
            return Err(err("an autoregressive (causal) model must have `adaln: false`".into()));
        }
        if kind != ModelKind::Ar && (!adaln || causal) {
            return Err(err(format!("a {} model needs adaLN and non-causal attention (`adaln: true`, `causal: false`)", kind.name())));
        }

        let bounded = |key: &str, max: usize| -> Result<usize> {
            let n = get_usize(key)?;
            if n > max {
                return Err(err(format!("field `{key}` is {n}, more than the supported maximum {max}")));
            }
            Ok(n)
        };
        let vocab_size = bounded("vocab_size", MAX_VOCAB_SIZE)?;
        let hidden_dim = bounded("hidden_dim", MAX_HIDDEN_DIM)?;
        let n_heads = bounded("n_heads", MAX_HIDDEN_DIM)?;
        let n_blocks = bounded("n_blocks", MAX_N_BLOCKS)?;
        let model_length = bounded("model_length", MAX_MODEL_LENGTH)?;
        let cond_dim = if kind.has_adaln() {
            bounded("cond_dim", MAX_COND_DIM)?
        } else {
            obj.get("cond_dim").and_then(|x| x.as_u64()).filter(|&n| n <= MAX_COND_DIM as u64).unwrap_or(0) as usize
        };
        let block_size = match kind {
            ModelKind::Bd3lm => bounded("block_size", model_length)?,
            ModelKind::Ar => 1,
            ModelKind::Mdlm | ModelKind::Sedd => model_length,
        };
        let time_conditioning = get_bool("time_conditioning", false)? || kind == ModelKind::Sedd;

        if vocab_size < 3 {
            return Err(err(format!("`vocab_size` {vocab_size} is too small (needs room for BOS and the mask token)")));
        }
        if hidden_dim % n_heads != 0 {
            return Err(err(format!("`hidden_dim` {hidden_dim} is not a multiple of `n_heads` {n_heads}")));
        }
        let head_dim = hidden_dim / n_heads;
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(err(format!("head dimension {head_dim} must be even and at most {MAX_HEAD_DIM}")));
        }
        if model_length % block_size != 0 {
            return Err(err(format!("`model_length` {model_length} is not a multiple of `block_size` {block_size}")));
        }
        let dropout = get_f64("dropout", 0.1)?;
        if !(0.0..1.0).contains(&dropout) {
            return Err(err(format!("field `dropout` is {dropout}, expected a number in [0, 1)")));
        }
        let (sampling_eps_min, sampling_eps_max) = (get_f64("sampling_eps_min", 1e-3)?, get_f64("sampling_eps_max", 1.0)?);
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

impl ModelConfig {
    /// `config.json` in the layout of the official Hugging Face checkpoints (BD3LM / MDLM classes),
    /// with `parameterization` added for the kinds the weights cannot reveal (SEDD, AR).
    pub fn to_json(&self) -> String {
        use serde_json::json;
        let mut v = match self.kind {
            ModelKind::Bd3lm | ModelKind::Ar => json!({
                "architectures": ["BD3LM"],
                "model_type": "bd3lm",
                "auto_map": {"AutoConfig": "configuration_bd3lm.BD3LMConfig", "AutoModelForMaskedLM": "modeling_bd3lm.BD3LM"},
                "attn_backend": "sdpa",
                "block_size": self.block_size,
                "cross_attn": self.kind == ModelKind::Bd3lm,
                "adaln": self.kind == ModelKind::Bd3lm,
                "causal": self.kind == ModelKind::Ar,
                "var_min": self.kind == ModelKind::Bd3lm,
                "sampling_eps_min": self.sampling_eps_min,
                "sampling_eps_max": self.sampling_eps_max,
            }),
            ModelKind::Mdlm | ModelKind::Sedd => json!({
                "architectures": ["MDLM"],
                "model_type": "mdlm",
                "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
            }),
        };
        let o = v.as_object_mut().unwrap();
        for (k, x) in [
            ("cond_dim", json!(self.cond_dim.max(1))),
            ("dropout", json!(self.dropout)),
            ("hidden_dim", json!(self.hidden_dim)),
            ("model_length", json!(self.model_length)),
            ("n_blocks", json!(self.n_blocks)),
            ("n_heads", json!(self.n_heads)),
            ("return_dict", json!(false)),
            ("time_conditioning", json!(self.time_conditioning)),
            ("torch_dtype", json!("float32")),
            ("vocab_size", json!(self.vocab_size)),
        ] {
            o.insert(k.into(), x);
        }
        match self.kind {
            ModelKind::Sedd => { o.insert("parameterization".into(), json!("sedd")); }
            ModelKind::Ar => { o.insert("parameterization".into(), json!("ar")); }
            _ => {}
        }
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
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
            assert_eq!((back.block_size, back.hidden_dim, back.vocab_size, back.time_conditioning), (c.block_size, c.hidden_dim, c.vocab_size, c.time_conditioning));
        }
    }

    #[test]
    fn bad_configs_are_one_line_errors() {
        for (text, needle) in [
            ("{not json", "not valid JSON"),
            (r#"{"model_type":"gpt2"}"#, "unknown `model_type`"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"n_blocks":2,"n_heads":4,"vocab_size":128}"#, "missing field `model_length`"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":60,"model_length":16,"n_blocks":2,"n_heads":8,"vocab_size":128}"#, "not a multiple"),
            (r#"{"model_type":"bd3lm","block_size":5,"cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#, "block_size"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":"64","model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#, "positive integer"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":1099511627776,"n_blocks":2,"n_heads":4,"vocab_size":128}"#, "`model_length` is 1099511627776, more than the supported maximum"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":1000000000,"n_heads":4,"vocab_size":128}"#, "`n_blocks` is 1000000000"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":18446744073709551615}"#, "`vocab_size`"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":32768,"model_length":16,"n_blocks":1024,"n_heads":256,"vocab_size":128}"#, "parameters, more than the supported maximum"),
            (r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128,"dropout":1.5}"#, "`dropout`"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn batches_are_checked_against_the_activation_bound() {
        let c = parse(r#"{"model_type":"mdlm","cond_dim":32,"hidden_dim":64,"model_length":16,"n_blocks":2,"n_heads":4,"vocab_size":128}"#).unwrap();
        assert!(c.check_batch(64, 32, "--batch").is_ok());
        for batch in [1usize << 62, usize::MAX, (MAX_ACTIVATION_VALUES / (32 * 256)) as usize + 1] {
            let e = c.check_batch(batch, 32, "--batch").unwrap_err().to_string();
            assert!(e.starts_with(&format!("--batch {batch} is too large")), "{e}");
        }
        assert_eq!(c.parameter_count(), Some(crate::checkpoint::expected_tensors(&c).iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()));
    }
}
