// What the tensor-core query gradient (attention_dq_coop.wgsl) and its emulated twin
// (attention_dq_coop_emulated.wgsl) share: the whole pass but the three tile products. The math is
// attention_dq.wgsl's (the scores recomputed from the forward's log-sum-exp; same Params, bindings
// and layouts, δ stored for the key/value pass), with the products on 16×16×16 f16 tiles summed in
// f32:
//   dP = dO·Vᵀ,  S = Q'·K'ᵀ  (dO, V, q', k' rounded to f16 as they are staged),
//   dS_ik = P_ik (dP_ik − δ_i) with P_ik = exp(S_ik·scale − lse_i) in f32, rounded to f16,
//   dq' += dS·K',  then dq = scale · Rᵀ(θ_i) dq'  (δ_i = dO_i·O_i in f32 from the f32 buffers).
//
// Bindings: those of attention_dq.wgsl (0 params, 1 qkv, 2 rope_cos, 3 rope_sin, 4 o, 5 d_o,
// 6 lse_delta, 7 dqkv).
// Tiling: 2 subgroups (SUBGROUP_SIZE invocations each; the twin emulates 32) own BQ = 32 queries of
// one head and sequence, subgroup s their rows 16s …; keys in tiles of BK = 32 (skipped and unmasked
// tiles as in attention_dq.wgsl). Per key tile: V into kv_s, each subgroup's dP rows into dp_s; K'
// into kv_s, its S rows into s_s; one invocation per query row forms dS (ds_s, f16); each subgroup
// adds dS·K' to its rows of dq_s tile by tile through its own 16 × 16 part of s_s (free by then).
// Workgroup memory at HEAD_DIM = 64: q_s, do_s, kv_s 4 KiB each (f16), s_s and dp_s 4 KiB each, ds_s
// 2 KiB, dq_s 8 KiB, the row statistics: 30.3 KiB (native adapters; 32 KiB on lavapipe).
// The includer enables f16 (and cooperative matrices), defines SUBGROUP_SIZE, `products_dp(sg, lane)`
// (dp_s rows 16·sg … ← dO·Vᵀ), `products_s(sg, lane)` (s_s rows ← Q'·K'ᵀ) and
// `product_dq(sg, lane, j)` (s_s[sg·256 …] ← the 16 × 16 tile of dS·K' of the subgroup's rows and
// columns 16j …, row-major), and calls `query_grad` in uniform control flow.
// Includes: attention_common.wgsl (Params, masks, rotary, mask_bounds, HEAD_DIM, BQ, BK).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(3) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(4) var<storage, read> o: array<f32>;
@group(0) @binding(5) var<storage, read> d_o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse_delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;

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
var<workgroup> do_s: array<f16, BQ * HEAD_DIM>; // [query][d]
var<workgroup> kv_s: array<f16, BK * HEAD_DIM>; // [key][d]: V, then K'
var<workgroup> s_s: array<f32, BQ * BK>; // [query][key]: scores; then each subgroup's dS·K' tile
var<workgroup> dp_s: array<f32, BQ * BK>; // [query][key]: dO·Vᵀ
var<workgroup> ds_s: array<f16, BQ * BK>; // [query][key]: dS
var<workgroup> dq_s: array<f32, BQ * HEAD_DIM>; // [query][d]: Σ dS·K'
var<workgroup> st_s: array<f32, 2u * BQ>; // per query: (lse, δ)

// Keys k0 … k0 + nk − 1 of the tile into kv_s as f16: rotated (`keys`) or the values.
fn stage_kv(b: u32, h: u32, k0: u32, nk: u32, lid: u32, keys: bool) {
    let d_model = p.n_heads * HEAD_DIM;
    for (var e = lid; e < BK * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        if (t < nk) {
            let row = (b * p.kv_seq_stride + k0 + t) * 3u * d_model;
            if (keys) {
                let base = row + d_model + h * HEAD_DIM;
                r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
            } else {
                let base = row + 2u * d_model + h * HEAD_DIM;
                r = vec2<f32>(qkv[base + j], qkv[base + j + HALF]);
            }
        }
        kv_s[t * HEAD_DIM + j] = f16(r.x);
        kv_s[t * HEAD_DIM + j + HALF] = f16(r.y);
    }
}

