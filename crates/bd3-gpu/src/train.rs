//! Training on the GPU: the forward pass with its activations kept, the backward pass, gradient
//! clipping and AdamW with the EMA of the weights (spec §3, §6).
//!
//! One [`TrainShape`] records one program: forward (keeping each block's input, the attention
//! output and log-sum-exp, the pre-gate branch outputs and the MLP pre-activation), the loss and its
//! logits gradient chunk by chunk (the head's backward runs on each chunk before the next), then every
//! block in reverse, the embedding scatter and the conditioning MLP. Gradients accumulate, so several
//! calls before one [`Trainer::optimizer_step`] are gradient accumulation. Dropout (0.1 on the
//! residual branches in training) uses a counter-based mask keyed by the step's seed; the backward
//! regenerates it. Per step only the inputs and a few parameters are written; one submission runs it.

use crate::context::GpuContext;
use crate::kernels::{params, params::Epilogue, Program, ProgramBuilder, TrainKernels};
use crate::layers::{self, Conditioning};
use crate::model::{check_activation_size, ForwardShape, GpuModel, Objective};
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
        OptimConfig { lr: 3e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0, ema_decay: 0.9999 }
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
    pub grads: Weights,
    pub m: Weights,
    pub v: Weights,
    pub ema: Option<Weights>,
    pub optim: OptimConfig,
    /// Optimizer steps taken (AdamW's t).
    pub step: u64,
    kernels: TrainKernels,
    norm_sq: wgpu::Buffer,
    programs: HashMap<TrainShape, TrainWorkspace>,
    optimizer: Option<Program>,
}

struct TrainWorkspace {
    program: Program,
    b: TrainBuffers,
    staging: wgpu::Buffer,
    outputs: wgpu::Buffer,
    scored: usize,
}

/// Every buffer of one training shape.
struct TrainBuffers {
    tokens: wgpu::Buffer,
    input_ids: wgpu::Buffer,
    targets: wgpu::Buffer,
    row_weights: wgpu::Buffer,
    seq_consts: wgpu::Buffer,
    /// Conditioning with its pre-activations kept (None for AR).
    cond: Option<Conditioning>,
    // Saved activations.
    xs: Vec<wgpu::Buffer>,
    xmid: Vec<wgpu::Buffer>,
    qkv: Vec<wgpu::Buffer>,
    att: Vec<wgpu::Buffer>,
    lse: Vec<wgpu::Buffer>,
    y1: Vec<wgpu::Buffer>,
    y2: Vec<wgpu::Buffer>,
    u: Vec<wgpu::Buffer>,
    // Scratch.
    h: wgpu::Buffer,
    act: wgpu::Buffer,
    dact: wgpu::Buffer,
    dv: wgpu::Buffer,
    datt: wgpu::Buffer,
    dh: wgpu::Buffer,
    dqkv: wgpu::Buffer,
    dx: wgpu::Buffer,
    hf: wgpu::Buffer,
    dhf: wgpu::Buffer,
    logits: wgpu::Buffer,
    dlogits: wgpu::Buffer,
    token_loss: wgpu::Buffer,
    loss_sum: wgpu::Buffer,
    stats: wgpu::Buffer,
    /// Column sums over many rows: per-chunk partial sums ([chunks, columns]).
    col_partial: wgpu::Buffer,
    /// LayerNorm weight gradients: per-sequence partial sums ([batch, dim]).
    ln_partial: wgpu::Buffer,
    dmods: Vec<wgpu::Buffer>,
    dfinal_mod: wgpu::Buffer,
    dc: wgpu::Buffer,
    dc1: wgpu::Buffer,
    seg_token: wgpu::Buffer,
    seg_start: wgpu::Buffer,
    seg_rows: wgpu::Buffer,
    chunk_rows: usize,
}

