//! Training on the GPU: the forward pass with its activations kept, the backward pass, gradient
//! clipping and AdamW with the EMA of the weights (official `diffusion.py:training_step` / `_loss`, `models/ema.py`; paper Suppl. C.2).
//!
//! One [`TrainShape`] records one program: forward (keeping each block's input, the attention
//! output and log-sum-exp, the pre-gate branch outputs and the MLP pre-activation), the loss and its
//! logits gradient chunk by chunk (the head's backward runs on each chunk before the next), then every
//! block in reverse, the embedding scatter and the conditioning MLP. Gradients accumulate, so several
//! calls before one [`Trainer::optimizer_step`] are gradient accumulation. Dropout (0.1 on the
//! residual branches in training) uses a counter-based mask keyed by the step's seed; the backward
//! regenerates it. Per step only the inputs and a few parameters are written; one submission runs it.

use crate::context::GpuContext;
use crate::layers::{self, AdaLn, BlockEnd, BlockIo, BlockKeep, Conditioning, ADALN_CHUNKS};
use crate::loss_scale::{LossScaler, StepOutcome};
use crate::model::{check_activation_size, ForwardShape, GpuModel, Objective};
use crate::ops::attention::Attention;
use crate::ops::col_sum::Columns;
use crate::ops::elementwise::Elementwise;
use crate::ops::layernorm::LayerNorm;
use crate::ops::matmul::{Epilogue, Matmul};
use crate::ops::{self, Kernels, TrainKernels};
use crate::program::{Buf, PlannedDispatch, Program, ProgramBuilder};
use crate::weights::{Linear, Weights};
use bd3_model::{Error, Result};
use std::collections::HashMap;

/// AdamW and schedule settings (official defaults: lr 3e-4, betas (0.9, 0.999), eps 1e-8, wd 0,
/// clip 1.0, EMA 0.9999).
#[derive(Clone, Copy, Debug)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables it.
    pub max_grad_norm: f64,
    /// EMA decay; 0 disables the EMA. The official warm-up min(decay, (1+n)/(10+n)) is applied per step.
    pub ema_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            ema_decay: 0.9999,
        }
    }
}

/// What one training forward/backward computes (the [`ForwardShape`] of the loss) and its dropout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrainShape {
    pub forward: ForwardShape,
    /// Dropout on the residual branches, in thousandths (0.1 → 100), so the shape stays hashable.
    pub dropout_milli: u32,
}

/// Per-step data of a training call.
pub struct TrainBatch<'a> {
    pub input: crate::model::ForwardInput<'a>,
    /// Key of this step's dropout masks.
    pub seed: u32,
    /// The loss whose gradient is accumulated is grad_scale · Σ token_loss: 1/(rows · micro-batches)
    /// gives the mean over an accumulated batch.
    pub grad_scale: f32,
}

pub struct TrainOutput {
    /// Σ token_loss over the scored rows.
    pub loss_sum: f64,
    /// Per scored row (for per-block statistics such as the clip search).
    pub token_loss: Vec<f32>,
}

/// Gradients, Adam moments and the EMA, each shaped like the weights.
pub struct Trainer {
    grads: Weights,
    /// The buffers every gradient is a view of ([`Weights::zeros_like_packed`]): the gradient norm
    /// reads them and the next step's clear zeroes them, a binding or a clear each.
    grad_packs: Vec<Buf>,
    pub m: Weights,
    pub v: Weights,
    pub ema: Option<Weights>,
    pub optim: OptimConfig,
    /// Optimizer steps taken (AdamW's t).
    pub step: u64,
    kernels: TrainKernels,
    norm_sq: Buf,
    /// The squared norm copied out by the optimizer's own submission, for [`Trainer::last_grad_norm`].
    norm_readback: Buf,
    /// First-pass partial sums of the gradient norm (see [`ops::grad_norm`]).
    norm_partials: Buf,
    programs: HashMap<TrainShape, TrainWorkspace>,
    optimizer: Option<Program>,
    /// Mixed precision's dynamic loss scale (None: f32 training, nothing scaled).
    loss_scaler: Option<LossScaler>,
    /// The scale the current step's gradients carry (1 without loss scaling).
    step_scale: f64,
}

struct TrainWorkspace {
    program: Program,
    b: TrainBuffers,
    staging: Buf,
    outputs: Buf,
    scored: usize,
}

/// Every buffer of one training shape.
struct TrainBuffers {
    tokens: Buf,
    input_ids: Buf,
    targets: Buf,
    row_weights: Buf,
    seq_consts: Buf,
    /// Conditioning with its pre-activations kept (None for AR).
    cond: Option<Conditioning>,
    // Saved activations.
    xs: Vec<Buf>,
    xmid: Vec<Buf>,
    qkv: Vec<Buf>,
    att: Vec<Buf>,
    lse: Vec<Buf>,
    y1: Vec<Buf>,
    y2: Vec<Buf>,
    u: Vec<Buf>,
    // Scratch.
    h: Buf,
    act: Buf,
    dact: Buf,
    dv: Buf,
    datt: Buf,
    dh: Buf,
    dqkv: Buf,
    dx: Buf,
    hf: Buf,
    dhf: Buf,
    logits: Buf,
    dlogits: Buf,
    token_loss: Buf,
    loss_sum: Buf,
    stats: Buf,
    /// Column sums over many rows: per-chunk partial sums ([chunks, columns]).
    col_partial: Buf,
    /// LayerNorm weight gradients: per-(sequence, row chunk) partial sums.
    ln_partial: Buf,
    /// Weight gradients split into K slices: the slices' partial products.
    split_partial: Buf,
    /// Per-(sequence, row chunk) partials of the gate and LayerNorm shift/scale gradients.
    row_partial: Buf,
    dmods: Vec<Buf>,
    dfinal_mod: Buf,
    dc: Buf,
    dc1: Buf,
    seg_token: Buf,
    seg_start: Buf,
    seg_rows: Buf,
    seg_slot: Buf,
    split_token: Buf,
    split_first: Buf,
    /// Partial sums of the embedding scatter's pieces.
    emb_partial: Buf,
    chunk_rows: usize,
}

