//! The network's layers as recorded dispatches, shared by the full forward (`model.rs`), the
//! sampler's KV-cache steps (`step.rs`) and training (`train.rs`): one block forward serves all
//! three; training passes a [`BlockKeep`] that keeps what its backward pass needs. Each function
//! appends dispatches; none allocates.

use crate::context::GpuContext;
use crate::ops::gemv::{self, Gemv, Norm};
use crate::ops::layernorm::{LayerNorm, Modulation};
use crate::ops::matmul::{Dropout, Epilogue, Matmul, OutRows};
use crate::ops::{self, attention::Attention, Kernels};
use crate::program::{Buf, ProgramBuilder};
use crate::weights::{BlockWeights, Linear, Weights};
use bd3_model::config::TIMESTEP_FEATURES;
use bd3_model::{Error, ModelConfig, Result};

/// The six chunks of a block's adaLN modulation row ([6·D] per sequence), in the official order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdaLn {
    ShiftMsa = 0,
    ScaleMsa = 1,
    GateMsa = 2,
    ShiftMlp = 3,
    ScaleMlp = 4,
    GateMlp = 5,
}

/// Chunks per block modulation row.
pub const ADALN_CHUNKS: usize = 6;
/// The final layer's modulation row holds shift, then scale ([2·D]).
pub const FINAL_ADALN_CHUNKS: usize = 2;

impl AdaLn {
    /// Float offset of the chunk in a modulation row of a model of width `d`.
    pub fn offset(self, d: usize) -> usize {
        self as usize * d
    }

    /// The LayerNorm modulation (shift, scale) of the attention or the MLP branch.
    pub fn norm(shift: AdaLn, scale: AdaLn, d: usize) -> Modulation {
        Modulation {
            shift: shift.offset(d) as u32,
            scale: scale.offset(d) as u32,
            stride: (ADALN_CHUNKS * d) as u32,
        }
    }
}

/// The final layer's modulation: shift at 0, scale at D, rows of 2·D.
pub fn final_modulation(d: usize) -> Modulation {
    Modulation {
        shift: 0,
        scale: d as u32,
        stride: (FINAL_ADALN_CHUNKS * d) as u32,
    }
}

/// Buffers of the conditioning path (adaLN models): features(σ) → c → per-block modulation vectors.
#[derive(Clone)]
pub struct Conditioning {
    pub features: Buf,
    pub c_hidden: Buf,
    pub c: Buf,
    /// Per block: [batch, 6·hidden], chunks as [`AdaLn`].
    pub mods: Vec<Buf>,
    /// [batch, 2·hidden] = shift, scale of the final layer.
    pub final_mod: Buf,
    /// The two pre-activations (before each SiLU), kept for training's backward pass.
    pub pre_activations: Option<(Buf, Buf)>,
}

impl Conditioning {
    /// Buffers for `batch` sequences (None without adaLN); `keep_pre_activations` for training.
    pub fn alloc(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        batch: usize,
        keep_pre_activations: bool,
    ) -> Result<Option<Conditioning>> {
        if !cfg.kind.has_adaln() {
            return Ok(None);
        }
        let f = |label: &str, n: usize| ctx.storage(label, (n * 4) as u64);
        let d = cfg.hidden_dim;
        Ok(Some(Conditioning {
            features: f("sigma_features", batch * TIMESTEP_FEATURES)?,
            c_hidden: f("cond_hidden", batch * cfg.cond_dim)?,
            c: f("cond", batch * cfg.cond_dim)?,
            mods: (0..cfg.n_blocks)
                .map(|_| f("modulation", batch * ADALN_CHUNKS * d))
                .collect::<Result<_>>()?,
            final_mod: f("final_modulation", batch * FINAL_ADALN_CHUNKS * d)?,
            pre_activations: if keep_pre_activations {
                Some((
                    f("cond z1", batch * cfg.cond_dim)?,
                    f("cond z2", batch * cfg.cond_dim)?,
                ))
            } else {
                None
            },
        }))
    }

