// Attention backward, part 1: the query gradient (flash-attention-2 style, recomputing the scores).
// With P = softmax(S), S = q'·k'ᵀ·scale + mask, O = P·V and the output gradient dO:
//   δ_i   = Σ_d dO[i, d]·O[i, d]                      (stored for attention_dkv.wgsl)
//   dS_ik = P_ik (dO_i·v_k − δ_i),   P_ik = exp(S_ik − lse_i)  (lse_i from the forward pass)
//   dq'_i = scale · Σ_k dS_ik k'_k, then rotated back: dq = Rᵀ(θ_i) dq'
// for the training layout (queries = keys = the n rows of each sequence; attention_common.wgsl
// holds the parameters and masks).
//
// Bindings: 0 params, 1 qkv [rows, 3D], 2 rope_cos, 3 rope_sin, 4 o [rows, D], 5 d_o [rows, D],
//           6 lse_delta [B·H·n, 2] (reads lse, writes δ), 7 dqkv [rows, 3D] (writes the q part).
// Tiling (attention_common.wgsl): workgroup (x, h, b) owns queries [x·BQ, x·BQ + BQ) of head h of
// sequence b; their q' and dO stay in workgroup memory (q_s, do_s) with lse and δ (st_s). Per key
// tile of BK keys, kv_s holds first the values (for dO·vᵀ, kept in registers), then the rotated
// keys (for the scores and for dq' += dS·k'); dS goes through ds_s. Key tiles outside every query's
// intervals are skipped; tiles inside every query's interval skip the element-wise mask. At the end
// dq' passes through q_s so that each thread can rotate back whole (j, j + HALF) pairs.
// Workgroup memory: (2·BQ + BK)·(HEAD_DIM + 1) + BQ·BK + 2·BQ floats.
// Includes: attention_common.wgsl (Params, masks, rotary, tile constants, mask_bounds).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(3) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(4) var<storage, read> o: array<f32>;
@group(0) @binding(5) var<storage, read> d_o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;

