//! Recording the network's layers into a program: shared by the full forward (`model.rs`) and the
//! sampler's KV-cache steps (`step.rs`). Each function appends dispatches; none allocates.

use crate::kernels::{params, Kernels, ProgramBuilder, Slice};
use crate::weights::{BlockWeights, Linear, Weights};
use crate::context::GpuContext;
use bd3_model::config::TIMESTEP_FEATURES;
use bd3_model::{ModelConfig, Result};

/// Buffers of the conditioning path (adaLN models): features(σ) → c → per-block modulation vectors.
pub struct Conditioning {
    pub features: wgpu::Buffer,
    pub c_hidden: wgpu::Buffer,
    pub c: wgpu::Buffer,
    /// Per block: [batch, 6·hidden] = shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
    pub mods: Vec<wgpu::Buffer>,
    /// [batch, 2·hidden] = shift, scale of the final layer.
    pub final_mod: wgpu::Buffer,
    /// The two pre-activations (before each SiLU), kept for training's backward pass.
    pub pre_activations: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl Conditioning {
    /// Buffers for `batch` sequences (None without adaLN); `keep_pre_activations` for training.
    pub fn alloc(ctx: &GpuContext, cfg: &ModelConfig, batch: usize, keep_pre_activations: bool) -> Result<Option<Conditioning>> {
        if !cfg.kind.has_adaln() {
            return Ok(None);
        }
        let f = |label: &str, n: usize| ctx.storage(label, (n * 4) as u64);
        let d = cfg.hidden_dim;
        Ok(Some(Conditioning {
            features: f("sigma_features", batch * TIMESTEP_FEATURES)?,
            c_hidden: f("cond_hidden", batch * cfg.cond_dim)?,
            c: f("cond", batch * cfg.cond_dim)?,
            mods: (0..cfg.n_blocks).map(|_| f("modulation", batch * 6 * d)).collect::<Result<_>>()?,
            final_mod: f("final_modulation", batch * 2 * d)?,
            pre_activations: if keep_pre_activations { Some((f("cond z1", batch * cfg.cond_dim)?, f("cond z2", batch * cfg.cond_dim)?)) } else { None },
        }))
    }

    /// c = silu(mlp.2(silu(mlp.0(features)))), then every adaLN projection of c.
    pub fn record(&self, pb: &mut ProgramBuilder, k: &Kernels, w: &Weights, batch: usize) -> Result<()> {
        let (mlp0, mlp2) = w.sigma_map.as_ref().expect("adaLN model has sigma_map");
        let (z1, z2) = (self.pre_activations.as_ref().map(|z| &z.0), self.pre_activations.as_ref().map(|z| &z.1));
        linear(pb, k, mlp0, &self.features, &self.c_hidden, batch, params::Epilogue::Silu, Extras { aux: z1, ..Default::default() })?;
        linear(pb, k, mlp2, &self.c_hidden, &self.c, batch, params::Epilogue::Silu, Extras { aux: z2, ..Default::default() })?;
        for (blk, m) in w.blocks.iter().zip(&self.mods) {
            linear(pb, k, blk.adaln.as_ref().unwrap(), &self.c, m, batch, params::Epilogue::Store, Extras::default())?;
        }
        linear(pb, k, w.final_adaln.as_ref().unwrap(), &self.c, &self.final_mod, batch, params::Epilogue::Store, Extras::default())
    }
}

/// Activations of one pass over `rows` tokens (all sequences together).
pub struct LayerBuffers<'a> {
    pub x: &'a wgpu::Buffer,
    pub h: &'a wgpu::Buffer,
    pub att: &'a wgpu::Buffer,
    pub mlp: &'a wgpu::Buffer,
    /// Where q|k|v rows go (a scratch buffer, or a layer's KV cache) and how rows map there.
    pub qkv: &'a wgpu::Buffer,
    pub qkv_rows: Option<params::Matmul>,
}

/// x = E[tokens], one dispatch per row range of the table.
pub fn embedding(pb: &mut ProgramBuilder, k: &Kernels, w: &Weights, tokens: &wgpu::Buffer, x: &wgpu::Buffer, rows: usize) -> Result<()> {
    let d = w.vocab_embed.cols;
    for part in &w.vocab_embed.parts {
        let groups = pb.fold(((rows * d) as u64).div_ceil(256))?;
        pb.dispatch(
            "embedding",
            &k.embedding,
            &params::embedding(rows as u32, d as u32, part.row_start as u32, part.rows as u32),
            vec![tokens.into(), (&part.buffer).into(), x.into()],
            groups,
        );
    }
    Ok(())
}