/// Per-call values recorded into the kernel parameters.
#[derive(Clone, Copy, Default)]
struct Dynamic {
    seed: u32,
    /// Pieces of the embedding scatter, and the tokens cut into more than one.
    n_pieces: u32,
    n_split: u32,
    grad_scale: f32,
}

impl Trainer {
    pub async fn new(model: &GpuModel, optim: OptimConfig) -> Result<Trainer> {
        let ctx = &*model.ctx;
        let ema = if optim.ema_decay > 0.0 {
            let e = Weights::zeros_like(ctx, "ema", &model.weights)?;
            copy_weights(ctx, &model.weights, &e);
            Some(e)
        } else {
            None
        };
        let (grads, grad_packs) = Weights::zeros_like_packed(ctx, "grad", &model.weights)?;
        let sizes: Vec<usize> = grad_packs.iter().map(|b| b.size() as usize / 4).collect();
        let norm_partials = ctx.storage(
            "grad norm partials",
            (ops::grad_norm::partials_len(&sizes, ctx.compute_units) * 4) as u64,
        )?;
        Ok(Trainer {
            grads,
            grad_packs,
            m: Weights::zeros_like(ctx, "adam m", &model.weights)?,
            v: Weights::zeros_like(ctx, "adam v", &model.weights)?,
            ema,
            optim,
            step: 0,
            kernels: TrainKernels::new(ctx, model.cfg.head_dim()).await?,
            norm_sq: ctx.storage("grad norm²", 4)?,
            norm_readback: ctx.buffer(
                "grad norm² readback",
                4,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
            norm_partials,
            programs: HashMap::new(),
            optimizer: None,
            loss_scaler: None,
            step_scale: 1.0,
        })
    }

    /// Turn dynamic loss scaling on (mixed precision) or off: the loss gradient is multiplied by the
    /// scale, AdamW divides it back out before clipping, and a step whose global norm overflowed is
    /// skipped on the GPU ([`crate::loss_scale`]). The optimizer program is recorded again.
    pub fn set_loss_scaling(&mut self, scaler: Option<LossScaler>) {
        self.loss_scaler = scaler;
        self.step_scale = scaler.map_or(1.0, |s| s.scale());
        self.optimizer = None;
    }

    /// The accumulated gradients, same structure as the weights (each part a view of a pack).
    pub fn gradients(&self) -> &Weights {
        &self.grads
    }

    /// The buffers the gradients are packed into (each gradient part is a view of one).
    pub fn gradient_packs(&self) -> &[Buf] {
        &self.grad_packs
    }

    /// The loss scaler, when loss scaling is on.
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.loss_scaler.as_ref()
    }

    /// Whether the optimizer computes the global gradient norm (to clip, or to detect overflow).
    fn computes_norm(&self) -> bool {
        self.optim.max_grad_norm > 0.0 || self.loss_scaler.is_some()
    }

    /// After [`Trainer::optimizer_step`] and [`Trainer::last_grad_norm`]: tell the loss scaler the
    /// step's (unscaled) global norm. A non-finite norm means the GPU skipped the step, so the step
    /// count is taken back (AdamW's t and the EMA warm-up count applied steps) and the scale halves.
    /// None without loss scaling.
    pub fn update_loss_scale(&mut self, grad_norm: f64) -> Option<StepOutcome> {
        let scaler = self.loss_scaler.as_mut()?;
        let outcome = scaler.update(grad_norm);
        if outcome == StepOutcome::Skipped {
            self.step -= 1;
        }
        self.step_scale = scaler.scale();
        Some(outcome)
    }

    /// Forward and backward on one (micro-)batch; gradients are added to `grads`.
    pub async fn forward_backward(
        &mut self,
        model: &GpuModel,
        shape: &TrainShape,
        batch: &TrainBatch<'_>,
    ) -> Result<TrainOutput> {
        let s = &shape.forward;
        model.check_forward_input(s, &batch.input)?;
        self.record_training(model, shape)?;
        let ctx = &*model.ctx;
        let ws = &self.programs[shape];
        let q = ctx.queue();
        let i = &batch.input;
        // Rows grouped by token for the embedding scatter.
        let (seg_token, seg_start, seg_rows) = segments(i.tokens);
        let piece = ops::embedding_backward::piece_rows(i.tokens.len(), ctx.compute_units);
        let pieces = ops::embedding_backward::Pieces::split(&seg_token, &seg_start, piece);
        let dynamic = Dynamic {
            seed: batch.seed,
            n_pieces: pieces.token.len() as u32,
            n_split: pieces.split_token.len() as u32,
            // Exactly grad_scale in f32 training (× 1.0).
            grad_scale: batch.grad_scale * self.step_scale as f32,
        };
        let mut pb = ProgramBuilder::params_only(ctx);
        self.record(&mut pb, model, shape, &ws.b, dynamic)?;
        ws.program.write_params(q, &pb.finish_params());
        q.write_buffer(&ws.b.tokens, 0, bytemuck::cast_slice(i.tokens));
        q.write_buffer(&ws.b.input_ids, 0, bytemuck::cast_slice(i.input_ids));
        q.write_buffer(&ws.b.targets, 0, bytemuck::cast_slice(i.targets));
        q.write_buffer(&ws.b.row_weights, 0, bytemuck::cast_slice(i.weights));
        q.write_buffer(&ws.b.seg_token, 0, bytemuck::cast_slice(&pieces.token));
        q.write_buffer(&ws.b.seg_start, 0, bytemuck::cast_slice(&pieces.start));
        q.write_buffer(&ws.b.seg_rows, 0, bytemuck::cast_slice(&seg_rows));
        q.write_buffer(&ws.b.seg_slot, 0, bytemuck::cast_slice(&pieces.slot));
        q.write_buffer(
            &ws.b.split_token,
            0,
            bytemuck::cast_slice(&pieces.split_token),
        );
        q.write_buffer(
            &ws.b.split_first,
            0,
            bytemuck::cast_slice(&pieces.split_first),
        );
        if model.cfg.kind.has_adaln() {
            let sigma: Vec<f64> = if model.cfg.time_conditioning {
                i.sigma.to_vec()
            } else {
                vec![0.0; s.batch]
            };
            let feats: Vec<f32> = sigma
                .iter()
                .flat_map(|&x| bd3_model::tables::timestep_features(x))
                .collect();
            q.write_buffer(
                &ws.b.cond.as_ref().expect("adaLN model").features,
                0,
                bytemuck::cast_slice(&feats),
            );
        }
        if s.objective == Objective::Sedd {
            q.write_buffer(
                &ws.b.seq_consts,
                0,
                bytemuck::cast_slice(&crate::model::sedd_constants(
                    i.sedd_t,
                    model.cfg.vocab_size,
                )),
            );
        }
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ws.program.encode(&mut enc);
        let bytes = ((1 + ws.scored) * 4) as u64;
        enc.copy_buffer_to_buffer(&ws.outputs, 0, &ws.staging, 0, bytes);
        ctx.submit(enc);
        let data = ctx.map_read(&ws.staging, bytes).await?;
        let out: &[f32] = bytemuck::cast_slice(&data);
        Ok(TrainOutput {
            loss_sum: out[0] as f64,
            token_loss: out[1..].to_vec(),
        })
    }