    /// c = silu(mlp.2(silu(mlp.0(features)))), then every adaLN projection of c.
    pub fn record(
        &self,
        pb: &mut ProgramBuilder,
        k: &Kernels,
        w: &Weights,
        batch: usize,
    ) -> Result<()> {
        let (mlp0, mlp2) = w.sigma_map.as_ref().expect("adaLN model has sigma_map");
        let (z1, z2) = (
            self.pre_activations.as_ref().map(|z| &z.0),
            self.pre_activations.as_ref().map(|z| &z.1),
        );
        linear(
            pb,
            k,
            mlp0,
            batch,
            Epilogue::Silu,
            LinearIo {
                aux: z1,
                ..LinearIo::new("sigma_map.0", &self.features, &self.c_hidden)
            },
        )?;
        linear(
            pb,
            k,
            mlp2,
            batch,
            Epilogue::Silu,
            LinearIo {
                aux: z2,
                ..LinearIo::new("sigma_map.2", &self.c_hidden, &self.c)
            },
        )?;
        for (blk, m) in w.blocks.iter().zip(&self.mods) {
            linear(
                pb,
                k,
                blk.adaln.as_ref().expect("adaLN block"),
                batch,
                Epilogue::Store,
                LinearIo::new("adaLN", &self.c, m),
            )?;
        }
        linear(
            pb,
            k,
            w.final_adaln.as_ref().expect("adaLN model"),
            batch,
            Epilogue::Store,
            LinearIo::new("final adaLN", &self.c, &self.final_mod),
        )
    }
}

/// x = E[tokens], one dispatch per row range of the table: the full forward, training, and the model
/// calls whose first block cannot gather its rows itself ([`TokenRows`]: more than 16 rows, or a table
/// split over bindings).
pub fn embedding(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    w: &Weights,
    tokens: &Buf,
    x: &Buf,
    rows: usize,
) -> Result<()> {
    let table = &w.vocab_embed;
    for part in &table.parts {
        let p = ops::embedding::Params {
            n_rows: rows as u32,
            dim: table.cols as u32,
            row_start: part.row_start as u32,
            part_rows: part.rows as u32,
        };
        ops::embedding::record(
            pb,
            k,
            p,
            (table.rows, table.format),
            ops::embedding::Bindings {
                ids: tokens,
                table: &part.buffer,
                out: x,
            },
        )?;
    }
    Ok(())
}

/// The activations one block reads and writes.
pub struct BlockIo<'a> {
    /// The residual stream, updated in place.
    pub x: &'a Buf,
    /// Scratch for the normalised input of each branch.
    pub h: &'a Buf,
    /// The attention output.
    pub att: &'a Buf,
    /// The MLP activation.
    pub mlp: &'a Buf,
    /// Where q|k|v rows go (scratch, a training layer's own buffer, or a layer's KV cache) and how
    /// rows map there.
    pub qkv: &'a Buf,
    pub qkv_rows: Option<OutRows>,
    /// This block's adaLN modulation rows (None for AR).
    pub modulation: Option<&'a Buf>,
    pub rope: (&'a Buf, &'a Buf),
    /// Scratch of the split-KV attention of a few queries (`ops::attention::partials_floats`);
    /// None runs it unsplit.
    pub attention_partials: Option<&'a Buf>,
    /// The first block of a sampling call: its input is these tokens' rows of the embedding table,
    /// gathered by the prologue of its first product, which also writes them to `x` (so the
    /// embedding costs no dispatch). Only where the block's LayerNorms fold into its products.
    pub embed: Option<TokenRows<'a>>,
}

/// Whether a block of `rows` rows (all sequences together) that keeps nothing for a backward pass
/// runs its LayerNorms as the prologues of its products (and so can embed its tokens there).
pub fn layernorms_fold(rows: usize) -> bool {
    rows <= gemv::MAX_ROWS as usize
}

/// The embedding of a block's tokens, read in its first product's prologue.
#[derive(Clone, Copy)]
pub struct TokenRows<'a> {
    /// [rows] token ids.
    pub tokens: &'a Buf,
    /// The embedding table, in one binding, and its format.
    pub table: &'a Buf,
    pub format: crate::weights::WeightFormat,
}

impl<'a> TokenRows<'a> {
    /// The table of `w` where it is one binding (tables split over several need the gather pass).
    pub fn of(w: &'a Weights, tokens: &'a Buf) -> Option<TokenRows<'a>> {
        match w.vocab_embed.parts.as_slice() {
            [part] => Some(TokenRows {
                tokens,
                table: &part.buffer,
                format: w.vocab_embed.format,
            }),
            _ => None,
        }
    }
}

/// What training keeps of a block's forward for the backward pass, and the block's dropout.
pub struct BlockKeep<'a> {
    /// Each query's log-sum-exp.
    pub lse: &'a Buf,
    /// The residual after the attention branch (the MLP branch's input).
    pub mid_residual: &'a Buf,
    /// The attention branch's output after dropout, before the gate.
    pub attn_branch: &'a Buf,
    /// The MLP branch's output after dropout, before the gate.
    pub mlp_branch: &'a Buf,
    /// The MLP pre-activation (before gelu).
    pub mlp_pre: &'a Buf,
    /// Dropout probability on both residual branches, and the step's seed.
    pub dropout: f32,
    pub seed: u32,
    /// The block's index (the dropout masks' salts are 2·layer + 1 and 2·layer + 2).
    pub layer: usize,
}

