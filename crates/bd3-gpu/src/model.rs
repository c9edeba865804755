//! The DiT backbone of BD3-LM on the GPU, read top to bottom (official `models/dit.py:DIT.forward`):
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
use crate::layers::{self, BlockEnd, BlockIo, Conditioning};
use crate::ops::attention::Attention;
use crate::ops::layernorm::LayerNorm;
use crate::ops::{self, Kernels};
use crate::program::{Buf, PlannedDispatch, Program, ProgramBuilder};
use crate::weights::{WeightFormat, Weights};
use bd3_model::{AttentionMask, Checkpoint, Error, ModelConfig, Result};
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
    /// Read back the per-token losses (evaluation statistics such as the clip search's per-block variance).
    pub per_token: bool,
}

impl ForwardShape {
    /// The vectorised BD3LM training input x_t ⊕ x_0 with the block-diffusion mask (official `diffusion.py:_forward_pass_diffusion`).
    pub fn bd3lm_train(batch: usize, length: usize, block_size: usize) -> ForwardShape {
        ForwardShape {
            batch,
            seq: 2 * length,
            mask: AttentionMask::BlockDiff {
                half_len: length,
                block_size,
            },
            pos_period: length,
            head_rows: length,
            head_row_offset: 0,
            objective: Objective::Subs,
            capture: false,
            per_token: false,
        }
    }

    /// A plain length-`seq` pass with every row scored.
    pub fn plain(
        batch: usize,
        seq: usize,
        mask: AttentionMask,
        objective: Objective,
    ) -> ForwardShape {
        ForwardShape {
            batch,
            seq,
            mask,
            pos_period: seq,
            head_rows: seq,
            head_row_offset: 0,
            objective,
            capture: false,
            per_token: false,
        }
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
    /// Per scored row, when the shape asked for them (`per_token`) or captured everything.
    pub token_loss: Option<Vec<f32>>,
    pub capture: Option<Capture>,
}

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
    tokens: Buf,
    features: Option<Buf>,
    input_ids: Buf,
    targets: Buf,
    weights: Buf,
    seq_consts: Option<Buf>,
    outputs: Buf,
    staging: Buf,
    layout: OutputLayout,
}

pub struct GpuModel {
    pub cfg: ModelConfig,
    pub ctx: Arc<GpuContext>,
    pub kernels: Kernels,
    pub weights: Weights,
    pub(crate) rope_cos: Buf,
    pub(crate) rope_sin: Buf,
    pub(crate) rope_positions: usize,
    workspaces: HashMap<ForwardShape, Workspace>,
    pub(crate) steps: HashMap<crate::model_call::CallShape, crate::model_call::CallWorkspace>,
    pub(crate) caches: HashMap<(usize, usize), crate::model_call::KvCache>,
    /// Per batch size: the conditioning of a model without time conditioning, shared by the steps.
    pub(crate) fixed_conditioning: HashMap<usize, crate::model_call::FixedConditioning>,
    /// On a planning model: the dispatches of every sampling step taken, one list per model call.
    pub call_plans: Vec<Vec<PlannedDispatch>>,
    /// Whether first-hitting sampling submits a whole block's calls at once (`call_block`); on by
    /// default, off to compare with one submission per call.
    pub block_recording: bool,
}

impl GpuModel {
    pub async fn load(
        ctx: Arc<GpuContext>,
        cfg: ModelConfig,
        ckpt: &Checkpoint,
    ) -> Result<GpuModel> {
        Self::load_as(ctx, cfg, ckpt, WeightFormat::F32).await
    }

    /// [`GpuModel::load`] with the large matrices stored as `format` (f16: sampling only; training
    /// and `verify` use f32).
    pub async fn load_as(
        ctx: Arc<GpuContext>,
        cfg: ModelConfig,
        ckpt: &Checkpoint,
        format: WeightFormat,
    ) -> Result<GpuModel> {
        let weights = Weights::upload_as(&ctx, &cfg, ckpt, format)?;
        Self::with_weights(ctx, cfg, weights).await
    }

    /// A model whose weights arrive one tensor at a time ([`GpuModel::write_tensor`]): the browser
    /// streams a checkpoint this way so it never holds the whole file in memory.
    pub async fn allocate(ctx: Arc<GpuContext>, cfg: ModelConfig) -> Result<GpuModel> {
        Self::allocate_as(ctx, cfg, WeightFormat::F32).await
    }

    /// [`GpuModel::allocate`] with the large matrices stored as `format`.
    pub async fn allocate_as(
        ctx: Arc<GpuContext>,
        cfg: ModelConfig,
        format: WeightFormat,
    ) -> Result<GpuModel> {
        let weights = Weights::allocate_as(&ctx, &cfg, format)?;
        Self::with_weights(ctx, cfg, weights).await
    }

