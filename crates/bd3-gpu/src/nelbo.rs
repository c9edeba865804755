//! The loss of a model kind on clean chunks: the forward shape it needs, one batch through it, and the
//! evaluation estimator (official `diffusion.py:validation_step` / `_loss`, paper Suppl. C.4: t ~ U[1e-3, 1], one stratified sample per sequence and block,
//! PPL = exp(Σ loss / Σ counted tokens)).

use crate::{ForwardInput, ForwardShape, GpuModel, Objective};
use bd3_model::init::SplitMix;
use bd3_model::objective::{build_batch, Clip, LossBatch};
use bd3_model::{AttentionMask, ModelConfig, ModelKind, Result};

/// The training / evaluation forward of `cfg.kind` over `batch` chunks of the model length.
pub fn loss_shape(cfg: &ModelConfig, batch: usize) -> ForwardShape {
    let l = cfg.model_length;
    match cfg.kind {
        ModelKind::Bd3lm => ForwardShape::bd3lm_train(batch, l, cfg.block_size),
        ModelKind::Mdlm => ForwardShape::plain(batch, l, AttentionMask::Full, Objective::Subs),
        ModelKind::Sedd => ForwardShape::plain(batch, l, AttentionMask::Full, Objective::Sedd),
        ModelKind::Ar => ForwardShape::plain(batch, l - 1, AttentionMask::Causal, Objective::Ar),
    }
}

pub fn input_of(b: &LossBatch) -> ForwardInput<'_> {
    ForwardInput {
        tokens: &b.tokens,
        sigma: &b.sigma,
        input_ids: &b.input_ids,
        targets: &b.targets,
        weights: &b.weights,
        sedd_t: &b.t_seq,
    }
}

/// Σ loss and Σ counted tokens over `chunks` in batches of `batch` (the last batch is padded by
/// repeating chunks, whose losses are then left out), plus per-token losses when asked.
pub async fn evaluate(
    model: &mut GpuModel,
    chunks: &[Vec<u32>],
    batch: usize,
    clip: Clip,
    seed: u64,
    per_token: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<(f64, usize, Vec<Vec<f32>>)> {
    let cfg = model.cfg.clone();
    let shape = ForwardShape {
        per_token: true,
        ..loss_shape(&cfg, batch)
    };
    let mut rng = SplitMix(seed);
    let (mut total, mut count, mut per_batch) = (0.0, 0usize, Vec::new());
    let scored_per_seq = shape.head_rows;
    let mut start = 0;
    while start < chunks.len() {
        let real = batch.min(chunks.len() - start);
        let x0: Vec<Vec<u32>> = (0..batch)
            .map(|i| chunks[(start + i.min(real - 1)) % chunks.len()].clone())
            .collect();
        let lb = build_batch(&cfg, &x0, clip, &mut rng, true);
        let out = model.forward(&shape, &input_of(&lb)).await?;
        let tl = out.token_loss.unwrap_or_default();
        // Only the real sequences count; BD3LM's token 0 is excluded (it is never masked).
        let skip_first = cfg.kind == ModelKind::Bd3lm;
        for s in 0..real {
            let row = &tl[s * scored_per_seq..(s + 1) * scored_per_seq];
            total += row.iter().map(|&x| x as f64).sum::<f64>();
            count += scored_per_seq - skip_first as usize;
        }
        if per_token {
            per_batch.push(tl[..real * scored_per_seq].to_vec());
        }
        start += real;
        progress(start, chunks.len());
    }
    Ok((total, count, per_batch))
}
