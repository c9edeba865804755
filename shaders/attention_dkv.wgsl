// Attention backward, part 2: key and value gradients (run after attention_dq.wgsl, which stored δ):
//   dv_k  = Σ_i P_ik dO_i
//   dk'_k = scale · Σ_i dS_ik q'_i,   dS_ik = P_ik (dO_i·v_k − δ_i),  P_ik = exp(S_ik − lse_i)
// then dk = Rᵀ(θ_k) dk'. Each key walks the queries allowed to see it (query_intervals in
// attention_common.wgsl).
//
// Bindings: 0 params, 1 qkv [rows, 3D], 2 rope_cos, 3 rope_sin, 4 d_o [rows, D], 5 lse_delta [B·H·n, 2],
//           6 dqkv [rows, 3D] (writes the k and v parts).
// Tiling: 64 keys of one (head, sequence) per workgroup; queries (rotated), their output gradients,
// lse and δ are staged TILE at a time in workgroup memory; tiles no key may be seen by are skipped.
// Includes: attention_common.wgsl (Params, masks, rotary, HEAD_DIM / TILE, stage_tile, which stages
// the q'/dO tile through tile_entry below).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(3) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(4) var<storage, read> d_o: array<f32>;
@group(0) @binding(5) var<storage, read> lse_delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;

var<workgroup> stat_tile: array<f32, 2u * TILE>;

// Row qi of the tile (attention_common.wgsl's stage_tile): q' in tile_rot, dO in tile_val.
fn tile_entry(b: u32, h: u32, qi: u32, j: u32) -> vec4<f32> {
    let d_model = p.n_heads * HEAD_DIM;
    let qrow = b * p.q_seq_stride + qi;
    let base = qrow * (3u * d_model) + h * HEAD_DIM;
    let q = rotate_pair(qkv[base + j], qkv[base + j + HALF], (qi + p.pos_offset) % p.pos_period, j);
    let ob = qrow * d_model + h * HEAD_DIM;
    return vec4<f32>(q, d_o[ob + j], d_o[ob + j + HALF]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let kidx = wg.x * WG + lid;
    let is_key = kidx < p.n_kv;
    let d_model = p.n_heads * HEAD_DIM;
    let row_width = 3u * d_model;

    var k: array<f32, HEAD_DIM>;
    var v: array<f32, HEAD_DIM>;
    var dk: array<f32, HEAD_DIM>;
    var dv: array<f32, HEAD_DIM>;
    var iv = vec4<u32>(0u);
    let row = b * p.kv_seq_stride + kidx;
    let pos = (kidx + p.pos_offset) % p.pos_period;
    if (is_key) {
        let base = row * row_width + h * HEAD_DIM;
        for (var j = 0u; j < HALF; j++) {
            let r = rotate_pair(qkv[base + d_model + j], qkv[base + d_model + j + HALF], pos, j);
            k[j] = r.x;
            k[j + HALF] = r.y;
        }
        for (var j = 0u; j < HEAD_DIM; j++) {
            v[j] = qkv[base + 2u * d_model + j];
        }
        iv = query_intervals(kidx);
    }
    for (var j = 0u; j < HEAD_DIM; j++) {
        dk[j] = 0.0;
        dv[j] = 0.0;
    }

    for (var q0 = 0u; q0 < p.n_q; q0 += TILE) {
        let q1 = min(q0 + TILE, p.n_q);
        let mine = is_key && overlaps(iv, q0, q1);
        if (!stage_tile(mine, b, h, q0, p.n_q, lid)) {
            continue;
        }
        for (var e = lid; e < TILE; e += WG) {
            let qi = q0 + e;
            var lse = 0.0;
            var delta = 0.0;
            if (qi < p.n_q) {
                let stat = (b * p.n_heads + h) * p.n_q + qi;
                lse = lse_delta[2u * stat];
                delta = lse_delta[2u * stat + 1u];
            }
            stat_tile[2u * e] = lse;
            stat_tile[2u * e + 1u] = delta;
        }
        workgroupBarrier();
        if (mine) {
            for (var qj = 0u; qj < q1 - q0; qj++) {
                if (!in_intervals(iv, q0 + qj)) {
                    continue;
                }
                var s = 0.0;
                var dp = 0.0;
                for (var j = 0u; j < HEAD_DIM; j++) {
                    s = fma(tile_rot[qj * HEAD_DIM + j], k[j], s);
                    dp = fma(tile_val[qj * HEAD_DIM + j], v[j], dp);
                }
                let pr = exp(s * p.scale - stat_tile[2u * qj]);
                let ds = pr * (dp - stat_tile[2u * qj + 1u]);
                for (var j = 0u; j < HEAD_DIM; j++) {
                    dv[j] = fma(pr, tile_val[qj * HEAD_DIM + j], dv[j]);
                    dk[j] = fma(ds, tile_rot[qj * HEAD_DIM + j], dk[j]);
                }
            }
        }
        workgroupBarrier();
    }

    if (is_key) {
        let base = row * row_width + h * HEAD_DIM;
        for (var j = 0u; j < HALF; j++) {
            let g = unrotate_pair(dk[j] * p.scale, dk[j + HALF] * p.scale, pos, j);
            dqkv[base + d_model + j] = g.x;
            dqkv[base + d_model + j + HALF] = g.y;
        }
        for (var j = 0u; j < HEAD_DIM; j++) {
            dqkv[base + 2u * d_model + j] = dv[j];
        }
    }
}