    /// Clip the accumulated gradients, apply AdamW with learning rate `lr`, update the EMA, and zero the
    /// gradients for the next step — one submission.
    pub fn optimizer_step(&mut self, model: &GpuModel, lr: f64) -> Result<()> {
        let ctx = &*model.ctx;
        self.step += 1;
        let ema_decay = if self.optim.ema_decay > 0.0 {
            // The official warm-up of the EMA decay (models/ema.py).
            let n = self.step as f64;
            self.optim.ema_decay.min((1.0 + n) / (10.0 + n))
        } else {
            0.0
        };
        let mut pb = if self.optimizer.is_none() {
            ProgramBuilder::new(ctx)
        } else {
            ProgramBuilder::params_only(ctx)
        };
        self.record_optimizer(&mut pb, model, lr, ema_decay)?;
        match &self.optimizer {
            None => self.optimizer = Some(pb.finish()?),
            Some(p) => p.write_params(ctx.queue(), &pb.finish_params()),
        }
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        enc.clear_buffer(&self.norm_sq, 0, None);
        self.optimizer.as_ref().unwrap().encode(&mut enc);
        if self.computes_norm() {
            enc.copy_buffer_to_buffer(&self.norm_sq, 0, &self.norm_readback, 0, 4);
        }
        ctx.submit(enc);
        ctx.check()
    }

    /// The global gradient norm of the last [`Trainer::optimizer_step`] (None when clipping and loss
    /// scaling are off, since the norm is then not computed), unscaled. The step's own submission
    /// copied it out; this only maps those 4 bytes, without another submission.
    pub async fn last_grad_norm(&self, ctx: &GpuContext) -> Result<Option<f64>> {
        if !self.computes_norm() || self.step == 0 {
            return Ok(None);
        }
        let bytes = ctx.map_read(&self.norm_readback, 4).await?;
        Ok(Some(
            (bytemuck::cast_slice::<u8, f32>(&bytes)[0] as f64).sqrt() / self.step_scale,
        ))
    }

    fn record_optimizer(
        &self,
        pb: &mut ProgramBuilder,
        model: &GpuModel,
        lr: f64,
        ema_decay: f64,
    ) -> Result<()> {
        let (k, tk) = (&model.kernels, &self.kernels);
        let grads = self.grads.tensors();
        if self.computes_norm() {
            let parts: Vec<(&Buf, usize)> = self
                .grad_packs
                .iter()
                .map(|b| (b, b.size() as usize / 4))
                .collect();
            ops::grad_norm::record(pb, k, tk, &parts, &self.norm_partials, &self.norm_sq, 0)?;
        }
        let o = &self.optim;
        let step = ops::adamw::AdamW {
            lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
            step: self.step,
            max_norm: o.max_grad_norm,
            ema_decay,
            grad_unscale: 1.0 / self.step_scale,
            skip_nonfinite: self.loss_scaler.is_some(),
        };
        let ema = self.ema.as_ref().map(|e| e.tensors());
        let tensors = model.weights.tensors();
        for (ti, ((w, g), (m, v))) in tensors
            .iter()
            .zip(&grads)
            .zip(self.m.tensors().iter().zip(self.v.tensors()))
            .enumerate()
        {
            for (pi, ((wb, n), (gb, _))) in w.parts.iter().zip(&g.parts).enumerate() {
                let e = ema.as_ref().map(|e| &e[ti].parts[pi].0);
                let bind = ops::adamw::Bindings {
                    w: wb,
                    grad: gb,
                    m: &m.parts[pi].0,
                    v: &v.parts[pi].0,
                    ema: e,
                    norm_sq: &self.norm_sq,
                };
                ops::adamw::record(pb, k, tk, &step, *n, bind)?;
            }
        }
        // The next step accumulates from zero.
        for b in &self.grad_packs {
            pb.clear(b);
        }
        Ok(())
    }

    /// The dispatches of one training step of `shape`: forward and backward, then clipping,
    /// AdamW and the EMA (on a planning model: without a GPU).
    pub fn plan_step(
        &mut self,
        model: &GpuModel,
        shape: &TrainShape,
    ) -> Result<Vec<PlannedDispatch>> {
        let mut plan = self.record_training(model, shape)?.plan.clone();
        let mut pb = ProgramBuilder::params_only(&model.ctx);
        self.record_optimizer(&mut pb, model, self.optim.lr, self.optim.ema_decay)?;
        plan.extend(pb.finish_plan());
        Ok(plan)
    }

    /// The recorded optimizer program (after the first optimizer step).
    pub fn optimizer_program(&self) -> Option<&Program> {
        self.optimizer.as_ref()
    }

    /// Allocate the buffers of a training shape and record its program, once.
    pub fn record_training(&mut self, model: &GpuModel, shape: &TrainShape) -> Result<&Program> {
        if !self.programs.contains_key(shape) {
            let ws = self.build(model, shape)?;
            self.programs.insert(*shape, ws);
        }
        Ok(&self.programs[shape].program)
    }

