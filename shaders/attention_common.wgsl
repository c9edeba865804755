// Shared by attention.wgsl, attention_dq.wgsl, attention_dkv.wgsl, attention_decode.wgsl and the
// tensor-core forward (attention_coop_common.wgsl), which include this file: the parameter block,
// the attention masks as intervals, rotary embedding, the tile constants the host substitutes, and
// the per-tile mask bounds.
//
// Masks (mask_mode): 0 full, 1 causal, 2 block-causal, 3 block-diffusion over x_t ⊕ x_0 with half
// length half_len (official models/dit.py: block_diff_mask). Each query's allowed keys are at most
// two intervals, and so are each key's allowed queries (bd3_model::mask::AttentionMask::{intervals,
// query_intervals} on the CPU).
//
// Tiling (flash-attention-2 shape, Dao 2023): a workgroup of WG = 64 threads owns a tile of rows
// (BQ queries for the forward and dq kernels, BK keys for dkv) and walks tiles of the other side.
// The threads form an 8 × 8 grid: thread (g, n) = (lid / LANES, lid % LANES) holds the scores of
// queries g + LANES·r (r < RQ) against keys n + LANES·c (c < RK) of the current pair of tiles, and
// for the products with head vectors the columns n + LANES·j (j < CPT) of its rows. Every operand
// of an inner loop comes from workgroup memory, staged once per tile and shared by all threads, so
// a thread does RQ·RK FMAs per RQ + RK loads for the scores and RQ·CPT per RQ + CPT for the
// products. Register use is bounded by RQ·RK + RQ·CPT + a few floats (≤ 64 for every head dim up
// to 128), never a whole head vector per key.
// HEAD_DIM, BQ and BK are substituted per model (shaders::attention_file): private arrays need
// constant sizes, and BQ, BK are the largest multiples of LANES whose tiles keep the kernel's
// workgroup memory within the budget (16 KiB, the browser default, unless the adapter allows more).
// Staged head vectors use a padded row stride HDP = HEAD_DIM + 1 (odd), so the 8 lanes that read
// one column of 8 different rows hit different memory banks.
//
// The includer binds `rope_cos` and `rope_sin` (array<f32>, [P, HALF]).

const HEAD_DIM: u32 = 64u;
const BQ: u32 = 32u;
const BK: u32 = 16u;
const HALF: u32 = HEAD_DIM / 2u;
const HDP: u32 = HEAD_DIM + 1u;
const LANES: u32 = 8u;
const WG: u32 = 64u;
const RQ: u32 = BQ / LANES;
const RK: u32 = BK / LANES;
const CPT: u32 = (HEAD_DIM + LANES - 1u) / LANES;
// A masked score. Real scores are finite and far above it; exp(MASKED − m) is never taken (masked
// entries are tested with `> MASKED_TEST` and given probability 0), so a row that sees nothing yet
// keeps its running maximum at MASKED without producing NaN.
const MASKED: f32 = -3.0e38;
const MASKED_TEST: f32 = -1.0e38;

