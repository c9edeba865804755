// Masked multi-head attention with rotary embedding, one pass (online softmax), spec §1.2-1.4:
//   o_i = Σ_k softmax_k(q'_i · k'_k / sqrt(head_dim) over allowed k) v_k
// where q', k' are q, k rotated "rotate-half" style at position (index mod pos_period):
//   x'_j = x_j cos θ_j − x_{j+half} sin θ_j,  x'_{j+half} = x_{j+half} cos θ_j + x_j sin θ_j.
// Rotary is applied here, on the fly, so a KV cache can hold pre-rotary q/k/v as the official one does;
// a full cache is a ring whose window starts at row w, and pos_offset = period − w re-bases positions.
//
// Queries and keys live in fused qkv rows [q | k | v] of width 3·D (head-major inside each part).
//   query i of sequence b: row b*q_seq_stride + q_row_offset + i of `qrows`, logical index q_index_offset + i
//   key j of sequence b:   row b*kv_seq_stride + j of `kvrows`, logical index j
// The mask is a predicate on logical indices (mask_mode: 0 full, 1 causal, 2 block-causal,
// 3 block-diffusion over x_t ⊕ x_0 with half length half_len), evaluated as at most two key
// intervals per query (the same rule as bd3_model::mask::AttentionMask::intervals).
//
// Bindings: 0 params, 1 qrows, 2 kvrows, 3 rope_cos [P, half], 4 rope_sin [P, half], 5 out [B*n_q, D].
// Tiling: a workgroup of 64 threads owns 64 consecutive queries of one (head, sequence); keys are
// staged KEY_TILE at a time (rotated) in workgroup memory, 2·KEY_TILE·HEAD_DIM floats ≤ 16 KiB.
// Tiles that no query of the workgroup may see are skipped. HEAD_DIM and KEY_TILE are substituted
// by the host for each model (private arrays need constant sizes).

const HEAD_DIM: u32 = 64u;
const KEY_TILE: u32 = 31u;
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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qrows: array<f32>;
@group(0) @binding(2) var<storage, read> kvrows: array<f32>;
@group(0) @binding(3) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(4) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> k_tile: array<f32, KEY_TILE * HEAD_DIM>;
var<workgroup> v_tile: array<f32, KEY_TILE * HEAD_DIM>;
var<workgroup> wants_tile: array<u32, WG>;
var<workgroup> tile_flag: u32;

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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let i = wg.x * WG + lid;
    let is_query = i < p.n_q;
    let d_model = p.n_heads * HEAD_DIM;
    let row_width = 3u * d_model;

    var q: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    var iv = vec4<u32>(0u);
    if (is_query) {
        let qi = p.q_index_offset + i;
        let base = (b * p.q_seq_stride + p.q_row_offset + i) * row_width + h * HEAD_DIM;
        let pos = (qi + p.pos_offset) % p.pos_period;
        for (var j = 0u; j < HALF; j++) {
            let c = rope_cos[pos * HALF + j];
            let s = rope_sin[pos * HALF + j];
            let lo = qrows[base + j];
            let hi = qrows[base + j + HALF];
            q[j] = lo * c - hi * s;
            q[j + HALF] = hi * c + lo * s;
        }
        iv = key_intervals(qi);
    }
    for (var j = 0u; j < HEAD_DIM; j++) {
        acc[j] = 0.0;
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var k0 = 0u; k0 < p.n_kv; k0 += KEY_TILE) {
        let k1 = min(k0 + KEY_TILE, p.n_kv);
        let mine = is_query && ((iv.x < k1 && k0 < iv.y) || (iv.z < k1 && k0 < iv.w));
        wants_tile[lid] = select(0u, 1u, mine);
        workgroupBarrier();
        if (lid == 0u) {
            var any = 0u;
            for (var t = 0u; t < WG; t++) {
                any = any | wants_tile[t];
            }
            tile_flag = any;
        }
        if (workgroupUniformLoad(&tile_flag) == 0u) {
            continue;
        }

        for (var e = lid; e < KEY_TILE * HALF; e += WG) {
            let kj = e / HALF;
            let j = e % HALF;
            let key = k0 + kj;
            var k_lo = 0.0;
            var k_hi = 0.0;
            var v_lo = 0.0;
            var v_hi = 0.0;
            if (key < p.n_kv) {
                let base = (b * p.kv_seq_stride + key) * row_width + h * HEAD_DIM;
                let pos = (key + p.pos_offset) % p.pos_period;
                let c = rope_cos[pos * HALF + j];
                let s = rope_sin[pos * HALF + j];
                let lo = kvrows[base + d_model + j];
                let hi = kvrows[base + d_model + j + HALF];
                k_lo = lo * c - hi * s;
                k_hi = hi * c + lo * s;
                v_lo = kvrows[base + 2u * d_model + j];
                v_hi = kvrows[base + 2u * d_model + j + HALF];
            }
            k_tile[kj * HEAD_DIM + j] = k_lo;
            k_tile[kj * HEAD_DIM + j + HALF] = k_hi;
            v_tile[kj * HEAD_DIM + j] = v_lo;
            v_tile[kj * HEAD_DIM + j + HALF] = v_hi;
        }
        workgroupBarrier();

        if (mine) {
            for (var kj = 0u; kj < k1 - k0; kj++) {
                let key = k0 + kj;
                if (!((key >= iv.x && key < iv.y) || (key >= iv.z && key < iv.w))) {
                    continue;
                }
                var s = 0.0;
                for (var j = 0u; j < HEAD_DIM; j++) {
                    s = fma(q[j], k_tile[kj * HEAD_DIM + j], s);
                }
                s = s * p.scale;
                if (s > m) {
                    let correction = exp(m - s);
                    l = l * correction;
                    for (var j = 0u; j < HEAD_DIM; j++) {
                        acc[j] = acc[j] * correction;
                    }
                    m = s;
                }
                let w = exp(s - m);
                l = l + w;
                for (var j = 0u; j < HEAD_DIM; j++) {
                    acc[j] = fma(w, v_tile[kj * HEAD_DIM + j], acc[j]);
                }
            }
        }
        workgroupBarrier();
    }

    if (is_query) {
        let o = (b * p.n_q + i) * d_model + h * HEAD_DIM;
        let inv = 1.0 / l;
        for (var j = 0u; j < HEAD_DIM; j++) {
            out[o + j] = acc[j] * inv;
        }
    }
}
