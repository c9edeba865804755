// What the tensor-core attention forward (attention_coop.wgsl) and its emulated twin
// (attention_coop_emulated.wgsl) share: the whole pass but the two tile products. The math is
// attention.wgsl's (masked softmax attention with rotary, official models/dit.py: DDiTBlock.forward,
// block_diff_mask; same Params, bindings and layouts, log-sum-exp for the backward pass), with the
// two products on 16×16×16 f16 tiles summed in f32:
//   S = Q'·K'ᵀ  (q', k' rotated, then rounded to f16 as they are staged),
//   O ← O·e^{m_old − m} + P·V  (P = e^{S·scale − m} rounded to f16, V rounded to f16),
// with the online softmax (flash-attention-2) in f32 between them: per query row the running
// maximum m and the sum l of the probabilities (as rounded for P·V); o = O / l, lse = m + ln l.
// Mixed precision (train --precision mixed) runs this in place of attention.wgsl; the backward
// kernels stay f32 and recompute the scores from this pass's log-sum-exp.
//
// Bindings: those of attention.wgsl (0 params, 1 qrows, 2 kvrows, 3 rope_cos, 4 rope_sin, 5 out,
// 6 lse_delta).
// Tiling: a workgroup of 2 subgroups (SUBGROUP_SIZE invocations each, set by the host; the twin
// emulates 32) owns BQ = 32 queries of one head and sequence, subgroup s their rows 16s … 16s + 15;
// keys go in tiles of BK = 32 (tiles outside every query's mask intervals skipped, tiles inside all
// of them unmasked, as attention.wgsl). Per key tile: K' is staged as f16 in kv_s; each subgroup
// computes its 16 × 32 scores (HEAD_DIM / 16 tile products per 16 keys) into s_s; V replaces K' in
// kv_s while one invocation per query row turns its scores into f16 probabilities (p_s) and updates
// m, l; o_s rows are rescaled; each subgroup adds P·V tile by tile (16 output columns at a time,
// through its own 16 × 16 part of s_s, free by then) into its rows of o_s. The host sets HEAD_DIM
// (a multiple of 16), BQ = 32, BK = 32. Workgroup memory at HEAD_DIM = 64: q_s 4 KiB, kv_s 4 KiB,
// s_s 4 KiB, p_s 2 KiB, o_s 8 KiB and the row statistics: 22.4 KiB (38.4 at HEAD_DIM = 128), so
// native adapters only (cooperative matrices are native-only anyway). Two subgroups rather than four
// keep it within the 32 KiB of common adapters (lavapipe, where the twin is tested, among them).
// The includer enables f16 (and cooperative matrices), defines SUBGROUP_SIZE, `scores(sg, lane)` (s_s rows 16·sg… ← Q'·K'ᵀ of the subgroup's
// rows against the 32 staged keys, row-major [BQ][BK]) and `pv_tile(sg, lane, j)` (s_s[sg·256 …]
// ← the 16 × 16 tile of P·V of the subgroup's rows and output columns 16j …, row-major), and calls
// `attend` from its entry point in uniform control flow.
// Includes: attention_common.wgsl (Params, masks, rotary, mask_bounds, HEAD_DIM, BQ, BK).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qrows: array<f32>;
@group(0) @binding(2) var<storage, read> kvrows: array<f32>;
@group(0) @binding(3) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(4) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;

const SUBGROUPS: u32 = 2u;
const THREADS: u32 = SUBGROUPS * SUBGROUP_SIZE;
// The cooperative-matrix tile edge (M = N = K).
const T: u32 = 16u;
// The tiles the indexing assumes: a 16-row band of queries per subgroup, whole 16-key tiles, and
// room in s_s for each subgroup's 16 × 16 product tile.
const_assert BQ == SUBGROUPS * T;
const_assert BK % T == 0u;
const_assert BQ * BK >= SUBGROUPS * T * T;

var<workgroup> q_s: array<f16, BQ * HEAD_DIM>; // [query][d], rotated
var<workgroup> kv_s: array<f16, BK * HEAD_DIM>; // [key][d]: K' for the scores, then V
var<workgroup> s_s: array<f32, BQ * BK>; // [query][key]: scores; then each subgroup's P·V tile
var<workgroup> p_s: array<f16, BQ * BK>; // [query][key]: probabilities
var<workgroup> o_s: array<f32, BQ * HEAD_DIM>; // [query][d]: the running Σ P·V
var<workgroup> m_s: array<f32, BQ>;
var<workgroup> l_s: array<f32, BQ>;
var<workgroup> corr_s: array<f32, BQ>;

