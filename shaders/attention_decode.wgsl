// Split-KV attention for a few queries (flash-decoding, Dao et al. 2023): the same masked rotary
// attention as attention.wgsl, for the ≤ BQ queries of a sampling call over a long KV cache, with
// the keys cut into n_splits chunks so that chunks × heads × sequences workgroups fill the GPU
// instead of one workgroup per head. Per query i, head h, chunk s (keys [s·chunk_len, (s+1)·chunk_len)
// ∩ [0, n_kv) that the mask allows, scores s_k = q'_i · k'_k / sqrt(head_dim)):
//   m_s = max_k s_k,  l_s = Σ_k e^{s_k − m_s},  o_s = Σ_k e^{s_k − m_s} v_k   (unnormalised)
// computed with the online softmax of attention.wgsl over the chunk's key tiles. attention_combine.wgsl
// then merges the chunks: M = max_s m_s, o = Σ_s e^{m_s − M} o_s / Σ_s e^{m_s − M} l_s.
// A chunk where a query sees no key (outside its mask intervals, or past n_kv) leaves m_s = MASKED,
// l_s = 0, o_s = 0, which the combine weighs by 0.
// With n_splits = 1 the one chunk is every key and this kernel writes o = o_s / l_s (and with
// write_lse = 1, lse = m_s + ln l_s) itself: no combine pass.
//
// Queries, keys, rotary and masks are as in attention.wgsl (attention_common.wgsl): query i of
// sequence b is row b·q_seq_stride + q_row_offset + i of `qrows` (logical index q_index_offset + i),
// key j is row b·kv_seq_stride + j of `kvrows`; rotary position (index + pos_offset) mod pos_period.
//
// Bindings: 0 params, 1 qrows, 2 kvrows, 3 rope_cos [P, half], 4 rope_sin [P, half],
//           5 out [B·n_q, D] (n_splits = 1), 6 lse_delta [B·H·n_q, 2] (n_splits = 1, write_lse = 1),
//           7 partials [B·H·n_q·n_splits, HEAD_DIM + 2] (n_splits > 1): for record
//             r = ((b·H + h)·n_q + i)·n_splits + s, o_s at r·(HEAD_DIM + 2) + j, then m_s, l_s.
// Tiling (attention_common.wgsl's 8 × 8 thread grid, BQ = 16 queries: 2 rows per thread): workgroup
// (s, h, b) owns chunk s of head h of sequence b and ALL n_q ≤ BQ queries, whose rotated q' stay in
// workgroup memory (q_s). The chunk is walked in tiles of BK keys, each staged once: rotated keys in
// kv_s, the BQ × BK scores through p_s for the row maxima, then kv_s is reloaded with the values and
// p_s with the probabilities for P·V. So every key and value is read from global memory once, by one
// workgroup. Tiles outside every query's intervals are skipped, tiles inside all of them skip the
// element-wise mask. Workgroup memory: (BQ + BK)·(HEAD_DIM + 1) + BQ·BK floats (BK is the largest
// of 32, 16, 8 that fits the budget).
// Includes: attention_common.wgsl (Params, masks, rotary, tile constants, mask_bounds).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qrows: array<f32>;
@group(0) @binding(2) var<storage, read> kvrows: array<f32>;
@group(0) @binding(3) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(4) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

var<workgroup> q_s: array<f32, BQ * HDP>;
var<workgroup> kv_s: array<f32, BK * HDP>;
// Scores, then probabilities, of the current key tile, key-major: p_s[key · BQ + query].
var<workgroup> p_s: array<f32, BK * BQ>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wg.x;
    let h = wg.y;
    let b = wg.z;
    let nq = min(BQ, p.n_q);
    let d_model = p.n_heads * HEAD_DIM;
    let row_width = 3u * d_model;
    let g = lid / LANES;
    let n = lid % LANES;
    let qlo = p.q_index_offset;
    let k_begin = min(split * p.chunk_len, p.n_kv);
    let k_end = min(k_begin + p.chunk_len, p.n_kv);

    // The queries, rotated (rows past n_q are zeros; their results are dropped).
    for (var e = lid; e < BQ * HALF; e += WG) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        if (t < nq) {
            let base = (b * p.q_seq_stride + p.q_row_offset + t) * row_width + h * HEAD_DIM;
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

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        let k1 = min(k0 + BK, k_end);
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
        let i = g + LANES * r;
        if (i >= nq) {
            continue;
        }
        if (p.n_splits == 1u) {
            // A query that sees no key at all gets 0 rather than 0/0.
            let inv = select(0.0, 1.0 / l[r], l[r] > 0.0);
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
        } else {
            let base = (((b * p.n_heads + h) * p.n_q + i) * p.n_splits + split) * (HEAD_DIM + 2u);
            for (var j = 0u; j < CPT; j++) {
                let col = n + LANES * j;
                if (col < HEAD_DIM) {
                    partials[base + col] = acc[r * CPT + j];
                }
            }
            if (n == 0u) {
                partials[base + HEAD_DIM] = m[r];
                partials[base + HEAD_DIM + 1u] = l[r];
            }
        }
    }
}
