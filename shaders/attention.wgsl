// Masked multi-head attention with rotary embedding, one pass (online softmax), official
// models/dit.py: DDiTBlock.forward, block_diff_mask:
//   o_i = Σ_k softmax_k(q'_i · k'_k / sqrt(head_dim) over allowed k) v_k
// where q', k' are q, k rotated "rotate-half" style at position (index + pos_offset) mod pos_period:
//   x'_j = x_j cos θ_j − x_{j+half} sin θ_j,  x'_{j+half} = x_{j+half} cos θ_j + x_j sin θ_j.
// Rotary is applied here, on the fly, so a KV cache can hold pre-rotary q/k/v as the official one does;
// a full cache is a ring whose window starts at row w, and pos_offset = period − w re-bases positions.
//
// Queries and keys live in fused qkv rows [q | k | v] of width 3·D (head-major inside each part).
//   query i of sequence b: row b*q_seq_stride + q_row_offset + i of `qrows`, logical index q_index_offset + i
//   key j of sequence b:   row b*kv_seq_stride + j of `kvrows`, logical index j
// The mask is a predicate on logical indices, evaluated as at most two key intervals per query
// (attention_common.wgsl). With write_lse = 1 each query's log-sum-exp of its scaled scores goes to
// lse_delta[2·((b·H + h)·n_q + i)] for the backward pass.
//
// Online softmax per query row (flash-attention-2): over key tiles, m ← max(m, max_k s_k),
// l ← l·e^{m_old − m} + Σ_k e^{s_k − m}, acc ← acc·e^{m_old − m} + Σ_k e^{s_k − m} v_k; o = acc / l,
// lse = m + ln l.
//
// Bindings: 0 params, 1 qrows, 2 kvrows, 3 rope_cos [P, half], 4 rope_sin [P, half], 5 out [B*n_q, D],
//           6 lse_delta [B·H·n_q, 2].
// Tiling (attention_common.wgsl): workgroup (x, h, b) owns queries [x·BQ, x·BQ + BQ) of head h of
// sequence b; their rotated q' stay in workgroup memory (q_s) for the whole pass. Each key tile of
// BK keys is staged rotated (k') in kv_s, the BQ × BK scores go through p_s for the row maxima,
// then kv_s is reloaded with the tile's values and p_s with the probabilities for P·V. Key tiles
// outside every query's intervals are skipped; tiles inside every query's interval skip the
// element-wise mask. Workgroup memory: (BQ + BK)·(HEAD_DIM + 1) + BQ·BK floats.
// Includes: attention_common.wgsl (Params, masks, rotary, tile constants, mask_bounds).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qrows: array<f32>;
@group(0) @binding(2) var<storage, read> kvrows: array<f32>;
@group(0) @binding(3) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(4) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;

