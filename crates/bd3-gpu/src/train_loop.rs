//! The steps of a training run, shared by `bd3-wgpu train` and the page's fine-tuning so that both
//! run exactly the same training: the same batches drawn from the same seed stream, the same masks
//! and dropout keys, the same warm-up schedule, the same AdamW and EMA (official
//! `diffusion.py:training_step`, `get_constant_schedule_with_warmup`; paper Suppl. C.2). Also the
//! validation NELBO on the EMA weights, the memory a run needs, and the exported `model.safetensors`.

use crate::context::{ContextOptions, GpuContext};
use crate::model::{ForwardShape, GpuModel};
use crate::nelbo::{evaluate, input_of, loss_shape};
use crate::plan::AdapterDesc;
use crate::train::{copy_weights, read_tensors, OptimConfig, TrainBatch, TrainShape, Trainer};
use crate::weights::Weights;
use bd3_model::init::{to_safetensors, NamedTensor, SplitMix};
use bd3_model::objective::{build_batch, Clip};
use bd3_model::{ModelConfig, Result};
use std::sync::Arc;

/// What fixes the steps of a run (besides the model, the data and the clip window).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    /// Seed of the data order, the masks and the dropout.
    pub seed: u64,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
}

/// The learning rate of step `step` (0-based): a linear warm-up from 0, then constant
/// (official `get_constant_schedule_with_warmup`).
pub fn learning_rate(peak: f64, warmup: u64, step: u64) -> f64 {
    peak * if warmup == 0 {
        1.0
    } else {
        (step as f64 / warmup as f64).min(1.0)
    }
}

/// The random stream of one micro-batch: it draws the chunks, then the masks, then the dropout key.
/// A function of (seed, step, micro) alone, so a resumed run draws what an uninterrupted one would.
pub fn batch_rng(seed: u64, step: u64, micro: usize) -> SplitMix {
    SplitMix(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ step.wrapping_mul(1024).wrapping_add(micro as u64),
    )
}

/// The seed of the validation masks of a run with seed `seed` (apart from the training stream).
pub fn validation_seed(seed: u64) -> u64 {
    seed ^ 0x5eed
}