/// Where a block stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockEnd {
    /// The whole block.
    Full,
    /// After writing q|k|v (a cache commit of the last block needs nothing more).
    AfterQkv,
}

/// One DiT block over `rows_per_seq` tokens of each of `attention.batch` sequences:
///   x += gate_msa · attn_out(attention(qkv(LN1(x)·(1+scale_msa)+shift_msa)))
///   x += gate_mlp · mlp.2(gelu(mlp.0(LN2(x)·(1+scale_mlp)+shift_mlp)))
/// `attention` says where queries and keys live.
pub fn block(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    blk: &BlockWeights,
    io: &BlockIo,
    attention: &Attention,
    keep: Option<&BlockKeep>,
    end: BlockEnd,
) -> Result<()> {
    let d = (attention.n_heads * attention.head_dim) as usize;
    let (batch, rows_per_seq) = (attention.batch as usize, attention.n_q as usize);
    let rows = batch * rows_per_seq;
    let modulated = |shift: AdaLn, scale: AdaLn| {
        LayerNorm::rows(
            batch,
            rows_per_seq,
            d,
            io.modulation.map(|_| AdaLn::norm(shift, scale, d)),
        )
    };
    let residual = if io.modulation.is_some() {
        Epilogue::GatedResidual
    } else {
        Epilogue::Residual
    };
    let gate = |chunk: AdaLn| {
        io.modulation.map(|m| Gate {
            modulation: m,
            chunk,
            rows_per_seq,
        })
    };
    let dropout = |salt: u32| {
        keep.map(|kp| Dropout {
            p: kp.dropout,
            seed: kp.seed,
            salt,
        })
    };
    let salt = keep.map_or(0, |kp| 2 * kp.layer as u32);

    // Sampling (a few rows, nothing kept for a backward pass): each LayerNorm runs as the prologue
    // of the Linear that reads it, so it costs no dispatch and h is not written. Training and the
    // full forward keep the separate pass (the backward pass reads its statistics' input).
    let fold = keep.is_none() && layernorms_fold(rows);
    if io.embed.is_some() && !fold {
        return Err(Error::Invalid(
            "a block embeds its tokens in a prologue only where its LayerNorms fold (a sampling \
             call of at most 16 rows)"
                .into(),
        ));
    }
    let normed =
        |pb: &mut ProgramBuilder, weight, ln, label| norm_input(pb, k, io, fold, weight, ln, label);
    let mut qkv_in = normed(
        pb,
        &blk.norm1,
        modulated(AdaLn::ShiftMsa, AdaLn::ScaleMsa),
        "attn_qkv",
    )?;
    if let Some(e) = io.embed {
        let Some(nm) = qkv_in.norm.as_mut() else {
            return Err(Error::Invalid(
                "attn_qkv: the embedding needs the LayerNorm prologue".into(),
            ));
        };
        qkv_in.a = e.table;
        qkv_in.aux = Some(io.x);
        nm.row_index = Some(e.tokens);
        nm.norm.source = gemv::RowSource::Embedding { table: e.format };
    }
    linear(
        pb,
        k,
        &blk.attn_qkv,
        rows,
        Epilogue::Store,
        LinearIo {
            out: io.qkv,
            out_rows: io.qkv_rows,
            ..qkv_in
        },
    )?;
    if end == BlockEnd::AfterQkv {
        return Ok(());
    }
    let (qrows, kvrows) = (io.qkv, io.qkv);
    let b = ops::attention::Bindings {
        qrows,
        kvrows,
        rope_cos: io.rope.0,
        rope_sin: io.rope.1,
        out: io.att,
        lse_delta: keep.map(|kp| kp.lse),
        partials: io.attention_partials,
    };
    ops::attention::record(pb, k, attention, b);
    let attn_out = LinearIo {
        gate: gate(AdaLn::GateMsa),
        aux: keep.map(|kp| kp.attn_branch),
        dropout: dropout(salt + 1),
        ..LinearIo::new("attn_out", io.att, io.x)
    };
    linear(pb, k, &blk.attn_out, rows, residual, attn_out)?;
    if let Some(kp) = keep {
        pb.copy(io.x, 0, kp.mid_residual, 0, (rows * d * 4) as u64);
    }
    let mlp_in = normed(
        pb,
        &blk.norm2,
        modulated(AdaLn::ShiftMlp, AdaLn::ScaleMlp),
        "mlp.0",
    )?;
    linear(
        pb,
        k,
        &blk.mlp_up,
        rows,
        Epilogue::Gelu,
        LinearIo {
            out: io.mlp,
            aux: keep.map(|kp| kp.mlp_pre),
            ..mlp_in
        },
    )?;
    let mlp_down = LinearIo {
        gate: gate(AdaLn::GateMlp),
        aux: keep.map(|kp| kp.mlp_branch),
        dropout: dropout(salt + 2),
        ..LinearIo::new("mlp.2", io.mlp, io.x)
    };
    linear(pb, k, &blk.mlp_down, rows, residual, mlp_down)
}