    fn build(&self, model: &GpuModel, shape: &TrainShape) -> Result<TrainWorkspace> {
        let ctx = &*model.ctx;
        let cfg = &model.cfg;
        let s = &shape.forward;
        let (b, d, v, nb) = (s.batch, cfg.hidden_dim, cfg.vocab_size, cfg.n_blocks);
        let rows = b * s.seq;
        let scored = s.scored_rows();
        check_activation_size(ctx, b, s.seq, d)?;
        let f = |label: &str, n: usize| ctx.storage(label, (n.max(1) * 4) as u64);
        let per_layer =
            |label: &str, n: usize| (0..nb).map(|_| f(label, n)).collect::<Result<Vec<_>>>();
        let chunk_rows = layers::logits_chunk_rows(ctx, v, scored);
        let c = cfg.cond_dim.max(1);
        // Row-chunk partials of the LayerNorm parameter and gate gradients (sized by their op modules;
        // a modulation is assumed, which needs the most).
        let units = ctx.compute_units;
        let any_mod = Some(ops::layernorm::Modulation {
            shift: 0,
            scale: d as u32,
            stride: (ADALN_CHUNKS * d) as u32,
        });
        let block_ln = LayerNorm::rows(b, s.seq, d, any_mod);
        let final_ln = LayerNorm {
            n_rows: scored as u32,
            dim: d as u32,
            in_rows_per_seq: s.seq as u32,
            out_rows_per_seq: s.head_rows as u32,
            in_row_offset: 0,
            modulation: any_mod,
        };
        let gate = ops::gate_backward::GateBackward {
            n_seq: b as u32,
            rows_per_seq: s.seq as u32,
            dim: d as u32,
            gate: Some((0, 0)),
            dropout: 0.0,
            seed: 0,
            salt: 0,
        };
        let ln_partial = [&block_ln, &final_ln]
            .iter()
            .map(|ln| ops::layernorm_param_grads::dw_part_floats(ln, units))
            .max()
            .unwrap_or(0);
        let row_partial = [&block_ln, &final_ln]
            .iter()
            .map(|ln| ops::layernorm_param_grads::dmod_part_floats(ln, units))
            .chain([ops::gate_backward::scratch_floats(&gate, units)])
            .max()
            .unwrap_or(0);
        let max_split = ops::embedding_backward::max_split(
            rows,
            ops::embedding_backward::piece_rows(rows, units),
        );
        let tb = TrainBuffers {
            tokens: f("tokens", rows)?,
            input_ids: f("input_ids", scored)?,
            targets: f("targets", scored)?,
            row_weights: f("row weights", scored)?,
            seq_consts: f("sedd constants", b * 4)?,
            cond: Conditioning::alloc(ctx, cfg, b, true)?,
            xs: (0..=nb)
                .map(|_| f("block input", rows * d))
                .collect::<Result<_>>()?,
            xmid: per_layer("mid residual", rows * d)?,
            qkv: per_layer("qkv", rows * 3 * d)?,
            att: per_layer("attention out", rows * d)?,
            lse: per_layer("attention lse", 2 * b * cfg.n_heads * s.seq)?,
            y1: per_layer("attention branch", rows * d)?,
            y2: per_layer("mlp branch", rows * d)?,
            u: per_layer("mlp pre-activation", rows * 4 * d)?,
            h: f("normed", rows * d)?,
            act: f("mlp activation", rows * 4 * d)?,
            dact: f("d mlp activation", rows * 4 * d)?,
            dv: f("d branch", rows * d)?,
            datt: f("d attention", rows * d)?,
            dh: f("d normed", rows * d)?,
            dqkv: f("d qkv", rows * 3 * d)?,
            dx: f("d residual", rows * d)?,
            hf: f("final normed", scored * d)?,
            dhf: f("d final normed", scored * d)?,
            logits: f("logits chunk", chunk_rows * v)?,
            dlogits: f("d logits chunk", chunk_rows * v)?,
            token_loss: f("token loss", scored)?,
            loss_sum: f("loss sum", 1)?,
            stats: f("layernorm stats", 2 * rows.max(scored))?,
            col_partial: f(
                "column partial sums",
                ops::col_sum::scratch_floats(rows.max(scored), (6 * d).max(v), ctx.compute_units),
            )?,
            ln_partial: f("layernorm partial dw", ln_partial)?,
            row_partial: f("row-chunk partial sums", row_partial)?,
            split_partial: f(
                "split-K partial products",
                weight_grad_scratch_floats(model, rows, scored.min(chunk_rows), b),
            )?,
            dmods: per_layer("d modulation", b * 6 * d)?,
            dfinal_mod: f("d final modulation", b * 2 * d)?,
            dc: f("d cond", b * c)?,
            dc1: f("d cond c1", b * c)?,
            seg_token: f("piece tokens", rows)?,
            seg_start: f("piece starts", rows + 1)?,
            seg_rows: f("segment rows", rows)?,
            seg_slot: f("piece slots", rows)?,
            split_token: f("split tokens", max_split)?,
            split_first: f("split first slots", max_split + 1)?,
            emb_partial: f(
                "embedding partial sums",
                ops::embedding_backward::partials_floats(rows, d, units),
            )?,
            chunk_rows,
        };
        let mut pb = ProgramBuilder::new(ctx);
        self.record(&mut pb, model, shape, &tb, Dynamic::default())?;
        pb.copy_to_output(&tb.loss_sum, 0, 1);
        pb.copy_to_output(&tb.token_loss, 1, scored);
        let outputs = f("train outputs", 1 + scored)?;
        let program = pb.finish_with_outputs(&outputs)?;
        let staging = ctx.buffer(
            "train staging",
            ((1 + scored) * 4) as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(TrainWorkspace {
            program,
            b: tb,
            staging,
            outputs,
            scored,
        })
    }

    /// Record forward + backward of one shape (or only their parameters, with a params-only builder).
    fn record(
        &self,
        pb: &mut ProgramBuilder,
        model: &GpuModel,
        shape: &TrainShape,
        tb: &TrainBuffers,
        dy: Dynamic,
    ) -> Result<()> {
        let r = Recorder {
            model,
            k: &model.kernels,
            tk: &self.kernels,
            g: &self.grads,
            tb,
            shape,
            dy,
        };
        r.forward(pb)?;
        r.loss_and_head_backward(pb)?;
        r.final_layer_backward(pb)?;
        for l in (0..model.cfg.n_blocks).rev() {
            r.block_backward(pb, l)?;
        }
        r.embedding_backward(pb)?;
        r.conditioning_backward(pb)
    }
}

/// Everything one training program is recorded from.
struct Recorder<'r> {
    model: &'r GpuModel,
    k: &'r Kernels,
    tk: &'r TrainKernels,
    g: &'r Weights,
    tb: &'r TrainBuffers,
    shape: &'r TrainShape,
    dy: Dynamic,
}

