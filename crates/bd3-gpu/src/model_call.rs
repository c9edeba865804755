//! The samplers' model calls over a KV cache (official `modeling_bd3lm.py:DDiTBlock.get_qkv` for the
//! cache, `diffusion.py:_semi_ar_sampler` / `_ddpm_caching_update` for the block loop; paper Alg. 2).
//! ("Step" is left to the samplers' denoising steps and the trainer's optimizer steps.)
//!
//! Each layer's cache holds the pre-rotary q|k|v rows of every committed token, [batch, cache_len, 3·D].
//! A call runs the tokens of the current block (or the single newest token of an AR model, or a whole
//! window) through the network: their q|k|v go into the cache at the block's rows, attention runs over
//! all cached rows, and the head sees only the rows the sampler picked; the sample kernel draws the
//! tokens on the GPU and only those token ids come back. A commit call stores a finished block's clean
//! q|k|v and stops there. A confidence call draws at every row and then, still in the same submission,
//! keeps only the most confident draws (`shaders/confidence.wgsl`): the ids that come back already say
//! which rows were revealed (the others are the mask), so neither logits nor probabilities are read.
//!
//! Past `cache_len` tokens the cache is a ring: the window keeps the newest `cache_len` tokens and
//! rotary positions are re-based to the window start, as the official sliding cache does.
//!
//! The program of a shape is recorded once; the rows it touches move with the block, so each call
//! re-records only the kernel parameters (`ProgramBuilder::params_only`) and overwrites them: no buffer,
//! bind group or pipeline is created after the first call, and a call is one submission.
//! First-hitting blocks go further (`GpuModel::call_block`): one recorded instance of the call per row
//! of the block, all submitted at once, each drawn token copied on the GPU into the block before the
//! next instance reads it, and the ids read back once per block.

use crate::layers::{self, BlockEnd, BlockIo, Conditioning};
use crate::model::{check_activation_size, GpuModel};
use crate::ops;
use crate::ops::attention::Attention;
use crate::ops::confidence::Reveal;
use crate::ops::layernorm::LayerNorm;
use crate::ops::matmul::OutRows;
use crate::ops::sample::{Sample, SampleMode};
use crate::program::{Buf, Program, ProgramBuilder};
use bd3_model::{AttentionMask, Error, ModelConfig, Result};

/// Everything static about a model call; one program per distinct shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallShape {
    pub batch: usize,
    /// Tokens per sequence this call processes (the block, 1 for AR, the whole window).
    pub rows: usize,
    /// Rows of the KV cache per sequence (the model length).
    pub cache_len: usize,
    pub action: CallAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallAction {
    /// Store the tokens' q|k|v in the cache; nothing else (a finished block is committed).
    Commit,
    /// Score `head_rows` picked rows per sequence and draw one token for each. With `verify`, the
    /// logits of those rows come back too and the race uses supplied exponentials.
    Sample {
        head_rows: usize,
        mode: SampleMode,
        verify: bool,
    },
}

/// Per-call data of a model call.
pub struct CallInputs<'a> {
    /// [batch, rows] token ids.
    pub tokens: &'a [u32],
    /// Logical position of the first row (positions beyond cache_len wrap around the ring).
    pub cache_idx: usize,
    /// [batch] σ for time-conditioned models.
    pub sigma: &'a [f64],
    /// [batch, head_rows] which of the rows (0..rows) to score and sample.
    pub picked: &'a [u32],
    pub top_p: f64,
    /// DDPM: probability that a masked token stays masked, (t − dt)/t.
    pub mask_prob: f64,
    /// SEDD: dσ per sequence of this call (σ(t) for the final denoiser).
    pub dsigma: &'a [f64],
    pub seed: u64,
    /// Counter of model calls, part of the random stream's key.
    pub call: u32,
    /// [batch, head_rows] random stream per sampled row (sequence, position).
    pub streams: &'a [u32],
    /// [batch·head_rows, vocab] supplied exponentials (verification only).
    pub draws: Option<&'a [f32]>,
    /// Confidence steps: which draws to keep ([`SampleMode::Confidence`] needs it; the picked rows
    /// are ranked in the order given, so ties go to the earlier picked row). None otherwise.
    pub reveal: Option<Reveal>,
}

impl CallInputs<'static> {
    /// What a call's program is first recorded with: every call overwrites the parameters.
    fn for_recording() -> CallInputs<'static> {
        CallInputs {
            tokens: &[],
            cache_idx: 0,
            sigma: &[],
            picked: &[],
            top_p: 1.0,
            mask_prob: 0.0,
            dsigma: &[],
            seed: 0,
            call: 0,
            streams: &[],
            draws: None,
            reveal: None,
        }
    }
}