    /// Write one tensor (canonical name); the rotary tables follow `rotary_emb.inv_freq`.
    pub fn write_tensor(&mut self, name: &str, data: &[f32]) -> Result<()> {
        if !self.weights.write(&self.ctx, name, data)? {
            return Err(Error::Invalid(format!(
                "tensor `{name}` is not part of this model"
            )));
        }
        if name == "rotary_emb.inv_freq" {
            let (cos, sin) =
                bd3_model::tables::rotary_tables(&self.weights.inv_freq, self.rope_positions);
            self.ctx
                .queue()
                .write_buffer(&self.rope_cos, 0, bytemuck::cast_slice(&cos));
            self.ctx
                .queue()
                .write_buffer(&self.rope_sin, 0, bytemuck::cast_slice(&sin));
        }
        Ok(())
    }

    async fn with_weights(
        ctx: Arc<GpuContext>,
        cfg: ModelConfig,
        weights: Weights,
    ) -> Result<GpuModel> {
        let kernels = Kernels::for_weights(&ctx, cfg.head_dim(), weights.format()).await?;
        let rope_positions = cfg.model_length;
        let (cos, sin) = bd3_model::tables::rotary_tables(&weights.inv_freq, rope_positions);
        let rope_cos = ctx.storage_init("rope_cos", bytemuck::cast_slice(&cos))?;
        let rope_sin = ctx.storage_init("rope_sin", bytemuck::cast_slice(&sin))?;
        ctx.check()?;
        Ok(GpuModel {
            cfg,
            ctx,
            kernels,
            weights,
            rope_cos,
            rope_sin,
            rope_positions,
            workspaces: HashMap::new(),
            steps: HashMap::new(),
            caches: HashMap::new(),
            fixed_conditioning: HashMap::new(),
            call_plans: Vec::new(),
            block_recording: true,
        })
    }

    /// Run the products in `precision` ([`ops::matmul::Precision`]; mixed needs cooperative matrices).
    /// Programs recorded so far are dropped so the next call records with the new kernels.
    pub async fn set_precision(&mut self, precision: ops::matmul::Precision) -> Result<()> {
        self.kernels.set_precision(&self.ctx, precision).await?;
        self.workspaces.clear();
        self.steps.clear();
        Ok(())
    }

    /// Run one forward; the first call with a new shape records its program.
    pub async fn forward(
        &mut self,
        shape: &ForwardShape,
        input: &ForwardInput<'_>,
    ) -> Result<ForwardOutput> {
        self.check_forward_input(shape, input)?;
        self.record_forward(shape)?;
        let ws = &self.workspaces[shape];
        let ctx = &self.ctx;
        let q = ctx.queue();
        q.write_buffer(&ws.tokens, 0, bytemuck::cast_slice(input.tokens));
        q.write_buffer(&ws.input_ids, 0, bytemuck::cast_slice(input.input_ids));
        q.write_buffer(&ws.targets, 0, bytemuck::cast_slice(input.targets));
        q.write_buffer(&ws.weights, 0, bytemuck::cast_slice(input.weights));
        if let Some(f) = &ws.features {
            let sigma: Vec<f64> = if self.cfg.time_conditioning {
                input.sigma.to_vec()
            } else {
                vec![0.0; shape.batch]
            };
            let feats: Vec<f32> = sigma
                .iter()
                .flat_map(|&s| bd3_model::tables::timestep_features(s))
                .collect();
            q.write_buffer(f, 0, bytemuck::cast_slice(&feats));
        }
        if let Some(sc) = &ws.seq_consts {
            q.write_buffer(
                sc,
                0,
                bytemuck::cast_slice(&sedd_constants(input.sedd_t, self.cfg.vocab_size)),
            );
        }
        let mut enc = ctx.device().create_command_encoder(&Default::default());
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
        let token_loss = (shape.per_token || shape.capture).then(|| get(l.token_loss));
        Ok(ForwardOutput {
            loss_sum: out[l.loss_sum] as f64,
            token_loss,
            capture,
        })
    }

    /// The recorded program of a shape (after its first forward), for benchmarks.
    pub fn program(&self, shape: &ForwardShape) -> Option<&Program> {
        self.workspaces.get(shape).map(|w| &w.program)
    }

    /// Allocate the workspace of a shape and record its program, once; on a planning model this
    /// is all a forward does.
    pub fn record_forward(&mut self, shape: &ForwardShape) -> Result<&Program> {
        if !self.workspaces.contains_key(shape) {
            let ws = self.build(shape)?;
            self.workspaces.insert(*shape, ws);
        }
        Ok(&self.workspaces[shape].program)
    }