/// Per-call values recorded into the kernel parameters.
#[derive(Clone, Copy, Default)]
struct Dynamic {
    seed: u32,
    n_segments: u32,
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
        Ok(Trainer {
            grads: Weights::zeros_like(ctx, "grad", &model.weights)?,
            m: Weights::zeros_like(ctx, "adam m", &model.weights)?,
            v: Weights::zeros_like(ctx, "adam v", &model.weights)?,
            ema,
            optim,
            step: 0,
            kernels: TrainKernels::new(ctx, model.cfg.head_dim()).await?,
            norm_sq: ctx.storage("grad norm²", 4)?,
            programs: HashMap::new(),
            optimizer: None,
        })
    }

    /// Forward and backward on one (micro-)batch; gradients are added to `grads`.
    pub async fn forward_backward(&mut self, model: &GpuModel, shape: &TrainShape, batch: &TrainBatch<'_>) -> Result<TrainOutput> {
        let s = &shape.forward;
        model.check_forward_input(s, &batch.input)?;
        if !self.programs.contains_key(shape) {
            let ws = self.build(model, shape)?;
            self.programs.insert(*shape, ws);
        }
        let ctx = &*model.ctx;
        let ws = &self.programs[shape];
        let q = &ctx.queue;
        let i = &batch.input;
        // Rows grouped by token for the embedding scatter.
        let (seg_token, seg_start, seg_rows) = segments(i.tokens);
        let dynamic = Dynamic { seed: batch.seed, n_segments: seg_token.len() as u32, grad_scale: batch.grad_scale };
        let mut pb = ProgramBuilder::params_only(ctx);
        self.record(&mut pb, model, shape, &ws.b, dynamic)?;
        ws.program.write_params(q, &pb.finish_params());
        q.write_buffer(&ws.b.tokens, 0, bytemuck::cast_slice(i.tokens));
        q.write_buffer(&ws.b.input_ids, 0, bytemuck::cast_slice(i.input_ids));
        q.write_buffer(&ws.b.targets, 0, bytemuck::cast_slice(i.targets));
        q.write_buffer(&ws.b.row_weights, 0, bytemuck::cast_slice(i.weights));
        q.write_buffer(&ws.b.seg_token, 0, bytemuck::cast_slice(&seg_token));
        q.write_buffer(&ws.b.seg_start, 0, bytemuck::cast_slice(&seg_start));
        q.write_buffer(&ws.b.seg_rows, 0, bytemuck::cast_slice(&seg_rows));
        if model.cfg.kind.has_adaln() {
            let sigma: Vec<f64> = if model.cfg.time_conditioning { i.sigma.to_vec() } else { vec![0.0; s.batch] };
            let feats: Vec<f32> = sigma.iter().flat_map(|&x| bd3_model::tables::timestep_features(x)).collect();
            q.write_buffer(&ws.b.cond.as_ref().expect("adaLN model").features, 0, bytemuck::cast_slice(&feats));
        }
        if s.objective == Objective::Sedd {
            q.write_buffer(&ws.b.seq_consts, 0, bytemuck::cast_slice(&crate::model::sedd_constants(i.sedd_t, model.cfg.vocab_size)));
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        ws.program.encode(&mut enc);
        let bytes = ((1 + ws.scored) * 4) as u64;
        enc.copy_buffer_to_buffer(&ws.outputs, 0, &ws.staging, 0, bytes);
        ctx.submit(enc);
        let data = ctx.map_read(&ws.staging, bytes).await?;
        let out: &[f32] = bytemuck::cast_slice(&data);
        Ok(TrainOutput { loss_sum: out[0] as f64, token_loss: out[1..].to_vec() })
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
        let mut pb = if self.optimizer.is_none() { ProgramBuilder::new(ctx) } else { ProgramBuilder::params_only(ctx) };
        self.record_optimizer(&mut pb, model, lr, ema_decay)?;
        match &self.optimizer {
            None => self.optimizer = Some(pb.finish()?),
            Some(p) => p.write_params(&ctx.queue, &pb.finish_params()),
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&self.norm_sq, 0, None);
        self.optimizer.as_ref().unwrap().encode(&mut enc);
        ctx.submit(enc);
        ctx.check()
    }

    /// The global gradient norm of the last [`Trainer::optimizer_step`], read back from the GPU (None
    /// when clipping is off, since the norm is then not computed).
    pub async fn last_grad_norm(&self, ctx: &GpuContext) -> Result<Option<f64>> {
        if self.optim.max_grad_norm <= 0.0 {
            return Ok(None);
        }
        Ok(Some((ctx.read_f32(&self.norm_sq, 0, 1).await?[0] as f64).sqrt()))
    }

    fn record_optimizer(&self, pb: &mut ProgramBuilder, model: &GpuModel, lr: f64, ema_decay: f64) -> Result<()> {
        let tk = &self.kernels;
        let k = &model.kernels;
        let grads = self.grads.tensors();
        if self.optim.max_grad_norm > 0.0 {
            for t in &grads {
                for (b, n) in &t.parts {
                    pb.dispatch("grad_norm", &k.reduce_sum, &params::reduce_sum_squares(*n as u32, 0), vec![b.into(), (&self.norm_sq).into()], [1, 1, 1]);
                }
            }
        }
        let o = &self.optim;
        let ema = self.ema.as_ref().map(|e| e.tensors());
        let tensors = model.weights.tensors();
        for (ti, ((w, g), (m, v))) in tensors.iter().zip(&grads).zip(self.m.tensors().iter().zip(self.v.tensors())).enumerate() {
            for (pi, ((wb, n), (gb, _))) in w.parts.iter().zip(&g.parts).enumerate() {
                let e = ema.as_ref().map(|e| e[ti].parts[pi].0.clone()).unwrap_or_else(|| k.dummy_out.clone());
                let groups = pb.fold((*n as u64).div_ceil(256))?;
                pb.dispatch(
                    "adamw",
                    &tk.adamw,
                    &params::adamw(*n as u32, lr, o.beta1, o.beta2, o.eps, o.weight_decay, self.step, o.max_grad_norm, ema_decay),
                    vec![wb.into(), gb.into(), (&m.parts[pi].0).into(), (&v.parts[pi].0).into(), (&e).into(), (&self.norm_sq).into()],
                    groups,
                );
            }
        }
        // The next step accumulates from zero.
        for g in &grads {
            for (b, _) in &g.parts {
                pb.clear(b);
            }
        }
        Ok(())
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
        let per_layer = |label: &str, n: usize| (0..nb).map(|_| f(label, n)).collect::<Result<Vec<_>>>();
        let chunk_rows = layers::logits_chunk_rows(ctx, v, scored);
        let c = cfg.cond_dim.max(1);
        let tb = TrainBuffers {
            tokens: f("tokens", rows)?,
            input_ids: f("input_ids", scored)?,
            targets: f("targets", scored)?,
            row_weights: f("row weights", scored)?,
            seq_consts: f("sedd constants", b * 4)?,
            cond: Conditioning::alloc(ctx, cfg, b, true)?,
            xs: (0..=nb).map(|_| f("block input", rows * d)).collect::<Result<_>>()?,
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
            col_partial: f("column partial sums", rows.max(scored).div_ceil(COL_SUM_CHUNK) * (6 * d).max(v))?,
            // Every LayerNorm covers the whole batch, one sequence per partial row.
            ln_partial: f("layernorm partial dw", b * d)?,
            dmods: per_layer("d modulation", b * 6 * d)?,
            dfinal_mod: f("d final modulation", b * 2 * d)?,
            dc: f("d cond", b * c)?,
            dc1: f("d cond c1", b * c)?,
            seg_token: f("segment tokens", rows)?,
            seg_start: f("segment starts", rows + 1)?,
            seg_rows: f("segment rows", rows)?,
            chunk_rows,
        };
        let mut pb = ProgramBuilder::new(ctx);
        self.record(&mut pb, model, shape, &tb, Dynamic::default())?;
        pb.copy_to_output(&tb.loss_sum, 0, 1);
        pb.copy_to_output(&tb.token_loss, 1, scored);
        let outputs = f("train outputs", 1 + scored)?;
        let program = pb.finish_with_outputs(&outputs)?;
        let staging = ctx.buffer("train staging", ((1 + scored) * 4) as u64, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        Ok(TrainWorkspace { program, b: tb, staging, outputs, scored })
    }

    /// Record forward + backward of one shape (or only their parameters, with a params-only builder).
    fn record(&self, pb: &mut ProgramBuilder, model: &GpuModel, shape: &TrainShape, tb: &TrainBuffers, dy: Dynamic) -> Result<()> {
        let (cfg, k, tk, w, g) = (&model.cfg, &model.kernels, &self.kernels, &model.weights, &self.grads);
        let s = &shape.forward;
        let (b, d, v, nb) = (s.batch, cfg.hidden_dim, cfg.vocab_size, cfg.n_blocks);
        let rows = b * s.seq;
        let scored = s.scored_rows();
        let dropout = shape.dropout_milli as f32 / 1000.0;
        let adaln = cfg.kind.has_adaln();
        let rope = (&model.rope_cos, &model.rope_sin);
        // Forward of a Linear keeping what the backward needs (aux = pre-activation / branch output).
        let forward_linear = |pb: &mut ProgramBuilder, lin: &Linear, a: &wgpu::Buffer, out: &wgpu::Buffer, m: usize, epi: Epilogue, gate: Option<(&wgpu::Buffer, usize)>, aux: Option<&wgpu::Buffer>, salt: u32| {
            let residual = matches!(epi, Epilogue::GatedResidual | Epilogue::Residual);
            let x = layers::Extras {
                gate: gate.map(|(g, offset)| (g, offset, 6 * d, s.seq)),
                aux,
                dropout: residual.then_some((dropout, dy.seed, salt)),
                out_rows: None,
            };
            layers::linear(pb, k, lin, a, out, m, epi, x)
        };
        // Backward of y = x·Wᵀ + b over m rows: dW += dyᵀx, db += Σ dy, and dx (= or +=) dy·W.
        let backward_linear = |pb: &mut ProgramBuilder, lin: &Linear, grad: &Linear, dy_buf: &wgpu::Buffer, dy_off: usize, x: &wgpu::Buffer, x_off: usize, m: usize, dx: Option<(&wgpu::Buffer, usize, bool)>| {
            let (n_out, n_in) = (lin.out_features(), lin.in_features());
            for (pi, (part, gpart)) in lin.weight.parts.iter().zip(&grad.weight.parts).enumerate() {
                let mut p = params::Matmul::weight_grad(m as u32, part.rows as u32, n_in as u32, n_out as u32, n_in as u32);
                p.a_offset = (dy_off * n_out + part.row_start) as u32;
                p.b_offset = (x_off * n_in) as u32;
                layers::gemm(pb, k, "matmul backward", p, dy_buf, x, None, None, &gpart.buffer, None);
                if let Some(gb) = &grad.bias {
                    let a = ColumnSource { buffer: dy_buf, offset: dy_off * n_out + part.row_start, rows: m, cols: part.rows, stride: n_out };
                    record_col_sum(pb, tk, a, gb, part.row_start, &tb.col_partial);
                }
                if let Some((dx_buf, dx_off, accumulate)) = dx {
                    let mut p = params::Matmul::input_grad(m as u32, part.rows as u32, n_in as u32, n_out as u32);
                    p.a_offset = (dy_off * n_out + part.row_start) as u32;
                    p.out_row_offset = dx_off as u32;
                    if accumulate || pi > 0 {
                        p.epilogue = Epilogue::Residual;
                    }
                    layers::gemm(pb, k, "matmul backward", p, dy_buf, &part.buffer, None, None, dx_buf, None);
                }
            }
        };
        let ln_params = |n_rows: usize, out_rows_per_seq: usize, offset: usize, m: Option<(usize, usize, usize)>| params::LayerNorm {
            n_rows: n_rows as u32,
            dim: d as u32,
            in_rows_per_seq: s.seq as u32,
            out_rows_per_seq: out_rows_per_seq as u32,
            in_row_offset: offset as u32,
            modulation: m.map(|(sh, sc, st)| (sh as u32, sc as u32, st as u32)),
            use_row_index: false,
        };
        // LayerNorm backward: dx += …, then the parameter gradients (dw, dshift, dscale).
        let ln_backward = |pb: &mut ProgramBuilder, x: &wgpu::Buffer, weight: &wgpu::Buffer, dweight: &wgpu::Buffer, modv: Option<&wgpu::Buffer>, dmod: Option<&wgpu::Buffer>, dy_buf: &wgpu::Buffer, p: params::LayerNorm| -> Result<()> {
            let words = p.words()[..9].to_vec();
            let groups = pb.fold(p.n_rows as u64)?;
            pb.dispatch("layernorm_backward", &tk.layernorm_backward, &words, vec![x.into(), weight.into(), modv.unwrap_or(&k.dummy).into(), dy_buf.into(), (&tb.dx).into(), (&tb.stats).into()], groups);
            // Per-sequence partial dw (one workgroup row per sequence), then their sum into dw.
            let n_seq = p.n_rows / p.out_rows_per_seq;
            debug_assert_eq!(n_seq as usize, b, "ln_partial holds one row per sequence of the batch");
            pb.dispatch(
                "layernorm_param_grads",
                &tk.layernorm_param_grads,
                &words,
                vec![x.into(), (&tb.stats).into(), dy_buf.into(), weight.into(), modv.unwrap_or(&k.dummy).into(), (&tb.ln_partial).into(), dmod.unwrap_or(&k.dummy_out).into()],
                [(d as u32).div_ceil(256), n_seq, 1],
            );
            let partial = ColumnSource { buffer: &tb.ln_partial, offset: 0, rows: n_seq as usize, cols: d, stride: d };
            record_col_sum(pb, tk, partial, dweight, 0, &tb.col_partial);
            Ok(())
        };
        let attention = params::Attention {
            write_lse: true,
            ..params::Attention::self_attention(s.seq as u32, cfg.n_heads as u32, cfg.head_dim() as u32, s.mask, s.pos_period as u32)
        };

        // ---- forward ----
        if let Some(c) = &tb.cond {
            c.record(pb, k, w, b)?;
        }
        layers::embedding(pb, k, w, &tb.tokens, &tb.xs[0], rows)?;
        let residual = if adaln { Epilogue::GatedResidual } else { Epilogue::Residual };
        let bytes = (rows * d * 4) as u64;
        for (l, blk) in w.blocks.iter().enumerate() {
            let modv = tb.cond.as_ref().map(|c| &c.mods[l]);
            let md = |shift: usize, scale: usize| modv.map(|_| (shift * d, scale * d, 6 * d));
            let x = &tb.xs[l + 1];
            pb.copy(&tb.xs[l], 0, x, 0, bytes);
            layers::layernorm(pb, k, x, &blk.norm1, modv, &tb.h, ln_params(rows, s.seq, 0, md(0, 1)), None)?;
            forward_linear(pb, &blk.attn_qkv, &tb.h, &tb.qkv[l], rows, Epilogue::Store, None, None, 0)?;
            pb.dispatch(
                "attention",
                &k.attention,
                &attention.words(),
                vec![(&tb.qkv[l]).into(), (&tb.qkv[l]).into(), rope.0.into(), rope.1.into(), (&tb.att[l]).into(), (&tb.lse[l]).into()],
                attention.groups(b as u32),
            );
            forward_linear(pb, &blk.attn_out, &tb.att[l], x, rows, residual, modv.map(|m| (m, 2 * d)), Some(&tb.y1[l]), 2 * l as u32 + 1)?;
            pb.copy(x, 0, &tb.xmid[l], 0, bytes);
            layers::layernorm(pb, k, x, &blk.norm2, modv, &tb.h, ln_params(rows, s.seq, 0, md(3, 4)), None)?;
            forward_linear(pb, &blk.mlp_up, &tb.h, &tb.act, rows, Epilogue::Gelu, None, Some(&tb.u[l]), 0)?;
            forward_linear(pb, &blk.mlp_down, &tb.act, x, rows, residual, modv.map(|m| (m, 5 * d)), Some(&tb.y2[l]), 2 * l as u32 + 2)?;
        }
        let x_last = &tb.xs[nb];
        let fmd = adaln.then(|| (0, d, 2 * d));
        let final_mod = tb.cond.as_ref().map(|c| &c.final_mod);
        layers::layernorm(pb, k, x_last, &w.norm_final, final_mod, &tb.hf, ln_params(scored, s.head_rows, s.head_row_offset, fmd), None)?;

        // ---- loss, logits gradient and the head's backward, chunk by chunk ----
        pb.clear(&tb.dhf);
        let grad_scale = dy.grad_scale;
        let sedd = s.objective == Objective::Sedd;
        layers::head_chunks(pb, k, w, &tb.hf, &tb.logits, scored, tb.chunk_rows, |pb, start, n| {
            let groups = pb.fold(n as u64)?;
            if sedd {
                pb.dispatch(
                    "sedd_loss",
                    &k.sedd_loss,
                    &params::sedd_loss(n as u32, v as u32, cfg.mask_id(), false, start as u32, s.head_rows as u32, grad_scale),
                    vec![
                        (&tb.logits).into(), (&tb.input_ids).into(), (&tb.targets).into(), (&tb.seq_consts).into(), (&k.dummy_out).into(),
                        (&k.dummy_out2).into(), (&tb.token_loss).into(), (&tb.dlogits).into(),
                    ],
                    groups,
                );
            } else {
                pb.dispatch(
                    "token_loss",
                    &k.token_loss,
                    &params::token_loss(n as u32, v as u32, cfg.mask_id(), s.objective == Objective::Ar, false, start as u32, grad_scale),
                    vec![(&tb.logits).into(), (&tb.input_ids).into(), (&tb.targets).into(), (&tb.row_weights).into(), (&k.dummy_out).into(), (&tb.token_loss).into(), (&tb.dlogits).into()],
                    groups,
                );
            }
            backward_linear(pb, &w.head, &g.head, &tb.dlogits, 0, &tb.hf, start, n, Some((&tb.dhf, start, true)));
            Ok(())
        })?;
        pb.dispatch("reduce_sum", &k.reduce_sum, &params::reduce_sum(scored as u32, 0), vec![(&tb.token_loss).into(), (&tb.loss_sum).into()], [1, 1, 1]);

        // ---- backward through the final layer and the blocks ----
        pb.clear(&tb.dx);
        for m in &tb.dmods {
            pb.clear(m);
        }
        pb.clear(&tb.dfinal_mod);
        ln_backward(pb, x_last, &w.norm_final, &g.norm_final, final_mod, adaln.then_some(&tb.dfinal_mod), &tb.dhf, ln_params(scored, s.head_rows, s.head_row_offset, fmd))?;
        for l in (0..nb).rev() {
            let (blk, gblk) = (&w.blocks[l], &g.blocks[l]);
            let modv = tb.cond.as_ref().map(|c| &c.mods[l]);
            let dmod = adaln.then(|| &tb.dmods[l]);
            let md = |shift: usize, scale: usize| modv.map(|_| (shift * d, scale * d, 6 * d));
            let gate_bw = |pb: &mut ProgramBuilder, y: &wgpu::Buffer, chunk: usize, salt: u32| {
                let p = params::gate_backward(b as u32, s.seq as u32, d as u32, adaln.then(|| ((6 * d) as u32, (chunk * d) as u32)), dropout, dy.seed, salt);
                pb.dispatch(
                    "gate_backward",
                    &tk.gate_backward,
                    &p,
                    vec![(&tb.dx).into(), y.into(), modv.unwrap_or(&k.dummy).into(), (&tb.dv).into(), dmod.unwrap_or(&k.dummy_out).into()],
                    [((b * d) as u32).div_ceil(256), 1, 1],
                );
            };
            let n4 = (rows * 4 * d) as u64;
            let elementwise = |pb: &mut ProgramBuilder, x: &wgpu::Buffer, gbuf: &wgpu::Buffer, n: u64, mode: u32| -> Result<()> {
                let groups = pb.fold(n.div_ceil(256))?;
                pb.dispatch("elementwise", &tk.elementwise, &params::elementwise(n as u32, mode), vec![x.into(), gbuf.into()], groups);
                Ok(())
            };
            // MLP branch.
            gate_bw(pb, &tb.y2[l], 5, 2 * l as u32 + 2);
            elementwise(pb, &tb.u[l], &tb.act, n4, 0)?;
            backward_linear(pb, &blk.mlp_down, &gblk.mlp_down, &tb.dv, 0, &tb.act, 0, rows, Some((&tb.dact, 0, false)));
            elementwise(pb, &tb.u[l], &tb.dact, n4, 1)?;
            layers::layernorm(pb, k, &tb.xmid[l], &blk.norm2, modv, &tb.h, ln_params(rows, s.seq, 0, md(3, 4)), None)?;
            backward_linear(pb, &blk.mlp_up, &gblk.mlp_up, &tb.dact, 0, &tb.h, 0, rows, Some((&tb.dh, 0, false)));
            ln_backward(pb, &tb.xmid[l], &blk.norm2, &gblk.norm2, modv, dmod, &tb.dh, ln_params(rows, s.seq, 0, md(3, 4)))?;
            // Attention branch.
            gate_bw(pb, &tb.y1[l], 2, 2 * l as u32 + 1);
            backward_linear(pb, &blk.attn_out, &gblk.attn_out, &tb.dv, 0, &tb.att[l], 0, rows, Some((&tb.datt, 0, false)));
            pb.dispatch(
                "attention_dq",
                &tk.attention_dq,
                &attention.words(),
                vec![(&tb.qkv[l]).into(), rope.0.into(), rope.1.into(), (&tb.att[l]).into(), (&tb.datt).into(), (&tb.lse[l]).into(), (&tb.dqkv).into()],
                attention.groups(b as u32),
            );
            pb.dispatch(
                "attention_dkv",
                &tk.attention_dkv,
                &attention.words(),
                vec![(&tb.qkv[l]).into(), rope.0.into(), rope.1.into(), (&tb.datt).into(), (&tb.lse[l]).into(), (&tb.dqkv).into()],
                attention.groups(b as u32),
            );
            layers::layernorm(pb, k, &tb.xs[l], &blk.norm1, modv, &tb.h, ln_params(rows, s.seq, 0, md(0, 1)), None)?;
            backward_linear(pb, &blk.attn_qkv, &gblk.attn_qkv, &tb.dqkv, 0, &tb.h, 0, rows, Some((&tb.dh, 0, false)));
            ln_backward(pb, &tb.xs[l], &blk.norm1, &gblk.norm1, modv, dmod, &tb.dh, ln_params(rows, s.seq, 0, md(0, 1)))?;
        }

        // ---- embedding scatter ----
        for (part, gpart) in w.vocab_embed.parts.iter().zip(&g.vocab_embed.parts) {
            let groups = pb.fold(rows as u64)?;
            pb.dispatch(
                "embedding_backward",
                &tk.embedding_backward,
                &params::embedding_backward(dy.n_segments, d as u32, part.row_start as u32, part.rows as u32),
                vec![(&tb.dx).into(), (&tb.seg_token).into(), (&tb.seg_start).into(), (&tb.seg_rows).into(), (&gpart.buffer).into()],
                groups,
            );
        }

        // ---- conditioning: modulation projections, then the sigma MLP ----
        if let Some(cond) = &tb.cond {
            let (mlp0, mlp2) = w.sigma_map.as_ref().unwrap();
            let (gmlp0, gmlp2) = g.sigma_map.as_ref().unwrap();
            let (z1, z2) = cond.pre_activations.as_ref().expect("kept for training");
            pb.clear(&tb.dc);
            for l in 0..nb {
                backward_linear(pb, w.blocks[l].adaln.as_ref().unwrap(), g.blocks[l].adaln.as_ref().unwrap(), &tb.dmods[l], 0, &cond.c, 0, b, Some((&tb.dc, 0, true)));
            }
            backward_linear(pb, w.final_adaln.as_ref().unwrap(), g.final_adaln.as_ref().unwrap(), &tb.dfinal_mod, 0, &cond.c, 0, b, Some((&tb.dc, 0, true)));
            let nc = (b * cfg.cond_dim) as u32;
            pb.dispatch("elementwise", &tk.elementwise, &params::elementwise(nc, 2), vec![z2.into(), (&tb.dc).into()], [nc.div_ceil(256), 1, 1]);
            backward_linear(pb, mlp2, gmlp2, &tb.dc, 0, &cond.c_hidden, 0, b, Some((&tb.dc1, 0, false)));
            pb.dispatch("elementwise", &tk.elementwise, &params::elementwise(nc, 2), vec![z1.into(), (&tb.dc1).into()], [nc.div_ceil(256), 1, 1]);
            backward_linear(pb, mlp0, gmlp0, &tb.dc1, 0, &cond.features, 0, b, None);
        }
        Ok(())
    }
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
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for (a, b) in src.tensors().iter().zip(dst.tensors()) {
        for ((sa, n), (sb, _)) in a.parts.iter().zip(&b.parts) {
            enc.copy_buffer_to_buffer(sa, 0, sb, 0, (*n * 4) as u64);
        }
    }
    ctx.submit(enc);
}

/// Read every tensor of `w` back: (canonical name, shape, values).
pub async fn read_tensors(ctx: &GpuContext, w: &Weights) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
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
pub fn write_tensors(ctx: &GpuContext, w: &Weights, values: &HashMap<String, Vec<f32>>) -> Result<()> {
    for t in w.tensors() {
        if let Some(vals) = values.get(&t.name) {
            let total: usize = t.parts.iter().map(|p| p.1).sum();
            if vals.len() != total {
                return Err(Error::Invalid(format!("tensor `{}` has {} values, expected {total}", t.name, vals.len())));
            }
            let mut off = 0;
            for (b, n) in &t.parts {
                ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(&vals[off..off + n]));
                off += n;
            }
        }
    }
    Ok(())
}