var<workgroup> q_s: array<f32, BQ * HDP>;
var<workgroup> do_s: array<f32, BQ * HDP>;
var<workgroup> kv_s: array<f32, BK * HDP>;
// dS of the current tile pair, key-major: ds_s[key · BQ + query].
var<workgroup> ds_s: array<f32, BK * BQ>;
// Per query of the tile: (lse, δ).
var<workgroup> st_s: array<f32, 2u * BQ>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let i0 = wg.x * BQ;
    let nq = min(BQ, p.n_q - i0);
    let d_model = p.n_heads * HEAD_DIM;
    let row_width = 3u * d_model;
    let g = lid / LANES;
    let n = lid % LANES;

    for (var e = lid; e < BQ * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        var dd = vec2<f32>(0.0);
        if (t < nq) {
            let row = b * p.q_seq_stride + i0 + t;
            let base = row * row_width + h * HEAD_DIM;
            r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (i0 + t + p.pos_offset) % p.pos_period, j);
            let ob = row * d_model + h * HEAD_DIM;
            dd = vec2<f32>(d_o[ob + j], d_o[ob + j + HALF]);
        }
        q_s[t * HDP + j] = r.x;
        q_s[t * HDP + j + HALF] = r.y;
        do_s[t * HDP + j] = dd.x;
        do_s[t * HDP + j + HALF] = dd.y;
    }
    for (var t = lid; t < BQ; t += WG) {
        var lse = 0.0;
        var delta = 0.0;
        if (t < nq) {
            let stat = (b * p.n_heads + h) * p.n_q + i0 + t;
            let ob = (b * p.q_seq_stride + i0 + t) * d_model + h * HEAD_DIM;
            for (var j = 0u; j < HEAD_DIM; j++) {
                delta = fma(d_o[ob + j], o[ob + j], delta);
            }
            lse = lse_delta[2u * stat];
            lse_delta[2u * stat + 1u] = delta;
        }
        st_s[2u * t] = lse;
        st_s[2u * t + 1u] = delta;
    }
    if (lid == 0u) {
        mask_bounds(i0, i0 + nq, true);
    }
    let hull = workgroupUniformLoad(&wg_hull);
    let core = workgroupUniformLoad(&wg_core);

    var cols: array<u32, CPT>;
    for (var j = 0u; j < CPT; j++) {
        // Columns past HEAD_DIM (when it is not a multiple of LANES) repeat the last one; never written.
        cols[j] = min(n + LANES * j, HEAD_DIM - 1u);
    }
    var acc: array<f32, RQ * CPT>;
    for (var e = 0u; e < RQ * CPT; e++) {
        acc[e] = 0.0;
    }
    var dp: array<f32, RQ * RK>;
    var s: array<f32, RQ * RK>;

    for (var k0 = 0u; k0 < p.n_kv; k0 += BK) {
        let k1 = min(k0 + BK, p.n_kv);
        if (!overlaps(hull, k0, k1)) {
            continue;
        }
        let full = covers(core, k0, k1);
        let nk = k1 - k0;
        // The previous tile's readers of kv_s and ds_s are done.
        workgroupBarrier();
        for (var e = lid; e < BK * HEAD_DIM; e += WG) {
            let t = e / HEAD_DIM;
            let j = e % HEAD_DIM;
            var v = 0.0;
            if (t < nk) {
                v = qkv[(b * p.kv_seq_stride + k0 + t) * row_width + 2u * d_model + h * HEAD_DIM + j];
            }
            kv_s[t * HDP + j] = v;
        }
        workgroupBarrier();
        for (var e = 0u; e < RQ * RK; e++) {
            dp[e] = 0.0;
            s[e] = 0.0;
        }
        for (var d = 0u; d < HEAD_DIM; d++) {
            var dv: array<f32, RQ>;
            for (var r = 0u; r < RQ; r++) {
                dv[r] = do_s[(g + LANES * r) * HDP + d];
            }
            for (var c = 0u; c < RK; c++) {
                let vv = kv_s[(n + LANES * c) * HDP + d];
                for (var r = 0u; r < RQ; r++) {
                    dp[r * RK + c] = fma(dv[r], vv, dp[r * RK + c]);
                }
            }
        }
        workgroupBarrier();
        for (var e = lid; e < BK * HALF; e += WG) {
            let t = e / HALF;
            let j = e % HALF;
            var r = vec2<f32>(0.0);
            if (t < nk) {
                let base = (b * p.kv_seq_stride + k0 + t) * row_width + d_model + h * HEAD_DIM;
                r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
            }
            kv_s[t * HDP + j] = r.x;
            kv_s[t * HDP + j + HALF] = r.y;
        }
        workgroupBarrier();
        for (var d = 0u; d < HEAD_DIM; d++) {
            var qv: array<f32, RQ>;
            for (var r = 0u; r < RQ; r++) {
                qv[r] = q_s[(g + LANES * r) * HDP + d];
            }
            for (var c = 0u; c < RK; c++) {
                let kv = kv_s[(n + LANES * c) * HDP + d];
                for (var r = 0u; r < RQ; r++) {
                    s[r * RK + c] = fma(qv[r], kv, s[r * RK + c]);
                }
            }
        }
        for (var r = 0u; r < RQ; r++) {
            let row = g + LANES * r;
            var iv = vec4<u32>(0u, p.n_kv, 0u, 0u);
            if (!full) {
                iv = key_intervals(i0 + row);
            }
            let lse = st_s[2u * row];
            let delta = st_s[2u * row + 1u];
            for (var c = 0u; c < RK; c++) {
                let key = k0 + n + LANES * c;
                let ok = key < k1 && in_intervals(iv, key);
                let pr = select(0.0, exp(s[r * RK + c] * p.scale - lse), ok);
                ds_s[(n + LANES * c) * BQ + row] = pr * (dp[r * RK + c] - delta);
            }
        }
        workgroupBarrier();
        for (var t = 0u; t < nk; t++) {
            var kk: array<f32, CPT>;
            for (var j = 0u; j < CPT; j++) {
                kk[j] = kv_s[t * HDP + cols[j]];
            }
            for (var r = 0u; r < RQ; r++) {
                let ds = ds_s[t * BQ + g + LANES * r];
                for (var j = 0u; j < CPT; j++) {
                    acc[r * CPT + j] = fma(ds, kk[j], acc[r * CPT + j]);
                }
            }
        }
    }

    // dq' through q_s (every read of q_s is done), then rotated back pair by pair.
    workgroupBarrier();
    for (var r = 0u; r < RQ; r++) {
        for (var j = 0u; j < CPT; j++) {
            let col = n + LANES * j;
            if (col < HEAD_DIM) {
                q_s[(g + LANES * r) * HDP + col] = acc[r * CPT + j] * p.scale;
            }
        }
    }
    workgroupBarrier();
    for (var e = lid; e < BQ * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        if (t < nq) {
            let base = (b * p.q_seq_stride + i0 + t) * row_width + h * HEAD_DIM;
            let gr = unrotate_pair(q_s[t * HDP + j], q_s[t * HDP + j + HALF], (i0 + t + p.pos_offset) % p.pos_period, j);
            dqkv[base + j] = gr.x;
            dqkv[base + j + HALF] = gr.y;
        }
    }
}