pub struct CallOutput {
    /// [batch, head_rows] drawn tokens (empty for a commit).
    pub tokens: Vec<u32>,
    /// [batch·head_rows, vocab] logits, for verification.
    pub logits: Option<Vec<f32>>,
}

/// The adaLN conditioning of a model without time conditioning, for one batch size: c does not
/// depend on σ, so it is computed once per generation (in the first call's submission) and every call
/// shape reads the same modulation buffers.
pub struct FixedConditioning {
    cond: Conditioning,
    program: Program,
    /// Computed since the generation began (the weights cannot have changed since).
    fresh: bool,
}

/// One cache buffer per layer.
pub struct KvCache {
    pub layers: Vec<Buf>,
}

pub struct CallWorkspace {
    program: Program,
    tokens: Buf,
    features: Option<Buf>,
    picked: Buf,
    row_input: Buf,
    streams: Buf,
    seq_consts: Buf,
    draws: Option<Buf>,
    outputs: Buf,
    staging: Buf,
    out_floats: usize,
    buffers: StepBuffers,
    /// One recorded instance per call of a block submitted at once (built on the first such block;
    /// as many as the block has rows, since each call reveals a row of every sequence).
    block_calls: Vec<BlockCall>,
    /// Where the instances' drawn tokens come back, [rows][out_floats].
    block_staging: Option<Buf>,
}

/// One call of a block recorded ahead: its own kernel parameters and per-call inputs (picked rows,
/// their inputs and random streams, the drawn tokens); the activations, the block's tokens and the
/// cache are the workspace's.
struct BlockCall {
    program: Program,
    picked: Buf,
    row_input: Buf,
    streams: Buf,
    outputs: Buf,
}

/// Activation buffers of a model call (kept so parameters can be re-recorded against the same bindings).
struct StepBuffers {
    x: Buf,
    h: Buf,
    att: Buf,
    mlp: Buf,
    cond: Option<Conditioning>,
    /// Whether `cond` is computed by every call (time-conditioned models) or once per generation.
    cond_per_call: bool,
    final_normed: Buf,
    logits: Buf,
    out_tokens: Buf,
    /// The drawn token's probability per picked row (confidence steps).
    token_prob: Buf,
    chunk_rows: usize,
    /// Split-KV attention scratch (per key chunk: running max, sum, unnormalised output), sized for
    /// the shape's cache; None when the attention runs unsplit.
    attention_partials: Option<Buf>,
}

/// The buffers one recording of a call binds: the workspace's own, or those of one call of a block
/// recorded ahead ([`BlockCall`]), which has its own per-call inputs.
struct CallIo<'a> {
    buffers: &'a StepBuffers,
    tokens: &'a Buf,
    picked: &'a Buf,
    row_input: &'a Buf,
    streams: &'a Buf,
    seq_consts: &'a Buf,
    draws: Option<&'a Buf>,
}

impl CallWorkspace {
    /// Upload what a call reads of its block: the tokens and, for a model conditioned per call,
    /// the σ features (σ = 0 without time conditioning).
    fn write_block(&self, q: &wgpu::Queue, cfg: &ModelConfig, batch: usize, call: &CallInputs<'_>) {
        q.write_buffer(&self.tokens, 0, bytemuck::cast_slice(call.tokens));
        if let Some(f) = &self.features {
            let feats: Vec<f32> = (0..batch)
                .flat_map(|b| {
                    bd3_model::tables::timestep_features(if cfg.time_conditioning {
                        call.sigma[b]
                    } else {
                        0.0
                    })
                })
                .collect();
            q.write_buffer(f, 0, bytemuck::cast_slice(&feats));
        }
    }

    /// The buffers of one instance of a block recorded ahead.
    fn io_of<'a>(&'a self, bc: &'a BlockCall) -> CallIo<'a> {
        CallIo {
            picked: &bc.picked,
            row_input: &bc.row_input,
            streams: &bc.streams,
            ..self.io()
        }
    }

    fn io(&self) -> CallIo<'_> {
        CallIo {
            buffers: &self.buffers,
            tokens: &self.tokens,
            picked: &self.picked,
            row_input: &self.row_input,
            streams: &self.streams,
            seq_consts: &self.seq_consts,
            draws: self.draws.as_ref(),
        }
    }
}

/// Where the block sits in the ring this call.
#[derive(Clone, Copy)]
struct Placement {
    /// Ring row of the block's first token.
    row0: usize,
    /// Cached rows attended (all valid rows of the ring).
    n_kv: usize,
    /// Rotary re-basing: position of ring row j is (j + pos_offset) mod cache_len.
    pos_offset: usize,
}