/// Rows per workgroup in the first pass of a long column sum.
const COL_SUM_CHUNK: usize = 256;

/// A [rows, cols] window of a row-major matrix with row stride `stride`, starting at `offset`.
pub struct ColumnSource<'b> {
    pub buffer: &'b wgpu::Buffer,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// out[out_offset + j] += Σ_i a[i, j]. Up to 2·COL_SUM_CHUNK rows in one pass; beyond, chunks of
/// COL_SUM_CHUNK rows into `scratch` (one workgroup row each, so a large GPU has work for every
/// core), then one pass over those partial sums.
pub fn record_col_sum(pb: &mut ProgramBuilder, tk: &TrainKernels, a: ColumnSource, out: &wgpu::Buffer, out_offset: usize, scratch: &wgpu::Buffer) {
    let groups_x = (a.cols as u32).div_ceil(256);
    let (m, n, lda, off) = (a.rows as u32, a.cols as u32, a.stride as u32, a.offset as u32);
    if a.rows <= 2 * COL_SUM_CHUNK {
        pb.dispatch("col_sum", &tk.col_sum, &params::col_sum(m, n, lda, off, out_offset as u32, m.max(1), 0, true), vec![a.buffer.into(), out.into()], [groups_x, 1, 1]);
        return;
    }
    let chunks = a.rows.div_ceil(COL_SUM_CHUNK) as u32;
    pb.dispatch("col_sum", &tk.col_sum, &params::col_sum(m, n, lda, off, 0, COL_SUM_CHUNK as u32, n, false), vec![a.buffer.into(), scratch.into()], [groups_x, chunks, 1]);
    pb.dispatch("col_sum", &tk.col_sum, &params::col_sum(chunks, n, n, 0, out_offset as u32, chunks, 0, true), vec![scratch.into(), out.into()], [groups_x, 1, 1]);
}
