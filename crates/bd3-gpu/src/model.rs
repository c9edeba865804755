//! The DiT backbone of BD3-LM on the GPU, read top to bottom (spec §1.2):
//!
//!   x = E[tokens]
//!   c = silu(mlp.2(silu(mlp.0(features(sigma)))))                      (adaLN models)
//!   for each block:
//!     shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaLN(c)
//!     x += gate_msa · attn_out(attention(rope(qkv(LN1(x)·(1+scale_msa)+shift_msa))))
//!     x += gate_mlp · mlp.2(gelu(mlp.0(LN2(x)·(1+scale_mlp)+shift_mlp)))
//!   logits = head(LN_final(x)·(1+scale)+shift)    on the rows that are scored
//!   per-token loss (SUBS / AR / SEDD) and its sum, reduced on the GPU
//!
//! A forward is described by a [`ForwardShape`]; the first call with a shape records a [`Program`]
//! and allocates its buffers (the pool), later calls only upload the inputs, replay the program in
//! one submission, and read back the loss sum (plus whatever was asked to be captured).

use crate::context::GpuContext;
use crate::kernels::{params, Kernels, Program, ProgramBuilder, Slice};
use crate::weights::{Linear, Weights};
use bd3_model::config::TIMESTEP_FEATURES;
use bd3_model::{AttentionMask, Checkpoint, Error, ModelConfig, ModelKind, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Which per-token objective the head feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Objective {
    /// SUBS log-probabilities, loss −w·log p(x0) (BD3LM, MDLM).
    Subs,
    /// Next-token cross-entropy (AR).
    Ar,
    /// SEDD log-score and score entropy.
    Sedd,
}

impl Objective {
    pub fn for_kind(kind: ModelKind) -> Objective {
        match kind {
            ModelKind::Bd3lm | ModelKind::Mdlm => Objective::Subs,
            ModelKind::Ar => Objective::Ar,
            ModelKind::Sedd => Objective::Sedd,
        }
    }
}

/// Everything static about one forward call; a program is recorded once per distinct shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForwardShape {
    pub batch: usize,
    /// Tokens per sequence fed to the network (2L for BD3LM training, L for MDLM/SEDD, L−1 for AR).
    pub seq: usize,
    pub mask: AttentionMask,
    /// Rotary position of token i is i mod pos_period (L for x_t ⊕ x_0, so both halves use 0..L−1).
    pub pos_period: usize,
    /// Per sequence, rows head_row_offset .. head_row_offset + head_rows go through the head and loss.
    pub head_rows: usize,
    pub head_row_offset: usize,
    pub objective: Objective,
    /// Keep intermediate tensors for `verify` (hidden states, logits, log-probs, per-token losses).
    pub capture: bool,
}

impl ForwardShape {
    /// The vectorised BD3LM training input x_t ⊕ x_0 with the block-diffusion mask (spec §3.4).
    pub fn bd3lm_train(batch: usize, length: usize, block_size: usize) -> ForwardShape {
        ForwardShape {
            batch,
            seq: 2 * length,
            mask: AttentionMask::BlockDiff { half_len: length, block_size },
            pos_period: length,
            head_rows: length,
            head_row_offset: 0,
            objective: Objective::Subs,
            capture: false,
        }
    }

    /// A plain length-`seq` pass with every row scored.
    pub fn plain(batch: usize, seq: usize, mask: AttentionMask, objective: Objective) -> ForwardShape {
        ForwardShape { batch, seq, mask, pos_period: seq, head_rows: seq, head_row_offset: 0, objective, capture: false }
    }

    pub fn scored_rows(&self) -> usize {
        self.batch * self.head_rows
    }
}

/// Per-call data of a forward.
pub struct ForwardInput<'a> {
    /// [batch, seq] token ids.
    pub tokens: &'a [u32],
    /// [batch] noise level fed to the conditioning MLP (time-conditioned models only).
    pub sigma: &'a [f64],
    /// [batch, head_rows] the input token at each scored row (x_t: carry-over, SEDD's s[x_t] = 0).
    pub input_ids: &'a [u32],
    /// [batch, head_rows] the token each scored row is scored against (x_0, or the next token for AR).
    pub targets: &'a [u32],
    /// [batch, head_rows] loss weight per row (1/t for SUBS, 1 for AR; unused by SEDD).
    pub weights: &'a [f32],
    /// [batch] t per sequence, SEDD only (gives dσ and r).
    pub sedd_t: &'a [f64],
}

