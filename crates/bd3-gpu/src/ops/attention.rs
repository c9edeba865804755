//! `shaders/attention.wgsl` (forward, online softmax), `attention_dq.wgsl` and `attention_dkv.wgsl`
//! (backward, recomputing the scores from the forward's log-sum-exp), `attention_decode.wgsl` and
//! `attention_combine.wgsl` (the forward for a few queries, split over the keys), all but the last
//! behind `attention_common.wgsl`: parameters, masks as key/query intervals, rotary helpers.
//!
//! Flash-attention-2 shape: a workgroup owns a tile of queries (forward, dq) or keys (dkv) and walks
//! tiles of the other side staged in workgroup memory. Specialised per head dimension: private
//! arrays need constant sizes, so HEAD_DIM and the tile sizes that keep workgroup memory within the
//! budget are compiled in ([`shaders::attention_tiles`]).
//!
//! A sampling call has a block's few queries (16) against a cache of up to the model length: one
//! query tile per head is 12 workgroups for the small model. There [`record`] picks the decode
//! path (flash-decoding): a workgroup per (key chunk, head, sequence) with all the queries, then a
//! combine pass over the chunks ([`Variant`], [`choose`]).
//!
//! Mixed precision: the three training kernels take their tensor-core twins ([`coop_kernels`]:
//! `attention_coop.wgsl`, `attention_dq_coop.wgsl`, `attention_dkv_coop.wgsl`; every product on
//! 16×16×16 f16 tiles with f32 sums, softmax and dS in f32) where the head dimension is a multiple
//! of 16 and the adapter's workgroup memory holds them; the decode path stays f32.

use super::{bindings, words, Kernels, TrainKernels};
use crate::context::GpuContext;
use crate::program::{Cost, Kernel, ProgramBuilder};
use crate::shaders::{self, AttentionTiles, CoopAttention};
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
        /// Key chunks of the decode kernel (1 for every other kernel).
        pub n_splits: u32,
        /// Keys per chunk of the decode kernel (n_kv for every other kernel).
        pub chunk_len: u32,
    }
}

uniform_params! {
    /// attention_combine.wgsl.
    pub struct CombineParams {
        pub n_q: u32,
        pub n_heads: u32,
        pub head_dim: u32,
        pub n_splits: u32,
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
        /// Scratch of the split decode path, [`partials_floats`] floats (the caller allocates it once,
        /// outside its loops); without it the decode path runs unsplit. Bound only by
        /// attention_decode.wgsl: attention.wgsl's bindings are all but this one
        /// ([`Bindings::TILED_NAMES`]).
        partials: OptOut2,
    }
}

impl Bindings<'_> {
    /// The bindings of attention.wgsl: every one but `partials`.
    pub const TILED_NAMES: &'static [&'static str] = Self::NAMES.split_at(Self::NAMES.len() - 1).0;
}

