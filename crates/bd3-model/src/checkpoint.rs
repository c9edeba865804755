//! Strict loading of `model.safetensors` in the official layout (the state dict of `models/dit.py:DIT`,
//! as `modeling_bd3lm.py` of the Hugging Face checkpoints loads it).
//!
//! Every tensor the config implies must be present with its exact shape, and nothing else may be:
//! issue #31 of the official repo is a user whose weights silently failed to load. Names may carry
//! the `backbone.` prefix (Hugging Face export) or not. F32 loads as is; F16, BF16 and F64 are converted.

use crate::config::{ModelConfig, ModelKind, TIMESTEP_FEATURES};
use crate::error::{Error, Result};
use crate::json::Typed;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
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
        t.push((
            "output_layer.adaLN_modulation.weight".into(),
            vec![2 * d, c],
        ));
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
        // The same layout check as the browser's loader, before the safetensors crate looks at it.
        check_file(&bytes, path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|source| Error::Safetensors {
            path: path.to_string(),
            message: "not a readable safetensors file".into(),
            source,
        })?;

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
            _ => {
                return Err(fail(
                    None,
                    "only one of sampling_eps_min / sampling_eps_max is present".into(),
                ))
            }
        };
        Ok(Checkpoint {
            path: path.to_string(),
            bytes,
            names,
            sampling_eps,
        })
    }

    /// The tensor `name` (canonical, without `backbone.`) converted to f32, row-major. A tensor holding
    /// NaN or an infinity is an error: a model with such weights can only produce garbage.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let full = self.names.get(name).ok_or_else(|| Error::Checkpoint {
            path: self.path.clone(),
            tensor: Some(name.to_string()),
            message: "missing".into(),
        })?;
        let st = SafeTensors::deserialize(&self.bytes).expect("header was validated at open");
        let view = st.tensor(full).expect("tensor was validated at open");
        let values = to_f32(view.dtype(), view.data());
        check_finite(&values, &self.path, full)?;
        Ok(values)
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
    .and_then(|x| {
        if x.is_finite() {
            Ok(x)
        } else {
            Err(format!("holds a non-finite value ({x})"))
        }
    })
}

/// The strict check of a checkpoint's tensor list against the config, shared by the file loader and
/// the browser's streaming loader: every expected tensor present with its shape and a float dtype,
/// nothing unexpected. Entries are (stored name, dtype as safetensors writes it, shape); returns
/// canonical name → stored name.
pub fn validate_entries(
    entries: &[(String, String, Vec<usize>)],
    cfg: &ModelConfig,
    path: &str,
) -> Result<BTreeMap<String, String>> {
    let fail = |tensor: Option<&str>, message: String| Error::Checkpoint {
        path: path.to_string(),
        tensor: tensor.map(str::to_string),
        message,
    };
    let prefix = if entries.iter().any(|(n, _, _)| n.starts_with("backbone.")) {
        "backbone."
    } else {
        ""
    };
    let expected = expected_tensors(cfg);
    let mut names = BTreeMap::new();
    for (full, dtype, shape) in entries {
        if OPTIONAL_SCALARS.contains(&full.as_str()) {
            if cfg.kind != ModelKind::Bd3lm {
                return Err(fail(
                    Some(full),
                    format!("unexpected tensor for a {} model", cfg.kind.name()),
                ));
            }
            continue;
        }
        let canonical = full
            .strip_prefix(prefix)
            .filter(|_| !prefix.is_empty())
            .unwrap_or(full);
        if full.len() == canonical.len() && !prefix.is_empty() {
            return Err(fail(
                Some(full),
                format!("unexpected tensor (other tensors carry the `{prefix}` prefix)"),
            ));
        }
        let Some((_, want)) = expected.iter().find(|(n, _)| n == canonical) else {
            return Err(fail(
                Some(full),
                format!(
                    "unexpected tensor for a {} model with {} blocks",
                    cfg.kind.name(),
                    cfg.n_blocks
                ),
            ));
        };
        if shape != want {
            return Err(fail(
                Some(full),
                format!("shape {shape:?}, expected {want:?}"),
            ));
        }
        if !matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(fail(
                Some(full),
                format!("unsupported dtype {dtype} (expected F32, F16, BF16 or F64)"),
            ));
        }
        names.insert(canonical.to_string(), full.clone());
    }
    if let Some((missing, _)) = expected.iter().find(|(n, _)| !names.contains_key(n)) {
        return Err(fail(Some(&format!("{prefix}{missing}")), "missing".into()));
    }
    Ok(names)
}

