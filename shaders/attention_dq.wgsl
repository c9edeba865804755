// Attention backward, part 1: the query gradient (flash-attention style, recomputing the scores).
// With P = softmax(S), S = q'·k'ᵀ·scale + mask, O = P·V and the output gradient dO:
//   δ_i   = Σ_d dO[i, d]·O[i, d]                      (stored for attention_dkv.wgsl)
//   dS_ik = P_ik (dO_i·v_k − δ_i),   P_ik = exp(S_ik − lse_i)  (lse_i from the forward pass)
//   dq'_i = scale · Σ_k dS_ik k'_k, then rotated back: dq = Rᵀ(θ_i) dq'
// for the training layout (queries = keys = the n rows of each sequence; attention_common.wgsl
// holds the parameters and masks).
//
// Bindings: 0 params, 1 qkv [rows, 3D], 2 rope_cos, 3 rope_sin, 4 o [rows, D], 5 d_o [rows, D],
//           6 lse_delta [B·H·n, 2] (reads lse, writes δ), 7 dqkv [rows, 3D] (writes the q part).
// Tiling: as the forward kernel: 64 queries of one (head, sequence) per workgroup, keys and values
// staged TILE at a time in workgroup memory, tiles no query may see skipped.
// Includes: attention_common.wgsl (Params, masks, rotary, HEAD_DIM / TILE, stage_tile),
//           attention_kv_tile.wgsl (the K/V tile, read through kv_at: the same loader as the forward).

// #include "attention_common.wgsl"
// #include "attention_kv_tile.wgsl"

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(3) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(4) var<storage, read> o: array<f32>;
@group(0) @binding(5) var<storage, read> d_o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;

// The tile (attention_kv_tile.wgsl) reads keys and values from here.
fn kv_at(i: u32) -> f32 {
    return qkv[i];
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
    var dout: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    var iv = vec4<u32>(0u);
    var lse = 0.0;
    var delta = 0.0;
    let stat = (b * p.n_heads + h) * p.n_q + i;
    let row = b * p.q_seq_stride + i;
    let pos = (i + p.pos_offset) % p.pos_period;
    if (is_query) {
        let base = row * row_width + h * HEAD_DIM;
        for (var j = 0u; j < HALF; j++) {
            let r = rotate_pair(qkv[base + j], qkv[base + j + HALF], pos, j);
            q[j] = r.x;
            q[j + HALF] = r.y;
        }
        let ob = row * d_model + h * HEAD_DIM;
        for (var j = 0u; j < HEAD_DIM; j++) {
            dout[j] = d_o[ob + j];
            delta += dout[j] * o[ob + j];
        }
        lse = lse_delta[2u * stat];
        lse_delta[2u * stat + 1u] = delta;
        iv = key_intervals(i);
    }
    for (var j = 0u; j < HEAD_DIM; j++) {
        acc[j] = 0.0;
    }

    for (var k0 = 0u; k0 < p.n_kv; k0 += TILE) {
        let k1 = min(k0 + TILE, p.n_kv);
        let mine = is_query && overlaps(iv, k0, k1);
        if (!stage_tile(mine, b, h, k0, p.n_kv, lid)) {
            continue;
        }
        workgroupBarrier();
        if (mine) {
            for (var kj = 0u; kj < k1 - k0; kj++) {
                if (!in_intervals(iv, k0 + kj)) {
                    continue;
                }
                var s = 0.0;
                var dp = 0.0;
                for (var j = 0u; j < HEAD_DIM; j++) {
                    s = fma(q[j], tile_rot[kj * HEAD_DIM + j], s);
                    dp = fma(dout[j], tile_val[kj * HEAD_DIM + j], dp);
                }
                let pr = exp(s * p.scale - lse);
                let ds = pr * (dp - delta);
                for (var j = 0u; j < HEAD_DIM; j++) {
                    acc[j] = fma(ds, tile_rot[kj * HEAD_DIM + j], acc[j]);
                }
            }
        }
        workgroupBarrier();
    }

    if (is_query) {
        let base = row * row_width + h * HEAD_DIM;
        for (var j = 0u; j < HALF; j++) {
            let g = unrotate_pair(acc[j] * p.scale, acc[j + HALF] * p.scale, pos, j);
            dqkv[base + j] = g.x;
            dqkv[base + j + HALF] = g.y;
        }
    }
}
