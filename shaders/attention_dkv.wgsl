// Attention backward, part 2: key and value gradients (run after attention_dq.wgsl, which stored δ):
//   dv_k  = Σ_i P_ik dO_i
//   dk'_k = scale · Σ_i dS_ik q'_i,   dS_ik = P_ik (dO_i·v_k − δ_i),  P_ik = exp(S_ik − lse_i)
// then dk = Rᵀ(θ_k) dk'. Each key tile walks the query tiles allowed to see it (query_intervals in
// attention_common.wgsl).
//
// Bindings: 0 params, 1 qkv [rows, 3D], 2 rope_cos, 3 rope_sin, 4 d_o [rows, D], 5 lse_delta [B·H·n, 2],
//           6 dqkv [rows, 3D] (writes the k and v parts).
// Tiling (attention_common.wgsl, with the roles of the two sides swapped): workgroup (x, h, b) owns
// keys [x·BK, x·BK + BK) of head h of sequence b; their k' and v stay in workgroup memory (k_s,
// v_s). Thread (g, n) holds the scores of keys g + LANES·c (c < RK) against queries n + LANES·r
// (r < RQ) and accumulates dk', dv for its keys at columns n + LANES·j: 2·RK·CPT floats. Per query
// tile of BQ queries, x_s holds dO (for dO·vᵀ, kept in registers), then q' (for the scores, P and
// dS go through p_s / ds_s, and dk' += dSᵀ·q'), then dO again (dv += Pᵀ·dO): one staging buffer
// for both, so that head dims up to 128 fit 16 KiB. Query tiles that see none of the keys are
// skipped; tiles where every query sees every key skip the element-wise mask. At the end dk' passes
// through k_s so that each thread can rotate back whole (j, j + HALF) pairs.
// Workgroup memory: (2·BK + BQ)·(HEAD_DIM + 1) + 2·BQ·BK + 2·BQ floats.
// Includes: attention_common.wgsl (Params, masks, rotary, tile constants, mask_bounds).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(3) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(4) var<storage, read> d_o: array<f32>;
@group(0) @binding(5) var<storage, read> lse_delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;

var<workgroup> k_s: array<f32, BK * HDP>;
var<workgroup> v_s: array<f32, BK * HDP>;
var<workgroup> x_s: array<f32, BQ * HDP>;
// P and dS of the current tile pair, query-major: p_s[query · BK + key].
var<workgroup> p_s: array<f32, BQ * BK>;
var<workgroup> ds_s: array<f32, BQ * BK>;
// Per query of the tile: (lse, δ).
var<workgroup> st_s: array<f32, 2u * BQ>;

