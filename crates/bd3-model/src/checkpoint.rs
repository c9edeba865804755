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
/// with it, one tensor at a time. Integers that do not fit this platform's `usize` (wasm32: 4 GiB)
/// are errors, not truncations. The offsets are not checked here: see [`check_data_offsets`].
pub fn parse_header(json: &[u8], path: &str) -> Result<Vec<HeaderEntry>> {
    let fail = |m: String| Error::Checkpoint { path: path.to_string(), tensor: None, message: m };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| fail(format!("not a safetensors header ({e})")))?;
    let obj = v.as_object().ok_or_else(|| fail("not a safetensors header".into()))?;
    let mut out = Vec::new();
    for (name, e) in obj.iter().filter(|(n, _)| n.as_str() != "__metadata__") {
        let bad = |what: &str| Error::Checkpoint { path: path.to_string(), tensor: Some(name.clone()), message: format!("malformed header entry ({what})") };
        let int = |x: &serde_json::Value, what: &str| -> Result<usize> {
            let n = x.as_u64().ok_or_else(|| bad(&format!("{what} is not a non-negative integer below 2^64")))?;
            usize::try_from(n).map_err(|_| bad(&format!("{what} {n} does not fit this platform's {}-bit addresses", usize::BITS)))
        };
        let dtype = e.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?.to_string();
        let shape = e.get("shape").and_then(|s| s.as_array()).ok_or_else(|| bad("no shape"))?.iter().map(|x| int(x, "a shape dimension")).collect::<Result<Vec<usize>>>()?;
        let off = e.get("data_offsets").and_then(|o| o.as_array()).filter(|o| o.len() == 2).ok_or_else(|| bad("data_offsets is not a pair"))?;
        let (a, b) = (int(&off[0], "a data offset")?, int(&off[1], "a data offset")?);
        out.push((name.clone(), dtype, shape, (a, b)));
    }
    out.sort_by_key(|e| e.3);
    Ok(out)
}

/// The largest header the safetensors crate reads (its `MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor of a safetensors header: (stored name, dtype, shape, (begin, end) within the data section).
pub type HeaderEntry = (String, String, Vec<usize>, (usize, usize));

/// The layout checks the native loader gets from `SafeTensors::deserialize`, for a loader that has
/// only the header and the file's length (the browser streams the data afterwards): the header fits
/// in the file; each tensor's `data_offsets` run forward and hold exactly shape × dtype bytes; taken
/// in offset order the tensors tile the data section with no overlap and no gap, from its first byte
/// to the file's last (no trailing bytes, nothing beyond the end). `header_len` is the JSON's length
/// (the 8-byte prefix's value), `file_len` the whole file's.
pub fn check_data_offsets(entries: &[HeaderEntry], header_len: u64, file_len: u64, path: &str) -> Result<()> {
    let fail = |tensor: Option<&str>, message: String| Error::Checkpoint { path: path.to_string(), tensor: tensor.map(str::to_string), message };
    if header_len > MAX_HEADER_LEN {
        return Err(fail(None, format!("not a safetensors file (a header of {header_len} bytes; at most {MAX_HEADER_LEN})")));
    }
    let data_len = header_len
        .checked_add(8)
        .and_then(|h| file_len.checked_sub(h))
        .ok_or_else(|| fail(None, format!("the header ({header_len} bytes) runs past the end of the file ({file_len} bytes)")))?;
    let mut order: Vec<&HeaderEntry> = entries.iter().collect();
    order.sort_by_key(|e| e.3);
    let mut at = 0u64;
    let mut previous: Option<&str> = None;
    for (name, dtype, shape, (begin, end)) in order {
        let (begin, end) = (*begin as u64, *end as u64);
        let t = Some(name.as_str());
        if end < begin {
            return Err(fail(t, format!("data_offsets [{begin}, {end}] run backward")));
        }
        let bits = dtype_bits(dtype).ok_or_else(|| fail(t, format!("unknown dtype {dtype}")))?;
        let need = shape
            .iter()
            .try_fold(bits, |n, &d| n.checked_mul(d as u64))
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8)
            .ok_or_else(|| fail(t, format!("shape {shape:?} of {dtype} is not a whole number of bytes below 2^64")))?;
        if end - begin != need {
            return Err(fail(t, format!("data_offsets [{begin}, {end}] hold {} bytes, but shape {shape:?} of {dtype} needs {need}", end - begin)));
        }
        if begin < at {
            let other = previous.map_or(String::new(), |p| format!(" `{p}`"));
            return Err(fail(t, format!("data_offsets [{begin}, {end}] overlap the previous tensor{other} (which ends at {at})")));
        }
        if begin > at {
            return Err(fail(t, format!("data_offsets [{begin}, {end}] leave a gap of {} bytes before this tensor", begin - at)));
        }
        if end > data_len {
            return Err(fail(t, format!("data_offsets [{begin}, {end}] end beyond the file (its data section holds {data_len} bytes)")));
        }
        at = end;
        previous = t;
    }
    if at != data_len {
        return Err(fail(None, format!("{} trailing bytes after the last tensor (the data section holds {data_len} bytes, the tensors {at})", data_len - at)));
    }
    Ok(())
}

