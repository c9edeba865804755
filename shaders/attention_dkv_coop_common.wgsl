// What the tensor-core key/value gradient (attention_dkv_coop.wgsl) and its emulated twin
// (attention_dkv_coop_emulated.wgsl) share: the whole pass but the four tile products. The math is
// attention_dkv.wgsl's (run after the query gradient stored δ; same Params, bindings and layouts),
// with the products on 16×16×16 f16 tiles summed in f32:
//   Sᵀ = K'·Q'ᵀ,  dPᵀ = V·dOᵀ  (k', v, q', dO rounded to f16 as they are staged),
//   P_ik = exp(S_ik·scale − lse_i), dS_ik = P_ik (dP_ik − δ_i) in f32, both rounded to f16,
//   dv += Pᵀ·dO,  dk' += dSᵀ·Q',  then dk = scale · Rᵀ(θ_k) dk'.
//
// Bindings: those of attention_dkv.wgsl (0 params, 1 qkv, 2 rope_cos, 3 rope_sin, 4 d_o,
// 5 lse_delta, 6 dqkv).
// Tiling: 2 subgroups (SUBGROUP_SIZE invocations each; the twin emulates 32) own BK = 16 keys of one
// head and sequence and walk query tiles of BQ = 32 (tiles that see none of the keys skipped, tiles
// that all see all of them unmasked, as attention_dkv.wgsl). Per query tile: q' and dO into q_s and
// do_s with (lse, δ); subgroup s computes the Sᵀ and dPᵀ tiles of queries 16s … (s_s, dp_s); one
// invocation per key row forms P and dS (p_s, ds_s, f16); then the subgroups share the output
// columns — subgroup s takes the 16-column tiles j ≡ s (mod 2) — and add Pᵀ·dO and dSᵀ·Q' into
// dv_s and dk_s through their own 16 × 16 part of s_s (free by then).
// Workgroup memory at HEAD_DIM = 64: k_s, v_s 2 KiB each, q_s, do_s 4 KiB each (f16), s_s and dp_s
// 2 KiB each, p_s and ds_s 1 KiB each, dk_s and dv_s 4 KiB each, the query statistics: 26.3 KiB.
// The includer enables f16 (and cooperative matrices), defines SUBGROUP_SIZE, `products_st(sg, lane)`
// (s_s columns 16·sg … ← K'·Q'ᵀ), `products_dpt(sg, lane)` (dp_s columns 16·sg … ← V·dOᵀ), and
// `product_dv(sg, lane, j)` / `product_dk(sg, lane, j)` (s_s[sg·256 …] ← the 16 × 16 tile of Pᵀ·dO /
// dSᵀ·Q' at columns 16j …, row-major), and calls `key_value_grad` in uniform control flow.
// Includes: attention_common.wgsl (Params, masks, rotary, mask_bounds, HEAD_DIM, BQ, BK).

// #include "attention_common.wgsl"

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> rope_cos: array<f32>;
@group(0) @binding(3) var<storage, read> rope_sin: array<f32>;
@group(0) @binding(4) var<storage, read> d_o: array<f32>;
@group(0) @binding(5) var<storage, read> lse_delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;

const SUBGROUPS: u32 = 2u;
const THREADS: u32 = SUBGROUPS * SUBGROUP_SIZE;
// The cooperative-matrix tile edge (M = N = K).
const T: u32 = 16u;
// The tiles the indexing assumes: one 16-row band of keys, a 16-query band per subgroup, and room
// in s_s for each subgroup's 16 × 16 product tile.
const_assert BK == T;
const_assert BQ == SUBGROUPS * T;
const_assert BQ * BK >= SUBGROUPS * T * T;

var<workgroup> k_s: array<f16, BK * HEAD_DIM>; // [key][d], rotated
var<workgroup> v_s: array<f16, BK * HEAD_DIM>; // [key][d]
var<workgroup> q_s: array<f16, BQ * HEAD_DIM>; // [query][d], rotated
var<workgroup> do_s: array<f16, BQ * HEAD_DIM>; // [query][d]
var<workgroup> s_s: array<f32, BK * BQ>; // [key][query]: scores; then each subgroup's product tile
var<workgroup> dp_s: array<f32, BK * BQ>; // [key][query]: V·dOᵀ
var<workgroup> p_s: array<f16, BK * BQ>; // [key][query]: P
var<workgroup> ds_s: array<f16, BK * BQ>; // [key][query]: dS
var<workgroup> dk_s: array<f32, BK * HEAD_DIM>; // [key][d]: Σ dSᵀ·Q'
var<workgroup> dv_s: array<f32, BK * HEAD_DIM>; // [key][d]: Σ Pᵀ·dO
var<workgroup> st_s: array<f32, 2u * BQ>; // per query: (lse, δ)

// Key row r (key index `key`, live if r < nk) against the query tile [q0, q1): P and dS.
fn pds_row(r: u32, key: u32, live: bool, q0: u32, q1: u32, full: bool) {
    var iv = vec4<u32>(0u, p.n_q, 0u, 0u);
    if (!full) {
        iv = query_intervals(key);
    }
    for (var qt = 0u; qt < BQ; qt++) {
        let ok = live && q0 + qt < q1 && in_intervals(iv, q0 + qt);
        let pr = select(0.0, exp(s_s[r * BQ + qt] * p.scale - st_s[2u * qt]), ok);
        p_s[r * BQ + qt] = f16(pr);
        ds_s[r * BQ + qt] = f16(pr * (dp_s[r * BQ + qt] - st_s[2u * qt + 1u]));
    }
}