/// One DiT block over `rows_per_seq` tokens of each of `batch` sequences:
///   x += gate_msa · attn_out(attention(qkv(LN1(x)·(1+scale_msa)+shift_msa)))
///   x += gate_mlp · mlp.2(gelu(mlp.0(LN2(x)·(1+scale_mlp)+shift_mlp)))
/// `attention` says where queries and keys live; `qkv_only` stops after writing q|k|v (a cache commit
/// of the last block needs nothing more).
#[allow(clippy::too_many_arguments)]
pub fn block(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    blk: &BlockWeights,
    modv: Option<&wgpu::Buffer>,
    buf: &LayerBuffers,
    batch: usize,
    rows_per_seq: usize,
    attention: params::Attention,
    rope: (&wgpu::Buffer, &wgpu::Buffer),
    qkv_only: bool,
) -> Result<()> {
    let d = (attention.n_heads * attention.head_dim) as usize;
    let rows = batch * rows_per_seq;
    let ln = |shift: usize, scale: usize| params::LayerNorm {
        n_rows: rows as u32,
        dim: d as u32,
        in_rows_per_seq: rows_per_seq as u32,
        out_rows_per_seq: rows_per_seq as u32,
        in_row_offset: 0,
        modulation: modv.map(|_| ((shift * d) as u32, (scale * d) as u32, (6 * d) as u32)),
        use_row_index: false,
    };
    let gate = |chunk: usize| modv.map(|m| (m, chunk * d, 6 * d, rows_per_seq));
    layernorm(pb, k, buf.x, &blk.norm1, modv, buf.h, ln(0, 1), None)?;
    linear(pb, k, &blk.attn_qkv, buf.h, buf.qkv, rows, params::Epilogue::Store, Extras { out_rows: buf.qkv_rows, ..Default::default() })?;
    if qkv_only {
        return Ok(());
    }
    pb.dispatch(
        "attention",
        &k.attention,
        &attention.words(),
        vec![buf.qkv.into(), buf.qkv.into(), rope.0.into(), rope.1.into(), buf.att.into(), (&k.dummy_out).into()],
        attention.groups(batch as u32),
    );
    let residual = if modv.is_some() { params::Epilogue::GatedResidual } else { params::Epilogue::Residual };
    linear(pb, k, &blk.attn_out, buf.att, buf.x, rows, residual, Extras { gate: gate(2), ..Default::default() })?;
    layernorm(pb, k, buf.x, &blk.norm2, modv, buf.h, ln(3, 4), None)?;
    linear(pb, k, &blk.mlp_up, buf.h, buf.mlp, rows, params::Epilogue::Gelu, Extras::default())?;
    linear(pb, k, &blk.mlp_down, buf.mlp, buf.x, rows, residual, Extras { gate: gate(5), ..Default::default() })
}

/// The optional parts of a Linear's dispatch.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    /// (modulation buffer, float offset of the gate chunk, row stride, rows per sequence) for the
    /// gated residual.
    pub gate: Option<(&'a wgpu::Buffer, usize, usize, usize)>,
    /// An output-row mapping (into a KV cache).
    pub out_rows: Option<params::Matmul>,
    /// Where to keep the value before the activation / after dropout (the backward pass needs it).
    pub aux: Option<&'a wgpu::Buffer>,
    /// (probability, seed, salt) of dropout in a residual epilogue.
    pub dropout: Option<(f32, u32, u32)>,
}