// Row `t` of the key tile at k0 (t < nk), rotated, or of the values, as f16 in kv_s (rows past nk
// are zeros).
fn stage_keys(b: u32, h: u32, k0: u32, nk: u32, lid: u32) {
    let d_model = p.n_heads * HEAD_DIM;
    for (var e = lid; e < BK * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        if (t < nk) {
            let base = (b * p.kv_seq_stride + k0 + t) * 3u * d_model + d_model + h * HEAD_DIM;
            r = rotate_pair(kvrows[base + j], kvrows[base + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
        }
        kv_s[t * HEAD_DIM + j] = f16(r.x);
        kv_s[t * HEAD_DIM + j + HALF] = f16(r.y);
    }
}

fn stage_values(b: u32, h: u32, k0: u32, nk: u32, lid: u32) {
    let d_model = p.n_heads * HEAD_DIM;
    for (var e = lid; e < BK * HEAD_DIM; e += THREADS) {
        let t = e / HEAD_DIM;
        let j = e % HEAD_DIM;
        var v = 0.0;
        if (t < nk) {
            v = kvrows[(b * p.kv_seq_stride + k0 + t) * 3u * d_model + 2u * d_model + h * HEAD_DIM + j];
        }
        kv_s[e] = f16(v);
    }
}

// Query row r (logical index q) against the key tile [k0, k1): mask and scale its scores, update
// the running maximum and sum, write its f16 probabilities and the factor its o_s row must take.
fn softmax_row(r: u32, q: u32, k0: u32, k1: u32, full: bool) {
    var iv = vec4<u32>(0u, p.n_kv, 0u, 0u);
    if (!full) {
        iv = key_intervals(q);
    }
    let m_old = m_s[r];
    var mx = m_old;
    for (var c = 0u; c < BK; c++) {
        let key = k0 + c;
        let ok = key < k1 && in_intervals(iv, key);
        let sc = select(MASKED, s_s[r * BK + c] * p.scale, ok);
        s_s[r * BK + c] = sc;
        mx = max(mx, sc);
    }
    // l sums the probabilities as P·V sees them (rounded to f16), so o = Σ P·V / l stays a
    // weighted mean of the values.
    var sum = 0.0;
    for (var c = 0u; c < BK; c++) {
        let sc = s_s[r * BK + c];
        let pr = f16(select(0.0, exp(sc - mx), sc > MASKED_TEST));
        p_s[r * BK + c] = pr;
        sum += f32(pr);
    }
    let corr = exp(m_old - mx);
    m_s[r] = mx;
    l_s[r] = l_s[r] * corr + sum;
    corr_s[r] = corr;
}

fn attend(wg: vec3<u32>, lid: u32, sg: u32, lane: u32) {
    let h = wg.y;
    let b = wg.z;
    let i0 = wg.x * BQ;
    let nq = min(BQ, p.n_q - i0);
    let d_model = p.n_heads * HEAD_DIM;
    let qlo = p.q_index_offset + i0;

    // The query tile, rotated, as f16 (rows past n_q are zeros; their results are dropped).
    for (var e = lid; e < BQ * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        if (t < nq) {
            let base = (b * p.q_seq_stride + p.q_row_offset + i0 + t) * 3u * d_model + h * HEAD_DIM;
            r = rotate_pair(qrows[base + j], qrows[base + j + HALF], (qlo + t + p.pos_offset) % p.pos_period, j);
        }
        q_s[t * HEAD_DIM + j] = f16(r.x);
        q_s[t * HEAD_DIM + j + HALF] = f16(r.y);
    }
    for (var e = lid; e < BQ * HEAD_DIM; e += THREADS) {
        o_s[e] = 0.0;
    }
    for (var r = lid; r < BQ; r += THREADS) {
        m_s[r] = MASKED;
        l_s[r] = 0.0;
    }
    if (lid == 0u) {
        mask_bounds(qlo, qlo + nq, true);
    }
    let hull = workgroupUniformLoad(&wg_hull);
    let core = workgroupUniformLoad(&wg_core);

    for (var k0 = 0u; k0 < p.n_kv; k0 += BK) {
        let k1 = min(k0 + BK, p.n_kv);
        if (!overlaps(hull, k0, k1)) {
            continue;
        }
        let full = covers(core, k0, k1);
        let nk = k1 - k0;
        // The previous tile's readers of kv_s, s_s and p_s are done.
        workgroupBarrier();
        stage_keys(b, h, k0, nk, lid);
        workgroupBarrier();
        scores(sg, lane);
        workgroupBarrier();
        // K' is read: the values take its place while the rows turn scores into probabilities.
        stage_values(b, h, k0, nk, lid);
        for (var r = lid; r < BQ; r += THREADS) {
            softmax_row(r, qlo + r, k0, k1, full);
        }
        workgroupBarrier();
        for (var e = lid; e < BQ * HEAD_DIM; e += THREADS) {
            o_s[e] = o_s[e] * corr_s[e / HEAD_DIM];
        }
        workgroupBarrier();
        for (var j = 0u; j < HEAD_DIM / T; j++) {
            pv_tile(sg, lane, j);
            workgroupBarrier();
            for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
                let o = (sg * T + e / T) * HEAD_DIM + j * T + e % T;
                o_s[o] = o_s[o] + s_s[sg * T * T + e];
            }
            workgroupBarrier();
        }
    }

    for (var e = lid; e < BQ * HEAD_DIM; e += THREADS) {
        let r = e / HEAD_DIM;
        if (r < nq) {
            out[(b * p.n_q + i0 + r) * d_model + h * HEAD_DIM + e % HEAD_DIM] = o_s[e] / l_s[r];
        }
    }
    if (p.write_lse != 0u) {
        for (var r = lid; r < nq; r += THREADS) {
            lse_delta[2u * ((b * p.n_heads + h) * p.n_q + i0 + r)] = m_s[r] + log(l_s[r]);
        }
    }
}