// Subgroup sg's product tile in s_s[sg·256 …] added to rows 0 … 15, columns 16j … of `dk_s`
// (`into_dk`) or `dv_s`.
fn add_tile(sg: u32, lane: u32, j: u32, into_dk: bool) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let at = (e / T) * HEAD_DIM + j * T + e % T;
        if (into_dk) {
            dk_s[at] = dk_s[at] + s_s[sg * T * T + e];
        } else {
            dv_s[at] = dv_s[at] + s_s[sg * T * T + e];
        }
    }
}

fn key_value_grad(wg: vec3<u32>, lid: u32, sg: u32, lane: u32) {
    let h = wg.y;
    let b = wg.z;
    let k0 = wg.x * BK;
    let nk = min(BK, p.n_kv - k0);
    let d_model = p.n_heads * HEAD_DIM;
    let row_width = 3u * d_model;

    for (var e = lid; e < BK * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        var r = vec2<f32>(0.0);
        var v = vec2<f32>(0.0);
        if (t < nk) {
            let base = (b * p.kv_seq_stride + k0 + t) * row_width + d_model + h * HEAD_DIM;
            r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (k0 + t + p.pos_offset) % p.pos_period, j);
            v = vec2<f32>(qkv[base + d_model + j], qkv[base + d_model + j + HALF]);
        }
        k_s[t * HEAD_DIM + j] = f16(r.x);
        k_s[t * HEAD_DIM + j + HALF] = f16(r.y);
        v_s[t * HEAD_DIM + j] = f16(v.x);
        v_s[t * HEAD_DIM + j + HALF] = f16(v.y);
    }
    for (var e = lid; e < BK * HEAD_DIM; e += THREADS) {
        dk_s[e] = 0.0;
        dv_s[e] = 0.0;
    }
    if (lid == 0u) {
        mask_bounds(k0, k0 + nk, false);
    }
    let hull = workgroupUniformLoad(&wg_hull);
    let core = workgroupUniformLoad(&wg_core);

    for (var q0 = 0u; q0 < p.n_q; q0 += BQ) {
        let q1 = min(q0 + BQ, p.n_q);
        if (!overlaps(hull, q0, q1)) {
            continue;
        }
        let full = covers(core, q0, q1);
        let nq = q1 - q0;
        // The previous tile's readers of q_s, do_s, s_s, p_s, ds_s and st_s are done.
        workgroupBarrier();
        for (var e = lid; e < BQ * HALF; e += THREADS) {
            let t = e / HALF;
            let j = e % HALF;
            var r = vec2<f32>(0.0);
            var dd = vec2<f32>(0.0);
            if (t < nq) {
                let row = b * p.q_seq_stride + q0 + t;
                let base = row * row_width + h * HEAD_DIM;
                r = rotate_pair(qkv[base + j], qkv[base + j + HALF], (q0 + t + p.pos_offset) % p.pos_period, j);
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
                let stat = (b * p.n_heads + h) * p.n_q + q0 + t;
                lse = lse_delta[2u * stat];
                delta = lse_delta[2u * stat + 1u];
            }
            st_s[2u * t] = lse;
            st_s[2u * t + 1u] = delta;
        }
        workgroupBarrier();
        products_st(sg, lane);
        products_dpt(sg, lane);
        workgroupBarrier();
        for (var r = lid; r < BK; r += THREADS) {
            pds_row(r, k0 + r, r < nk, q0, q1, full);
        }
        workgroupBarrier();
        // Subgroup sg takes the column tiles j = sg, sg + 2, …; the trip count is the same for both
        // (a tile past HEAD_DIM is skipped by the whole subgroup), so the barriers stay uniform.
        for (var jj = 0u; jj < (HEAD_DIM / T + SUBGROUPS - 1u) / SUBGROUPS; jj++) {
            let j = jj * SUBGROUPS + sg;
            let mine = j < HEAD_DIM / T;
            if (mine) {
                product_dv(sg, lane, j);
            }
            workgroupBarrier();
            if (mine) {
                add_tile(sg, lane, j, false);
            }
            workgroupBarrier();
            if (mine) {
                product_dk(sg, lane, j);
            }
            workgroupBarrier();
            if (mine) {
                add_tile(sg, lane, j, true);
            }
            workgroupBarrier();
        }
    }

    // dv as is; dk = scale · Rᵀ dk', pair by pair (both complete after the last barrier).
    for (var e = lid; e < BK * HALF; e += THREADS) {
        let t = e / HALF;
        let j = e % HALF;
        if (t < nk) {
            let base = (b * p.kv_seq_stride + k0 + t) * row_width + d_model + h * HEAD_DIM;
            let gr = unrotate_pair(dk_s[t * HEAD_DIM + j] * p.scale, dk_s[t * HEAD_DIM + j + HALF] * p.scale, (k0 + t + p.pos_offset) % p.pos_period, j);
            dqkv[base + j] = gr.x;
            dqkv[base + j + HALF] = gr.y;
            dqkv[base + d_model + j] = dv_s[t * HEAD_DIM + j];
            dqkv[base + d_model + j + HALF] = dv_s[t * HEAD_DIM + j + HALF];
        }
    }
}
