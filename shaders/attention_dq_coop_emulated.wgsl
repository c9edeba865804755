// The emulated twin of attention_dq_coop.wgsl, for adapters without cooperative matrices (lavapipe in
// the tests): the same pass (attention_dq_coop_common.wgsl: staging, f16 rounding, dS, accumulation,
// output), with each 16×16 tile of the three products done by plain loops over the same f16 values
// in workgroup memory, summed in f32. It needs only shader-f16. Math, bindings and tiling:
// attention_dq_coop_common.wgsl.
// Subgroups are emulated: invocation lid plays lane lid % 32 of subgroup lid / 32 and computes the
// elements lane, lane + 32, … of each of its subgroup's 16 × 16 tiles, storing them where coopStoreT
// puts them.
// Includes: attention_dq_coop_common.wgsl.

enable f16;

const SUBGROUP_SIZE: u32 = 32u;

// #include "attention_dq_coop_common.wgsl"

fn products_dp(sg: u32, lane: u32) {
    for (var e = lane; e < T * BK; e += SUBGROUP_SIZE) {
        let r = sg * T + e / BK;
        let c = e % BK;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s = fma(f32(do_s[r * HEAD_DIM + d]), f32(kv_s[c * HEAD_DIM + d]), s);
        }
        dp_s[r * BK + c] = s;
    }
}

fn products_s(sg: u32, lane: u32) {
    for (var e = lane; e < T * BK; e += SUBGROUP_SIZE) {
        let r = sg * T + e / BK;
        let c = e % BK;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s = fma(f32(q_s[r * HEAD_DIM + d]), f32(kv_s[c * HEAD_DIM + d]), s);
        }
        s_s[r * BK + c] = s;
    }
}

fn product_dq(sg: u32, lane: u32, j: u32) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let r = sg * T + e / T;
        let col = j * T + e % T;
        var s = 0.0;
        for (var t = 0u; t < BK; t++) {
            s = fma(f32(ds_s[r * BK + t]), f32(kv_s[t * HEAD_DIM + col]), s);
        }
        s_s[sg * T * T + e] = s;
    }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    query_grad(wg, lid, lid / SUBGROUP_SIZE, lid % SUBGROUP_SIZE);
}
