//! Constant tables the GPU reads: rotary cos/sin and the sinusoidal sigma features.
//!
//! Both are computed here in f64 and rounded once, not in WGSL: a shader's `cos` is only specified to
//! 2^-11 absolute error inside [−π, π], and rotary angles reach p·inv_freq ≈ 1000 rad.

use crate::config::TIMESTEP_FEATURES;

/// Rotary tables for positions 0..n_positions: θ = p·inv_freq_j (a float32 product, as the official
/// code forms it), returned as (cos θ, sin θ), each [n_positions, head_dim/2].
pub fn rotary_tables(inv_freq: &[f32], n_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(n_positions * half);
    let mut sin = Vec::with_capacity(n_positions * half);
    for p in 0..n_positions {
        for &f in inv_freq {
            let theta = (p as f32 * f) as f64;
            cos.push(theta.cos() as f32);
            sin.push(theta.sin() as f32);
        }
    }
    (cos, sin)
}

/// The default inv_freq_j = 10000^(−2j/head_dim), in float32 (`rotary_emb.inv_freq`).
pub fn default_inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|j| (1.0 / 10000f64.powf(2.0 * j as f64 / head_dim as f64)) as f32)
        .collect()
}

/// `TimestepEmbedder.timestep_embedding(sigma, 256)`: [cos(σ·f_i) for i<128] ++ [sin(σ·f_i)],
/// f_i = exp(−ln(10000)·i/128) held in float32 as the official code builds it.
pub fn timestep_features(sigma: f64) -> Vec<f32> {
    let half = TIMESTEP_FEATURES / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| ((-(10000f64.ln()) * i as f64 / half as f64).exp() as f32) as f64)
        .collect();
    let mut out: Vec<f32> = freqs.iter().map(|f| (sigma * f).cos() as f32).collect();
    out.extend(freqs.iter().map(|f| (sigma * f).sin() as f32));
    out
}
