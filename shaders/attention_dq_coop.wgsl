// The attention query gradient on tensor cores (wgpu's cooperative matrices), for mixed precision:
// attention_dq.wgsl's math with dO·Vᵀ, Q'·K'ᵀ and dS·K' as 16×16×16 f16 tile products summed in f32;
// staging, dS, accumulation and output are attention_dq_coop_common.wgsl's (see it for the math,
// bindings, tiling and workgroup memory).
// Subgroup sg's rows of dO and Q' are row-major A tiles (coopLoadT); V and K' are staged [key][d], so
// as the B operand of a product with their transpose they load column-major (coopLoad), and as the B
// operand of dS·K' row-major. naga's SPIR-V writer needs every load/store offset and stride bound
// with `let` first.
// The emulated twin (attention_dq_coop_emulated.wgsl) runs the same pass with plain loops.
// Includes: attention_dq_coop_common.wgsl.

enable f16;
enable wgpu_cooperative_matrix;

const SUBGROUP_SIZE: u32 = 32u;

// #include "attention_dq_coop_common.wgsl"

// dp_s rows 16·sg … (row-major, stride BK) ← dO rows 16·sg … · Vᵀ (kv_s holds V).
fn products_dp(sg: u32, lane: u32) {
    for (var kt = 0u; kt < BK / T; kt++) {
        var acc = coop_mat16x16<f32, C>();
        for (var d0 = 0u; d0 < HEAD_DIM; d0 += T) {
            let x_at = sg * T * HEAD_DIM + d0;
            let x_stride = HEAD_DIM;
            let xa = coopLoadT<coop_mat16x16<f16, A>>(&do_s[x_at], x_stride);
            let k_at = kt * T * HEAD_DIM + d0;
            let k_stride = HEAD_DIM;
            let kb = coopLoad<coop_mat16x16<f16, B>>(&kv_s[k_at], k_stride);
            acc = coopMultiplyAdd(xa, kb, acc);
        }
        let out_at = sg * T * BK + kt * T;
        let out_stride = BK;
        coopStoreT(acc, &dp_s[out_at], out_stride);
    }
}

fn products_s(sg: u32, lane: u32) {
    for (var kt = 0u; kt < BK / T; kt++) {
        var acc = coop_mat16x16<f32, C>();
        for (var d0 = 0u; d0 < HEAD_DIM; d0 += T) {
            let x_at = sg * T * HEAD_DIM + d0;
            let x_stride = HEAD_DIM;
            let xa = coopLoadT<coop_mat16x16<f16, A>>(&q_s[x_at], x_stride);
            let k_at = kt * T * HEAD_DIM + d0;
            let k_stride = HEAD_DIM;
            let kb = coopLoad<coop_mat16x16<f16, B>>(&kv_s[k_at], k_stride);
            acc = coopMultiplyAdd(xa, kb, acc);
        }
        let out_at = sg * T * BK + kt * T;
        let out_stride = BK;
        coopStoreT(acc, &s_s[out_at], out_stride);
    }
}

fn product_dq(sg: u32, lane: u32, j: u32) {
    var acc = coop_mat16x16<f32, C>();
    for (var kt = 0u; kt < BK / T; kt++) {
        let ds_at = sg * T * BK + kt * T;
        let ds_stride = BK;
        let da = coopLoadT<coop_mat16x16<f16, A>>(&ds_s[ds_at], ds_stride);
        let k_at = kt * T * HEAD_DIM + j * T;
        let k_stride = HEAD_DIM;
        let kb = coopLoadT<coop_mat16x16<f16, B>>(&kv_s[k_at], k_stride);
        acc = coopMultiplyAdd(da, kb, acc);
    }
    let c_at = sg * T * T;
    let c_stride = T;
    coopStoreT(acc, &s_s[c_at], c_stride);
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    query_grad(wg, lid, sg, lane);
}
