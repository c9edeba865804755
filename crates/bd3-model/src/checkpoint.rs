//! Strict loading of `model.safetensors` in the official layout (spec §2.2).
//!
//! Every tensor the config implies must be present with its exact shape, and nothing else may be:
//! issue #31 of the official repo is a user whose weights silently failed to load. Names may carry
//! the `backbone.` prefix (Hugging Face export) or not. F32 loads as is; F16, BF16 and F64 are converted.

use crate::config::{ModelConfig, ModelKind, TIMESTEP_FEATURES};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Name (without prefix) → expected shape, in the order the model uses them.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (v, d, c) = (cfg.vocab_size, cfg.hidden_dim, cfg.cond_dim);
    let mut t: Vec<(String, Vec<usize>)> = vec![("vocab_embed.embedding".into(), vec![v, d])];
    if cfg.kind.has_adaln() {
        t.push(("sigma_map.mlp.0.weight".into(), vec![c, TIMESTEP_FEATURES]));
        t.push(("sigma_map.mlp.0.bias".into(), vec![c]));
        t.push(("sigma_map.mlp.2.weight".into(), vec![c, c]));
        t.push(("sigma_map.mlp.2.bias".into(), vec![c]));
    }
    t.push(("rotary_emb.inv_freq".into(), vec![cfg.head_dim() / 2]));
    for i in 0..cfg.n_blocks {
        let b = |s: &str| format!("blocks.{i}.{s}");
        t.push((b("norm1.weight"), vec![d]));
        t.push((b("attn_qkv.weight"), vec![3 * d, d]));
        t.push((b("attn_out.weight"), vec![d, d]));
        t.push((b("norm2.weight"), vec![d]));
        t.push((b("mlp.0.weight"), vec![4 * d, d]));
        t.push((b("mlp.0.bias"), vec![4 * d]));
        t.push((b("mlp.2.weight"), vec![d, 4 * d]));
        t.push((b("mlp.2.bias"), vec![d]));
        if cfg.kind.has_adaln() {
            t.push((b("adaLN_modulation.weight"), vec![6 * d, c]));
            t.push((b("adaLN_modulation.bias"), vec![6 * d]));
        }
    }
    t.push(("output_layer.norm_final.weight".into(), vec![d]));
    t.push(("output_layer.linear.weight".into(), vec![v, d]));
    t.push(("output_layer.linear.bias".into(), vec![v]));
    if cfg.kind.has_adaln() {
        t.push(("output_layer.adaLN_modulation.weight".into(), vec![2 * d, c]));
        t.push(("output_layer.adaLN_modulation.bias".into(), vec![2 * d]));
    }
    t
}

/// Buffers of the BD3LM class outside the backbone; optional (neither sampling nor evaluation reads them).
const OPTIONAL_SCALARS: [&str; 2] = ["sampling_eps_min", "sampling_eps_max"];

/// A checkpoint whose header has been checked against the config. Tensor data is converted on demand,
/// one tensor at a time, so a loader can stream weights to the GPU without a second full copy.
pub struct Checkpoint {
    path: String,
    bytes: Vec<u8>,
    /// Full stored name for each canonical (prefix-free) name.
    names: BTreeMap<String, String>,
    /// The 0-dim sampling_eps_min/max buffers, when present.
    pub sampling_eps: Option<(f64, f64)>,
}

impl Checkpoint {
    pub fn open(path: &Path, cfg: &ModelConfig) -> Result<Checkpoint> {
        let bytes = crate::error::read_file(path)?;
        Self::from_bytes(bytes, &path.display().to_string(), cfg)
    }

    pub fn from_bytes(bytes: Vec<u8>, path: &str, cfg: &ModelConfig) -> Result<Checkpoint> {
        let fail = |tensor: Option<&str>, message: String| Error::Checkpoint {
            path: path.to_string(),
            tensor: tensor.map(str::to_string),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fail(None, format!("not a readable safetensors file ({e})")))?;

        let entries: Vec<(String, String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, format!("{:?}", v.dtype()), v.shape().to_vec()))
            .collect();
        let names = validate_entries(&entries, cfg, path)?;
        let mut eps = [None, None];
        for (i, n) in OPTIONAL_SCALARS.iter().enumerate() {
            if st.tensor(n).is_ok() {
                eps[i] = Some(scalar_f64(&st, n).map_err(|m| fail(Some(n), m))?);
            }
        }
        let sampling_eps = match eps {
            [Some(a), Some(b)] => Some((a, b)),
            [None, None] => None,
            _ => return Err(fail(None, "only one of sampling_eps_min / sampling_eps_max is present".into())),
        };
        Ok(Checkpoint { path: path.to_string(), bytes, names, sampling_eps })
    }

    /// The tensor `name` (canonical, without `backbone.`) converted to f32, row-major.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let full = self.names.get(name).ok_or_else(|| Error::Checkpoint {
            path: self.path.clone(),
            tensor: Some(name.to_string()),
            message: "missing".into(),
        })?;
        let st = SafeTensors::deserialize(&self.bytes).expect("header was validated at open");
        let view = st.tensor(full).expect("tensor was validated at open");
        Ok(to_f32(view.dtype(), view.data()))
    }
}

