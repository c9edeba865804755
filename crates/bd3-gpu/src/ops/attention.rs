//! `shaders/attention.wgsl` (forward, online softmax), `attention_dq.wgsl` and `attention_dkv.wgsl`
//! (backward, recomputing the scores from the forward's log-sum-exp), all behind
//! `attention_common.wgsl`: parameters, masks as key/query intervals, rotary helpers.
//!
//! Flash-attention-2 shape: a workgroup owns a tile of queries (forward, dq) or keys (dkv) and walks
//! tiles of the other side staged in workgroup memory. Specialised per head dimension: private
//! arrays need constant sizes, so HEAD_DIM and the tile sizes that keep workgroup memory within the
//! budget are compiled in ([`shaders::attention_tiles`]).

use super::{bindings, words, Kernels, TrainKernels};
use crate::context::GpuContext;
use crate::program::{Cost, Kernel, ProgramBuilder};
use crate::shaders::{self, AttentionTiles};
use crate::uniform_params;
use bd3_model::{AttentionMask, Error, Result};

/// Threads per workgroup: an 8 × 8 grid over the tile pair (attention_common.wgsl).
pub const THREADS: u32 = 64;

/// An attention kernel and the tiles it was compiled with (the dispatch size depends on them).
pub struct TiledKernel {
    pub kernel: Kernel,
    pub tiles: AttentionTiles,
}

uniform_params! {
    pub struct Params {
        pub n_q: u32,
        pub n_kv: u32,
        pub n_heads: u32,
        pub q_seq_stride: u32,
        pub q_row_offset: u32,
        pub kv_seq_stride: u32,
        pub q_index_offset: u32,
        pub mask_mode: u32,
        pub block_size: u32,
        pub half_len: u32,
        pub pos_period: u32,
        pub scale: f32,
        pub pos_offset: u32,
        pub write_lse: u32,
    }
}

bindings! {
    /// The forward pass.
    pub struct Bindings {
        /// Rows holding the queries ([q | k | v] rows of width 3·D).
        qrows: Req,
        /// Rows holding the keys and values (the same buffer in training; the KV cache when sampling).
        kvrows: Req,
        rope_cos: Req,
        rope_sin: Req,
        out: Req,
        /// Per query: log-sum-exp (slot 0) for the backward pass.
        lse_delta: OptOut,
    }
}

bindings! {
    /// The query gradient.
    pub struct QueryGradBindings {
        qkv: Req,
        rope_cos: Req,
        rope_sin: Req,
        o: Req,
        d_o: Req,
        lse_delta: Req,
        dqkv: Req,
    }
}

bindings! {
    /// The key and value gradients.
    pub struct KeyValueGradBindings {
        qkv: Req,
        rope_cos: Req,
        rope_sin: Req,
        d_o: Req,
        lse_delta: Req,
        dqkv: Req,
    }
}

/// Which of the three kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    QueryGrad,
    KeyValueGrad,
}

impl Pass {
    pub fn file(self) -> &'static str {
        match self {
            Pass::Forward => "attention.wgsl",
            Pass::QueryGrad => "attention_dq.wgsl",
            Pass::KeyValueGrad => "attention_dkv.wgsl",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Pass::Forward => "attention",
            Pass::QueryGrad => "attention_dq",
            Pass::KeyValueGrad => "attention_dkv",
        }
    }
}

/// Most workgroup memory a native attention kernel is specialised for: 32 KiB doubles the forward's
/// query tile at head dim 64 (64 rows instead of 32) while leaving room for two workgroups per SM on
/// current GPUs (48–228 KiB of shared memory each).
pub const NATIVE_WORKGROUP_MEMORY_CAP: usize = 32 * 1024;

/// Workgroup memory the attention kernels are specialised for on this device: the browser default
/// (16 KiB) in the page, where adapters are not asked for more; natively what the device allows, up
/// to [`NATIVE_WORKGROUP_MEMORY_CAP`].
pub fn workgroup_budget(ctx: &GpuContext) -> usize {
    if cfg!(target_arch = "wasm32") {
        shaders::WORKGROUP_MEMORY_BUDGET
    } else {
        (ctx.limits.max_compute_workgroup_storage_size as usize).clamp(
            shaders::WORKGROUP_MEMORY_BUDGET,
            NATIVE_WORKGROUP_MEMORY_CAP,
        )
    }
}

/// The kernel of `pass` for this device ([`workgroup_budget`]).
pub async fn kernel(ctx: &GpuContext, pass: Pass, head_dim: usize) -> Result<TiledKernel> {
    kernel_within(ctx, pass, head_dim, workgroup_budget(ctx)).await
}