struct Params {
    n_q: u32,
    n_kv: u32,
    n_heads: u32,
    q_seq_stride: u32,
    q_row_offset: u32,
    kv_seq_stride: u32,
    q_index_offset: u32,
    mask_mode: u32,
    block_size: u32,
    half_len: u32,
    pos_period: u32,
    scale: f32,
    pos_offset: u32,
    write_lse: u32,
    // Split-KV decoding (attention_decode.wgsl): keys are cut into n_splits chunks of chunk_len.
    // The other kernels ignore both.
    n_splits: u32,
    chunk_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Allowed keys of logical query q as [x, y) ∪ [z, w).
fn key_intervals(q: u32) -> vec4<u32> {
    var iv = vec4<u32>(0u, p.n_kv, 0u, 0u);
    switch p.mask_mode {
        case 1u: { iv = vec4<u32>(0u, q + 1u, 0u, 0u); }
        case 2u: { iv = vec4<u32>(0u, (q / p.block_size + 1u) * p.block_size, 0u, 0u); }
        case 3u: {
            let l = p.half_len;
            let b = (q % l) / p.block_size;
            let block_end = min((b + 1u) * p.block_size, l);
            if (q < l) {
                iv = vec4<u32>(b * p.block_size, block_end, l, l + b * p.block_size);
            } else {
                iv = vec4<u32>(l, l + block_end, 0u, 0u);
            }
        }
        default: {}
    }
    return min(iv, vec4<u32>(p.n_kv));
}

// Queries (logical indices among n_q) that may see key k, as [x, y) ∪ [z, w).
fn query_intervals(k: u32) -> vec4<u32> {
    var iv = vec4<u32>(0u, p.n_q, 0u, 0u);
    switch p.mask_mode {
        case 1u: { iv = vec4<u32>(k, p.n_q, 0u, 0u); }
        case 2u: { iv = vec4<u32>((k / p.block_size) * p.block_size, p.n_q, 0u, 0u); }
        case 3u: {
            let l = p.half_len;
            let b = (k % l) / p.block_size;
            let block_end = min((b + 1u) * p.block_size, l);
            if (k < l) {
                // A noisy key is seen by its own noisy block only.
                iv = vec4<u32>(b * p.block_size, block_end, 0u, 0u);
            } else {
                // A clean key: noisy queries of later blocks, clean queries of its block and later.
                iv = vec4<u32>(block_end, l, l + b * p.block_size, 2u * l);
            }
        }
        default: {}
    }
    return min(iv, vec4<u32>(p.n_q));
}

fn in_intervals(iv: vec4<u32>, x: u32) -> bool {
    return (x >= iv.x && x < iv.y) || (x >= iv.z && x < iv.w);
}

fn overlaps(iv: vec4<u32>, a: u32, b: u32) -> bool {
    return (iv.x < b && a < iv.y) || (iv.z < b && a < iv.w);
}

// Whether [a, b) lies inside one of the two intervals.
fn covers(iv: vec4<u32>, a: u32, b: u32) -> bool {
    return (iv.x <= a && b <= iv.y) || (iv.z <= a && b <= iv.w);
}

// Rotary embedding of the pair (x_j, x_{j+half}) at table row `pos` (rope_cos / rope_sin are bound
// by each kernel): x'_j = x_j cos − x_{j+half} sin, x'_{j+half} = x_{j+half} cos + x_j sin.
fn rotate_pair(lo: f32, hi: f32, pos: u32, j: u32) -> vec2<f32> {
    let c = rope_cos[pos * HALF + j];
    let s = rope_sin[pos * HALF + j];
    return vec2<f32>(lo * c - hi * s, hi * c + lo * s);
}

// The transpose of rotate_pair, for gradients: dx = Rᵀ dx'.
fn unrotate_pair(lo: f32, hi: f32, pos: u32, j: u32) -> vec2<f32> {
    let c = rope_cos[pos * HALF + j];
    let s = rope_sin[pos * HALF + j];
    return vec2<f32>(lo * c + hi * s, hi * c - lo * s);
}

// The mask over a workgroup's own rows [lo, hi) (logical indices; queries when `of_queries`, else
// keys): `hull` = per interval slot, the smallest interval containing that slot's interval of every
// row (a tile of the other side outside both is seen by no row: skipped), and `core` = per slot,
// the intersection (a tile inside one is seen by every row: no element-wise mask).
var<workgroup> wg_hull: vec4<u32>;
var<workgroup> wg_core: vec4<u32>;

// Sets wg_hull / wg_core; one thread of the workgroup calls it, then every thread reads them with
// workgroupUniformLoad (which also makes them uniform, so tile loops may branch on them around
// barriers).
fn mask_bounds(lo: u32, hi: u32, of_queries: bool) {
    var hull = vec4<u32>(0xffffffffu, 0u, 0xffffffffu, 0u);
    var core = vec4<u32>(0u, 0xffffffffu, 0u, 0xffffffffu);
    for (var t = lo; t < hi; t++) {
        var iv: vec4<u32>;
        if (of_queries) {
            iv = key_intervals(t);
        } else {
            iv = query_intervals(t);
        }
        if (iv.x < iv.y) {
            hull.x = min(hull.x, iv.x);
            hull.y = max(hull.y, iv.y);
        }
        if (iv.z < iv.w) {
            hull.z = min(hull.z, iv.z);
            hull.w = max(hull.w, iv.w);
        }
        // An empty interval makes the slot's intersection empty too (x ≥ y).
        core = vec4<u32>(max(core.x, iv.x), min(core.y, iv.y), max(core.z, iv.z), min(core.w, iv.w));
    }
    wg_hull = hull;
    wg_core = core;
}