fn placement(cache_idx: usize, rows: usize, cache_len: usize) -> Placement {
    let end = cache_idx + rows;
    let window_start = end.saturating_sub(cache_len);
    Placement {
        row0: cache_idx % cache_len,
        n_kv: end.min(cache_len),
        pos_offset: (cache_len - window_start % cache_len) % cache_len,
    }
}

impl GpuModel {
    /// A generation begins: conditioning computed once per generation is computed again by its first
    /// call (the weights may have changed in between, e.g. by training).
    pub fn begin_generation(&mut self) {
        for f in self.fixed_conditioning.values_mut() {
            f.fresh = false;
        }
    }

    /// Whether the conditioning vector is the same for every call (adaLN without time conditioning).
    fn conditioning_is_fixed(&self) -> bool {
        self.cfg.kind.has_adaln() && !self.cfg.time_conditioning
    }

    /// The shared conditioning of `batch` sequences: buffers, σ = 0 features and its program.
    fn build_fixed_conditioning(&self, batch: usize) -> Result<FixedConditioning> {
        let ctx = &*self.ctx;
        let cond = Conditioning::alloc(ctx, &self.cfg, batch, false)?
            .expect("an adaLN model has a conditioning path");
        if !ctx.is_planning() {
            let feats: Vec<f32> = (0..batch)
                .flat_map(|_| bd3_model::tables::timestep_features(0.0))
                .collect();
            ctx.queue()
                .write_buffer(&cond.features, 0, bytemuck::cast_slice(&feats));
        }
        let mut pb = ProgramBuilder::new(ctx);
        cond.record(&mut pb, &self.kernels, &self.weights, batch)?;
        Ok(FixedConditioning {
            cond,
            program: pb.finish()?,
            fresh: false,
        })
    }

    /// Check a call and make what it needs: the fixed conditioning, the cache, the shape's workspace.
    fn prepare(&mut self, shape: &CallShape, call: &CallInputs<'_>) -> Result<Placement> {
        self.check_call(shape, call)?;
        if self.conditioning_is_fixed() && !self.fixed_conditioning.contains_key(&shape.batch) {
            let f = self.build_fixed_conditioning(shape.batch)?;
            self.fixed_conditioning.insert(shape.batch, f);
        }
        let key = (shape.batch, shape.cache_len);
        if !self.caches.contains_key(&key) {
            let bytes = (shape.batch * shape.cache_len * 3 * self.cfg.hidden_dim * 4) as u64;
            let layers = (0..self.cfg.n_blocks)
                .map(|_| self.ctx.storage("kv_cache", bytes))
                .collect::<Result<_>>()?;
            self.caches.insert(key, KvCache { layers });
        }
        let place = placement(call.cache_idx, shape.rows, shape.cache_len);
        if !self.steps.contains_key(shape) {
            let ws = self.build_call(shape, place)?;
            self.steps.insert(*shape, ws);
        }
        Ok(place)
    }