/// One matmul dispatch (`shaders/matmul.wgsl`), with the narrow tile for few rows; bias, gate and
/// aux are optional.
#[allow(clippy::too_many_arguments)]
pub fn gemm(pb: &mut ProgramBuilder, k: &Kernels, label: &'static str, p: params::Matmul, a: &wgpu::Buffer, b: &wgpu::Buffer, bias: Option<&wgpu::Buffer>, gate: Option<&wgpu::Buffer>, out: &wgpu::Buffer, aux: Option<&wgpu::Buffer>) {
    let (pipeline, tile_rows) = k.matmul_for(p.m);
    let bias: Slice = bias.unwrap_or(&k.dummy).into();
    pb.dispatch(label, pipeline, &p.words(), vec![a.into(), b.into(), bias, gate.unwrap_or(&k.dummy).into(), out.into(), aux.unwrap_or(&k.dummy_out).into()], p.groups(tile_rows));
    pb.annotate_flops(2 * p.m as u64 * p.n as u64 * p.k as u64);
}

/// y = epilogue(x · Wᵀ + b) over `m` rows, one dispatch per row range of W.
#[allow(clippy::too_many_arguments)]
pub fn linear(pb: &mut ProgramBuilder, k: &Kernels, lin: &Linear, a: &wgpu::Buffer, out: &wgpu::Buffer, m: usize, epilogue: params::Epilogue, x: Extras) -> Result<()> {
    let (n_total, kk) = (lin.out_features(), lin.in_features());
    for part in &lin.weight.parts {
        let mut mp = params::Matmul {
            ldc: n_total as u32,
            out_col_offset: part.row_start as u32,
            has_bias: lin.bias.is_some(),
            bias_offset: part.row_start as u32,
            epilogue,
            store_aux: x.aux.is_some(),
            ..params::Matmul::plain(m as u32, part.rows as u32, kk as u32)
        };
        if let Some(o) = x.out_rows {
            (mp.out_rows_per_seq, mp.out_seq_stride, mp.out_row_offset) = (o.out_rows_per_seq, o.out_seq_stride, o.out_row_offset);
        }
        if let Some((p, seed, salt)) = x.dropout {
            (mp.dropout, mp.seed, mp.salt) = (p, seed, salt);
        }
        if let Some((_, offset, stride, rows_per_seq)) = x.gate {
            (mp.gate_offset, mp.gate_stride, mp.rows_per_seq) = ((offset + part.row_start) as u32, stride as u32, rows_per_seq as u32);
        }
        gemm(pb, k, "matmul", mp, a, &part.buffer, lin.bias.as_ref(), x.gate.map(|g| g.0), out, x.aux);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    modv: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
    p: params::LayerNorm,
    row_index: Option<&wgpu::Buffer>,
) -> Result<()> {
    let groups = pb.fold(p.n_rows as u64)?;
    pb.dispatch(
        "layernorm",
        &k.layernorm,
        &p.words(),
        vec![x.into(), weight.into(), modv.unwrap_or(&k.dummy).into(), out.into(), row_index.unwrap_or(&k.dummy).into()],
        groups,
    );
    Ok(())
}

/// The head over `rows` normalised rows, `chunk_rows` at a time into `logits`; `consume(pb, start, n)`
/// records what reads each chunk (the loss or the sampler) before the next chunk overwrites it.
pub fn head_chunks(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    w: &Weights,
    normed: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    rows: usize,
    chunk_rows: usize,
    mut consume: impl FnMut(&mut ProgramBuilder, usize, usize) -> Result<()>,
) -> Result<()> {
    let (d, v) = (w.head.in_features(), w.head.out_features());
    let bias = w.head.bias.as_ref().expect("the head has a bias");
    let mut start = 0;
    while start < rows {
        let n = chunk_rows.min(rows - start);
        for part in &w.head.weight.parts {
            let mp = params::Matmul {
                a_offset: (start * d) as u32,
                ldc: v as u32,
                out_col_offset: part.row_start as u32,
                has_bias: true,
                bias_offset: part.row_start as u32,
                ..params::Matmul::plain(n as u32, part.rows as u32, d as u32)
            };
            gemm(pb, k, "head", mp, normed, &part.buffer, Some(bias), None, logits, None);
        }
        consume(pb, start, n)?;
        start += n;
    }
    Ok(())
}

/// Rows of logits that fit one chunk: at most 64 MiB and one storage binding.
pub fn logits_chunk_rows(ctx: &GpuContext, vocab: usize, rows: usize) -> usize {
    const LOGITS_CHUNK_BYTES: u64 = 64 << 20;
    ((LOGITS_CHUNK_BYTES.min(ctx.split_threshold()) / (vocab as u64 * 4)) as usize).clamp(1, rows.max(1))
}
