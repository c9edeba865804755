//! Turning clean chunks into one batch of the training (or evaluation) objective (official `diffusion.py`: `_sample_t`, `q_xt`, `_forward_pass_diffusion`, `_subs_parameterization`, `_loss`):
//! per-block t with antithetic sampling, the clipped window [β, ω] with resampling of blocks whose
//! realised mask rate leaves it, token 0 never masked, SUBS weights 1/t (1 when β > 0.5), and the
//! inputs each model kind's network takes.

use crate::config::{ModelConfig, ModelKind};
use crate::init::SplitMix;
use crate::schedule::{sample_t, sigma_from_p, subs_weight, SAMPLING_EPS};

/// One batch, laid out for the GPU forward of its model kind.
pub struct LossBatch {
    /// Network input [batch, seq]: x_t ⊕ x_0 (BD3LM), x_t (MDLM, SEDD), x[:, :-1] (AR).
    pub tokens: Vec<u32>,
    /// Scored rows [batch, scored]: the input token there, the target, and the loss weight.
    pub input_ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
    /// Per sequence: σ (SEDD conditioning) and t.
    pub sigma: Vec<f64>,
    pub t_seq: Vec<f64>,
    /// Rows that count in the loss's denominator.
    pub denominator: usize,
}

/// The clip window of t; [1e-3, 1] is the unclipped NELBO, [1, 1] full masking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    pub min: f64,
    pub max: f64,
}

impl Clip {
    pub const NELBO: Clip = Clip {
        min: SAMPLING_EPS,
        max: 1.0,
    };
}

/// Build one batch from clean chunks `x0` (each of the model length). `eval` selects the evaluation
/// conventions: BD3LM drops token 0 from the denominator (ignore_bos); MDLM and SEDD let it be masked
/// and count it, as the official perplexity scripts do.
pub fn build_batch(
    cfg: &ModelConfig,
    x0: &[Vec<u32>],
    clip: Clip,
    rng: &mut SplitMix,
    eval: bool,
) -> LossBatch {
    let b = x0.len();
    let l = x0[0].len();
    let mask = cfg.mask_id();
    if cfg.kind == ModelKind::Ar {
        let tokens: Vec<u32> = x0.iter().flat_map(|x| x[..l - 1].to_vec()).collect();
        let targets: Vec<u32> = x0.iter().flat_map(|x| x[1..].to_vec()).collect();
        let n = targets.len();
        return LossBatch {
            input_ids: tokens.clone(),
            tokens,
            targets,
            weights: vec![1.0; n],
            sigma: vec![],
            t_seq: vec![],
            denominator: n,
        };
    }
    let block = if cfg.kind == ModelKind::Bd3lm {
        cfg.block_size.min(l)
    } else {
        l
    };
    let nb = l / block;
    let u: Vec<f64> = (0..b * nb).map(|_| rng.uniform()).collect();
    let t = sample_t(&u, b, nb, clip.min, clip.max, true);
    let keep_bos = !eval || cfg.kind == ModelKind::Bd3lm;
    let full_masking = clip.min >= 1.0 && clip.max >= 1.0;
    // Resampling applies when the window is clipped (one-sided at the default ends).
    let (check_lo, check_hi) = (clip.min > SAMPLING_EPS * 1.0000001, clip.max < 1.0);
    let mut xt: Vec<u32> = x0.iter().flatten().copied().collect();
    for s in 0..b {
        for blk in 0..nb {
            let tb = t[s * nb + blk];
            let positions: Vec<usize> = (blk * block..(blk + 1) * block).collect();
            loop {
                let mut masked = 0;
                for &p in &positions {
                    let m = full_masking || rng.uniform() <= tb;
                    xt[s * l + p] = if m { mask } else { x0[s][p] };
                    masked += m as usize;
                }
                let rate = masked as f64 / block as f64;
                let ok = (!check_lo || rate >= clip.min) && (!check_hi || rate <= clip.max);
                // A window no rate of this block size can meet would loop forever: accept then.
                let reachable = (0..=block).any(|k| {
                    let r = k as f64 / block as f64;
                    (!check_lo || r >= clip.min) && (!check_hi || r <= clip.max)
                });
                if ok || !reachable || full_masking {
                    break;
                }
            }
        }
        if keep_bos {
            xt[s * l] = x0[s][0];
        }
    }
    let t_tok: Vec<f64> = t
        .iter()
        .flat_map(|&x| std::iter::repeat_n(x, block))
        .collect();
    let weights: Vec<f32> = t_tok
        .iter()
        .map(|&x| subs_weight(x, clip.min) as f32)
        .collect();
    let targets: Vec<u32> = x0.iter().flatten().copied().collect();
    let tokens = if cfg.kind == ModelKind::Bd3lm {
        (0..b)
            .flat_map(|s| [&xt[s * l..(s + 1) * l], &targets[s * l..(s + 1) * l]].concat())
            .collect()
    } else {
        xt.clone()
    };
    let t_seq: Vec<f64> = (0..b).map(|s| t[s * nb]).collect();
    let sigma = t_seq.iter().map(|&x| sigma_from_p(x)).collect();
    let denominator = if eval && cfg.kind == ModelKind::Bd3lm {
        b * (l - 1)
    } else {
        b * l
    };
    LossBatch {
        tokens,
        input_ids: xt,
        targets,
        weights,
        sigma,
        t_seq,
        denominator,
    }
}