var<workgroup> q_s: array<f32, BQ * HDP>;
var<workgroup> kv_s: array<f32, BK * HDP>;
// Scores, then probabilities, of the current tile pair, key-major: p_s[key · BQ + query].
var<workgroup> p_s: array<f32, BK * BQ>;

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
    let qlo = p.q_index_offset + i0;

    // The query tile, rotated (rows past n_q are zeros; their results are dropped).
    for (var e = lid; e < BQ * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        if (t < nq) {
            let base = (b * p.q_seq_stride + p.q_row_offset + i0 + t) * row_width + h * HEAD_DIM;
            r = rotate_pair(qrows[base + j], qrows[base + j + HALF], (qlo + t + p.pos_offset) % p.pos_period, j);
        }
        q_s[t * HDP + j] = r.x;
        q_s[t * HDP + j + HALF] = r.y;
    }
    if (lid == 0u) {
        mask_bounds(qlo, qlo + nq, true);
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
    var m: array<f32, RQ>;
    var l: array<f32, RQ>;
    for (var r = 0u; r < RQ; r++) {
        m[r] = MASKED;
        l[r] = 0.0;
    }
    var s: array<f32, RQ * RK>;

    for (var k0 = 0u; k0 < p.n_kv; k0 += BK) {
        let k1 = min(k0 + BK, p.n_kv);
        if (!overlaps(hull, k0, k1)) {
            continue;
        }
        let full = covers(core, k0, k1);
        let nk = k1 - k0;
        // The previous tile's readers of kv_s and p_s are done.
        workgroupBarrier();
        for (var e = lid; e < BK * HALF; e += WG) {
            let t = e / HALF;
            let j = e % HALF;
            var r = vec2<f32>(0.0);
            if (t < nk) {
                let base = (b * p.kv_seq_stride + k0 + t) * row_width + d_model + h * HEAD_DIM;
                r = rotate_pair(kvrows[base + j], kvrows[base + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
            }
            kv_s[t * HDP + j] = r.x;
            kv_s[t * HDP + j + HALF] = r.y;
        }
        workgroupBarrier();

        for (var e = 0u; e < RQ * RK; e++) {
            s[e] = 0.0;
        }
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
                iv = key_intervals(qlo + row);
            }
            for (var c = 0u; c < RK; c++) {
                let key = k0 + n + LANES * c;
                let ok = key < k1 && in_intervals(iv, key);
                s[r * RK + c] = select(MASKED, s[r * RK + c] * p.scale, ok);
                p_s[(n + LANES * c) * BQ + row] = s[r * RK + c];
            }
        }
        workgroupBarrier();

        // kv_s is free (every score is computed): stage the values.
        for (var e = lid; e < BK * HEAD_DIM; e += WG) {
            let t = e / HEAD_DIM;
            let j = e % HEAD_DIM;
            var v = 0.0;
            if (t < nk) {
                v = kvrows[(b * p.kv_seq_stride + k0 + t) * row_width + 2u * d_model + h * HEAD_DIM + j];
            }
            kv_s[t * HDP + j] = v;
        }
        var corr: array<f32, RQ>;
        for (var r = 0u; r < RQ; r++) {
            let row = g + LANES * r;
            var mx = m[r];
            for (var t = 0u; t < nk; t++) {
                mx = max(mx, p_s[t * BQ + row]);
            }
            corr[r] = exp(m[r] - mx);
            m[r] = mx;
            for (var c = 0u; c < RK; c++) {
                let sc = s[r * RK + c];
                s[r * RK + c] = select(0.0, exp(sc - mx), sc > MASKED_TEST);
            }
        }
        // Every row maximum is read before p_s turns into probabilities.
        workgroupBarrier();
        for (var r = 0u; r < RQ; r++) {
            for (var c = 0u; c < RK; c++) {
                p_s[(n + LANES * c) * BQ + g + LANES * r] = s[r * RK + c];
            }
        }
        workgroupBarrier();

        for (var r = 0u; r < RQ; r++) {
            l[r] = l[r] * corr[r];
            for (var j = 0u; j < CPT; j++) {
                acc[r * CPT + j] = acc[r * CPT + j] * corr[r];
            }
        }
        for (var t = 0u; t < nk; t++) {
            var vv: array<f32, CPT>;
            for (var j = 0u; j < CPT; j++) {
                vv[j] = kv_s[t * HDP + cols[j]];
            }
            for (var r = 0u; r < RQ; r++) {
                let pr = p_s[t * BQ + g + LANES * r];
                l[r] = l[r] + pr;
                for (var j = 0u; j < CPT; j++) {
                    acc[r * CPT + j] = fma(pr, vv[j], acc[r * CPT + j]);
                }
            }
        }
    }

    for (var r = 0u; r < RQ; r++) {
        let row = g + LANES * r;
        if (row >= nq) {
            continue;
        }
        let i = i0 + row;
        let inv = 1.0 / l[r];
        let o = (b * p.n_q + i) * d_model + h * HEAD_DIM;
        for (var j = 0u; j < CPT; j++) {
            let col = n + LANES * j;
            if (col < HEAD_DIM) {
                out[o + col] = acc[r * CPT + j] * inv;
            }
        }
        if (p.write_lse != 0u && n == 0u) {
            lse_delta[2u * ((b * p.n_heads + h) * p.n_q + i)] = m[r] + log(l[r]);
        }
    }
}
