// Shared by attention.wgsl, attention_dq.wgsl and attention_dkv.wgsl, which include this file: the
// parameter block, the attention masks as intervals, rotary embedding, the constants the host
// substitutes, and the staging of a tile of head vectors in workgroup memory.
//
// Masks (mask_mode): 0 full, 1 causal, 2 block-causal, 3 block-diffusion over x_t ⊕ x_0 with half
// length half_len (official models/dit.py: block_diff_mask). Each query's allowed keys are at most two intervals, and so are each
// key's allowed queries (bd3_model::mask::AttentionMask::{intervals, query_intervals} on the CPU).
// HEAD_DIM and TILE are substituted per model (shaders::specialize): private arrays need constant
// sizes, and a tile of TILE rows of two head-dim vectors (plus two floats) must keep workgroup memory
// within 16 KiB.
//
// The includer binds `rope_cos` and `rope_sin` (array<f32>, [P, HALF]), runs workgroups of WG = 64
// threads, and defines the tile's contents for stage_tile:
//   fn tile_entry(b: u32, h: u32, t: u32, j: u32) -> vec4<f32>
// = (rotated lo, rotated hi, plain lo, plain hi) at columns (j, j + HALF) of row t of sequence b, head h
// (attention_kv_tile.wgsl gives the K/V one).

const HEAD_DIM: u32 = 64u;
const TILE: u32 = 31u;
const HALF: u32 = HEAD_DIM / 2u;
const WG: u32 = 64u;

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

var<workgroup> wants_tile: array<u32, WG>;
var<workgroup> tile_flag: u32;

// Whether any thread of the workgroup needs the current tile (the others may skip loading it).
// Called from uniform control flow; the result is uniform.
fn workgroup_any(mine: bool, lid: u32) -> bool {
    wants_tile[lid] = select(0u, 1u, mine);
    workgroupBarrier();
    if (lid == 0u) {
        var any = 0u;
        for (var t = 0u; t < WG; t++) {
            any = any | wants_tile[t];
        }
        tile_flag = any;
    }
    return workgroupUniformLoad(&tile_flag) != 0u;
}

// A tile of TILE rows: rotated head vectors (k' or q') and plain ones (v or dO), HEAD_DIM floats a row.
var<workgroup> tile_rot: array<f32, TILE * HEAD_DIM>;
var<workgroup> tile_val: array<f32, TILE * HEAD_DIM>;

// If any thread of the workgroup wants the tile of rows [t0, t0 + TILE) (`mine`), stages it (zeros
// past row n) through the includer's tile_entry and returns true; otherwise returns false and the
// workgroup may skip the tile. Called from uniform control flow; the result is uniform. The caller
// puts a workgroupBarrier between this and the reads.
fn stage_tile(mine: bool, b: u32, h: u32, t0: u32, n: u32, lid: u32) -> bool {
    if (!workgroup_any(mine, lid)) {
        return false;
    }
    for (var e = lid; e < TILE * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        var v = vec4<f32>(0.0);
        if (t0 + t < n) {
            v = tile_entry(b, h, t0 + t, j);
        }
        tile_rot[t * HEAD_DIM + j] = v.x;
        tile_rot[t * HEAD_DIM + j + HALF] = v.y;
        tile_val[t * HEAD_DIM + j] = v.z;
        tile_val[t * HEAD_DIM + j + HALF] = v.w;
    }
    return true;
}
