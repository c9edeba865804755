//! The noise schedule (official `noise_schedule.py:LogLinearNoise`, `diffusion.py:_sample_t`): "loglinear" is linear masking, move chance p = t,
//! loss weight 1/t, per-block t with antithetic (stratified) sampling, and SEDD's sigma(t).

/// Lower end of t everywhere in the official code (`sampling_eps`).
pub const SAMPLING_EPS: f64 = 1e-3;

/// `σ_max = total_noise(1) = −log1p(−(1−1e-3))`, evaluated once in float32 by the official
/// `LogLinearNoise` (6.907768249511719, not −ln 1e-3 = 6.907755…). SEDD caps sigma here.
pub fn sigma_max() -> f64 {
    let x: f32 = -(1.0f32 - 1e-3f32);
    (-x.ln_1p()) as f64
}

/// `_sigma_from_p`: σ = min(−log(1−p), σ_max). log1p keeps σ accurate near p = 0 (the sampler's final t = 1e-5).
pub fn sigma_from_p(p: f64) -> f64 {
    (-(-p).ln_1p()).min(sigma_max())
}

/// SEDD loss weight dσ = −loss_scale·expm1(σ) = expm1(σ)/t (= 1/(1−t) below the cap).
pub fn sedd_dsigma(t: f64) -> f64 {
    sigma_from_p(t).exp_m1() / t
}

/// log(expm1 σ) as `_sedd_parameterization` computes it (expm1 below 0.5, exp − 1 above).
pub fn esigm1_log(sigma: f64) -> f64 {
    if sigma < 0.5 {
        sigma.exp_m1().ln()
    } else {
        (sigma.exp() - 1.0).ln()
    }
}

/// `_sample_t`: one t per (sequence, block) from uniforms `u` of shape [batch, n_blocks].
/// Antithetic: t = (u/(B·nb) + j/(B·nb)) mod 1 with j = k·nb + b, then mapped to [eps_min, eps_max].
/// Returns the per-block t, shape [batch, n_blocks]; `eps_min ≥ 1 && eps_max ≥ 1` is full masking (all ones).
pub fn sample_t(
    u: &[f64],
    batch: usize,
    n_blocks: usize,
    eps_min: f64,
    eps_max: f64,
    antithetic: bool,
) -> Vec<f64> {
    assert_eq!(
        u.len(),
        batch * n_blocks,
        "sample_t: uniforms must be [batch, n_blocks]"
    );
    if eps_min >= 1.0 && eps_max >= 1.0 {
        return vec![1.0; u.len()];
    }
    let n = (batch * n_blocks) as f64;
    u.iter()
        .enumerate()
        .map(|(j, &u)| {
            let t = if antithetic {
                (u / n + j as f64 / n) % 1.0
            } else {
                u
            };
            eps_min + (eps_max - eps_min) * t
        })
        .collect()
}

/// Per-token loss weight of the SUBS objective for a block with mask rate t: 1/t, or 1 when the
/// clip window starts above 0.5 (the official quirk for the L' = 1 full-masking schedule, `diffusion.py:_sample_t`).
pub fn subs_weight(t: f64, eps_min: f64) -> f64 {
    if eps_min > 0.5 {
        1.0
    } else {
        1.0 / t
    }
}

/// `q_xt`: a token is masked iff its uniform draw ≤ the move chance of its block; token 0 is never
/// masked (`ignore_bos`). `t_block` is [batch, seq/block_size]; returns x_t.
pub fn mask_tokens(
    x0: &[u32],
    uniform: &[f64],
    t_block: &[f64],
    seq: usize,
    block_size: usize,
    mask_id: u32,
) -> Vec<u32> {
    let blocks = seq / block_size;
    x0.iter()
        .zip(uniform)
        .enumerate()
        .map(|(i, (&x, &u))| {
            let (b, pos) = (i / seq, i % seq);
            if pos != 0 && u <= t_block[b * blocks + pos / block_size] {
                mask_id
            } else {
                x
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_max_is_the_float32_value_of_the_official_code() {
        assert_eq!(sigma_max(), 6.907768249511719);
        assert_eq!(sigma_from_p(1.0), sigma_max());
        assert!((sigma_from_p(0.5) - std::f64::consts::LN_2).abs() < 1e-15);
    }

    #[test]
    fn antithetic_t_covers_one_stratum_per_block() {
        let u = [0.5; 6];
        let t = sample_t(&u, 2, 3, 0.0, 1.0, true);
        for (j, t) in t.iter().enumerate() {
            assert!(*t >= j as f64 / 6.0 && *t < (j + 1) as f64 / 6.0);
        }
        assert_eq!(sample_t(&u, 2, 3, 1.0, 1.0, true), vec![1.0; 6]);
    }

    #[test]
    fn mask_tokens_keeps_token_zero() {
        let x0 = [5, 6, 7, 8];
        let xt = mask_tokens(&x0, &[0.0, 0.0, 0.9, 0.1], &[0.5, 0.5], 4, 2, 99);
        assert_eq!(xt, vec![5, 99, 7, 99]);
    }
}