#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// Conditioning vector c, [batch, cond_dim] (adaLN models).
    pub cond: Option<Vec<f32>>,
    /// Residual stream after the embedding and after each block, each [batch·seq, hidden].
    pub hidden: Vec<Vec<f32>>,
    /// Raw logits of the scored rows, [batch·head_rows, vocab].
    pub logits: Vec<f32>,
    /// SUBS/AR log-probabilities or the SEDD log-score, [batch·head_rows, vocab].
    pub log_probs: Vec<f32>,
    pub token_loss: Vec<f32>,
    /// SEDD score entropy per scored row.
    pub entropy: Option<Vec<f32>>,
}

pub struct ForwardOutput {
    /// Σ token_loss over the scored rows (divide by the token count for the loss).
    pub loss_sum: f64,
    pub capture: Option<Capture>,
}

/// Largest logits chunk the head writes at once; the loss kernel consumes it before the next chunk.
const LOGITS_CHUNK_BYTES: u64 = 64 << 20;

/// Where each captured tensor sits in the workspace's output buffer (in floats).
#[derive(Default)]
struct OutputLayout {
    loss_sum: usize,
    cond: Option<(usize, usize)>,
    hidden: Vec<(usize, usize)>,
    logits: (usize, usize),
    log_probs: (usize, usize),
    token_loss: (usize, usize),
    entropy: Option<(usize, usize)>,
    total: usize,
}

impl OutputLayout {
    fn take(&mut self, len: usize) -> (usize, usize) {
        let r = (self.total, len);
        self.total += len;
        r
    }
}

/// The buffers and recorded program of one shape.
struct Workspace {
    program: Program,
    tokens: wgpu::Buffer,
    features: Option<wgpu::Buffer>,
    input_ids: wgpu::Buffer,
    targets: wgpu::Buffer,
    weights: wgpu::Buffer,
    seq_consts: Option<wgpu::Buffer>,
    outputs: wgpu::Buffer,
    staging: wgpu::Buffer,
    layout: OutputLayout,
}

pub struct GpuModel {
    pub cfg: ModelConfig,
    pub ctx: Arc<GpuContext>,
    pub kernels: Kernels,
    pub weights: Weights,
    rope_cos: wgpu::Buffer,
    rope_sin: wgpu::Buffer,
    rope_positions: usize,
    workspaces: HashMap<ForwardShape, Workspace>,
}

impl GpuModel {
    pub async fn load(ctx: Arc<GpuContext>, cfg: ModelConfig, ckpt: &Checkpoint) -> Result<GpuModel> {
        let weights = Weights::upload(&ctx, &cfg, ckpt)?;
        let kernels = Kernels::new(&ctx, cfg.head_dim()).await?;
        let rope_positions = cfg.model_length;
        let (cos, sin) = bd3_model::tables::rotary_tables(&weights.inv_freq, rope_positions);
        let rope_cos = ctx.storage_init("rope_cos", bytemuck::cast_slice(&cos))?;
        let rope_sin = ctx.storage_init("rope_sin", bytemuck::cast_slice(&sin))?;
        ctx.check()?;
        Ok(GpuModel { cfg, ctx, kernels, weights, rope_cos, rope_sin, rope_positions, workspaces: HashMap::new() })
    }

