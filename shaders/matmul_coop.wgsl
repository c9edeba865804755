// General matrix product on tensor cores (wgpu's cooperative matrices): every Linear of the forward
// and backward passes in mixed precision,
//   v[i, j] = Σ_k f16(A(i, k)) · f16(B(k, j))  summed in f32, then matmul.wgsl's epilogue
// (bias, gelu/silu, dropout, gated residual, aux, row mapping, split K), with the same Params and
// bindings (0 params, 1 a, 2 b, 3 bias, 4 gate, 5 out, 6 aux) and the same strided layouts: y = x·Wᵀ,
// dx = dy·W and dW += dyᵀ·x, any M, N, K (edges are zero-padded while staging and masked in the
// epilogue). Buffers stay f32; only the staged copies in workgroup memory are f16.
// Tiling (matmul_coop_common.wgsl): a BM × BN output block per workgroup of 4 subgroups, K in slabs
// of 32 staged as f16; each subgroup holds its TM × TN tiles of 16 × 16 as f32 accumulators
// (coop_mat16x16<f32, C>) and per 16-wide k step loads TM A tiles and TN B tiles from the slab
// (coopLoadT: row-major) and does TM·TN coopMultiplyAdd. Finished tiles go through c_s (coopStoreT)
// to the per-element epilogue. Needs the adapter's 16×16×16 f16→f32 configuration
// (context::CooperativeMatrix), shader-f16 and subgroups (subgroup_id); the host sets SUBGROUP_SIZE,
// TM and TN. naga's SPIR-V writer needs every load/store offset and stride bound with `let` first.
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
    // Tile (ti, tj) accumulates in acc[ti·TN + tj].
    var acc: array<coop_mat16x16<f32, C>, TM * TN>;
    for (var t = 0u; t < TM * TN; t++) {
        acc[t] = coop_mat16x16<f32, C>();
    }
    let k_begin = wg.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        stage(m0, n0, k0, k_end, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            var a_tiles: array<coop_mat16x16<f16, A>, TM>;
            for (var ti = 0u; ti < TM; ti++) {
                let a_at = tile_row(sg, ti) * BK + kk;
                let a_stride = BK;
                a_tiles[ti] = coopLoadT<coop_mat16x16<f16, A>>(&a_s[a_at], a_stride);
            }
            for (var tj = 0u; tj < TN; tj++) {
                let b_at = kk * BN + tile_col(sg, tj);
                let b_stride = BN;
                let b_tile = coopLoadT<coop_mat16x16<f16, B>>(&b_s[b_at], b_stride);
                for (var ti = 0u; ti < TM; ti++) {
                    acc[ti * TN + tj] = coopMultiplyAdd(a_tiles[ti], b_tile, acc[ti * TN + tj]);
                }
            }
        }
        workgroupBarrier();
    }

    let slice_offset = wg.z * p.split_stride;
    let c_at = sg * T * T;
    let c_stride = T;
    for (var t = 0u; t < TM * TN; t++) {
        coopStoreT(acc[t], &c_s[c_at], c_stride);
        workgroupBarrier();
        epilogue_tile(sg, lane, m0, n0, tile_row(sg, t / TN), tile_col(sg, t % TN), slice_offset);
        workgroupBarrier();
    }
}
