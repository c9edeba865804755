// The attention key and value gradients on tensor cores (wgpu's cooperative matrices), for mixed
// precision: attention_dkv.wgsl's math with K'·Q'ᵀ, V·dOᵀ, Pᵀ·dO and dSᵀ·Q' as 16×16×16 f16 tile
// products summed in f32; staging, P and dS, accumulation and output are
// attention_dkv_coop_common.wgsl's (see it for the math, bindings, tiling and workgroup memory).
// K', V, Pᵀ and dSᵀ rows are row-major A tiles (coopLoadT); Q' and dO are staged [query][d], so as
// the B operand of a product with their transpose they load column-major (coopLoad), and as the B
// operand of Pᵀ·dO and dSᵀ·Q' row-major. naga's SPIR-V writer needs every load/store offset and
// stride bound with `let` first.
// The emulated twin (attention_dkv_coop_emulated.wgsl) runs the same pass with plain loops.
// Includes: attention_dkv_coop_common.wgsl.

enable f16;
enable wgpu_cooperative_matrix;

const SUBGROUP_SIZE: u32 = 32u;

// #include "attention_dkv_coop_common.wgsl"

// s_s[key][16·sg …] ← K'·Q'ᵀ for the subgroup's 16 queries.
fn products_st(sg: u32, lane: u32) {
    var acc = coop_mat16x16<f32, C>();
    for (var d0 = 0u; d0 < HEAD_DIM; d0 += T) {
        let k_at = d0;
        let k_stride = HEAD_DIM;
        let ka = coopLoadT<coop_mat16x16<f16, A>>(&k_s[k_at], k_stride);
        let q_at = sg * T * HEAD_DIM + d0;
        let q_stride = HEAD_DIM;
        let qb = coopLoad<coop_mat16x16<f16, B>>(&q_s[q_at], q_stride);
        acc = coopMultiplyAdd(ka, qb, acc);
    }
    let out_at = sg * T;
    let out_stride = BQ;
    coopStoreT(acc, &s_s[out_at], out_stride);
}

// dp_s[key][16·sg …] ← V·dOᵀ for the subgroup's 16 queries.
fn products_dpt(sg: u32, lane: u32) {
    var acc = coop_mat16x16<f32, C>();
    for (var d0 = 0u; d0 < HEAD_DIM; d0 += T) {
        let v_at = d0;
        let v_stride = HEAD_DIM;
        let va = coopLoadT<coop_mat16x16<f16, A>>(&v_s[v_at], v_stride);
        let o_at = sg * T * HEAD_DIM + d0;
        let o_stride = HEAD_DIM;
        let ob = coopLoad<coop_mat16x16<f16, B>>(&do_s[o_at], o_stride);
        acc = coopMultiplyAdd(va, ob, acc);
    }
    let out_at = sg * T;
    let out_stride = BQ;
    coopStoreT(acc, &dp_s[out_at], out_stride);
}

fn product_dv(sg: u32, lane: u32, j: u32) {
    var acc = coop_mat16x16<f32, C>();
    for (var qt = 0u; qt < BQ / T; qt++) {
        let p_at = qt * T;
        let p_stride = BQ;
        let pa = coopLoadT<coop_mat16x16<f16, A>>(&p_s[p_at], p_stride);
        let o_at = qt * T * HEAD_DIM + j * T;
        let o_stride = HEAD_DIM;
        let ob = coopLoadT<coop_mat16x16<f16, B>>(&do_s[o_at], o_stride);
        acc = coopMultiplyAdd(pa, ob, acc);
    }
    let c_at = sg * T * T;
    let c_stride = T;
    coopStoreT(acc, &s_s[c_at], c_stride);
}

fn product_dk(sg: u32, lane: u32, j: u32) {
    var acc = coop_mat16x16<f32, C>();
    for (var qt = 0u; qt < BQ / T; qt++) {
        let ds_at = qt * T;
        let ds_stride = BQ;
        let da = coopLoadT<coop_mat16x16<f16, A>>(&ds_s[ds_at], ds_stride);
        let q_at = qt * T * HEAD_DIM + j * T;
        let q_stride = HEAD_DIM;
        let qb = coopLoadT<coop_mat16x16<f16, B>>(&q_s[q_at], q_stride);
        acc = coopMultiplyAdd(da, qb, acc);
    }
    let c_at = sg * T * T;
    let c_stride = T;
    coopStoreT(acc, &s_s[c_at], c_stride);
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    key_value_grad(wg, lid, sg, lane);
}