bindings! {
    /// The merge of the decode path's key chunks.
    pub struct CombineBindings {
        partials: Req,
        out: Req,
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
    /// The forward for at most [`DECODE_QUERIES`] queries, one workgroup per key chunk.
    Decode,
}

impl Pass {
    pub fn file(self) -> &'static str {
        match self {
            Pass::Forward => "attention.wgsl",
            Pass::QueryGrad => "attention_dq.wgsl",
            Pass::KeyValueGrad => "attention_dkv.wgsl",
            Pass::Decode => "attention_decode.wgsl",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Pass::Forward => "attention",
            Pass::QueryGrad => "attention_dq",
            Pass::KeyValueGrad => "attention_dkv",
            Pass::Decode => "attention_decode",
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

/// Threads of a tensor-core attention kernel on an adapter whose subgroups have `subgroup_size`
/// invocations (2 subgroups), or of its emulated twin (`None`: 2 emulated subgroups of 32).
pub fn coop_threads(subgroup_size: Option<u32>) -> u32 {
    2 * subgroup_size.unwrap_or(32)
}

/// The attention kernels of mixed precision: forward, query gradient and key/value gradient with
/// their products on tensor cores ([`CoopAttention`]).
pub struct CoopKernels {
    pub forward: Kernel,
    pub query_grad: Kernel,
    pub key_value_grad: Kernel,
}

impl CoopKernels {
    fn get(&self, pass: CoopAttention) -> &Kernel {
        match pass {
            CoopAttention::Forward => &self.forward,
            CoopAttention::QueryGrad => &self.query_grad,
            CoopAttention::KeyValueGrad => &self.key_value_grad,
        }
    }
}

/// The tensor-core attention kernels for mixed precision (with the adapter's `subgroup_size`), or
/// their emulated twins (`None`: the tests' stand-in on adapters without cooperative matrices). None
/// where they cannot run: a head dimension that is not a multiple of 16, or a kernel needing more
/// workgroup memory than the adapter has (at head dim 64: 22.4, 30.3 and 26.3 KiB).
pub async fn coop_kernels(
    ctx: &GpuContext,
    head_dim: usize,
    subgroup_size: Option<u32>,
) -> Result<Option<CoopKernels>> {
    let limit = ctx.limits.max_compute_workgroup_storage_size as usize;
    let fits = CoopAttention::ALL
        .iter()
        .all(|pass| pass.workgroup_bytes(head_dim) <= limit);
    if !head_dim.is_multiple_of(16) || !fits {
        return Ok(None);
    }
    let build = |pass: CoopAttention| async move {
        let source = pass.source(head_dim, subgroup_size).map_err(Error::Gpu)?;
        ctx.pipeline(
            pass.label(subgroup_size.is_none()),
            &source,
            coop_threads(subgroup_size),
        )
        .await
    };
    Ok(Some(CoopKernels {
        forward: build(CoopAttention::Forward).await?,
        query_grad: build(CoopAttention::QueryGrad).await?,
        key_value_grad: build(CoopAttention::KeyValueGrad).await?,
    }))
}

/// The tensor-core kernel of `pass` when the model runs in mixed precision and has them.
fn coop_kernel(k: &Kernels, pass: CoopAttention) -> Option<&Kernel> {
    k.mixed
        .as_ref()
        .and_then(|m| m.attention.as_ref())
        .map(|c| c.get(pass))
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
            n_splits: 1,
            chunk_len: self.n_kv,
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

/// Queries the decode kernel holds (attention_decode.wgsl's BQ): a sampling call's block of 16.
pub const DECODE_QUERIES: u32 = 16;

/// Fewest keys per chunk the decode path splits into on its own: a chunk shorter than one 32-key
/// tile costs a workgroup (its queries staged, its partial written and merged) for less work than
/// that overhead.
pub const DECODE_MIN_CHUNK: u32 = 32;

/// How a forward attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// attention.wgsl: a workgroup per query tile, head and sequence.
    Tiled,
    /// attention_decode.wgsl over `splits` key chunks (a workgroup per chunk, head and sequence,
    /// with all queries), then attention_combine.wgsl when `splits` > 1. At most
    /// [`DECODE_QUERIES`] queries.
    Decode { splits: u32 },
}

/// Key chunks the decode path of `a` splits into on its own: enough (chunk, head, sequence)
/// workgroups for two per compute unit, but chunks of at least [`DECODE_MIN_CHUNK`] keys of the
/// key capacity `kv_seq_stride` (not of `n_kv`: a call program is recorded once per shape while its
/// cache fills, so the dispatch must not depend on the keys filled so far).
pub fn decode_splits(compute_units: u32, a: &Attention) -> u32 {
    let groups = (a.n_heads * a.batch).max(1);
    let wanted = (2 * compute_units).div_ceil(groups);
    let most = a.kv_seq_stride.div_ceil(DECODE_MIN_CHUNK).max(1);
    wanted.clamp(1, most)
}

/// Floats of the `partials` scratch that `splits` key chunks of `a` need.
pub fn partials_floats_for(a: &Attention, splits: u32) -> usize {
    a.batch as usize
        * a.n_heads as usize
        * a.n_q as usize
        * splits as usize
        * (a.head_dim as usize + 2)
}

/// Floats of the `partials` scratch [`record`] uses for `a` on this device (0: it needs none).
pub fn partials_floats(ctx: &GpuContext, a: &Attention) -> usize {
    if a.n_q > DECODE_QUERIES {
        return 0;
    }
    match decode_splits(ctx.compute_units, a) {
        1 => 0,
        s => partials_floats_for(a, s),
    }
}

/// The variant [`record`] runs: the decode path for at most [`DECODE_QUERIES`] queries when no
/// log-sum-exp is asked for (training keeps attention.wgsl, which its backward kernels mirror),
/// split as [`decode_splits`] says if `partials` holds that many chunks, unsplit otherwise.
pub fn choose(ctx: &GpuContext, a: &Attention, b: &Bindings) -> Variant {
    if a.n_q > DECODE_QUERIES || b.lse_delta.is_some() {
        return Variant::Tiled;
    }
    let splits = decode_splits(ctx.compute_units, a);
    let room = b.partials.map_or(0, |p| p.size() / 4) as usize;
    Variant::Decode {
        splits: if room >= partials_floats_for(a, splits) {
            splits
        } else {
            1
        },
    }
}

/// Record the forward attention `a` in the variant [`choose`] picks.
pub fn record(pb: &mut ProgramBuilder, k: &Kernels, a: &Attention, b: Bindings) {
    let variant = choose(pb.context(), a, &b);
    record_variant(pb, k, a, b, variant).expect("choose picks a variant the bindings allow");
}

/// Record the forward attention `a` as `variant` (tests force one); an error if `a` has too many
/// queries for the decode path or `partials` is missing or too small for its chunks.
pub fn record_variant(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    a: &Attention,
    b: Bindings,
    variant: Variant,
) -> Result<()> {
    let write_lse = b.lse_delta.is_some();
    let mut slices = b.slices(&k.placeholders);
    let splits = match variant {
        Variant::Tiled => {
            slices.truncate(Bindings::TILED_NAMES.len());
            // QKᵀ and PV; the output is written once. In mixed precision on tensor cores where the
            // head dimension allows it.
            let cost = a.cost(2, 1);
            let (kernel, rows) = match coop_kernel(k, CoopAttention::Forward) {
                Some(coop) => (coop, CoopAttention::Forward.rows_per_workgroup()),
                None => (&k.attention.kernel, k.attention.tiles.q),
            };
            pb.dispatch(
                "attention",
                kernel,
                &a.params(write_lse),
                slices,
                a.groups(a.n_q, rows),
                cost,
            );
            return Ok(());
        }
        Variant::Decode { splits } => splits,
    };
    if a.n_q > DECODE_QUERIES || splits == 0 {
        return Err(Error::Invalid(format!(
            "the decode attention takes 1 to {DECODE_QUERIES} queries and at least one key chunk, \
             not {} queries in {splits} chunks",
            a.n_q
        )));
    }
    let need = partials_floats_for(a, splits);
    if splits > 1 && b.partials.is_none_or(|p| (p.size() / 4) < need as u64) {
        return Err(Error::Invalid(format!(
            "{splits} key chunks need {need} floats of attention partials"
        )));
    }
    let chunk_len = if splits == 1 {
        a.n_kv
    } else {
        // While a cache fills, chunks stay at least DECODE_MIN_CHUNK long (the trailing workgroups
        // find no keys and leave empty partials), unless the split count asks for shorter ones even
        // at full capacity (a count forced by a test).
        let floor = DECODE_MIN_CHUNK.min(a.kv_seq_stride.div_ceil(splits));
        a.n_kv.div_ceil(splits).max(floor)
    };
    let p = Params {
        n_splits: splits,
        chunk_len: chunk_len.max(1),
        ..a.params(write_lse)
    };
    let hb = (a.n_heads * a.batch) as u64;
    let (d, n_q, s) = (a.head_dim as u64, a.n_q as u64, splits as u64);
    // Each workgroup stages the queries; keys and values are read once; per (query, chunk) either
    // the output or a partial record (o, m, l) is written.
    let written = if splits == 1 {
        n_q * d
    } else {
        n_q * s * (d + 2)
    };
    let cost = Cost {
        flops: 2 * 2 * a.visible_pairs() * hb * d,
        bytes: words(hb * (s * n_q * d + 2 * a.n_kv as u64 * d + written)),
    };
    pb.dispatch(
        "attention decode",
        &k.attention_decode.kernel,
        &p,
        slices,
        [splits, a.n_heads, a.batch],
        cost,
    );
    if splits == 1 {
        return Ok(());
    }
    let cp = CombineParams {
        n_q: a.n_q,
        n_heads: a.n_heads,
        head_dim: a.head_dim,
        n_splits: splits,
        write_lse: write_lse as u32,
    };
    let cb = CombineBindings {
        partials: b.partials.expect("checked above"),
        out: b.out,
        lse_delta: b.lse_delta,
    };
    // Per (query, column): a weight and a multiply-add per chunk; the partials are read once and
    // the output (and log-sum-exp) written once.
    let cost = Cost {
        flops: 3 * hb * n_q * s * d,
        bytes: words(hb * n_q * (s * (d + 2) + d + write_lse as u64)),
    };
    pb.dispatch(
        "attention combine",
        &k.attention_combine,
        &cp,
        cb.slices(&k.placeholders),
        [a.n_q, a.n_heads, a.batch],
        cost,
    );
    Ok(())
}

pub fn record_query_grad(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: &Attention,
    b: QueryGradBindings,
) {
    // QKᵀ, dO·Vᵀ, dS·K; reads O and dO, writes dq. In mixed precision on tensor cores.
    let cost = a.cost(3, 3);
    let (kernel, rows) = match coop_kernel(k, CoopAttention::QueryGrad) {
        Some(coop) => (coop, CoopAttention::QueryGrad.rows_per_workgroup()),
        None => (&tk.attention_dq.kernel, tk.attention_dq.tiles.q),
    };
    pb.dispatch(
        "attention_dq",
        kernel,
        &a.params(true),
        b.slices(&k.placeholders),
        a.groups(a.n_q, rows),
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
    // QKᵀ, dO·Vᵀ, Pᵀ·dO, dSᵀ·Q; reads dO, writes dk and dv. In mixed precision on tensor cores.
    let cost = a.cost(4, 3);
    let (kernel, rows) = match coop_kernel(k, CoopAttention::KeyValueGrad) {
        Some(coop) => (coop, CoopAttention::KeyValueGrad.rows_per_workgroup()),
        None => (&tk.attention_dkv.kernel, tk.attention_dkv.tiles.k),
    };
    pb.dispatch(
        "attention_dkv",
        kernel,
        &a.params(true),
        b.slices(&k.placeholders),
        a.groups(a.n_kv, rows),
        cost,
    );
}