/// Bytes per element of a safetensors dtype name; None for a name the format does not define.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// One tensor of a safetensors header: (stored name, dtype, shape, byte range within the data section).
pub type HeaderEntry = (String, String, Vec<usize>, (usize, usize));

/// The largest safetensors header (JSON) accepted, as in the `safetensors` crate.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A safetensors header as written: `__metadata__` (string → string) and one entry per tensor,
/// shaped as the `safetensors` crate's own `HashMetadata` / `TensorInfo`, so that both read a header alike.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object of tensor entries")]
struct RawHeader {
    #[serde(rename = "__metadata__", default)]
    _metadata: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    tensors: BTreeMap<String, Typed<RawEntry>>,
}

/// One tensor of a safetensors header, each field kept as written so that a bad one is named.
#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    dtype: Typed<String>,
    #[serde(default)]
    shape: Typed<Vec<Typed<u64>>>,
    #[serde(default)]
    data_offsets: Typed<[Typed<u64>; 2]>,
}

/// The tensor list of a safetensors header (the JSON after the 8-byte length), sorted by data offset:
/// (stored name, dtype, shape, byte range within the data section). The browser streams a checkpoint
/// with it, one tensor at a time.
///
/// The entries must tile the data section exactly: sorted by offset they start at 0, each begins where
/// the previous one ends (no overlap, no gap), no range runs backward, and each range holds exactly
/// shape × dtype size bytes. Every integer must fit `usize` of the running target (wasm32 included)
/// and every size computation is checked. The data section's length is the sum of the ranges; use
/// [`check_header`] to hold it against the file's length.
pub fn parse_header(json: &[u8], path: &str) -> Result<Vec<HeaderEntry>> {
    let header: RawHeader = serde_json::from_slice(json).map_err(|source| Error::Json {
        path: path.to_string(),
        message: "not a safetensors header".into(),
        source,
    })?;
    let mut out = Vec::new();
    for (name, entry) in header.tensors {
        let bad = |m: &str| Error::Checkpoint {
            path: path.to_string(),
            tensor: Some(name.clone()),
            message: format!("malformed header entry: {m}"),
        };
        let int = |x: Typed<u64>, what: &str| -> Result<usize> {
            let n = match x {
                Typed::Ok(n) => n,
                Typed::Other(x) => {
                    return Err(bad(&format!("{what} {x} is not a non-negative integer")))
                }
                Typed::Absent => return Err(bad(&format!("{what} missing"))),
            };
            usize::try_from(n).map_err(|_| {
                bad(&format!(
                    "{what} {n} does not fit this platform's {}-bit addresses",
                    usize::BITS
                ))
            })
        };
        let Typed::Ok(e) = entry else {
            return Err(bad(
                "not an object with `dtype`, `shape` and `data_offsets`",
            ));
        };
        let Typed::Ok(dtype) = e.dtype else {
            return Err(bad("no string `dtype`"));
        };
        let size = dtype_size(&dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
        let Typed::Ok(shape) = e.shape else {
            return Err(bad("no `shape` list"));
        };
        let shape: Vec<usize> = shape
            .into_iter()
            .map(|x| int(x, "shape dimension"))
            .collect::<Result<_>>()?;
        let Typed::Ok([a, b]) = e.data_offsets else {
            return Err(bad("`data_offsets` must be [begin, end]"));
        };
        let (a, b) = (int(a, "data offset")?, int(b, "data offset")?);
        if b < a {
            return Err(bad(&format!("data_offsets [{a}, {b}] run backward")));
        }
        let bytes = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(&format!("shape {shape:?} is too large")))?;
        if b - a != bytes {
            return Err(bad(&format!("data_offsets [{a}, {b}] hold {} bytes, but shape {shape:?} of {dtype} needs {bytes}", b - a)));
        }
        out.push((name, dtype, shape, (a, b)));
    }
    out.sort_by_key(|e| e.3);
    let mut end = 0usize;
    for (name, _, _, (a, b)) in &out {
        if *a != end {
            let what = if *a < end {
                format!("overlap the previous tensor (which ends at {end})")
            } else {
                format!("leave a gap of {} bytes after the previous tensor", a - end)
            };
            return Err(Error::Checkpoint {
                path: path.to_string(),
                tensor: Some(name.clone()),
                message: format!("data_offsets [{a}, {b}] {what}"),
            });
        }
        end = *b;
    }
    Ok(out)
}