impl Recorder<'_> {
    fn dims(&self) -> (usize, usize, usize) {
        let s = &self.shape.forward;
        (s.batch, s.seq, self.model.cfg.hidden_dim)
    }

    fn attention(&self) -> Attention {
        let (s, cfg) = (&self.shape.forward, &self.model.cfg);
        Attention::self_attention(
            s.batch as u32,
            s.seq as u32,
            cfg.n_heads as u32,
            cfg.head_dim() as u32,
            s.mask,
            s.pos_period as u32,
        )
    }

    /// A LayerNorm over every row of the batch (a block's) with the given adaLN chunks.
    fn block_norm(&self, l: usize, shift: AdaLn, scale: AdaLn) -> LayerNorm {
        let (b, seq, d) = self.dims();
        LayerNorm::rows(
            b,
            seq,
            d,
            self.modulation(l).map(|_| AdaLn::norm(shift, scale, d)),
        )
    }

    /// The final LayerNorm over the scored rows.
    fn final_norm(&self) -> LayerNorm {
        let s = &self.shape.forward;
        let d = self.model.cfg.hidden_dim;
        LayerNorm {
            n_rows: s.scored_rows() as u32,
            dim: d as u32,
            in_rows_per_seq: s.seq as u32,
            out_rows_per_seq: s.head_rows as u32,
            in_row_offset: s.head_row_offset as u32,
            modulation: self
                .model
                .cfg
                .kind
                .has_adaln()
                .then(|| layers::final_modulation(d)),
        }
    }

    fn modulation(&self, l: usize) -> Option<&Buf> {
        self.tb.cond.as_ref().map(|c| &c.mods[l])
    }

    /// Forward keeping each block's input, the attention output and log-sum-exp, the branch
    /// outputs and the MLP pre-activation: the same block forward as inference, with a keep.
    fn forward(&self, pb: &mut ProgramBuilder) -> Result<()> {
        let (tb, k, w) = (self.tb, self.k, &self.model.weights);
        let (b, seq, d) = self.dims();
        if let Some(c) = &tb.cond {
            c.record(pb, k, w, b)?;
        }
        layers::embedding(pb, k, w, &tb.tokens, &tb.xs[0], b * seq)?;
        let attention = self.attention();
        let rope = (&self.model.rope_cos, &self.model.rope_sin);
        for (l, blk) in w.blocks.iter().enumerate() {
            // Block l works on its own copy of the residual, so its input stays for the backward.
            pb.copy(&tb.xs[l], 0, &tb.xs[l + 1], 0, (b * seq * d * 4) as u64);
            let io = BlockIo {
                x: &tb.xs[l + 1],
                h: &tb.h,
                att: &tb.att[l],
                mlp: &tb.act,
                qkv: &tb.qkv[l],
                qkv_rows: None,
                modulation: self.modulation(l),
                rope,
                attention_partials: None,
                embed: None,
            };
            let keep = BlockKeep {
                lse: &tb.lse[l],
                mid_residual: &tb.xmid[l],
                attn_branch: &tb.y1[l],
                mlp_branch: &tb.y2[l],
                mlp_pre: &tb.u[l],
                dropout: self.shape.dropout_milli as f32 / 1000.0,
                seed: self.dy.seed,
                layer: l,
            };
            layers::block(pb, k, blk, &io, &attention, Some(&keep), BlockEnd::Full)?;
        }
        let final_mod = tb.cond.as_ref().map(|c| &c.final_mod);
        let x_last = &tb.xs[w.blocks.len()];
        ops::layernorm::record(
            pb,
            k,
            &self.final_norm(),
            ops::layernorm::Bindings {
                x: x_last,
                w: &w.norm_final,
                modv: final_mod,
                out: &tb.hf,
                row_index: None,
            },
        )
    }

    /// Loss, logits gradient and the head's backward, chunk by chunk, then the loss sum.
    fn loss_and_head_backward(&self, pb: &mut ProgramBuilder) -> Result<()> {
        let (tb, k, w, cfg) = (self.tb, self.k, &self.model.weights, &self.model.cfg);
        let s = &self.shape.forward;
        let (scored, v) = (s.scored_rows(), cfg.vocab_size);
        let grad_scale = self.dy.grad_scale;
        pb.clear(&tb.dhf);
        layers::head_chunks(
            pb,
            k,
            w,
            &tb.hf,
            None,
            &tb.logits,
            (scored, tb.chunk_rows),
            |pb, start, n| {
                let chunk = ops::token_loss::LossChunk {
                    n_rows: n as u32,
                    vocab: v as u32,
                    mask_id: cfg.mask_id(),
                    row_offset: start as u32,
                    grad_scale,
                };
                if s.objective == Objective::Sedd {
                    let b = ops::sedd_loss::Bindings {
                        logits: &tb.logits,
                        input_ids: &tb.input_ids,
                        targets: &tb.targets,
                        seq_consts: &tb.seq_consts,
                        log_score: None,
                        entropy: None,
                        token_loss: &tb.token_loss,
                        dlogits: Some(&tb.dlogits),
                    };
                    ops::sedd_loss::record(pb, k, &chunk, s.head_rows as u32, b)?;
                } else {
                    let head = if s.objective == Objective::Ar {
                        ops::token_loss::Head::Ar
                    } else {
                        ops::token_loss::Head::Subs
                    };
                    let b = ops::token_loss::Bindings {
                        logits: &tb.logits,
                        input_ids: &tb.input_ids,
                        targets: &tb.targets,
                        weights: &tb.row_weights,
                        log_probs: None,
                        token_loss: &tb.token_loss,
                        dlogits: Some(&tb.dlogits),
                    };
                    ops::token_loss::record(pb, k, head, &chunk, b)?;
                }
                self.linear_backward(
                    pb,
                    (&w.head, &self.g.head),
                    (&tb.dlogits, 0),
                    (&tb.hf, start),
                    n,
                    Some(InputGrad {
                        dx: &tb.dhf,
                        row_offset: start,
                        accumulate: true,
                    }),
                );
                Ok(())
            },
        )?;
        let sum = ops::reduce_sum::Bindings {
            x: &tb.token_loss,
            out: &tb.loss_sum,
        };
        ops::reduce_sum::record(
            pb,
            k,
            "reduce_sum",
            scored as u32,
            0,
            ops::reduce_sum::Reduction::Sum,
            sum,
        );
        Ok(())
    }

    /// Zero the residual gradient and the modulation gradients, then the final LayerNorm's backward.
    fn final_layer_backward(&self, pb: &mut ProgramBuilder) -> Result<()> {
        let (tb, w) = (self.tb, &self.model.weights);
        pb.clear(&tb.dx);
        for m in &tb.dmods {
            pb.clear(m);
        }
        pb.clear(&tb.dfinal_mod);
        let adaln = self.model.cfg.kind.has_adaln();
        let final_mod = tb.cond.as_ref().map(|c| &c.final_mod);
        let x_last = &tb.xs[w.blocks.len()];
        self.layernorm_backward(
            pb,
            &self.final_norm(),
            x_last,
            (&w.norm_final, &self.g.norm_final),
            final_mod,
            adaln.then_some(&tb.dfinal_mod),
            &tb.dhf,
        )
    }

    /// One block in reverse: the MLP branch, then the attention branch; dx accumulates the
    /// residual's gradient, dmods[l] the adaLN chunks'.
    fn block_backward(&self, pb: &mut ProgramBuilder, l: usize) -> Result<()> {
        let (tb, k, tk) = (self.tb, self.k, self.tk);
        let (blk, gblk) = (&self.model.weights.blocks[l], &self.g.blocks[l]);
        let (b, seq, d) = self.dims();
        let rows = b * seq;
        let modulation = self.modulation(l);
        let dmod = self.model.cfg.kind.has_adaln().then(|| &tb.dmods[l]);
        let gate_backward = |pb: &mut ProgramBuilder, branch: &Buf, gate: AdaLn, salt: u32| {
            let g = ops::gate_backward::GateBackward {
                n_seq: b as u32,
                rows_per_seq: seq as u32,
                dim: d as u32,
                gate: modulation.map(|_| ((ADALN_CHUNKS * d) as u32, gate.offset(d) as u32)),
                dropout: self.shape.dropout_milli as f32 / 1000.0,
                seed: self.dy.seed,
                salt,
            };
            let bind = ops::gate_backward::Bindings {
                dx: &tb.dx,
                y: branch,
                gate: modulation,
                dv: &tb.dv,
                dmod,
                dgate_part: Some(&tb.row_partial),
            };
            ops::gate_backward::record(pb, k, tk, &g, bind);
        };
        let elementwise = |pb: &mut ProgramBuilder, op: Elementwise, x: &Buf, g: &Buf| {
            ops::elementwise::record(
                pb,
                k,
                tk,
                op,
                rows * 4 * d,
                ops::elementwise::Bindings { x, g },
            )
        };
        let renorm = |pb: &mut ProgramBuilder, x: &Buf, weight: &Buf, ln: LayerNorm| {
            ops::layernorm::record(
                pb,
                k,
                &ln,
                ops::layernorm::Bindings {
                    x,
                    w: weight,
                    modv: modulation,
                    out: &tb.h,
                    row_index: None,
                },
            )
        };
        let into = |dx| {
            Some(InputGrad {
                dx,
                row_offset: 0,
                accumulate: false,
            })
        };
        let salt = 2 * l as u32;

        // MLP branch: x += gate_mlp · mlp.2(gelu(mlp.0(LN2(x_mid)))).
        gate_backward(pb, &tb.y2[l], AdaLn::GateMlp, salt + 2);
        elementwise(pb, Elementwise::Gelu, &tb.u[l], &tb.act)?;
        self.linear_backward(
            pb,
            (&blk.mlp_down, &gblk.mlp_down),
            (&tb.dv, 0),
            (&tb.act, 0),
            rows,
            into(&tb.dact),
        );
        elementwise(pb, Elementwise::TimesGeluDerivative, &tb.u[l], &tb.dact)?;
        let norm2 = self.block_norm(l, AdaLn::ShiftMlp, AdaLn::ScaleMlp);
        renorm(pb, &tb.xmid[l], &blk.norm2, norm2)?;
        self.linear_backward(
            pb,
            (&blk.mlp_up, &gblk.mlp_up),
            (&tb.dact, 0),
            (&tb.h, 0),
            rows,
            into(&tb.dh),
        );
        self.layernorm_backward(
            pb,
            &norm2,
            &tb.xmid[l],
            (&blk.norm2, &gblk.norm2),
            modulation,
            dmod,
            &tb.dh,
        )?;

        // Attention branch: x += gate_msa · attn_out(attention(qkv(LN1(x)))).
        gate_backward(pb, &tb.y1[l], AdaLn::GateMsa, salt + 1);
        self.linear_backward(
            pb,
            (&blk.attn_out, &gblk.attn_out),
            (&tb.dv, 0),
            (&tb.att[l], 0),
            rows,
            into(&tb.datt),
        );
        let attention = self.attention();
        let rope = (&self.model.rope_cos, &self.model.rope_sin);
        let dq = ops::attention::QueryGradBindings {
            qkv: &tb.qkv[l],
            rope_cos: rope.0,
            rope_sin: rope.1,
            o: &tb.att[l],
            d_o: &tb.datt,
            lse_delta: &tb.lse[l],
            dqkv: &tb.dqkv,
        };
        ops::attention::record_query_grad(pb, k, tk, &attention, dq);
        let dkv = ops::attention::KeyValueGradBindings {
            qkv: &tb.qkv[l],
            rope_cos: rope.0,
            rope_sin: rope.1,
            d_o: &tb.datt,
            lse_delta: &tb.lse[l],
            dqkv: &tb.dqkv,
        };
        ops::attention::record_key_value_grad(pb, k, tk, &attention, dkv);
        let norm1 = self.block_norm(l, AdaLn::ShiftMsa, AdaLn::ScaleMsa);
        renorm(pb, &tb.xs[l], &blk.norm1, norm1)?;
        self.linear_backward(
            pb,
            (&blk.attn_qkv, &gblk.attn_qkv),
            (&tb.dqkv, 0),
            (&tb.h, 0),
            rows,
            into(&tb.dh),
        );
        self.layernorm_backward(
            pb,
            &norm1,
            &tb.xs[l],
            (&blk.norm1, &gblk.norm1),
            modulation,
            dmod,
            &tb.dh,
        )
    }

    /// The embedding gradient: a scatter of dx over the rows grouped by token and cut into pieces.
    fn embedding_backward(&self, pb: &mut ProgramBuilder) -> Result<()> {
        let (tb, w) = (self.tb, &self.model.weights);
        let (b, seq, d) = self.dims();
        let pieces = ops::embedding_backward::PieceBuffers {
            token: &tb.seg_token,
            start: &tb.seg_start,
            rows: &tb.seg_rows,
            slot: &tb.seg_slot,
            split_token: &tb.split_token,
            split_first: &tb.split_first,
            n_pieces: self.dy.n_pieces,
            n_split: self.dy.n_split,
        };
        for (part, gpart) in w.vocab_embed.parts.iter().zip(&self.g.vocab_embed.parts) {
            let table = (&gpart.buffer, part.row_start, part.rows);
            ops::embedding_backward::record(
                pb,
                self.k,
                self.tk,
                &tb.dx,
                b * seq,
                d,
                &pieces,
                table,
                w.vocab_embed.rows,
                &tb.emb_partial,
            )?;
        }
        Ok(())
    }

    /// The conditioning path in reverse: every adaLN projection into dc, then the sigma MLP.
    fn conditioning_backward(&self, pb: &mut ProgramBuilder) -> Result<()> {
        let Some(cond) = &self.tb.cond else {
            return Ok(());
        };
        let (tb, w, g) = (self.tb, &self.model.weights, self.g);
        let b = self.shape.forward.batch;
        let (mlp0, mlp2) = w.sigma_map.as_ref().expect("adaLN model");
        let (gmlp0, gmlp2) = g.sigma_map.as_ref().expect("adaLN model");
        let (z1, z2) = cond.pre_activations.as_ref().expect("kept for training");
        let accumulate_dc = Some(InputGrad {
            dx: &tb.dc,
            row_offset: 0,
            accumulate: true,
        });
        pb.clear(&tb.dc);
        for ((blk, gblk), dmod) in w.blocks.iter().zip(&g.blocks).zip(&tb.dmods) {
            self.linear_backward(
                pb,
                (
                    blk.adaln.as_ref().expect("adaLN"),
                    gblk.adaln.as_ref().expect("adaLN"),
                ),
                (dmod, 0),
                (&cond.c, 0),
                b,
                accumulate_dc,
            );
        }
        let (fa, gfa) = (
            w.final_adaln.as_ref().expect("adaLN"),
            g.final_adaln.as_ref().expect("adaLN"),
        );
        self.linear_backward(
            pb,
            (fa, gfa),
            (&tb.dfinal_mod, 0),
            (&cond.c, 0),
            b,
            accumulate_dc,
        );
        let nc = b * self.model.cfg.cond_dim;
        ops::elementwise::record(
            pb,
            self.k,
            self.tk,
            Elementwise::TimesSiluDerivative,
            nc,
            ops::elementwise::Bindings { x: z2, g: &tb.dc },
        )?;
        self.linear_backward(
            pb,
            (mlp2, gmlp2),
            (&tb.dc, 0),
            (&cond.c_hidden, 0),
            b,
            Some(InputGrad {
                dx: &tb.dc1,
                row_offset: 0,
                accumulate: false,
            }),
        );
        ops::elementwise::record(
            pb,
            self.k,
            self.tk,
            Elementwise::TimesSiluDerivative,
            nc,
            ops::elementwise::Bindings { x: z1, g: &tb.dc1 },
        )?;
        self.linear_backward(
            pb,
            (mlp0, gmlp0),
            (&tb.dc1, 0),
            (&cond.features, 0),
            b,
            None,
        );
        Ok(())
    }

    /// Backward of y = x·Wᵀ + b over m rows (dy and x given with their first row): dW += dyᵀx,
    /// db += Σ dy, and optionally dx (= or +=) dy·W.
    fn linear_backward(
        &self,
        pb: &mut ProgramBuilder,
        (lin, grad): (&Linear, &Linear),
        dy: (&Buf, usize),
        x: (&Buf, usize),
        m: usize,
        dx: Option<InputGrad>,
    ) {
        let (k, tk, tb) = (self.k, self.tk, self.tb);
        let (n_out, n_in) = (lin.out_features(), lin.in_features());
        for (pi, (part, gpart)) in lin.weight.parts.iter().zip(&grad.weight.parts).enumerate() {
            let mut wg = Matmul::weight_grad(
                m as u32,
                part.rows as u32,
                n_in as u32,
                n_out as u32,
                n_in as u32,
            );
            wg.a_offset = (dy.1 * n_out + part.row_start) as u32;
            wg.b_offset = (x.1 * n_in) as u32;
            let io = ops::matmul::AccumulateIo {
                a: dy.0,
                b: x.0,
                out: &gpart.buffer,
                scratch: &tb.split_partial,
            };
            ops::matmul::record_accumulating(pb, k, tk, "weight grad", &wg, io);
            if let Some(gb) = &grad.bias {
                let a = Columns {
                    buffer: dy.0,
                    offset: dy.1 * n_out + part.row_start,
                    rows: m,
                    cols: part.rows,
                    stride: n_out,
                };
                ops::col_sum::record(pb, k, tk, a, gb, part.row_start, &tb.col_partial);
            }
            if let Some(d) = dx {
                let mut ig =
                    Matmul::input_grad(m as u32, part.rows as u32, n_in as u32, n_out as u32);
                ig.a_offset = (dy.1 * n_out + part.row_start) as u32;
                ig.out_rows.row_offset = d.row_offset as u32;
                if d.accumulate || pi > 0 {
                    ig.epilogue = Epilogue::Residual;
                }
                let bind = ops::matmul::Bindings {
                    a: dy.0,
                    b: &part.buffer,
                    bias: None,
                    gate: None,
                    out: d.dx,
                    aux: None,
                };
                ops::matmul::record(pb, k, "input grad", &ig, bind);
            }
        }
    }

    /// LayerNorm backward: dx += …, then the parameter gradients (dw into dweight, dshift/dscale
    /// into `dmod`) through row-chunk partials.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        pb: &mut ProgramBuilder,
        ln: &LayerNorm,
        x: &Buf,
        (weight, dweight): (&Buf, &Buf),
        modv: Option<&Buf>,
        dmod: Option<&Buf>,
        dy: &Buf,
    ) -> Result<()> {
        let (k, tk, tb) = (self.k, self.tk, self.tb);
        let bw = ops::layernorm_backward::Bindings {
            x,
            w: weight,
            modv,
            dy,
            dx: &tb.dx,
            stats: &tb.stats,
        };
        ops::layernorm_backward::record(pb, k, tk, ln, bw)?;
        debug_assert_eq!(
            ln.sequences() as usize,
            self.shape.forward.batch,
            "the partials are sized for the batch's sequences"
        );
        let pg = ops::layernorm_param_grads::Bindings {
            x,
            stats: &tb.stats,
            dy,
            w: weight,
            modv,
            dw_part: &tb.ln_partial,
            dmod,
            dmod_part: Some(&tb.row_partial),
        };
        ops::layernorm_param_grads::record(pb, k, tk, ln, pg, dweight, &tb.col_partial);
        Ok(())
    }
}