// Stages dO of queries [q0, q0 + nq) in x_s (zeros past them).
fn stage_d_o(b: u32, h: u32, q0: u32, nq: u32, lid: u32) {
    let d_model = p.n_heads * HEAD_DIM;
    for (var e = lid; e < BQ * HEAD_DIM; e += WG) {
        let t = e / HEAD_DIM;
        let j = e % HEAD_DIM;
        var v = 0.0;
        if (t < nq) {
            v = d_o[(b * p.q_seq_stride + q0 + t) * d_model + h * HEAD_DIM + j];
        }
        x_s[t * HDP + j] = v;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let k0 = wg.x * BK;
    let nk = min(BK, p.n_kv - k0);
    let d_model = p.n_heads * HEAD_DIM;
    let row_width = 3u * d_model;
    let g = lid / LANES;
    let n = lid % LANES;

    for (var e = lid; e < BK * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        var v = vec2<f32>(0.0);
        if (t < nk) {
            let base = (b * p.kv_seq_stride + k0 + t) * row_width + d_model + h * HEAD_DIM;
            r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
            v = vec2<f32>(qkv[base + d_model + j], qkv[base + d_model + j + HALF]);
        }
        k_s[t * HDP + j] = r.x;
        k_s[t * HDP + j + HALF] = r.y;
        v_s[t * HDP + j] = v.x;
        v_s[t * HDP + j + HALF] = v.y;
    }
    if (lid == 0u) {
        mask_bounds(k0, k0 + nk, false);
    }
    let hull = workgroupUniformLoad(&wg_hull);
    let core = workgroupUniformLoad(&wg_core);

    var cols: array<u32, CPT>;
    for (var j = 0u; j < CPT; j++) {
        // Columns past HEAD_DIM (when it is not a multiple of LANES) repeat the last one; never written.
        cols[j] = min(n + LANES * j, HEAD_DIM - 1u);
    }
    var dk: array<f32, RK * CPT>;
    var dv: array<f32, RK * CPT>;
    for (var e = 0u; e < RK * CPT; e++) {
        dk[e] = 0.0;
        dv[e] = 0.0;
    }
    var dp: array<f32, RK * RQ>;
    var s: array<f32, RK * RQ>;

    for (var q0 = 0u; q0 < p.n_q; q0 += BQ) {
        let q1 = min(q0 + BQ, p.n_q);
        if (!overlaps(hull, q0, q1)) {
            continue;
        }
        let full = covers(core, q0, q1);
        let nq = q1 - q0;
        // The previous tile's readers of x_s, p_s, ds_s and st_s are done.
        workgroupBarrier();
        stage_d_o(b, h, q0, nq, lid);
        for (var t = lid; t < BQ; t += WG) {
            var lse = 0.0;
            var delta = 0.0;
            if (t < nq) {
                let stat = (b * p.n_heads + h) * p.n_q + q0 + t;
                lse = lse_delta[2u * stat];
                delta = lse_delta[2u * stat + 1u];
            }
            st_s[2u * t] = lse;
            st_s[2u * t + 1u] = delta;
        }
        workgroupBarrier();
        for (var e = 0u; e < RK * RQ; e++) {
            dp[e] = 0.0;
            s[e] = 0.0;
        }
        for (var d = 0u; d < HEAD_DIM; d++) {
            var vv: array<f32, RK>;
            for (var c = 0u; c < RK; c++) {
                vv[c] = v_s[(g + LANES * c) * HDP + d];
            }
            for (var r = 0u; r < RQ; r++) {
                let dd = x_s[(n + LANES * r) * HDP + d];
                for (var c = 0u; c < RK; c++) {
                    dp[c * RQ + r] = fma(vv[c], dd, dp[c * RQ + r]);
                }
            }
        }
        workgroupBarrier();
        for (var e = lid; e < BQ * HALF; e += WG) {
            let t = e / HALF;
            let j = e % HALF;
            var r = vec2<f32>(0.0);
            if (t < nq) {
                let base = (b * p.q_seq_stride + q0 + t) * row_width + h * HEAD_DIM;
                r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (q0 + t + p.pos_offset) % p.pos_period, j);
            }
            x_s[t * HDP + j] = r.x;
            x_s[t * HDP + j + HALF] = r.y;
        }
        workgroupBarrier();
        for (var d = 0u; d < HEAD_DIM; d++) {
            var kv: array<f32, RK>;
            for (var c = 0u; c < RK; c++) {
                kv[c] = k_s[(g + LANES * c) * HDP + d];
            }
            for (var r = 0u; r < RQ; r++) {
                let qv = x_s[(n + LANES * r) * HDP + d];
                for (var c = 0u; c < RK; c++) {
                    s[c * RQ + r] = fma(kv[c], qv, s[c * RQ + r]);
                }
            }
        }
        for (var c = 0u; c < RK; c++) {
            let key = k0 + g + LANES * c;
            var iv = vec4<u32>(0u, p.n_q, 0u, 0u);
            if (!full) {
                iv = query_intervals(key);
            }
            for (var r = 0u; r < RQ; r++) {
                let qt = n + LANES * r;
                let ok = q0 + qt < q1 && key < k0 + nk && in_intervals(iv, q0 + qt);
                let pr = select(0.0, exp(s[c * RQ + r] * p.scale - st_s[2u * qt]), ok);
                p_s[qt * BK + g + LANES * c] = pr;
                ds_s[qt * BK + g + LANES * c] = pr * (dp[c * RQ + r] - st_s[2u * qt + 1u]);
            }
        }
        workgroupBarrier();
        for (var t = 0u; t < nq; t++) {
            var qv: array<f32, CPT>;
            for (var j = 0u; j < CPT; j++) {
                qv[j] = x_s[t * HDP + cols[j]];
            }
            for (var c = 0u; c < RK; c++) {
                let ds = ds_s[t * BK + g + LANES * c];
                for (var j = 0u; j < CPT; j++) {
                    dk[c * CPT + j] = fma(ds, qv[j], dk[c * CPT + j]);
                }
            }
        }
        workgroupBarrier();
        stage_d_o(b, h, q0, nq, lid);
        workgroupBarrier();
        for (var t = 0u; t < nq; t++) {
            var dd: array<f32, CPT>;
            for (var j = 0u; j < CPT; j++) {
                dd[j] = x_s[t * HDP + cols[j]];
            }
            for (var c = 0u; c < RK; c++) {
                let pr = p_s[t * BK + g + LANES * c];
                for (var j = 0u; j < CPT; j++) {
                    dv[c * CPT + j] = fma(pr, dd[j], dv[c * CPT + j]);
                }
            }
        }
    }

    // dk' through k_s (every read of k_s is done), then rotated back pair by pair; dv directly.
    workgroupBarrier();
    for (var c = 0u; c < RK; c++) {
        let kt = g + LANES * c;
        for (var j = 0u; j < CPT; j++) {
            let col = n + LANES * j;
            if (col < HEAD_DIM) {
                k_s[kt * HDP + col] = dk[c * CPT + j] * p.scale;
                if (kt < nk) {
                    dqkv[(b * p.kv_seq_stride + k0 + kt) * row_width + 2u * d_model + h * HEAD_DIM + col] = dv[c * CPT + j];
                }
            }
        }
    }
    workgroupBarrier();
    for (var e = lid; e < BK * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        if (t < nk) {
            let base = (b * p.kv_seq_stride + k0 + t) * row_width + d_model + h * HEAD_DIM;
            let gr = unrotate_pair(k_s[t * HDP + j], k_s[t * HDP + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
            dqkv[base + j] = gr.x;
            dqkv[base + j + HALF] = gr.y;
        }
    }
}