/// Bits per element of a dtype as a safetensors header names it.
fn dtype_bits(dtype: &str) -> Option<u64> {
    let d: Dtype = serde_json::from_value(serde_json::Value::String(dtype.to_string())).ok()?;
    Some(d.bitsize() as u64)
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

    /// (header JSON as a value, data section) of a serialized checkpoint.
    fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
    }

    fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(header).unwrap();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        out.extend_from_slice(data);
        out
    }

    /// The streaming loader's verdict on a whole file: parse the header, check the offsets.
    fn streaming_check(file: &[u8]) -> Result<()> {
        let n = u64::from_le_bytes(file[..8].try_into().unwrap());
        let entries = parse_header(&file[8..8 + n as usize], "m.safetensors")?;
        check_data_offsets(&entries, n, file.len() as u64, "m.safetensors")
    }

    #[test]
    fn data_offsets_of_real_checkpoints_pass() {
        let cfg = tiny_ar();
        streaming_check(&checkpoint_bytes(&cfg, Dtype::F16, 0x3e00)).unwrap();
        for f in ["model.safetensors", "sedd/model.safetensors", "ar/model.safetensors"] {
            let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-a").join(f)).unwrap();
            streaming_check(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn bad_data_offsets_are_named() {
        let (header, data) = split(&checkpoint_bytes(&tiny_ar(), Dtype::F16, 0x3e00));
        let entries = parse_header(&serde_json::to_vec(&header).unwrap(), "m").unwrap();
        // The first two tensors in file order, and the last.
        let (first, second, last) = (entries[0].0.clone(), entries[1].0.clone(), entries.last().unwrap().0.clone());
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
            assert!(SafeTensors::deserialize(&file).is_err(), "the native loader accepts what the streaming one refuses ({want})");
        };
        case(&|h, _| off(h, &second, -2, -2), "overlap the previous tensor");
        case(&|h, _| off(h, &second, 2, 2), "gap of 2 bytes");
        case(&|h, _| { let o = h[&first]["data_offsets"].clone(); h[&first]["data_offsets"] = serde_json::json!([o[1], o[0]]); }, "run backward");
        case(&|h, _| off(h, &first, 0, 2), "hold");
        case(&|_, d| d.extend_from_slice(&[0; 6]), "6 trailing bytes");
        case(&|_, d| d.truncate(d.len() - 2), "end beyond the file");
        case(&|h, d| { off(h, &last, 0, 2); let _ = d; }, "hold");
        case(&|h, _| { h[&first]["dtype"] = "Q7".into(); }, "unknown dtype Q7");
        // The header's length beyond the file.
        let file = join(&header, &data);
        let n = u64::from_le_bytes(file[..8].try_into().unwrap());
        assert!(check_data_offsets(&parse_header(&file[8..8 + n as usize], "m").unwrap(), n, n + 4, "m").unwrap_err().to_string().contains("runs past the end"));
        assert!(check_data_offsets(&[], MAX_HEADER_LEN + 1, u64::MAX, "m").is_err());
        // A shape whose byte count overflows is an error, not a wrap.
        let huge = vec![("t".to_string(), "F32".to_string(), vec![usize::MAX, 3], (0, 12))];
        assert!(check_data_offsets(&huge, 2, 22, "m").unwrap_err().to_string().contains("whole number of bytes"));
    }

    #[test]
    fn header_integers_that_do_not_fit_are_errors() {
        for bad in ["18446744073709551616", "-1", "1.5", "1e3", "\"8\""] {
            let json = format!(r#"{{"t": {{"dtype": "F32", "shape": [2], "data_offsets": [0, {bad}]}}}}"#);
            assert!(parse_header(json.as_bytes(), "m").is_err(), "data_offsets end {bad}");
            let json = format!(r#"{{"t": {{"dtype": "F32", "shape": [{bad}], "data_offsets": [0, 8]}}}}"#);
            assert!(parse_header(json.as_bytes(), "m").is_err(), "shape {bad}");
        }
        for bad in ["[0]", "[0, 8, 16]", "{}", "null"] {
            let json = format!(r#"{{"t": {{"dtype": "F32", "shape": [2], "data_offsets": {bad}}}}}"#);
            assert!(parse_header(json.as_bytes(), "m").is_err(), "data_offsets {bad}");
        }
    }

    /// A few hundred random edits of the offsets and of the file's length: the streaming check
    /// accepts exactly what `SafeTensors::deserialize` (the native loader) accepts, and never panics.
    #[test]
    fn streaming_offset_check_agrees_with_the_native_loader() {
        let (header, data) = split(&checkpoint_bytes(&tiny_ar(), Dtype::F16, 0x3e00));
        let names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
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
            assert_eq!(streaming.is_ok(), native, "streaming: {streaming:?}, native: {native}\n{h}");
            if native { accepted += 1 } else { refused += 1 }
        }
        assert!(accepted > 20 && refused > 200, "{accepted} accepted, {refused} refused: the edits do not cover both sides");
    }
}
