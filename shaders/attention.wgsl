// Masked multi-head attention with rotary embedding, one pass (online softmax), official models/dit.py: DDiTBlock.forward, block_diff_mask:
//   o_i = Σ_k softmax_k(q'_i · k'_k / sqrt(head_dim) over allowed k) v_k
// where q', k' are q, k rotated "rotate-half" style at position (index mod pos_period):
//   x'_j = x_j cos θ_j − x_{j+half} sin θ_j,  x'_{j+half} = x_{j+half} cos θ_j + x_j sin θ_j.
// Rotary is applied here, on the fly, so a KV cache can hold pre-rotary q/k/v as the official one does;
// a full cache is a ring whose window starts at row w, and pos_offset = period − w re-bases positions.
//
// Queries and keys live in fused qkv rows [q | k | v] of width 3·D (head-major inside each part).
//   query i of sequence b: row b*q_seq_stride + q_row_offset + i of `qrows`, logical index q_index_offset + i
//   key j of sequence b:   row b*kv_seq_stride + j of `kvrows`, logical index j
// The mask is a predicate on logical indices, evaluated as at most two key intervals per query
// (attention_common.wgsl). With write_lse = 1 each query's log-sum-exp of
// its scores goes to lse[(b·H + h)·n_q + i] (slot 2·index) for the backward pass.
//
// Bindings: 0 params, 1 qrows, 2 kvrows, 3 rope_cos [P, half], 4 rope_sin [P, half], 5 out [B*n_q, D],
//           6 lse_delta [B·H·n_q, 2].
// Tiling: a workgroup of 64 threads owns 64 consecutive queries of one (head, sequence); keys are
// staged TILE at a time (rotated) in workgroup memory, 2·TILE·HEAD_DIM floats ≤ 16 KiB.
// Tiles that no query of the workgroup may see are skipped.
// Includes: attention_common.wgsl (Params, masks, rotary, HEAD_DIM / TILE, stage_tile),
//           attention_kv_tile.wgsl (the K/V tile, read through kv_at).

// #include "attention_common.wgsl"
// #include "attention_kv_tile.wgsl"

@group(0) @binding(1) var<storage, read> qrows: array<f32>;
@group(0) @binding(2) var<storage, read> kvrows: array<f32>;
@group(0) @binding(3) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(4) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;

// The tile (attention_kv_tile.wgsl) reads keys and values from here.
fn kv_at(i: u32) -> f32 {
    return kvrows[i];
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
            let r = rotate_pair(qrows[base + j], qrows[base + j + HALF], pos, j);
            q[j] = r.x;
            q[j + HALF] = r.y;
        }
        iv = key_intervals(qi);
    }
    for (var j = 0u; j < HEAD_DIM; j++) {
        acc[j] = 0.0;
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var k0 = 0u; k0 < p.n_kv; k0 += TILE) {
        let k1 = min(k0 + TILE, p.n_kv);
        let mine = is_query && overlaps(iv, k0, k1);
        if (!stage_tile(mine, b, h, k0, p.n_kv, lid)) {
            continue;
        }
        workgroupBarrier();

        if (mine) {
            for (var kj = 0u; kj < k1 - k0; kj++) {
                let key = k0 + kj;
                if (!in_intervals(iv, key)) {
                    continue;
                }
                var s = 0.0;
                for (var j = 0u; j < HEAD_DIM; j++) {
                    s = fma(q[j], tile_rot[kj * HEAD_DIM + j], s);
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
                    acc[j] = fma(w, tile_val[kj * HEAD_DIM + j], acc[j]);
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
        if (p.write_lse != 0u) {
            lse_delta[2u * ((b * p.n_heads + h) * p.n_q + i)] = m + log(l);
        }
    }
}