    /// Run one model call; the first with a new shape allocates its buffers and records its program.
    pub async fn call(&mut self, shape: &CallShape, call: &CallInputs<'_>) -> Result<CallOutput> {
        let place = self.prepare(shape, call)?;
        let ws = &self.steps[shape];
        let (ctx, cfg) = (&*self.ctx, &self.cfg);

        // New kernel parameters for where the block sits now.
        let mut pb = ProgramBuilder::params_only(ctx);
        self.record_call(&mut pb, shape, &ws.io(), place, call)?;
        // The first call of a generation also computes the fixed conditioning, in the same submission.
        let conditioning = self
            .fixed_conditioning
            .get(&shape.batch)
            .filter(|f| !f.fresh)
            .map(|f| &f.program);
        if ctx.is_planning() {
            // Planning runs the sampler's whole call sequence: each call's dispatches are logged and
            // every picked position gets a token that is not the mask, so the sampler moves on.
            let mut plan = conditioning.map(|p| p.plan.clone()).unwrap_or_default();
            plan.extend(pb.finish_plan());
            self.call_plans.push(plan);
            if let Some(f) = self.fixed_conditioning.get_mut(&shape.batch) {
                f.fresh = true;
            }
            let n = match shape.action {
                CallAction::Sample { head_rows, .. } => shape.batch * head_rows,
                CallAction::Commit => 0,
            };
            let mut tokens = vec![0; n];
            if let (
                CallAction::Sample {
                    head_rows,
                    mode: SampleMode::Confidence,
                    ..
                },
                Some(r),
            ) = (shape.action, call.reveal)
            {
                // As the selection would: at most `at_least` masked rows per sequence are revealed.
                for (i, t) in tokens.iter_mut().enumerate() {
                    let (seq, j) = (i / head_rows, i % head_rows);
                    let input = |j: usize| {
                        call.tokens[seq * shape.rows + call.picked[seq * head_rows + j] as usize]
                    };
                    let earlier = (0..j).filter(|&j| input(j) == cfg.mask_id()).count();
                    if input(j) != cfg.mask_id() {
                        *t = input(j);
                    } else if earlier >= r.at_least as usize {
                        *t = cfg.mask_id();
                    }
                }
            }
            return Ok(CallOutput {
                tokens,
                logits: None,
            });
        }
        ws.program.write_params(ctx.queue(), &pb.finish_params());

        let q = ctx.queue();
        ws.write_block(q, cfg, shape.batch, call);
        if let CallAction::Sample { head_rows, .. } = shape.action {
            q.write_buffer(&ws.picked, 0, bytemuck::cast_slice(call.picked));
            let inputs: Vec<u32> = call
                .picked
                .iter()
                .enumerate()
                .map(|(i, &r)| call.tokens[(i / head_rows) * shape.rows + r as usize])
                .collect();
            q.write_buffer(&ws.row_input, 0, bytemuck::cast_slice(&inputs));
            q.write_buffer(&ws.streams, 0, bytemuck::cast_slice(call.streams));
            q.write_buffer(
                &ws.seq_consts,
                0,
                bytemuck::cast_slice(&sedd_call_constants(call, shape.batch, cfg.vocab_size)),
            );
            if let (Some(d), Some(buf)) = (call.draws, &ws.draws) {
                q.write_buffer(buf, 0, bytemuck::cast_slice(d));
            }
        }
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        if let Some(program) = conditioning {
            program.encode(&mut enc);
        }
        ws.program.encode(&mut enc);
        if let Some(f) = self.fixed_conditioning.get_mut(&shape.batch) {
            f.fresh = true;
        }
        let ws = &self.steps[shape];
        if ws.out_floats == 0 {
            ctx.submit(enc);
            ctx.check()?;
            return Ok(CallOutput {
                tokens: Vec::new(),
                logits: None,
            });
        }
        let bytes = (ws.out_floats * 4) as u64;
        enc.copy_buffer_to_buffer(&ws.outputs, 0, &ws.staging, 0, bytes);
        ctx.submit(enc);
        let data = ctx.map_read(&ws.staging, bytes).await?;
        let words: &[u32] = bytemuck::cast_slice(&data);
        let CallAction::Sample {
            head_rows, verify, ..
        } = shape.action
        else {
            unreachable!()
        };
        let n = shape.batch * head_rows;
        let tokens = words[..n].to_vec();
        let logits = verify.then(|| bytemuck::cast_slice::<u32, f32>(&words[n..]).to_vec());
        Ok(CallOutput { tokens, logits })
    }