/// The input of the Linear after a LayerNorm of the block's residual: with `fold`, the residual itself
/// and the LayerNorm as the Linear's prologue; otherwise h, written by a LayerNorm pass recorded here.
fn norm_input<'b>(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    io: &BlockIo<'b>,
    fold: bool,
    weight: &'b Buf,
    ln: LayerNorm,
    label: &'static str,
) -> Result<LinearIo<'b>> {
    if fold {
        return Ok(LinearIo {
            norm: Some(NormIn {
                weight,
                norm: Norm {
                    ln,
                    first_row: 0,
                    source: crate::ops::gemv::RowSource::Activations,
                },
                modulation: io.modulation,
                row_index: None,
            }),
            ..LinearIo::new(label, io.x, io.h)
        });
    }
    ops::layernorm::record(
        pb,
        k,
        &ln,
        ops::layernorm::Bindings {
            x: io.x,
            w: weight,
            modv: io.modulation,
            out: io.h,
            row_index: None,
        },
    )?;
    Ok(LinearIo::new(label, io.h, io.h))
}

/// The gate of a gated residual: a chunk of the modulation rows, one row per `rows_per_seq` rows.
#[derive(Clone, Copy)]
pub struct Gate<'a> {
    pub modulation: &'a Buf,
    pub chunk: AdaLn,
    pub rows_per_seq: usize,
}

/// The buffers of a Linear's dispatch and its optional parts.
#[derive(Clone, Copy)]
pub struct LinearIo<'a> {
    /// What the dispatch is called in plans and timings.
    pub label: &'static str,
    pub a: &'a Buf,
    pub out: &'a Buf,
    pub gate: Option<Gate<'a>>,
    /// An output-row mapping (into a KV cache).
    pub out_rows: Option<OutRows>,
    /// Where to keep the value before the activation / after dropout (the backward pass needs it).
    pub aux: Option<&'a Buf>,
    /// Dropout of a residual epilogue.
    pub dropout: Option<Dropout>,
    /// A LayerNorm of `a` folded into the product (at most [`gemv::MAX_ROWS`] rows).
    pub norm: Option<NormIn<'a>>,
}

/// A LayerNorm (with adaLN modulation) computed in a Linear's prologue instead of its own pass: see
/// `shaders/gemv.wgsl`. The modulation rows are bound where a gated residual's gate goes, so a Linear
/// with both must read them from the same buffer.
#[derive(Clone, Copy)]
pub struct NormIn<'a> {
    pub weight: &'a Buf,
    pub norm: Norm,
    pub modulation: Option<&'a Buf>,
    /// The input row of each mapped row (a sampler's picked positions).
    pub row_index: Option<&'a Buf>,
}