/// The training forward/backward of `cfg` at `batch` sequences with dropout probability `dropout`.
pub fn train_shape(cfg: &ModelConfig, batch: usize, dropout: f64) -> TrainShape {
    TrainShape {
        forward: loss_shape(cfg, batch),
        dropout_milli: (dropout * 1000.0).round() as u32,
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// The mean training loss over the step's micro-batches.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The global gradient norm (None: the loss was not finite, and no optimizer step was taken,
    /// or the trainer does not clip). A non-finite norm has made the weights non-finite, except with
    /// loss scaling, where it means the step was skipped.
    pub grad_norm: Option<f64>,
    /// The loss scale the step used (mixed precision), None in f32.
    pub loss_scale: Option<f64>,
    /// Loss scaling skipped the step (the scaled gradients overflowed; the scale was halved).
    pub skipped: bool,
}

/// Optimizer step number `step` (0-based) on the training chunks `train`: each micro-batch draws
/// `batch` chunks (uniformly, with replacement) from [`batch_rng`], builds the objective's batch
/// with clip window `clip`, and accumulates its gradient; then AdamW and the EMA. When the loss is
/// not finite no optimizer step is taken (the weights stay those of the previous step).
pub async fn train_step(
    model: &GpuModel,
    trainer: &mut Trainer,
    shape: &TrainShape,
    train: &[Vec<u32>],
    s: &StepSettings,
    clip: Clip,
    step: u64,
) -> Result<StepReport> {
    let lr = learning_rate(s.lr, s.warmup, step);
    let loss_scale = trainer.loss_scaler().map(|l| l.scale());
    let mut loss = 0.0;
    for micro in 0..s.grad_accum {
        let mut rng = batch_rng(s.seed, step, micro);
        let x0: Vec<Vec<u32>> = (0..s.batch)
            .map(|_| train[(rng.next_u64() % train.len() as u64) as usize].clone())
            .collect();
        let lb = build_batch(&model.cfg, &x0, clip, &mut rng, false);
        let grad_scale = 1.0 / (lb.denominator * s.grad_accum) as f32;
        let seed = (rng.next_u64() >> 32) as u32;
        let out = trainer
            .forward_backward(
                model,
                shape,
                &TrainBatch {
                    input: input_of(&lb),
                    seed,
                    grad_scale,
                },
            )
            .await?;
        loss += out.loss_sum / lb.denominator as f64 / s.grad_accum as f64;
    }
    if !loss.is_finite() {
        return Ok(StepReport {
            loss,
            lr,
            grad_norm: None,
            loss_scale,
            skipped: false,
        });
    }
    trainer.optimizer_step(model, lr)?;
    let grad_norm = trainer.last_grad_norm(&model.ctx).await?;
    let skipped = grad_norm.and_then(|n| trainer.update_loss_scale(n))
        == Some(crate::loss_scale::StepOutcome::Skipped);
    Ok(StepReport {
        loss,
        lr,
        grad_norm,
        loss_scale,
        skipped,
    })
}

/// The validation NELBO (per token) on `valid` with the EMA weights in place of the trained ones
/// (as the official validation does), in batches of `batch`; `backup` holds the trained weights
/// meanwhile. The trained weights are back in place afterwards, whatever happened.
pub async fn ema_nelbo(
    model: &mut GpuModel,
    trainer: &Trainer,
    backup: &Weights,
    valid: &[Vec<u32>],
    batch: usize,
    seed: u64,
) -> Result<f64> {
    let ctx = model.ctx.clone();
    if let Some(ema) = &trainer.ema {
        copy_weights(&ctx, &model.weights, backup);
        copy_weights(&ctx, ema, &model.weights);
    }
    let r = evaluate(
        model,
        valid,
        batch,
        Clip::NELBO,
        validation_seed(seed),
        false,
        |_, _| {},
    )
    .await;
    if trainer.ema.is_some() {
        copy_weights(&ctx, backup, &model.weights);
    }
    let (sum, count, _) = r?;
    Ok(sum / count as f64)
}

/// GPU memory of a training run, in bytes, recorded on a planning context for `adapter`
/// (nothing is allocated): the model's weights, the gradients, the Adam moments, the EMA, the
/// training step's activations at `batch`, the weights' backup and, when `validate`, the
/// evaluation forward. Fails, naming the buffer, where a buffer exceeds the adapter's limits.
pub async fn plan_memory(
    adapter: &AdapterDesc,
    cfg: &ModelConfig,
    batch: usize,
    dropout: f64,
    optim: OptimConfig,
    validate: bool,
) -> Result<RunMemory> {
    let planning = Arc::new(GpuContext::planning(adapter, ContextOptions::default()));
    let mut model = GpuModel::allocate(planning.clone(), cfg.clone()).await?;
    let weights = planning.snapshot().bytes_allocated;
    let mut trainer = Trainer::new(&model, optim).await?;
    trainer.plan_step(&model, &train_shape(cfg, batch, dropout))?;
    let _backup = Weights::zeros_like(&planning, "weights backup", &model.weights)?;
    if validate {
        model.record_forward(&ForwardShape {
            per_token: true,
            ..loss_shape(cfg, batch)
        })?;
    }
    Ok(RunMemory {
        weights,
        total: planning.snapshot().bytes_allocated,
    })
}

/// See [`plan_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunMemory {
    /// The model's weights alone (already on the GPU once a model is loaded).
    pub weights: u64,
    /// Everything the run holds at once, the weights included.
    pub total: u64,
}

/// `w` read back and serialised as the model's `model.safetensors` (official names, with the rotary
/// buffer and the clip window as `sampling_eps_min/max`).
pub async fn model_bytes(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    w: &Weights,
    clip: (f64, f64),
) -> Result<Vec<u8>> {
    let mut tensors: Vec<NamedTensor> = read_tensors(ctx, w)
        .await?
        .into_iter()
        .map(|(name, shape, data)| NamedTensor {
            name: format!("backbone.{name}"),
            shape,
            data,
        })
        .collect();
    tensors.push(NamedTensor {
        name: "backbone.rotary_emb.inv_freq".into(),
        shape: vec![w.inv_freq.len()],
        data: w.inv_freq.clone(),
    });
    Ok(to_safetensors(
        cfg,
        &tensors,
        Some((clip.0 as f32, clip.1 as f32)),
    ))
}