fn scalar_f64(st: &SafeTensors, name: &str) -> std::result::Result<f64, String> {
    let view = st.tensor(name).map_err(|e| e.to_string())?;
    if !view.shape().is_empty() && view.shape() != [1] {
        return Err(format!("shape {:?}, expected a scalar", view.shape()));
    }
    match view.dtype() {
        Dtype::F64 => Ok(f64::from_le_bytes(view.data()[..8].try_into().unwrap())),
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(to_f32(view.dtype(), view.data())[0] as f64),
        d => Err(format!("unsupported dtype {d:?}")),
    }
}

/// The strict check of a checkpoint's tensor list against the config, shared by the file loader and
/// the browser's streaming loader: every expected tensor present with its shape and a float dtype,
/// nothing unexpected. Entries are (stored name, dtype as safetensors writes it, shape); returns
/// canonical name → stored name.
pub fn validate_entries(entries: &[(String, String, Vec<usize>)], cfg: &ModelConfig, path: &str) -> Result<BTreeMap<String, String>> {
    let fail = |tensor: Option<&str>, message: String| Error::Checkpoint { path: path.to_string(), tensor: tensor.map(str::to_string), message };
    let prefix = if entries.iter().any(|(n, _, _)| n.starts_with("backbone.")) { "backbone." } else { "" };
    let expected = expected_tensors(cfg);
    let mut names = BTreeMap::new();
    for (full, dtype, shape) in entries {
        if OPTIONAL_SCALARS.contains(&full.as_str()) {
            if cfg.kind != ModelKind::Bd3lm {
                return Err(fail(Some(full), format!("unexpected tensor for a {} model", cfg.kind.name())));
            }
            continue;
        }
        let canonical = full.strip_prefix(prefix).filter(|_| !prefix.is_empty()).unwrap_or(full);
        if full.len() == canonical.len() && !prefix.is_empty() {
            return Err(fail(Some(full), format!("unexpected tensor (other tensors carry the `{prefix}` prefix)")));
        }
        let Some((_, want)) = expected.iter().find(|(n, _)| n == canonical) else {
            return Err(fail(Some(full), format!("unexpected tensor for a {} model with {} blocks", cfg.kind.name(), cfg.n_blocks)));
        };
        if shape != want {
            return Err(fail(Some(full), format!("shape {shape:?}, expected {want:?}")));
        }
        if !matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(fail(Some(full), format!("unsupported dtype {dtype} (expected F32, F16, BF16 or F64)")));
        }
        names.insert(canonical.to_string(), full.clone());
    }
    if let Some((missing, _)) = expected.iter().find(|(n, _)| !names.contains_key(n)) {
        return Err(fail(Some(&format!("{prefix}{missing}")), "missing".into()));
    }
    Ok(names)
}

/// The tensor list of a safetensors header (the JSON after the 8-byte length), sorted by data offset:
/// (stored name, dtype, shape, byte range within the data section). The browser streams a checkpoint
/// with it, one tensor at a time.
pub fn parse_header(json: &[u8], path: &str) -> Result<Vec<(String, String, Vec<usize>, (usize, usize))>> {
    let fail = |m: String| Error::Checkpoint { path: path.to_string(), tensor: None, message: m };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| fail(format!("not a safetensors header ({e})")))?;
    let obj = v.as_object().ok_or_else(|| fail("not a safetensors header".into()))?;
    let mut out = Vec::new();
    for (name, e) in obj.iter().filter(|(n, _)| n.as_str() != "__metadata__") {
        let bad = || Error::Checkpoint { path: path.to_string(), tensor: Some(name.clone()), message: "malformed header entry".into() };
        let dtype = e.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)?.to_string();
        let shape: Vec<usize> = e.get("shape").and_then(|s| s.as_array()).ok_or_else(bad)?.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<_>>().ok_or_else(bad)?;
        let off = e.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(bad)?;
        let (a, b) = (off.first().and_then(|x| x.as_u64()).ok_or_else(bad)? as usize, off.get(1).and_then(|x| x.as_u64()).ok_or_else(bad)? as usize);
        out.push((name.clone(), dtype, shape, (a, b)));
    }
    out.sort_by_key(|e| e.3 .0);
    Ok(out)
}

