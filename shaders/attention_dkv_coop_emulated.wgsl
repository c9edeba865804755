// The emulated twin of attention_dkv_coop.wgsl, for adapters without cooperative matrices (lavapipe
// in the tests): the same pass (attention_dkv_coop_common.wgsl: staging, f16 rounding, P and dS,
// accumulation, output), with each 16×16 tile of the four products done by plain loops over the same
// f16 values in workgroup memory, summed in f32. It needs only shader-f16. Math, bindings and tiling:
// attention_dkv_coop_common.wgsl.
// Subgroups are emulated: invocation lid plays lane lid % 32 of subgroup lid / 32 and computes the
// elements lane, lane + 32, … of each of its subgroup's 16 × 16 tiles, storing them where coopStoreT
// puts them.
// Includes: attention_dkv_coop_common.wgsl.

enable f16;

const SUBGROUP_SIZE: u32 = 32u;

// #include "attention_dkv_coop_common.wgsl"

fn products_st(sg: u32, lane: u32) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let r = e / T;
        let q = sg * T + e % T;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s = fma(f32(k_s[r * HEAD_DIM + d]), f32(q_s[q * HEAD_DIM + d]), s);
        }
        s_s[r * BQ + q] = s;
    }
}

fn products_dpt(sg: u32, lane: u32) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let r = e / T;
        let q = sg * T + e % T;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s = fma(f32(v_s[r * HEAD_DIM + d]), f32(do_s[q * HEAD_DIM + d]), s);
        }
        dp_s[r * BQ + q] = s;
    }
}

fn product_dv(sg: u32, lane: u32, j: u32) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let r = e / T;
        let col = j * T + e % T;
        var s = 0.0;
        for (var q = 0u; q < BQ; q++) {
            s = fma(f32(p_s[r * BQ + q]), f32(do_s[q * HEAD_DIM + col]), s);
        }
        s_s[sg * T * T + e] = s;
    }
}

fn product_dk(sg: u32, lane: u32, j: u32) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let r = e / T;
        let col = j * T + e % T;
        var s = 0.0;
        for (var q = 0u; q < BQ; q++) {
            s = fma(f32(ds_s[r * BQ + q]), f32(q_s[q * HEAD_DIM + col]), s);
        }
        s_s[sg * T * T + e] = s;
    }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    key_value_grad(wg, lid, lid / SUBGROUP_SIZE, lid % SUBGROUP_SIZE);
}