/// The kernel of `pass` with tiles chosen for `budget` bytes of workgroup memory (at most what the
/// device allows).
pub async fn kernel_within(
    ctx: &GpuContext,
    pass: Pass,
    head_dim: usize,
    budget: usize,
) -> Result<TiledKernel> {
    let (source, tiles) =
        shaders::attention_file_within(pass.file(), head_dim, budget).map_err(Error::Gpu)?;
    let kernel = ctx.pipeline(pass.label(), &source, THREADS).await?;
    Ok(TiledKernel { kernel, tiles })
}

/// Where queries and keys live and which may see which.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub n_q: u32,
    pub n_kv: u32,
    pub n_heads: u32,
    pub head_dim: u32,
    pub q_seq_stride: u32,
    pub q_row_offset: u32,
    pub kv_seq_stride: u32,
    /// Logical index of the first query (its place among the keys for the mask).
    pub q_index_offset: u32,
    pub mask: AttentionMask,
    pub pos_period: u32,
    /// Rotary position of logical index i is (i + pos_offset) mod pos_period (ring-buffer caches).
    pub pos_offset: u32,
    pub batch: u32,
}

impl Attention {
    /// Every token of each length-`seq` sequence attends to its own sequence (training layout).
    pub fn self_attention(
        batch: u32,
        seq: u32,
        n_heads: u32,
        head_dim: u32,
        mask: AttentionMask,
        pos_period: u32,
    ) -> Attention {
        Attention {
            n_q: seq,
            n_kv: seq,
            n_heads,
            head_dim,
            q_seq_stride: seq,
            q_row_offset: 0,
            kv_seq_stride: seq,
            q_index_offset: 0,
            mask,
            pos_period,
            pos_offset: 0,
            batch,
        }
    }

    pub fn params(&self, write_lse: bool) -> Params {
        Params {
            n_q: self.n_q,
            n_kv: self.n_kv,
            n_heads: self.n_heads,
            q_seq_stride: self.q_seq_stride,
            q_row_offset: self.q_row_offset,
            kv_seq_stride: self.kv_seq_stride,
            q_index_offset: self.q_index_offset,
            mask_mode: self.mask.code(),
            block_size: self.mask.block_size() as u32,
            half_len: self.mask.half_len().max(1) as u32,
            pos_period: self.pos_period,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            pos_offset: self.pos_offset,
            write_lse: write_lse as u32,
        }
    }

    /// (query, key) pairs the mask allows, per head and sequence.
    pub fn visible_pairs(&self) -> u64 {
        (0..self.n_q as usize)
            .map(|i| {
                self.mask
                    .intervals(self.q_index_offset as usize + i, self.n_kv as usize)
                    .iter()
                    .map(|(a, b)| b.saturating_sub(*a) as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// One workgroup per tile of `rows` (queries or keys) `per_group` at a time, head and sequence.
    fn groups(&self, rows: u32, per_group: usize) -> [u32; 3] {
        [rows.div_ceil(per_group as u32), self.n_heads, self.batch]
    }

    /// Work of one pass: `products` head-dim dot products / axpys per visible pair; q, k, v, the
    /// output and (backward) its gradient each read once per (head, sequence).
    fn cost(&self, products: u64, row_tensors: u64) -> Cost {
        let hb = (self.n_heads * self.batch) as u64;
        let pairs = self.visible_pairs() * hb;
        let d = self.head_dim as u64;
        let rows = (self.n_q as u64 + 2 * self.n_kv as u64) * d * hb;
        Cost {
            flops: 2 * products * pairs * d,
            bytes: words(rows + row_tensors * self.n_q as u64 * d * hb),
        }
    }
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, a: &Attention, b: Bindings) {
    let p = a.params(b.lse_delta.is_some());
    // QKᵀ and PV; the output is written once.
    let cost = a.cost(2, 1);
    pb.dispatch(
        "attention",
        &k.attention.kernel,
        &p,
        b.slices(&k.placeholders),
        a.groups(a.n_q, k.attention.tiles.q),
        cost,
    );
}

pub fn record_query_grad(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: &Attention,
    b: QueryGradBindings,
) {
    // QKᵀ, dO·Vᵀ, dS·K; reads O and dO, writes dq.
    let cost = a.cost(3, 3);
    pb.dispatch(
        "attention_dq",
        &tk.attention_dq.kernel,
        &a.params(true),
        b.slices(&k.placeholders),
        a.groups(a.n_q, tk.attention_dq.tiles.q),
        cost,
    );
}

pub fn record_key_value_grad(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: &Attention,
    b: KeyValueGradBindings,
) {
    // QKᵀ, dO·Vᵀ, Pᵀ·dO, dSᵀ·Q; reads dO, writes dk and dv.
    let cost = a.cost(4, 3);
    pb.dispatch(
        "attention_dkv",
        &tk.attention_dkv.kernel,
        &a.params(true),
        b.slices(&k.placeholders),
        a.groups(a.n_kv, tk.attention_dkv.tiles.k),
        cost,
    );
}