/// Where a Linear's input gradient goes: rows from `row_offset`, written or added.
#[derive(Clone, Copy)]
struct InputGrad<'a> {
    dx: &'a Buf,
    row_offset: usize,
    accumulate: bool,
}

/// Floats of scratch the largest split weight gradient of a training program needs: the block
/// Linears over `rows` rows, the head over a logits chunk, the conditioning over the batch.
fn weight_grad_scratch_floats(
    model: &GpuModel,
    rows: usize,
    head_rows: usize,
    batch: usize,
) -> usize {
    let w = &model.weights;
    let units = model.ctx.compute_units;
    let mut linears: Vec<(&Linear, usize)> = vec![(&w.head, head_rows)];
    for blk in &w.blocks {
        linears.extend([
            (&blk.attn_qkv, rows),
            (&blk.attn_out, rows),
            (&blk.mlp_up, rows),
            (&blk.mlp_down, rows),
        ]);
        linears.extend(blk.adaln.as_ref().map(|a| (a, batch)));
    }
    linears.extend(w.final_adaln.as_ref().map(|a| (a, batch)));
    if let Some((a, b)) = &w.sigma_map {
        linears.extend([(a, batch), (b, batch)]);
    }
    linears
        .iter()
        .flat_map(|(lin, m)| {
            let (n_out, n_in) = (lin.out_features() as u32, lin.in_features() as u32);
            lin.weight.parts.iter().map(move |part| {
                Matmul::weight_grad(*m as u32, part.rows as u32, n_in, n_out, n_in)
                    .split_scratch_floats(units)
            })
        })
        .max()
        .unwrap_or(0)
}