impl<'a> LinearIo<'a> {
    pub fn new(label: &'static str, a: &'a Buf, out: &'a Buf) -> LinearIo<'a> {
        LinearIo {
            label,
            a,
            out,
            gate: None,
            out_rows: None,
            aux: None,
            dropout: None,
            norm: None,
        }
    }
}

/// y = epilogue(x · Wᵀ + b) over `m` rows, one dispatch per row range of W.
pub fn linear(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    lin: &Linear,
    m: usize,
    epilogue: Epilogue,
    io: LinearIo,
) -> Result<()> {
    let (n_total, kk) = (lin.out_features(), lin.in_features());
    for part in &lin.weight.parts {
        let mut mm = Matmul {
            ldc: n_total as u32,
            out_col_offset: part.row_start as u32,
            bias_offset: part.row_start as u32,
            epilogue,
            dropout: io.dropout,
            b_format: lin.weight.format,
            ..Matmul::plain(m as u32, part.rows as u32, kk as u32)
        };
        if let Some(o) = io.out_rows {
            mm.out_rows = o;
        }
        if let Some(g) = io.gate {
            let d = n_total;
            (mm.gate_offset, mm.gate_stride, mm.rows_per_seq) = (
                (g.chunk.offset(d) + part.row_start) as u32,
                (ADALN_CHUNKS * d) as u32,
                g.rows_per_seq as u32,
            );
        }
        let gate = io.gate.map(|g| g.modulation);
        if let Some(nm) = io.norm {
            // One binding serves the gate and the prologue's modulation rows.
            if let (Some(g), Some(m)) = (gate, nm.modulation) {
                if !std::ptr::eq(g, m) {
                    return Err(Error::Invalid(format!(
                        "{}: a gated residual and a modulated LayerNorm prologue must read the \
                         same modulation buffer",
                        io.label
                    )));
                }
            }
            let b = gemv::Bindings {
                a: io.a,
                b: &part.buffer,
                bias: lin.bias.as_ref(),
                gate: gate.or(nm.modulation),
                out: io.out,
                aux: io.aux,
                ln_w: Some(nm.weight),
                row_index: nm.row_index,
            };
            let g = Gemv {
                mm,
                norm: Some(nm.norm),
            };
            gemv::record(pb, k, io.label, &g, b)?;
            continue;
        }
        let b = ops::matmul::Bindings {
            a: io.a,
            b: &part.buffer,
            bias: lin.bias.as_ref(),
            gate,
            out: io.out,
            aux: io.aux,
        };
        ops::matmul::record(pb, k, io.label, &mm, b);
    }
    Ok(())
}

/// The head over `rows` normalised rows, `chunk_rows` at a time into `logits` (`chunking` =
/// (rows, chunk_rows)); `consume(pb, start, n)`
/// records what reads each chunk (the loss or the sampler) before the next chunk overwrites it.
/// `input` holds the normalised rows, or with `norm` the residual rows whose final LayerNorm the
/// head's products compute in their prologue (at most [`gemv::MAX_ROWS`] rows per chunk; every weight
/// part's dispatch normalises its rows itself).
#[allow(clippy::too_many_arguments)]
pub fn head_chunks(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    w: &Weights,
    input: &Buf,
    norm: Option<NormIn>,
    logits: &Buf,
    (rows, chunk_rows): (usize, usize),
    mut consume: impl FnMut(&mut ProgramBuilder, usize, usize) -> Result<()>,
) -> Result<()> {
    let (d, v) = (w.head.in_features(), w.head.out_features());
    let bias = w.head.bias.as_ref().expect("the head has a bias");
    let mut start = 0;
    while start < rows {
        let n = chunk_rows.min(rows - start);
        for part in &w.head.weight.parts {
            let mm = Matmul {
                a_offset: if norm.is_some() {
                    0
                } else {
                    (start * d) as u32
                },
                ldc: v as u32,
                out_col_offset: part.row_start as u32,
                bias_offset: part.row_start as u32,
                b_format: w.head.weight.format,
                ..Matmul::plain(n as u32, part.rows as u32, d as u32)
            };
            if let Some(nm) = norm {
                let g = Gemv {
                    mm,
                    norm: Some(Norm {
                        first_row: start as u32,
                        ..nm.norm
                    }),
                };
                let b = gemv::Bindings {
                    a: input,
                    b: &part.buffer,
                    bias: Some(bias),
                    gate: nm.modulation,
                    out: logits,
                    aux: None,
                    ln_w: Some(nm.weight),
                    row_index: nm.row_index,
                };
                gemv::record(pb, k, "head", &g, b)?;
                continue;
            }
            let b = ops::matmul::Bindings {
                a: input,
                b: &part.buffer,
                bias: Some(bias),
                gate: None,
                out: logits,
                aux: None,
            };
            ops::matmul::record(pb, k, "head", &mm, b);
        }
        consume(pb, start, n)?;
        start += n;
    }
    Ok(())
}

/// Rows of logits per chunk: the head and its loss run chunk by chunk, so the logits of a whole
/// batch never exist at once. Chunks are as large as one storage binding allows, up to 1 GiB, so the
/// head's GEMMs fill the GPU (a 64 MiB chunk of GPT-2's vocabulary is only 333 rows); in the browser
/// (bindings of 128 MiB by default) they stay at 64 MiB, as memory there is scarce.
pub fn logits_chunk_rows(ctx: &GpuContext, vocab: usize, rows: usize) -> usize {
    let cap: u64 = if cfg!(target_arch = "wasm32") {
        64 << 20
    } else {
        1 << 30
    };
    ((cap.min(ctx.split_threshold()) / (vocab as u64 * 4)) as usize).clamp(1, rows.max(1))
}