/// [`parse_header`] checked against the whole file: `json` is the header (the bytes after the 8-byte
/// length prefix), `file_len` the length of the whole `.safetensors` file in bytes. The tensors must
/// end exactly at the end of the file: a range past it (a truncated file) or bytes after the last
/// tensor are errors. Both the native loader and the browser's streaming loader (which has only the
/// header and the file's length when the data starts to arrive) call this.
pub fn check_header(json: &[u8], file_len: u64, path: &str) -> Result<Vec<HeaderEntry>> {
    let fail = |m: String| Error::Checkpoint {
        path: path.to_string(),
        tensor: None,
        message: m,
    };
    if json.len() as u64 > MAX_HEADER_LEN {
        return Err(fail(format!(
            "not a readable safetensors file (a header of {} bytes; at most {MAX_HEADER_LEN})",
            json.len()
        )));
    }
    let entries = parse_header(json, path)?;
    let data_start = 8u64 + json.len() as u64;
    let data_len = file_len
        .checked_sub(data_start)
        .ok_or_else(|| fail(format!("not a readable safetensors file (truncated: the header runs past the end of the file, {file_len} bytes)")))?;
    let end = entries.last().map_or(0, |e| e.3 .1) as u64;
    if end > data_len {
        return Err(fail(format!("not a readable safetensors file (truncated: the tensors end beyond the file; they need {end} bytes of data, it holds {data_len})")));
    }
    if end < data_len {
        return Err(fail(format!("not a readable safetensors file ({} trailing bytes after the last tensor: the header accounts for {end} of {data_len})", data_len - end)));
    }
    Ok(entries)
}

/// The header of a whole `.safetensors` file in memory, checked with [`check_header`].
pub fn check_file(bytes: &[u8], path: &str) -> Result<Vec<HeaderEntry>> {
    let fail = |m: String| Error::Checkpoint {
        path: path.to_string(),
        tensor: None,
        message: m,
    };
    let n = bytes.get(..8).ok_or_else(|| {
        fail(format!(
            "not a readable safetensors file ({} bytes, shorter than the 8-byte header length)",
            bytes.len()
        ))
    })?;
    let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN || n > bytes.len() as u64 - 8 {
        return Err(fail(format!(
            "not a readable safetensors file (header length {n} in a file of {} bytes)",
            bytes.len()
        )));
    }
    check_header(&bytes[8..8 + n as usize], bytes.len() as u64, path)
}