/// Group the rows of a batch by token: (token per segment, segment starts, rows in segment order).
fn segments(tokens: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    order.sort_by_key(|&r| (tokens[r as usize], r));
    let (mut seg_token, mut seg_start) = (Vec::new(), Vec::new());
    for (i, &r) in order.iter().enumerate() {
        let t = tokens[r as usize];
        if seg_token.last() != Some(&t) {
            seg_token.push(t);
            seg_start.push(i as u32);
        }
    }
    seg_start.push(order.len() as u32);
    (seg_token, seg_start, order)
}

/// Copy every weight into `dst` (same structure), one submission.
pub fn copy_weights(ctx: &GpuContext, src: &Weights, dst: &Weights) {
    if ctx.is_planning() {
        return;
    }
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    for (a, b) in src.tensors().iter().zip(dst.tensors()) {
        for ((sa, n), (sb, _)) in a.parts.iter().zip(&b.parts) {
            enc.copy_buffer_to_buffer(
                sa.whole(),
                sa.offset(),
                sb.whole(),
                sb.offset(),
                (*n * 4) as u64,
            );
        }
    }
    ctx.submit(enc);
}

/// Read every tensor of `w` back: (canonical name, shape, values).
pub async fn read_tensors(
    ctx: &GpuContext,
    w: &Weights,
) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    let mut out = Vec::new();
    for t in w.tensors() {
        let mut data = Vec::new();
        for (b, n) in &t.parts {
            data.extend(ctx.read_f32(b, 0, *n).await?);
        }
        out.push((t.name, t.shape, data));
    }
    Ok(out)
}

/// Write host values into every tensor of `w` whose name appears in `values`.
pub fn write_tensors(
    ctx: &GpuContext,
    w: &Weights,
    values: &HashMap<String, Vec<f32>>,
) -> Result<()> {
    for t in w.tensors() {
        if let Some(vals) = values.get(&t.name) {
            let total: usize = t.parts.iter().map(|p| p.1).sum();
            if vals.len() != total {
                return Err(Error::Invalid(format!(
                    "tensor `{}` has {} values, expected {total}",
                    t.name,
                    vals.len()
                )));
            }
            let mut off = 0;
            for (b, n) in &t.parts {
                ctx.queue().write_buffer(
                    b.whole(),
                    b.offset(),
                    bytemuck::cast_slice(&vals[off..off + n]),
                );
                off += n;
            }
        }
    }
    Ok(())
}
