//! Building a checkpoint in memory: random weights for benchmarks and tests, serialised in the
//! official layout so it goes through the same strict loader as a downloaded one.

use crate::checkpoint::expected_tensors;
use crate::config::{ModelConfig, ModelKind};

/// A named f32 tensor.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// SplitMix64 → uniform floats; deterministic for a seed.
pub struct SplitMix(pub u64);
impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every tensor of `cfg` with uniform random values of standard deviation `std` (norm weights around 1),
/// all non-zero so no branch of the model is trivially dead.
pub fn random_weights(cfg: &ModelConfig, seed: u64, std: f32) -> Vec<NamedTensor> {
    let mut rng = SplitMix(seed);
    let half_width = std * 3f32.sqrt();
    expected_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = if name == "rotary_emb.inv_freq" {
                crate::tables::default_inv_freq(cfg.head_dim())
            } else if name.contains("norm") {
                (0..n)
                    .map(|_| 1.0 + (rng.uniform() as f32 - 0.5) * 0.2)
                    .collect()
            } else {
                (0..n)
                    .map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * half_width)
                    .collect()
            };
            NamedTensor {
                name: format!("backbone.{name}"),
                shape,
                data,
            }
        })
        .collect()
}

/// The official initialisation (official `models/dit.py`, `DDiTBlock` / `DDiTFinalLayer` initialisation): adaLN-Zero (every adaLN projection and the output layer
/// start at 0), the embedding Kaiming-uniform(a = √5) = U(±1/√D), every other Linear PyTorch's default
/// U(±1/√fan_in) for weight and bias, LayerNorm weights 1, the default rotary frequencies.
pub fn official_init(cfg: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let mut rng = SplitMix(seed);
    expected_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let uniform = |rng: &mut SplitMix, bound: f64| -> Vec<f32> {
                (0..n)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            };
            let data = if name == "rotary_emb.inv_freq" {
                crate::tables::default_inv_freq(cfg.head_dim())
            } else if name.contains("norm") {
                vec![1.0; n]
            } else if name.contains("adaLN_modulation") || name.starts_with("output_layer.linear") {
                vec![0.0; n]
            } else if name == "vocab_embed.embedding" {
                uniform(&mut rng, 1.0 / (cfg.hidden_dim as f64).sqrt())
            } else {
                // A bias takes the fan-in of its weight: the input width of that Linear.
                let fan_in = fan_in_of(cfg, &name);
                uniform(&mut rng, 1.0 / (fan_in as f64).sqrt())
            };
            NamedTensor {
                name: format!("backbone.{name}"),
                shape,
                data,
            }
        })
        .collect()
}

fn fan_in_of(cfg: &ModelConfig, name: &str) -> usize {
    let d = cfg.hidden_dim;
    if name.starts_with("sigma_map.mlp.0") {
        crate::config::TIMESTEP_FEATURES
    } else if name.starts_with("sigma_map.mlp.2") {
        cfg.cond_dim
    } else if name.contains("mlp.2") {
        4 * d
    } else {
        d
    }
}

/// How `model.safetensors` stores the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// Matrices (embeddings and linear weights, 99 % of the bytes) in IEEE half; vectors (biases,
    /// norms, the rotary buffer) stay F32. Halves the file; every loader converts back to f32.
    F16Matrices,
}

/// Serialise tensors (plus BD3LM's sampling_eps buffers) as `model.safetensors` bytes.
pub fn to_safetensors(
    cfg: &ModelConfig,
    tensors: &[NamedTensor],
    sampling_eps: Option<(f32, f32)>,
) -> Vec<u8> {
    to_safetensors_as(cfg, tensors, sampling_eps, Storage::F32)
        .expect("F32 storage holds every value")
}

/// [`to_safetensors`] with a choice of storage. Fails, naming the tensor, when a value does not fit
/// the storage type (beyond ±65504 for F16), rather than writing an infinity.
pub fn to_safetensors_as(
    cfg: &ModelConfig,
    tensors: &[NamedTensor],
    sampling_eps: Option<(f32, f32)>,
    storage: Storage,
) -> crate::Result<Vec<u8>> {
    let mut stored: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        Vec::with_capacity(tensors.len() + 2);
    for t in tensors {
        if storage == Storage::F16Matrices && t.shape.len() >= 2 {
            if let Some(x) = t.data.iter().find(|x| !x.is_finite() || x.abs() > 65504.0) {
                return Err(crate::Error::Invalid(format!(
                    "tensor `{}` holds {x}, which F16 cannot store",
                    t.name
                )));
            }
            // Round to nearest, ties to even, as `torch.Tensor.half()` does.
            let half: Vec<u8> = t
                .data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            stored.push((
                t.name.clone(),
                safetensors::Dtype::F16,
                t.shape.clone(),
                half,
            ));
        } else {
            stored.push((
                t.name.clone(),
                safetensors::Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data).to_vec(),
            ));
        }
    }
    if let (ModelKind::Bd3lm, Some((lo, hi))) = (cfg.kind, sampling_eps) {
        stored.push((
            "sampling_eps_min".into(),
            safetensors::Dtype::F32,
            vec![],
            lo.to_le_bytes().to_vec(),
        ));
        stored.push((
            "sampling_eps_max".into(),
            safetensors::Dtype::F32,
            vec![],
            hi.to_le_bytes().to_vec(),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = stored
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .expect("tensor shapes match their data"),
            )
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    Ok(safetensors::serialize(views, Some(meta)).expect("tensor shapes match their data"))
}