// Query row r (logical index q) against the key tile [k0, k1): dS from the scores, dP and (lse, δ).
fn ds_row(r: u32, q: u32, k0: u32, k1: u32, full: bool) {
    var iv = vec4<u32>(0u, p.n_kv, 0u, 0u);
    if (!full) {
        iv = key_intervals(q);
    }
    let lse = st_s[2u * r];
    let delta = st_s[2u * r + 1u];
    for (var c = 0u; c < BK; c++) {
        let key = k0 + c;
        let ok = key < k1 && in_intervals(iv, key);
        let pr = select(0.0, exp(s_s[r * BK + c] * p.scale - lse), ok);
        ds_s[r * BK + c] = f16(pr * (dp_s[r * BK + c] - delta));
    }
}

fn query_grad(wg: vec3<u32>, lid: u32, sg: u32, lane: u32) {
    let h = wg.y;
    let b = wg.z;
    let i0 = wg.x * BQ;
    let nq = min(BQ, p.n_q - i0);
    let d_model = p.n_heads * HEAD_DIM;

    for (var e = lid; e < BQ * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        var dd = vec2<f32>(0.0);
        if (t < nq) {
            let row = b * p.q_seq_stride + i0 + t;
            let base = row * 3u * d_model + h * HEAD_DIM;
            r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (i0 + t + p.pos_offset) % p.pos_period, j);
            let ob = row * d_model + h * HEAD_DIM;
            dd = vec2<f32>(d_o[ob + j], d_o[ob + j + HALF]);
        }
        q_s[t * HEAD_DIM + j] = f16(r.x);
        q_s[t * HEAD_DIM + j + HALF] = f16(r.y);
        do_s[t * HEAD_DIM + j] = f16(dd.x);
        do_s[t * HEAD_DIM + j + HALF] = f16(dd.y);
    }
    for (var t = lid; t < BQ; t += THREADS) {
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
    for (var e = lid; e < BQ * HEAD_DIM; e += THREADS) {
        dq_s[e] = 0.0;
    }
    if (lid == 0u) {
        mask_bounds(i0, i0 + nq, true);
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
        // The previous tile's readers of kv_s, s_s and ds_s are done.
        workgroupBarrier();
        stage_kv(b, h, k0, nk, lid, false);
        workgroupBarrier();
        products_dp(sg, lane);
        workgroupBarrier();
        stage_kv(b, h, k0, nk, lid, true);
        workgroupBarrier();
        products_s(sg, lane);
        workgroupBarrier();
        for (var r = lid; r < BQ; r += THREADS) {
            ds_row(r, i0 + r, k0, k1, full);
        }
        workgroupBarrier();
        for (var j = 0u; j < HEAD_DIM / T; j++) {
            product_dq(sg, lane, j);
            workgroupBarrier();
            for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
                let at = (sg * T + e / T) * HEAD_DIM + j * T + e % T;
                dq_s[at] = dq_s[at] + s_s[sg * T * T + e];
            }
            workgroupBarrier();
        }
    }

    // dq = scale · Rᵀ dq', pair by pair (dq_s is complete after the last barrier).
    for (var e = lid; e < BQ * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        if (t < nq) {
            let base = (b * p.q_seq_stride + i0 + t) * 3u * d_model + h * HEAD_DIM;
            let gr = unrotate_pair(dq_s[t * HEAD_DIM + j] * p.scale, dq_s[t * HEAD_DIM + j + HALF] * p.scale, (i0 + t + p.pos_offset) % p.pos_period, j);
            dqkv[base + j] = gr.x;
            dqkv[base + j + HALF] = gr.y;
        }
    }
}