    /// Run one forward; the first call with a new shape records its program.
    pub async fn forward(&mut self, shape: &ForwardShape, input: &ForwardInput<'_>) -> Result<ForwardOutput> {
        self.check_input(shape, input)?;
        if !self.workspaces.contains_key(shape) {
            let ws = self.build(shape)?;
            self.workspaces.insert(*shape, ws);
        }
        let ws = &self.workspaces[shape];
        let ctx = &self.ctx;
        let q = &ctx.queue;
        q.write_buffer(&ws.tokens, 0, bytemuck::cast_slice(input.tokens));
        q.write_buffer(&ws.input_ids, 0, bytemuck::cast_slice(input.input_ids));
        q.write_buffer(&ws.targets, 0, bytemuck::cast_slice(input.targets));
        q.write_buffer(&ws.weights, 0, bytemuck::cast_slice(input.weights));
        if let Some(f) = &ws.features {
            let sigma: Vec<f64> = if self.cfg.time_conditioning { input.sigma.to_vec() } else { vec![0.0; shape.batch] };
            let feats: Vec<f32> = sigma.iter().flat_map(|&s| bd3_model::tables::timestep_features(s)).collect();
            q.write_buffer(f, 0, bytemuck::cast_slice(&feats));
        }
        if let Some(sc) = &ws.seq_consts {
            q.write_buffer(sc, 0, bytemuck::cast_slice(&sedd_constants(input.sedd_t, self.cfg.vocab_size)));
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        ws.program.encode(&mut enc);
        let bytes = (ws.layout.total * 4) as u64;
        enc.copy_buffer_to_buffer(&ws.outputs, 0, &ws.staging, 0, bytes);
        ctx.submit(enc);
        let data = ctx.map_read(&ws.staging, bytes).await?;
        let out: &[f32] = bytemuck::cast_slice(&data);
        let get = |(o, n): (usize, usize)| out[o..o + n].to_vec();
        let l = &ws.layout;
        let capture = shape.capture.then(|| Capture {
            cond: l.cond.map(get),
            hidden: l.hidden.iter().map(|&r| get(r)).collect(),
            logits: get(l.logits),
            log_probs: get(l.log_probs),
            token_loss: get(l.token_loss),
            entropy: l.entropy.map(get),
        });
        Ok(ForwardOutput { loss_sum: out[l.loss_sum] as f64, capture })
    }

    /// The recorded program of a shape (after its first forward), for benchmarks.
    pub fn program(&self, shape: &ForwardShape) -> Option<&Program> {
        self.workspaces.get(shape).map(|w| &w.program)
    }

    /// Check sizes and ids before anything reaches the GPU.
    fn check_input(&self, s: &ForwardShape, i: &ForwardInput<'_>) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if s.batch == 0 || s.seq == 0 || s.head_rows == 0 {
            return bad("empty batch or sequence".into());
        }
        if s.head_row_offset + s.head_rows > s.seq {
            return bad(format!("scored rows {}..{} exceed the sequence length {}", s.head_row_offset, s.head_row_offset + s.head_rows, s.seq));
        }
        let positions = s.seq.min(s.pos_period);
        if positions > self.rope_positions {
            return bad(format!("a sequence of {positions} positions exceeds the model's context of {} tokens", self.rope_positions));
        }
        let n = s.batch * s.head_rows;
        if i.tokens.len() != s.batch * s.seq || i.input_ids.len() != n || i.targets.len() != n || i.weights.len() != n {
            return bad("forward inputs do not match the shape".into());
        }
        if self.cfg.time_conditioning && i.sigma.len() != s.batch {
            return bad(format!("a time-conditioned model needs one sigma per sequence ({} given for batch {})", i.sigma.len(), s.batch));
        }
        if s.objective == Objective::Sedd && i.sedd_t.len() != s.batch {
            return bad("SEDD needs one t per sequence".into());
        }
        let v = self.cfg.vocab_size as u32;
        if let Some(t) = i.tokens.iter().chain(i.input_ids).chain(i.targets).find(|&&t| t >= v) {
            return bad(format!("token id {t} is outside the vocabulary of {v}"));
        }
        Ok(())
    }