/// Little-endian raw tensor bytes of a dtype named as in a safetensors header → f32.
pub fn bytes_to_f32(dtype: &str, data: &[u8]) -> Option<Vec<f32>> {
    let d = match dtype {
        "F32" => Dtype::F32,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "F64" => Dtype::F64,
        _ => return None,
    };
    Some(to_f32(d, data))
}

/// Little-endian raw tensor bytes → f32 (the dtype was checked by the caller).
pub fn to_f32(dtype: Dtype, data: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
        d => panic!("to_f32 called with {d:?}"),
    }
}

/// IEEE half → single, exact (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24; renormalise.
            let shift = m.leading_zeros() - 21; // bring the leading 1 to bit 10
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Single → IEEE half, rounding to nearest with ties to even (what `torch.Tensor.half()` does).
/// Values beyond the half range become ±infinity; callers that must not lose them check first.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        // Infinity stays infinity; NaN stays a (quiet) NaN.
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // The 24-bit significand (implicit 1 included) and how far it must shift right to fit 11 bits
    // (normal) or fewer (subnormal: the exponent is pinned at 2^-14).
    let sig = mant | 0x80_0000;
    let shift = if e > 0 { 13 } else { 14 - e } as u32;
    if shift > 24 {
        return sign; // below half the smallest subnormal: rounds to zero
    }
    let kept = sig >> shift;
    let rest = sig & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let rounded = kept + u32::from(rest > half || (rest == half && kept & 1 == 1));
    // For normals `kept` carries the implicit bit at 2^10; adding the exponent field on top of it
    // lets a rounding carry move into the exponent (and up to infinity) by itself.
    let magnitude = if e > 0 { ((e as u32 - 1) << 10) + rounded } else { rounded };
    sign | magnitude as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_to_f16_round_trips_every_half_and_rounds_to_nearest_even() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x} ({f})");
            }
        }
        // Between consecutive halves: below the midpoint rounds down, above rounds up, at the
        // midpoint to the even one. Checked on normals, subnormals and across an exponent step.
        for h in [0x0001u16, 0x0002, 0x03ff, 0x0400, 0x3c00, 0x3c01, 0x3bff, 0x7bfe, 0x8401] {
            let (a, b) = (f16_to_f32(h) as f64, f16_to_f32(h + 1) as f64);
            let mid = (a + b) / 2.0;
            let even = if h & 1 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16((mid - (b - a) * 0.01) as f32), h, "below midpoint after {h:#06x}");
            assert_eq!(f32_to_f16((mid + (b - a) * 0.01) as f32), h + 1, "above midpoint after {h:#06x}");
            assert_eq!(f32_to_f16(mid as f32), even, "midpoint after {h:#06x}");
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "the midpoint above the largest half rounds to infinity");
        assert_eq!(f32_to_f16(-1e6), 0xfc00);
        assert_eq!(f32_to_f16(2.9e-8), 0x0000, "below half the smallest subnormal");
        assert_eq!(f32_to_f16(3.0e-8), 0x0001);
    }

    fn tiny_ar() -> ModelConfig {
        ModelConfig::from_json_bytes(
            br#"{"model_type":"bd3lm","causal":true,"adaln":false,"hidden_dim":4,"model_length":8,"n_blocks":1,"n_heads":2,"vocab_size":5}"#,
            "config.json",
            None,
        )
        .unwrap()
    }

    /// Every expected tensor filled with 1.5 in the given 16-bit dtype (1.5 is exact in both).
    fn checkpoint_bytes(cfg: &ModelConfig, dtype: Dtype, one_and_a_half: u16) -> Vec<u8> {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(cfg)
            .into_iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                (format!("backbone.{n}"), s, one_and_a_half.to_le_bytes().repeat(count))
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            data.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap())).collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn half_precision_checkpoints_are_converted() {
        let cfg = tiny_ar();
        for (dtype, bits) in [(Dtype::F16, 0x3e00u16), (Dtype::BF16, 0x3fc0)] {
            let ck = Checkpoint::from_bytes(checkpoint_bytes(&cfg, dtype, bits), "m.safetensors", &cfg).unwrap();
            assert_eq!(ck.tensor_f32("output_layer.linear.weight").unwrap(), vec![1.5; 5 * 4], "{dtype:?}");
        }
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        for (h, f) in [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x7bff, 65504.0), (0x0001, 5.960_464_5e-8), (0x0400, 6.103_515_6e-5), (0x3555, 0.333_251_95)] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