/// Refuse a tensor holding NaN or an infinity, naming it and the first bad position.
pub fn check_finite(values: &[f32], path: &str, tensor: &str) -> Result<()> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Checkpoint {
            path: path.to_string(),
            tensor: Some(tensor.to_string()),
            message: format!("holds a non-finite value ({} at index {i})", values[i]),
        }),
    }
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
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        d => panic!("to_f32 called with {d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The conversions the loaders and the F16 writer use (`half`), held to what PyTorch does.
    fn f16_to_f32(h: u16) -> f32 {
        half::f16::from_bits(h).to_f32()
    }
    fn f32_to_f16(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }

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
        for h in [
            0x0001u16, 0x0002, 0x03ff, 0x0400, 0x3c00, 0x3c01, 0x3bff, 0x7bfe, 0x8401,
        ] {
            let (a, b) = (f16_to_f32(h) as f64, f16_to_f32(h + 1) as f64);
            let mid = (a + b) / 2.0;
            let even = if h & 1 == 0 { h } else { h + 1 };
            assert_eq!(
                f32_to_f16((mid - (b - a) * 0.01) as f32),
                h,
                "below midpoint after {h:#06x}"
            );
            assert_eq!(
                f32_to_f16((mid + (b - a) * 0.01) as f32),
                h + 1,
                "above midpoint after {h:#06x}"
            );
            assert_eq!(f32_to_f16(mid as f32), even, "midpoint after {h:#06x}");
        }
        assert_eq!(
            f32_to_f16(65520.0),
            0x7c00,
            "the midpoint above the largest half rounds to infinity"
        );
        assert_eq!(f32_to_f16(-1e6), 0xfc00);
        assert_eq!(
            f32_to_f16(2.9e-8),
            0x0000,
            "below half the smallest subnormal"
        );
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
                (
                    format!("backbone.{n}"),
                    s,
                    one_and_a_half.to_le_bytes().repeat(count),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn half_precision_checkpoints_are_converted() {
        let cfg = tiny_ar();
        for (dtype, bits) in [(Dtype::F16, 0x3e00u16), (Dtype::BF16, 0x3fc0)] {
            let ck =
                Checkpoint::from_bytes(checkpoint_bytes(&cfg, dtype, bits), "m.safetensors", &cfg)
                    .unwrap();
            assert_eq!(
                ck.tensor_f32("output_layer.linear.weight").unwrap(),
                vec![1.5; 5 * 4],
                "{dtype:?}"
            );
        }
    }

    /// A header of tensors given as (name, dtype, shape, [begin, end]) and the file length it claims.
    fn header(entries: &[(&str, &str, &[u64], [u64; 2])]) -> Vec<u8> {
        let mut o = serde_json::Map::new();
        for (n, d, s, off) in entries {
            o.insert(
                n.to_string(),
                serde_json::json!({"dtype": d, "shape": s, "data_offsets": off}),
            );
        }
        serde_json::to_vec(&o).unwrap()
    }

    #[test]
    fn data_offsets_must_tile_the_data_section_exactly() {
        let file_len = |json: &[u8], data: u64| 8 + json.len() as u64 + data;
        let ok = header(&[("a", "F32", &[2], [0, 8]), ("b", "F16", &[3], [8, 14])]);
        let entries = check_header(&ok, file_len(&ok, 14), "m").unwrap();
        assert_eq!(
            entries.iter().map(|e| e.3).collect::<Vec<_>>(),
            [(0, 8), (8, 14)]
        );
        for (json, data, needle) in [
            (
                header(&[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [4, 12])]),
                12,
                "overlap the previous tensor",
            ),
            (
                header(&[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [12, 20])]),
                20,
                "gap",
            ),
            (header(&[("a", "F32", &[2], [1, 9])]), 9, "gap"),
            (header(&[("a", "F32", &[0], [8, 0])]), 8, "backward"),
            (header(&[("a", "F32", &[2], [0, 12])]), 12, "needs 8"),
            (
                header(&[("a", "F32", &[2], [0, 8])]),
                9,
                "1 trailing bytes after the last tensor",
            ),
            (header(&[("a", "F32", &[2], [0, 8])]), 7, "truncated"),
            (header(&[("a", "F32", &[u64::MAX, 2], [0, 8])]), 8, ""),
            (
                header(&[("a", "F32", &[1 << 62, 1 << 62], [0, 8])]),
                8,
                "too large",
            ),
            (header(&[("a", "Q4", &[2], [0, 8])]), 8, "unknown dtype"),
            (
                br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#.to_vec(),
                8,
                "[begin, end]",
            ),
            (
                br#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#.to_vec(),
                8,
                "not a non-negative integer",
            ),
            (
                br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}}"#.to_vec(),
                8,
                "not a non-negative integer",
            ),
        ] {
            let e = check_header(&json, file_len(&json, data), "m.safetensors")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(needle) && e.starts_with("m.safetensors") && !e.contains('\n'),
                "{needle}: {e}"
            );
        }
        // A header shorter than the file says: its length prefix points past the end.
        assert!(check_file(&[16, 0, 0, 0, 0, 0, 0, 0, b'{', b'}'], "m").is_err());
        assert!(check_file(&[1, 2, 3], "m").is_err());
        assert!(check_file(&[2, 0, 0, 0, 0, 0, 0, 0, b'{', b'}'], "m")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn non_finite_weights_are_refused_at_load() {
        let cfg = tiny_ar();
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(&cfg)
            .into_iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let mut v = vec![0.5f32; count];
                if n == "blocks.0.mlp.2.bias" {
                    v[1] = f32::NAN;
                }
                (
                    format!("backbone.{n}"),
                    s,
                    bytemuck::cast_slice(&v).to_vec(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let ck = Checkpoint::from_bytes(
            safetensors::serialize(views, None).unwrap(),
            "m.safetensors",
            &cfg,
        )
        .unwrap();
        assert!(ck.tensor_f32("blocks.0.norm1.weight").is_ok());
        let e = ck
            .tensor_f32("blocks.0.mlp.2.bias")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backbone.blocks.0.mlp.2.bias") && e.contains("non-finite"),
            "{e}"
        );
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0400, 6.103_515_6e-5),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    /// (header JSON as a value, data section) of a serialized checkpoint.
    fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (
            serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
            bytes[8 + n..].to_vec(),
        )
    }

    fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(header).unwrap();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        out.extend_from_slice(data);
        out
    }

    /// The streaming loader's verdict on a whole file: the header against the file's length.
    fn streaming_check(file: &[u8]) -> Result<()> {
        let n = u64::from_le_bytes(file[..8].try_into().unwrap());
        check_header(&file[8..8 + n as usize], file.len() as u64, "m.safetensors").map(|_| ())
    }

    #[test]
    fn data_offsets_of_real_checkpoints_pass() {
        let cfg = tiny_ar();
        streaming_check(&checkpoint_bytes(&cfg, Dtype::F16, 0x3e00)).unwrap();
        for f in [
            "model.safetensors",
            "sedd/model.safetensors",
            "ar/model.safetensors",
        ] {
            let bytes = std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/fixtures/tiny-a")
                    .join(f),
            )
            .unwrap();
            streaming_check(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn bad_data_offsets_are_named() {
        let (header, data) = split(&checkpoint_bytes(&tiny_ar(), Dtype::F16, 0x3e00));
        let entries = parse_header(&serde_json::to_vec(&header).unwrap(), "m").unwrap();
        // The first two tensors in file order, and the last.
        let (first, second, last) = (
            entries[0].0.clone(),
            entries[1].0.clone(),
            entries.last().unwrap().0.clone(),
        );
        let off = |h: &mut serde_json::Value, name: &str, a: i64, b: i64| {
            let o = &mut h[name]["data_offsets"];
            let (a0, b0) = (o[0].as_i64().unwrap(), o[1].as_i64().unwrap());
            *o = serde_json::json!([a0 + a, b0 + b]);
        };
        let case = |edit: &dyn Fn(&mut serde_json::Value, &mut Vec<u8>), want: &str| {
            let (mut h, mut d) = (header.clone(), data.clone());
            edit(&mut h, &mut d);
            let file = join(&h, &d);
            let msg = streaming_check(&file).expect_err(want).to_string();
            assert!(msg.contains(want), "{want}: {msg}");
            assert!(
                SafeTensors::deserialize(&file).is_err(),
                "the native loader accepts what the streaming one refuses ({want})"
            );
        };
        case(
            &|h, _| off(h, &second, -2, -2),
            "overlap the previous tensor",
        );
        case(&|h, _| off(h, &second, 2, 2), "gap of 2 bytes");
        case(
            &|h, _| {
                let o = h[&first]["data_offsets"].clone();
                h[&first]["data_offsets"] = serde_json::json!([o[1], o[0]]);
            },
            "run backward",
        );
        case(&|h, _| off(h, &first, 0, 2), "hold");
        case(&|_, d| d.extend_from_slice(&[0; 6]), "6 trailing bytes");
        case(&|_, d| d.truncate(d.len() - 2), "end beyond the file");
        case(
            &|h, d| {
                off(h, &last, 0, 2);
                let _ = d;
            },
            "hold",
        );
        case(
            &|h, _| {
                h[&first]["dtype"] = "Q7".into();
            },
            "unknown dtype Q7",
        );
        // The header's length beyond the file.
        let file = join(&header, &data);
        let n = u64::from_le_bytes(file[..8].try_into().unwrap());
        assert!(check_header(&file[8..8 + n as usize], n + 4, "m")
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));
        // A shape whose byte count overflows is an error, not a wrap.
        let huge = format!(
            r#"{{"t": {{"dtype": "F32", "shape": [{}, 3], "data_offsets": [0, 12]}}}}"#,
            usize::MAX
        );
        assert!(
            check_header(huge.as_bytes(), 8 + huge.len() as u64 + 12, "m")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }

    #[test]
    fn header_integers_that_do_not_fit_are_errors() {
        for bad in ["18446744073709551616", "-1", "1.5", "1e3", "\"8\""] {
            let json =
                format!(r#"{{"t": {{"dtype": "F32", "shape": [2], "data_offsets": [0, {bad}]}}}}"#);
            assert!(
                parse_header(json.as_bytes(), "m").is_err(),
                "data_offsets end {bad}"
            );
            let json =
                format!(r#"{{"t": {{"dtype": "F32", "shape": [{bad}], "data_offsets": [0, 8]}}}}"#);
            assert!(parse_header(json.as_bytes(), "m").is_err(), "shape {bad}");
        }
        for bad in ["[0]", "[0, 8, 16]", "{}", "null"] {
            let json =
                format!(r#"{{"t": {{"dtype": "F32", "shape": [2], "data_offsets": {bad}}}}}"#);
            assert!(
                parse_header(json.as_bytes(), "m").is_err(),
                "data_offsets {bad}"
            );
        }
    }

    /// A few hundred random edits of the offsets and of the file's length: the streaming check
    /// accepts exactly what `SafeTensors::deserialize` (the native loader) accepts, and never panics.
    #[test]
    fn streaming_offset_check_agrees_with_the_native_loader() {
        let (header, data) = split(&checkpoint_bytes(&tiny_ar(), Dtype::F16, 0x3e00));
        let names: Vec<String> = header
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..400 {
            let (mut h, mut d) = (header.clone(), data.clone());
            for _ in 0..1 + next(2) {
                let name = &names[next(names.len() as u64) as usize];
                let o = &mut h[name]["data_offsets"];
                let which = next(2) as usize;
                let v = o[which].as_u64().unwrap();
                o[which] = match next(5) {
                    0 => v.saturating_sub(1 + next(4)),
                    1 => v + 1 + next(4),
                    2 => next(data.len() as u64 + 8),
                    3 => u64::MAX - next(3),
                    _ => v, // unchanged: only the file's length (below) moves
                }
                .into();
            }
            match next(4) {
                0 => d.extend(std::iter::repeat_n(0u8, 1 + next(8) as usize)),
                1 => d.truncate(d.len().saturating_sub(1 + next(8) as usize)),
                _ => {}
            }
            let file = join(&h, &d);
            let native = SafeTensors::deserialize(&file).is_ok();
            let streaming = streaming_check(&file);
            assert_eq!(
                streaming.is_ok(),
                native,
                "streaming: {streaming:?}, native: {native}\n{h}"
            );
            if native {
                accepted += 1
            } else {
                refused += 1
            }
        }
        assert!(
            accepted > 20 && refused > 200,
            "{accepted} accepted, {refused} refused: the edits do not cover both sides"
        );
    }
}
