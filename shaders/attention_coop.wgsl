// The attention forward on tensor cores (wgpu's cooperative matrices), for mixed precision:
// attention.wgsl's math with S = Q'·K'ᵀ and P·V as 16×16×16 f16 tile products summed in f32; the
// online softmax, staging, masks and output are attention_coop_common.wgsl's (see it for the math,
// bindings, tiling and workgroup memory).
// Scores: subgroup sg multiplies its 16 query rows (q_s, row-major, coopLoadT) by each 16-key half
// of the staged tile (kv_s holds K' as [key][d], which is K'ᵀ column-major: coopLoad) over HEAD_DIM
// in steps of 16, and stores the two 16 × 16 results row-major into s_s. P·V: P tiles from p_s
// (row-major) times V tiles from kv_s ([key][d], row-major) over the 32 keys, one 16-column output
// tile at a time. Needs the adapter's 16×16×16 f16→f32 configuration (context::CooperativeMatrix),
// shader-f16 and subgroups (subgroup_id). naga's SPIR-V writer needs every load/store offset and
// stride bound with `let` first.
// The emulated twin (attention_coop_emulated.wgsl) runs the same pass with plain loops.
// Includes: attention_coop_common.wgsl.

enable f16;
enable wgpu_cooperative_matrix;

const SUBGROUP_SIZE: u32 = 32u;

// #include "attention_coop_common.wgsl"

fn scores(sg: u32, lane: u32) {
    for (var kt = 0u; kt < BK / T; kt++) {
        var acc = coop_mat16x16<f32, C>();
        for (var d0 = 0u; d0 < HEAD_DIM; d0 += T) {
            let q_at = sg * T * HEAD_DIM + d0;
            let q_stride = HEAD_DIM;
            let qa = coopLoadT<coop_mat16x16<f16, A>>(&q_s[q_at], q_stride);
            let k_at = kt * T * HEAD_DIM + d0;
            let k_stride = HEAD_DIM;
            let kb = coopLoad<coop_mat16x16<f16, B>>(&kv_s[k_at], k_stride);
            acc = coopMultiplyAdd(qa, kb, acc);
        }
        let s_at = sg * T * BK + kt * T;
        let s_stride = BK;
        coopStoreT(acc, &s_s[s_at], s_stride);
    }
}

fn pv_tile(sg: u32, lane: u32, j: u32) {
    var acc = coop_mat16x16<f32, C>();
    for (var kt = 0u; kt < BK / T; kt++) {
        let p_at = sg * T * BK + kt * T;
        let p_stride = BK;
        let pa = coopLoadT<coop_mat16x16<f16, A>>(&p_s[p_at], p_stride);
        let v_at = kt * T * HEAD_DIM + j * T;
        let v_stride = HEAD_DIM;
        let vb = coopLoadT<coop_mat16x16<f16, B>>(&kv_s[v_at], v_stride);
        acc = coopMultiplyAdd(pa, vb, acc);
    }
    let c_at = sg * T * T;
    let c_stride = T;
    coopStoreT(acc, &s_s[c_at], c_stride);
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    attend(wg, lid, sg, lane);
}
