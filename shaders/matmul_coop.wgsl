// General matrix product on tensor cores (wgpu's cooperative matrices): every Linear of the forward
// and backward passes in mixed precision,
//   v[i, j] = Σ_k f16(A(i, k)) · f16(B(k, j))  summed in f32, then matmul.wgsl's epilogue
// (bias, gelu/silu, dropout, gated residual, aux, row mapping, split K), with the same Params and
// bindings (0 params, 1 a, 2 b, 3 bias, 4 gate, 5 out, 6 aux) and the same strided layouts: y = x·Wᵀ,
// dx = dy·W and dW += dyᵀ·x, any M, N, K (edges are zero-padded while staging and masked in the
// epilogue). Buffers stay f32; only the staged copies in workgroup memory are f16.
// Tiling (matmul_coop_common.wgsl): a 64 × 64 output block per workgroup of 4 subgroups, K in slabs
// of 32 staged as f16; each subgroup holds its 2 × 2 tiles of 16 × 16 as f32 accumulators
// (coop_mat16x16<f32, C>) and per 16-wide k step loads 2 A tiles and 2 B tiles from the slab
// (coopLoadT: row-major) and does 4 coopMultiplyAdd. Finished tiles go through c_s (coopStoreT) to the
// per-element epilogue. Needs the adapter's 16×16×16 f16→f32 configuration
// (context::CooperativeMatrix), shader-f16 and subgroups (subgroup_id); SUBGROUP_SIZE is set by the
// host. naga's SPIR-V writer needs every load/store offset and stride bound with `let` first.
// The emulated twin (matmul_coop_emulated.wgsl) runs the same staging and tiles with plain loops.
// Includes: matmul_coop_common.wgsl.

enable f16;
enable wgpu_cooperative_matrix;

const SUBGROUP_SIZE: u32 = 32u;

// #include "matmul_coop_common.wgsl"

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let r0 = tile_row(sg, 0u);
    let r1 = tile_row(sg, 1u);
    let c0 = tile_col(sg, 0u);
    let c1 = tile_col(sg, 1u);
    var acc00 = coop_mat16x16<f32, C>();
    var acc01 = coop_mat16x16<f32, C>();
    var acc10 = coop_mat16x16<f32, C>();
    var acc11 = coop_mat16x16<f32, C>();
    let k_begin = wg.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        stage(m0, n0, k0, k_end, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            let a_stride = BK;
            let b_stride = BN;
            let a0_at = r0 * BK + kk;
            let a1_at = r1 * BK + kk;
            let b0_at = kk * BN + c0;
            let b1_at = kk * BN + c1;
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&a_s[a0_at], a_stride);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&a_s[a1_at], a_stride);
            let b0 = coopLoadT<coop_mat16x16<f16, B>>(&b_s[b0_at], b_stride);
            let b1 = coopLoadT<coop_mat16x16<f16, B>>(&b_s[b1_at], b_stride);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        workgroupBarrier();
    }

    let slice_offset = wg.z * p.split_stride;
    let c_at = sg * T * T;
    let c_stride = T;
    coopStoreT(acc00, &c_s[c_at], c_stride);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r0, c0, slice_offset);
    workgroupBarrier();
    coopStoreT(acc01, &c_s[c_at], c_stride);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r0, c1, slice_offset);
    workgroupBarrier();
    coopStoreT(acc10, &c_s[c_at], c_stride);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r1, c0, slice_offset);
    workgroupBarrier();
    coopStoreT(acc11, &c_s[c_at], c_stride);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r1, c1, slice_offset);
}