    /// Run the first-hitting calls of one block in one submission, one recorded instance per call:
    /// the drawn token of each call is copied on the GPU into the block's tokens before the next call
    /// reads them, and the ids come back once, at the end ([`CallOutput::tokens`] of each call).
    /// Every call takes the block's tokens as they were at its start (`calls[0].tokens`, the same
    /// slice in every call) and the same cache index. A call's pick for a sequence is written back
    /// only where that row was still masked (picked for the first time, masked at the start); other
    /// picks draw a token that means nothing (a sequence with nothing left to reveal).
    pub async fn call_block(
        &mut self,
        shape: &CallShape,
        calls: &[CallInputs<'_>],
    ) -> Result<Vec<CallOutput>> {
        let bad = |m: &str| Err(Error::Invalid(format!("a block recorded ahead: {m}")));
        let CallAction::Sample {
            head_rows: 1,
            mode: SampleMode::FirstHitting,
            verify: false,
        } = shape.action
        else {
            return bad("only first-hitting calls of one picked row per sequence");
        };
        let Some(first) = calls.first() else {
            return Ok(Vec::new());
        };
        if calls.len() > shape.rows {
            return bad("more calls than the block has rows");
        }
        if calls.iter().any(|c| {
            c.tokens != first.tokens || c.cache_idx != first.cache_idx || c.sigma != first.sigma
        }) {
            return bad("every call starts from the same block, at the same place and σ");
        }
        if self.ctx.is_planning() {
            let mut out = Vec::with_capacity(calls.len());
            for c in calls {
                out.push(self.call(shape, c).await?);
            }
            return Ok(out);
        }
        for c in calls {
            self.check_call(shape, c)?;
        }
        let place = self.prepare(shape, first)?;
        if self.steps[shape].block_calls.is_empty() {
            let instances = (0..shape.rows)
                .map(|_| self.build_block_call(shape, place))
                .collect::<Result<Vec<_>>>()?;
            let ws = self.steps.get_mut(shape).expect("prepared");
            let bytes = (shape.rows * ws.out_floats * 4) as u64;
            ws.block_staging = Some(self.ctx.buffer(
                "block call staging",
                bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?);
            ws.block_calls = instances;
        }
        let ws = &self.steps[shape];
        let (ctx, cfg) = (&*self.ctx, &self.cfg);
        let (batch, rows, mask) = (shape.batch, shape.rows, cfg.mask_id());
        let q = ctx.queue();
        ws.write_block(q, cfg, batch, first);
        q.write_buffer(
            &ws.seq_consts,
            0,
            bytemuck::cast_slice(&sedd_call_constants(first, batch, cfg.vocab_size)),
        );
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let conditioning = self
            .fixed_conditioning
            .get(&batch)
            .filter(|f| !f.fresh)
            .map(|f| &f.program);
        if let Some(program) = conditioning {
            program.encode(&mut enc);
        }
        // Rows already revealed in this block, per sequence: a later pick of one is not written back.
        let mut filled = vec![vec![false; rows]; batch];
        for (j, (c, bc)) in calls.iter().zip(&ws.block_calls).enumerate() {
            let mut pb = ProgramBuilder::params_only(ctx);
            self.record_call(&mut pb, shape, &ws.io_of(bc), place, c)?;
            bc.program.write_params(q, &pb.finish_params());
            let inputs: Vec<u32> = (0..batch)
                .map(|s| first.tokens[s * rows + c.picked[s] as usize])
                .collect();
            q.write_buffer(&bc.picked, 0, bytemuck::cast_slice(c.picked));
            q.write_buffer(&bc.row_input, 0, bytemuck::cast_slice(&inputs));
            q.write_buffer(&bc.streams, 0, bytemuck::cast_slice(c.streams));
            bc.program.encode(&mut enc);
            for s in 0..batch {
                let r = c.picked[s] as usize;
                if inputs[s] == mask && !filled[s][r] {
                    filled[s][r] = true;
                    let at = ((s * rows + r) * 4) as u64;
                    enc.copy_buffer_to_buffer(
                        &ws.buffers.out_tokens,
                        (s * 4) as u64,
                        &ws.tokens,
                        at,
                        4,
                    );
                }
            }
            let bytes = (ws.out_floats * 4) as u64;
            let staging = ws.block_staging.as_ref().expect("built with the instances");
            enc.copy_buffer_to_buffer(&bc.outputs, 0, staging, j as u64 * bytes, bytes);
        }
        if let Some(f) = self.fixed_conditioning.get_mut(&batch) {
            f.fresh = true;
        }
        let ws = &self.steps[shape];
        ctx.submit(enc);
        let bytes = (calls.len() * ws.out_floats * 4) as u64;
        let staging = ws.block_staging.as_ref().expect("built with the instances");
        let data = ctx.map_read(staging, bytes).await?;
        let words: &[u32] = bytemuck::cast_slice(&data);
        Ok(words
            .chunks(ws.out_floats)
            .map(|w| CallOutput {
                tokens: w[..batch].to_vec(),
                logits: None,
            })
            .collect())
    }

    /// One instance of a shape's call for a block recorded ahead: the shape's buffers, its own
    /// per-call inputs and parameters.
    fn build_block_call(&self, s: &CallShape, place: Placement) -> Result<BlockCall> {
        let ws = &self.steps[s];
        let ctx = &*self.ctx;
        let words = |label: &str, n: usize| ctx.storage(label, (n.max(1) * 4) as u64);
        let picked_rows = s.batch;
        let mut bc = BlockCall {
            program: ProgramBuilder::new(ctx).finish()?, // replaced below
            picked: words("block call picked rows", picked_rows)?,
            row_input: words("block call picked inputs", picked_rows)?,
            streams: words("block call random streams", picked_rows)?,
            outputs: words("block call outputs", ws.out_floats)?,
        };
        let mut pb = ProgramBuilder::new(ctx);
        self.record_call(
            &mut pb,
            s,
            &ws.io_of(&bc),
            place,
            &CallInputs::for_recording(),
        )?;
        bc.program = pb.finish_with_outputs(&bc.outputs)?;
        Ok(bc)
    }

    /// The instances of every shape's call recorded for blocks submitted at once (`call_block`),
    /// by shape.
    pub fn block_call_programs(&self) -> impl Iterator<Item = (&CallShape, Vec<&Program>)> {
        self.steps
            .iter()
            .map(|(s, ws)| (s, ws.block_calls.iter().map(|bc| &bc.program).collect()))
    }

    /// Every model-call program recorded so far, by shape.
    pub fn call_programs(&self) -> impl Iterator<Item = (&CallShape, &Program)> {
        self.steps.iter().map(|(s, ws)| (s, &ws.program))
    }

    /// The cached q|k|v of one layer, [batch, cache_len, 3·D] (for verification).
    pub async fn read_kv_cache(
        &self,
        batch: usize,
        cache_len: usize,
        layer: usize,
    ) -> Result<Vec<f32>> {
        let cache = self
            .caches
            .get(&(batch, cache_len))
            .ok_or_else(|| Error::Invalid("no KV cache of that shape yet".into()))?;
        self.ctx
            .read_f32(
                &cache.layers[layer],
                0,
                batch * cache_len * 3 * self.cfg.hidden_dim,
            )
            .await
    }

    fn check_call(&self, s: &CallShape, c: &CallInputs<'_>) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if s.rows == 0 || s.rows > s.cache_len || s.cache_len > self.rope_positions {
            return bad(format!(
                "a call of {} rows does not fit a cache of {} (context {})",
                s.rows, s.cache_len, self.rope_positions
            ));
        }
        if c.cache_idx % s.cache_len + s.rows > s.cache_len {
            return bad(format!(
                "block at position {} would straddle the end of the {}-row cache",
                c.cache_idx, s.cache_len
            ));
        }
        if c.tokens.len() != s.batch * s.rows {
            return bad("call tokens do not match the shape".into());
        }
        let v = self.cfg.vocab_size as u32;
        if let Some(t) = c.tokens.iter().find(|&&t| t >= v) {
            return bad(format!("token id {t} is outside the vocabulary of {v}"));
        }
        if let CallAction::Sample {
            head_rows,
            mode,
            verify,
        } = s.action
        {
            let n = s.batch * head_rows;
            if c.picked.len() != n
                || c.streams.len() != n
                || c.picked.iter().any(|&r| r as usize >= s.rows)
            {
                return bad("picked rows do not match the shape".into());
            }
            if matches!(mode, SampleMode::SeddStep | SampleMode::SeddDenoise)
                && c.dsigma.len() != s.batch
            {
                return bad("a SEDD call needs one dσ per sequence".into());
            }
            if verify && c.draws.map(|d| d.len()) != Some(n * self.cfg.vocab_size) {
                return bad("a verification call needs supplied draws for every picked row".into());
            }
            if mode == SampleMode::Confidence && c.reveal.is_none_or(|r| r.at_least == 0) {
                return bad(
                    "a confidence call needs a reveal rule that keeps at least one draw".into(),
                );
            }
        }
        if self.cfg.time_conditioning && c.sigma.len() != s.batch {
            return bad("a time-conditioned model needs one sigma per sequence".into());
        }
        Ok(())
    }

    fn build_call(&self, s: &CallShape, place: Placement) -> Result<CallWorkspace> {
        let ctx = &*self.ctx;
        let cfg = &self.cfg;
        let (b, d, v) = (s.batch, cfg.hidden_dim, cfg.vocab_size);
        check_activation_size(ctx, b, s.rows, d)?;
        let f32s = |label: &str, n: usize| ctx.storage(label, (n * 4) as u64);
        let rows = b * s.rows;
        let (head_rows, verify) = match s.action {
            CallAction::Sample {
                head_rows, verify, ..
            } => (head_rows, verify),
            CallAction::Commit => (0, false),
        };
        let picked_rows = b * head_rows;
        let chunk_rows = layers::logits_chunk_rows(ctx, v, picked_rows);
        let fixed = self.fixed_conditioning.get(&b).map(|f| f.cond.clone());
        let cond_per_call = fixed.is_none();
        let buffers = StepBuffers {
            x: f32s("call residual", rows * d)?,
            h: f32s("call normed", rows * d)?,
            att: f32s("call attention", rows * d)?,
            mlp: f32s("call mlp", rows * 4 * d)?,
            cond: match fixed {
                Some(c) => Some(c),
                None => Conditioning::alloc(ctx, cfg, b, false)?,
            },
            cond_per_call,
            final_normed: f32s("call final_normed", picked_rows.max(1) * d)?,
            logits: f32s(
                "call logits",
                if head_rows > 0 { chunk_rows * v } else { 1 },
            )?,
            out_tokens: f32s("call tokens out", picked_rows.max(1))?,
            token_prob: f32s("call token probabilities", picked_rows.max(1))?,
            chunk_rows,
            attention_partials: match ops::attention::partials_floats(
                ctx,
                &call_attention(cfg, s, place),
            ) {
                0 => None,
                n => Some(f32s("call attention partials", n)?),
            },
        };
        let out_floats = if head_rows == 0 {
            0
        } else {
            picked_rows + if verify { picked_rows * v } else { 0 }
        };
        let ws_tokens = f32s("call tokens", rows)?;
        let features = buffers
            .cond
            .as_ref()
            .filter(|_| cond_per_call)
            .map(|c| c.features.clone());
        let mut ws = CallWorkspace {
            program: ProgramBuilder::new(ctx).finish()?, // replaced below
            tokens: ws_tokens,
            features,
            picked: f32s("picked rows", picked_rows.max(1))?,
            row_input: f32s("picked inputs", picked_rows.max(1))?,
            streams: f32s("random streams", picked_rows.max(1))?,
            seq_consts: f32s("call constants", b * 8)?,
            draws: if verify {
                Some(f32s("supplied draws", picked_rows * v)?)
            } else {
                None
            },
            outputs: f32s("call outputs", out_floats.max(1))?,
            staging: ctx.buffer(
                "call staging",
                (out_floats.max(1) * 4) as u64,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
            out_floats,
            buffers,
            block_calls: Vec::new(),
            block_staging: None,
        };
        let mut pb = ProgramBuilder::new(ctx);
        self.record_call(&mut pb, s, &ws.io(), place, &CallInputs::for_recording())?;
        ws.program = pb.finish_with_outputs(&ws.outputs)?;
        Ok(ws)
    }

    /// Record (or re-record the parameters of) a model call. Only `place` and the sampler settings of `call`
    /// change between calls; every binding is the same.
    fn record_call(
        &self,
        pb: &mut ProgramBuilder,
        s: &CallShape,
        io: &CallIo<'_>,
        place: Placement,
        call: &CallInputs<'_>,
    ) -> Result<()> {
        let (cfg, k, w) = (&self.cfg, &self.kernels, &self.weights);
        let (b, d, v) = (s.batch, cfg.hidden_dim, cfg.vocab_size);
        let buf = io.buffers;
        let cache = &self.caches[&(b, s.cache_len)];
        if let Some(c) = buf.cond.as_ref().filter(|_| buf.cond_per_call) {
            c.record(pb, k, w, b)?;
        }
        // A block of few rows embeds its tokens in the first product's prologue (one dispatch fewer);
        // more rows, or a table split over bindings, take the gather pass.
        let embed = if layers::layernorms_fold(b * s.rows) {
            layers::TokenRows::of(w, io.tokens)
        } else {
            None
        };
        if embed.is_none() {
            layers::embedding(pb, k, w, io.tokens, &buf.x, b * s.rows)?;
        }
        let attention = call_attention(cfg, s, place);
        let into_cache = OutRows {
            rows_per_seq: s.rows as u32,
            seq_stride: s.cache_len as u32,
            row_offset: place.row0 as u32,
        };
        let commit = s.action == CallAction::Commit;
        for (i, blk) in w.blocks.iter().enumerate() {
            let io = BlockIo {
                x: &buf.x,
                h: &buf.h,
                att: &buf.att,
                mlp: &buf.mlp,
                qkv: &cache.layers[i],
                qkv_rows: Some(into_cache),
                modulation: buf.cond.as_ref().map(|c| &c.mods[i]),
                rope: (&self.rope_cos, &self.rope_sin),
                attention_partials: buf.attention_partials.as_ref(),
                embed: embed.filter(|_| i == 0),
            };
            let end = if commit && i + 1 == w.blocks.len() {
                BlockEnd::AfterQkv
            } else {
                BlockEnd::Full
            };
            layers::block(pb, k, blk, &io, &attention, None, end)?;
        }
        let CallAction::Sample {
            head_rows,
            mode,
            verify,
        } = s.action
        else {
            return Ok(());
        };

        let picked_rows = b * head_rows;
        let final_mod = buf.cond.as_ref().map(|c| &c.final_mod);
        let ln = LayerNorm {
            n_rows: picked_rows as u32,
            dim: d as u32,
            in_rows_per_seq: s.rows as u32,
            out_rows_per_seq: head_rows as u32,
            in_row_offset: 0,
            modulation: final_mod.map(|_| layers::final_modulation(d)),
        };
        // A few picked rows (every first-hitting or DDPM call of a batch-1 block): the head's products
        // normalise them in their prologue, so the final LayerNorm costs no dispatch of its own.
        let norm = if picked_rows <= crate::ops::gemv::MAX_ROWS as usize {
            Some(layers::NormIn {
                weight: &w.norm_final,
                norm: crate::ops::gemv::Norm {
                    ln,
                    first_row: 0,
                    source: crate::ops::gemv::RowSource::Activations,
                },
                modulation: final_mod,
                row_index: Some(io.picked),
            })
        } else {
            let lnb = crate::ops::layernorm::Bindings {
                x: &buf.x,
                w: &w.norm_final,
                modv: final_mod,
                out: &buf.final_normed,
                row_index: Some(io.picked),
            };
            crate::ops::layernorm::record(pb, k, &ln, lnb)?;
            None
        };
        layers::head_chunks(
            pb,
            k,
            w,
            if norm.is_some() {
                &buf.x
            } else {
                &buf.final_normed
            },
            norm,
            &buf.logits,
            (picked_rows, buf.chunk_rows),
            |pb, start, n| {
                let sp = Sample {
                    n_rows: n as u32,
                    vocab: v as u32,
                    mask_id: cfg.mask_id(),
                    mode,
                    top_p: call.top_p as f32,
                    mask_prob: call.mask_prob as f32,
                    seed: call.seed,
                    call: call.call,
                    rows_per_seq: head_rows as u32,
                    row_offset: start as u32,
                };
                let sb = crate::ops::sample::Bindings {
                    logits: &buf.logits,
                    row_input: io.row_input,
                    row_stream: io.streams,
                    seq_consts: io.seq_consts,
                    draws: if verify { io.draws } else { None },
                    tokens: &buf.out_tokens,
                    token_prob: (mode == SampleMode::Confidence).then_some(&buf.token_prob),
                };
                crate::ops::sample::record(pb, k, &sp, sb)?;
                if verify {
                    pb.copy_to_output(&buf.logits, picked_rows + start * v, n * v);
                }
                Ok(())
            },
        )?;
        if mode == SampleMode::Confidence {
            // After every chunk's draws: the choice needs all rows of a sequence. (The recording at
            // build time has no call yet; its parameters are overwritten by each call's.)
            let reveal = call.reveal.unwrap_or(Reveal::top(1));
            let cb = crate::ops::confidence::Bindings {
                row_input: io.row_input,
                token_prob: &buf.token_prob,
                tokens: &buf.out_tokens,
            };
            crate::ops::confidence::record(
                pb,
                k,
                picked_rows as u32,
                head_rows as u32,
                cfg.mask_id(),
                reveal,
                cb,
            )?;
        }
        pb.copy_to_output(&buf.out_tokens, 0, picked_rows);
        Ok(())
    }
}

/// The attention of a call: the block's queries, in the cache at the block's rows, against every
/// valid cached row.
fn call_attention(cfg: &ModelConfig, s: &CallShape, place: Placement) -> Attention {
    Attention {
        n_q: s.rows as u32,
        n_kv: place.n_kv as u32,
        n_heads: cfg.n_heads as u32,
        head_dim: cfg.head_dim() as u32,
        q_seq_stride: s.cache_len as u32,
        q_row_offset: place.row0 as u32,
        kv_seq_stride: s.cache_len as u32,
        q_index_offset: place.row0 as u32,
        mask: AttentionMask::Full,
        pos_period: s.cache_len as u32,
        pos_offset: place.pos_offset as u32,
        batch: s.batch as u32,
    }
}

/// Per-sequence constants of the sample kernel: (shift, e^{dσ}, 1 − e^{dσ}, e^{−dσ}; 1 − e^{−dσ}, 0, 0, 0),
/// in f64 before rounding so the small differences keep their precision. Zeros outside SEDD.
fn sedd_call_constants(call: &CallInputs<'_>, batch: usize, vocab: usize) -> Vec<f32> {
    (0..batch)
        .flat_map(|b| {
            let Some(&ds) = call.dsigma.get(b) else {
                return [0f32; 8];
            };
            let sigma = call.sigma.get(b).copied().unwrap_or(0.0);
            let shift = bd3_model::schedule::esigm1_log(sigma) + ((vocab - 1) as f64).ln();
            [
                shift,
                ds.exp(),
                -ds.exp_m1(),
                (-ds).exp(),
                -(-ds).exp_m1(),
                0.0,
                0.0,
                0.0,
            ]
            .map(|x| x as f32)
        })
        .collect()
}