    /// Allocate the buffers of one shape and record its program.
    fn build(&self, s: &ForwardShape) -> Result<Workspace> {
        let ctx = &*self.ctx;
        let cfg = &self.cfg;
        let k = &self.kernels;
        let w = &self.weights;
        let (b, d, v) = (s.batch, cfg.hidden_dim, cfg.vocab_size);
        let rows = b * s.seq;
        let scored = s.scored_rows();
        for (what, bytes) in [("the qkv activations", rows * 3 * d * 4), ("the MLP activations", rows * 4 * d * 4)] {
            if bytes as u64 > ctx.max_binding() {
                return Err(Error::Invalid(format!(
                    "batch {b} × {} tokens needs {} MiB for {what}, over this adapter's binding limit of {} MiB; lower the batch",
                    s.seq, bytes >> 20, ctx.max_binding() >> 20
                )));
            }
        }
        let f32s = |label: &str, n: usize| ctx.storage(label, (n * 4) as u64);
        let x = f32s("residual", rows * d)?;
        let h = f32s("normed", rows * d)?;
        let qkv = f32s("qkv", rows * 3 * d)?;
        let att = f32s("attention", rows * d)?;
        let mlp = f32s("mlp", rows * 4 * d)?;
        let tokens = f32s("tokens", rows)?;
        let input_ids = f32s("input_ids", scored)?;
        let targets = f32s("targets", scored)?;
        let weights_buf = f32s("weights", scored)?;
        let token_loss = f32s("token_loss", scored)?;
        let loss_sum = f32s("loss_sum", 1)?;
        let final_normed = f32s("final_normed", scored * d)?;
        let chunk_rows = ((LOGITS_CHUNK_BYTES.min(ctx.split_threshold()) / (v as u64 * 4)) as usize).clamp(1, scored);
        let logits = f32s("logits_chunk", chunk_rows * v)?;
        let log_probs = if s.capture { Some(f32s("log_probs_chunk", chunk_rows * v)?) } else { None };
        let sedd = s.objective == Objective::Sedd;
        let seq_consts = if sedd { Some(f32s("sedd_constants", b * 4)?) } else { None };
        let entropy = if sedd { Some(f32s("entropy", scored)?) } else { None };

        let mut layout = OutputLayout::default();
        layout.loss_sum = layout.take(1).0;
        let mut pb = ProgramBuilder::new(ctx);

        // Conditioning: c = silu(mlp.2(silu(mlp.0(features)))), then each block's modulation vectors.
        let mut features = None;
        let mut mods = Vec::new();
        let mut final_mod = None;
        if let Some((mlp0, mlp2)) = &w.sigma_map {
            let c_dim = cfg.cond_dim;
            let feats = f32s("sigma_features", b * TIMESTEP_FEATURES)?;
            let c1 = f32s("cond_hidden", b * c_dim)?;
            let c = f32s("cond", b * c_dim)?;
            linear(&mut pb, k, mlp0, &feats, &c1, b, params::Epilogue::Silu, None)?;
            linear(&mut pb, k, mlp2, &c1, &c, b, params::Epilogue::Silu, None)?;
            for blk in &w.blocks {
                let m = f32s("modulation", b * 6 * d)?;
                linear(&mut pb, k, blk.adaln.as_ref().unwrap(), &c, &m, b, params::Epilogue::Store, None)?;
                mods.push(m);
            }
            let fm = f32s("final_modulation", b * 2 * d)?;
            linear(&mut pb, k, w.final_adaln.as_ref().unwrap(), &c, &fm, b, params::Epilogue::Store, None)?;
            final_mod = Some(fm);
            if s.capture {
                let r = layout.take(b * c_dim);
                layout.cond = Some(r);
                pb.copy_to_output(&c, r.0, r.1);
            }
            features = Some(feats);
        }

        // x = E[tokens], one dispatch per row range of the table.
        for part in &w.vocab_embed.parts {
            let groups = pb.fold(((rows * d) as u64).div_ceil(256))?;
            pb.dispatch(
                "embedding",
                &k.embedding,
                &params::embedding(rows as u32, d as u32, part.row_start as u32, part.rows as u32),
                vec![(&tokens).into(), (&part.buffer).into(), (&x).into()],
                groups,
            );
        }
        let mut hidden_copies = Vec::new();
        if s.capture {
            hidden_copies.push(layout.take(rows * d));
            pb.copy_to_output(&x, hidden_copies.last().unwrap().0, rows * d);
        }

        let ln_rows = |rows_per_seq: usize, n_rows: usize, offset: usize, m: Option<(u32, u32, u32)>| params::LayerNorm {
            n_rows: n_rows as u32,
            dim: d as u32,
            in_rows_per_seq: s.seq as u32,
            out_rows_per_seq: rows_per_seq as u32,
            in_row_offset: offset as u32,
            modulation: m,
        };
        for (i, blk) in w.blocks.iter().enumerate() {
            let modv = mods.get(i);
            let md = |shift: usize, scale: usize| modv.map(|_| ((shift * d) as u32, (scale * d) as u32, (6 * d) as u32));
            let gate = |chunk: usize| modv.map(|m| (m, chunk * d, 6 * d));
            layernorm(&mut pb, k, &x, &blk.norm1, modv, &h, ln_rows(s.seq, rows, 0, md(0, 1)))?;
            linear(&mut pb, k, &blk.attn_qkv, &h, &qkv, rows, params::Epilogue::Store, None)?;
            let ap = params::Attention {
                n_q: s.seq as u32,
                n_kv: s.seq as u32,
                n_heads: cfg.n_heads as u32,
                q_seq_stride: s.seq as u32,
                q_row_offset: 0,
                kv_seq_stride: s.seq as u32,
                q_index_offset: 0,
                mask: s.mask,
                pos_period: s.pos_period as u32,
                head_dim: cfg.head_dim() as u32,
            };
            pb.dispatch(
                "attention",
                &k.attention,
                &ap.words(),
                vec![(&qkv).into(), (&qkv).into(), (&self.rope_cos).into(), (&self.rope_sin).into(), (&att).into()],
                ap.groups(b as u32),
            );
            let residual = if modv.is_some() { params::Epilogue::GatedResidual } else { params::Epilogue::Residual };
            linear(&mut pb, k, &blk.attn_out, &att, &x, rows, residual, gate(2).map(|(m, o, st)| (m, o, st, s.seq)))?;
            layernorm(&mut pb, k, &x, &blk.norm2, modv, &h, ln_rows(s.seq, rows, 0, md(3, 4)))?;
            linear(&mut pb, k, &blk.mlp_up, &h, &mlp, rows, params::Epilogue::Gelu, None)?;
            linear(&mut pb, k, &blk.mlp_down, &mlp, &x, rows, residual, gate(5).map(|(m, o, st)| (m, o, st, s.seq)))?;
            if s.capture {
                hidden_copies.push(layout.take(rows * d));
                pb.copy_to_output(&x, hidden_copies.last().unwrap().0, rows * d);
            }
        }
        layout.hidden = hidden_copies;

        // Final layer on the scored rows only, then head + loss chunk by chunk.
        let fmd = final_mod.as_ref().map(|_| (0u32, d as u32, (2 * d) as u32));
        layernorm(&mut pb, k, &x, &w.norm_final, final_mod.as_ref(), &final_normed, ln_rows(s.head_rows, scored, s.head_row_offset, fmd))?;
        if s.capture {
            layout.logits = layout.take(scored * v);
            layout.log_probs = layout.take(scored * v);
        }
        let mut start = 0;
        while start < scored {
            let n = chunk_rows.min(scored - start);
            for part in &w.head.weight.parts {
                let mp = params::Matmul {
                    a_offset: (start * d) as u32,
                    ldc: v as u32,
                    out_col_offset: part.row_start as u32,
                    has_bias: true,
                    bias_offset: part.row_start as u32,
                    ..params::Matmul::plain(n as u32, part.rows as u32, d as u32)
                };
                let bias = w.head.bias.as_ref().unwrap();
                pb.dispatch(
                    "head",
                    &k.matmul,
                    &mp.words(),
                    vec![(&final_normed).into(), (&part.buffer).into(), bias.into(), (&k.dummy).into(), (&logits).into()],
                    mp.groups(),
                );
                pb.annotate_flops(2 * (n * part.rows * d) as u64);
            }
            let lp = log_probs.as_ref().unwrap_or(&k.dummy);
            let groups = pb.fold(n as u64)?;
            if sedd {
                pb.dispatch(
                    "sedd_loss",
                    &k.sedd_loss,
                    &params::sedd_loss(n as u32, v as u32, cfg.mask_id(), s.capture, start as u32, s.head_rows as u32),
                    vec![
                        (&logits).into(), (&input_ids).into(), (&targets).into(), seq_consts.as_ref().unwrap().into(),
                        lp.into(), entropy.as_ref().unwrap().into(), (&token_loss).into(),
                    ],
                    groups,
                );
            } else {
                pb.dispatch(
                    "token_loss",
                    &k.token_loss,
                    &params::token_loss(n as u32, v as u32, cfg.mask_id(), s.objective == Objective::Ar, s.capture, start as u32),
                    vec![(&logits).into(), (&input_ids).into(), (&targets).into(), (&weights_buf).into(), lp.into(), (&token_loss).into()],
                    groups,
                );
            }
            if s.capture {
                pb.copy_to_output(&logits, layout.logits.0 + start * v, n * v);
                pb.copy_to_output(lp, layout.log_probs.0 + start * v, n * v);
            }
            start += n;
        }
        pb.dispatch("reduce_sum", &k.reduce_sum, &params::reduce_sum(scored as u32, 0), vec![(&token_loss).into(), (&loss_sum).into()], [1, 1, 1]);
        pb.copy_to_output(&loss_sum, layout.loss_sum, 1);
        if s.capture {
            layout.token_loss = layout.take(scored);
            pb.copy_to_output(&token_loss, layout.token_loss.0, scored);
            if let Some(e) = &entropy {
                let r = layout.take(scored);
                layout.entropy = Some(r);
                pb.copy_to_output(e, r.0, scored);
            }
        }

        let outputs = f32s("outputs", layout.total)?;
        let program = pb.finish_with_outputs(&outputs)?;
        let staging = ctx.buffer("outputs staging", (layout.total * 4) as u64, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        Ok(Workspace { program, tokens, features, input_ids, targets, weights: weights_buf, seq_consts, outputs, staging, layout })
    }
}

/// y = epilogue(x · Wᵀ + b), one dispatch per row range of W. `gate` is (modulation buffer, float
/// offset of the gate chunk, row stride, rows per sequence) for the gated residual.
#[allow(clippy::too_many_arguments)]
fn linear(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    lin: &Linear,
    a: &wgpu::Buffer,
    out: &wgpu::Buffer,
    m: usize,
    epilogue: params::Epilogue,
    gate: Option<(&wgpu::Buffer, usize, usize, usize)>,
) -> Result<()> {
    let (n_total, kk) = (lin.out_features(), lin.in_features());
    for part in &lin.weight.parts {
        let mut mp = params::Matmul {
            ldc: n_total as u32,
            out_col_offset: part.row_start as u32,
            has_bias: lin.bias.is_some(),
            bias_offset: part.row_start as u32,
            epilogue,
            ..params::Matmul::plain(m as u32, part.rows as u32, kk as u32)
        };
        let gate_buf = match gate {
            Some((g, offset, stride, rows_per_seq)) => {
                mp.gate_offset = (offset + part.row_start) as u32;
                mp.gate_stride = stride as u32;
                mp.rows_per_seq = rows_per_seq as u32;
                g
            }
            None => &k.dummy,
        };
        let bias: Slice = lin.bias.as_ref().unwrap_or(&k.dummy).into();
        pb.dispatch("matmul", &k.matmul, &mp.words(), vec![a.into(), (&part.buffer).into(), bias, gate_buf.into(), out.into()], mp.groups());
        pb.annotate_flops(2 * (m * part.rows * kk) as u64);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn layernorm(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    modv: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
    p: params::LayerNorm,
) -> Result<()> {
    let groups = pb.fold(p.n_rows as u64)?;
    pb.dispatch("layernorm", &k.layernorm, &p.words(), vec![x.into(), weight.into(), modv.unwrap_or(&k.dummy).into(), out.into()], groups);
    Ok(())
}

/// Per-sequence constants of the SEDD head: (log(expm1 σ) + log(V−1), r, r(log r − 1), dσ), f64 → f32.
fn sedd_constants(t: &[f64], vocab: usize) -> Vec<f32> {
    use bd3_model::schedule::{esigm1_log, sedd_dsigma, sigma_from_p};
    t.iter()
        .flat_map(|&t| {
            let sigma = sigma_from_p(t);
            let r = 1.0 / sigma.exp_m1();
            [esigm1_log(sigma) + ((vocab - 1) as f64).ln(), r, r * (r.ln() - 1.0), sedd_dsigma(t)].map(|x| x as f32)
        })
        .collect()
}