    /// The dispatches of a forward of `shape` (on a planning model: without a GPU).
    pub fn plan_forward(&mut self, shape: &ForwardShape) -> Result<Vec<PlannedDispatch>> {
        Ok(self.record_forward(shape)?.plan.clone())
    }

    /// Check sizes and ids before anything reaches the GPU.
    pub(crate) fn check_forward_input(&self, s: &ForwardShape, i: &ForwardInput<'_>) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if s.batch == 0 || s.seq == 0 || s.head_rows == 0 {
            return bad("empty batch or sequence".into());
        }
        if s.head_row_offset + s.head_rows > s.seq {
            return bad(format!(
                "scored rows {}..{} exceed the sequence length {}",
                s.head_row_offset,
                s.head_row_offset + s.head_rows,
                s.seq
            ));
        }
        let positions = s.seq.min(s.pos_period);
        if positions > self.rope_positions {
            return bad(format!(
                "a sequence of {positions} positions exceeds the model's context of {} tokens",
                self.rope_positions
            ));
        }
        let n = s.batch * s.head_rows;
        if i.tokens.len() != s.batch * s.seq
            || i.input_ids.len() != n
            || i.targets.len() != n
            || i.weights.len() != n
        {
            return bad("forward inputs do not match the shape".into());
        }
        if self.cfg.time_conditioning && i.sigma.len() != s.batch {
            return bad(format!(
                "a time-conditioned model needs one sigma per sequence ({} given for batch {})",
                i.sigma.len(),
                s.batch
            ));
        }
        if s.objective == Objective::Sedd && i.sedd_t.len() != s.batch {
            return bad("SEDD needs one t per sequence".into());
        }
        let v = self.cfg.vocab_size as u32;
        if let Some(t) = i
            .tokens
            .iter()
            .chain(i.input_ids)
            .chain(i.targets)
            .find(|&&t| t >= v)
        {
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
        check_activation_size(ctx, b, s.seq, d)?;
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
        let chunk_rows = layers::logits_chunk_rows(ctx, v, scored);
        let logits = f32s("logits_chunk", chunk_rows * v)?;
        let log_probs = if s.capture {
            Some(f32s("log_probs_chunk", chunk_rows * v)?)
        } else {
            None
        };
        let sedd = s.objective == Objective::Sedd;
        let seq_consts = if sedd {
            Some(f32s("sedd_constants", b * 4)?)
        } else {
            None
        };
        let entropy = if sedd {
            Some(f32s("entropy", scored)?)
        } else {
            None
        };
        let cond = Conditioning::alloc(ctx, cfg, b, false)?;

        let mut layout = OutputLayout::default();
        layout.loss_sum = layout.take(1).0;
        let mut pb = ProgramBuilder::new(ctx);
        if let Some(c) = &cond {
            c.record(&mut pb, k, w, b)?;
            if s.capture {
                let r = layout.take(b * cfg.cond_dim);
                layout.cond = Some(r);
                pb.copy_to_output(&c.c, r.0, r.1);
            }
        }
        layers::embedding(&mut pb, k, w, &tokens, &x, rows)?;
        let capture_hidden = |pb: &mut ProgramBuilder, layout: &mut OutputLayout| {
            if s.capture {
                let r = layout.take(rows * d);
                layout.hidden.push(r);
                pb.copy_to_output(&x, r.0, r.1);
            }
        };
        capture_hidden(&mut pb, &mut layout);
        let attention = Attention::self_attention(
            b as u32,
            s.seq as u32,
            cfg.n_heads as u32,
            cfg.head_dim() as u32,
            s.mask,
            s.pos_period as u32,
        );
        for (i, blk) in w.blocks.iter().enumerate() {
            let modulation = cond.as_ref().map(|c| &c.mods[i]);
            let io = BlockIo {
                x: &x,
                h: &h,
                att: &att,
                mlp: &mlp,
                qkv: &qkv,
                qkv_rows: None,
                modulation,
                rope: (&self.rope_cos, &self.rope_sin),
                attention_partials: None,
                embed: None,
            };
            layers::block(&mut pb, k, blk, &io, &attention, None, BlockEnd::Full)?;
            capture_hidden(&mut pb, &mut layout);
        }

        // Final layer on the scored rows only, then head + loss chunk by chunk.
        let final_mod = cond.as_ref().map(|c| &c.final_mod);
        let ln = LayerNorm {
            n_rows: scored as u32,
            dim: d as u32,
            in_rows_per_seq: s.seq as u32,
            out_rows_per_seq: s.head_rows as u32,
            in_row_offset: s.head_row_offset as u32,
            modulation: final_mod.map(|_| layers::final_modulation(d)),
        };
        ops::layernorm::record(
            &mut pb,
            k,
            &ln,
            ops::layernorm::Bindings {
                x: &x,
                w: &w.norm_final,
                modv: final_mod,
                out: &final_normed,
                row_index: None,
            },
        )?;
        if s.capture {
            layout.logits = layout.take(scored * v);
            layout.log_probs = layout.take(scored * v);
        }
        let (logits_at, log_probs_at) = (layout.logits.0, layout.log_probs.0);
        layers::head_chunks(
            &mut pb,
            k,
            w,
            &final_normed,
            None,
            &logits,
            (scored, chunk_rows),
            |pb, start, n| {
                let chunk = ops::token_loss::LossChunk {
                    n_rows: n as u32,
                    vocab: v as u32,
                    mask_id: cfg.mask_id(),
                    row_offset: start as u32,
                    grad_scale: 0.0,
                };
                if sedd {
                    let b = ops::sedd_loss::Bindings {
                        logits: &logits,
                        input_ids: &input_ids,
                        targets: &targets,
                        seq_consts: seq_consts.as_ref().expect("SEDD constants"),
                        log_score: log_probs.as_ref(),
                        entropy: entropy.as_ref(),
                        token_loss: &token_loss,
                        dlogits: None,
                    };
                    ops::sedd_loss::record(pb, k, &chunk, s.head_rows as u32, b)?;
                } else {
                    let head = if s.objective == Objective::Ar {
                        ops::token_loss::Head::Ar
                    } else {
                        ops::token_loss::Head::Subs
                    };
                    let b = ops::token_loss::Bindings {
                        logits: &logits,
                        input_ids: &input_ids,
                        targets: &targets,
                        weights: &weights_buf,
                        log_probs: log_probs.as_ref(),
                        token_loss: &token_loss,
                        dlogits: None,
                    };
                    ops::token_loss::record(pb, k, head, &chunk, b)?;
                }
                if let Some(lp) = &log_probs {
                    pb.copy_to_output(&logits, logits_at + start * v, n * v);
                    pb.copy_to_output(lp, log_probs_at + start * v, n * v);
                }
                Ok(())
            },
        )?;
        let sum = ops::reduce_sum::Bindings {
            x: &token_loss,
            out: &loss_sum,
        };
        ops::reduce_sum::record(
            &mut pb,
            k,
            "reduce_sum",
            scored as u32,
            0,
            ops::reduce_sum::Reduction::Sum,
            sum,
        );
        pb.copy_to_output(&loss_sum, layout.loss_sum, 1);
        if s.capture || s.per_token {
            layout.token_loss = layout.take(scored);
            pb.copy_to_output(&token_loss, layout.token_loss.0, scored);
        }
        if s.capture {
            if let Some(e) = &entropy {
                let r = layout.take(scored);
                layout.entropy = Some(r);
                pb.copy_to_output(e, r.0, scored);
            }
        }

        let outputs = f32s("outputs", layout.total)?;
        let program = pb.finish_with_outputs(&outputs)?;
        let staging = ctx.buffer(
            "outputs staging",
            (layout.total * 4) as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let features = cond.map(|c| c.features);
        Ok(Workspace {
            program,
            tokens,
            features,
            input_ids,
            targets,
            weights: weights_buf,
            seq_consts,
            outputs,
            staging,
            layout,
        })
    }
}

/// Activations must each fit one storage binding; say so in words when a batch is too large.
pub(crate) fn check_activation_size(
    ctx: &GpuContext,
    batch: usize,
    seq: usize,
    d: usize,
) -> Result<()> {
    for (what, bytes) in [
        ("the qkv activations", batch * seq * 3 * d * 4),
        ("the MLP activations", batch * seq * 4 * d * 4),
    ] {
        if bytes as u64 > ctx.max_binding() {
            return Err(Error::Invalid(format!(
                "batch {batch} × {seq} tokens needs {} MiB for {what}, over this adapter's binding limit of {} MiB; lower the batch",
                bytes >> 20,
                ctx.max_binding() >> 20
            )));
        }
    }
    Ok(())
}

/// Per-sequence constants of the SEDD head: (log(expm1 σ) + log(V−1), r, r(log r − 1), dσ), f64 → f32.
pub(crate) fn sedd_constants(t: &[f64], vocab: usize) -> Vec<f32> {
    use bd3_model::schedule::{esigm1_log, sedd_dsigma, sigma_from_p};
    t.iter()
        .flat_map(|&t| {
            let sigma = sigma_from_p(t);
            let r = 1.0 / sigma.exp_m1();
            [
                esigm1_log(sigma) + ((vocab - 1) as f64).ln(),
                r,
                r * (r.ln() - 1.0),
                sedd_dsigma(t),
            ]
            .map(|x| x as f32)
        })
        .collect()
}
