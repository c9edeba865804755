// The emulated twin of matmul_coop.wgsl, for adapters without cooperative matrices (lavapipe in the
// tests): the same staging, block, subgroup tiles and epilogue (matmul_coop_common.wgsl), with each
// 16×16×16 tile product done by plain loops over the same f16-rounded values in workgroup memory,
// summed in f32. It needs only shader-f16. Math, parameters and bindings: matmul_coop.wgsl.
// Subgroups are emulated: invocation lid plays lane lid % SUBGROUP_SIZE of subgroup lid / SUBGROUP_SIZE
// and holds the elements lane, lane + SUBGROUP_SIZE, … of each of its subgroup's TM × TN tiles (ELEMS
// each) in registers; a finished tile goes through c_s to the shared epilogue exactly as coopStoreT
// puts it. The host sets TM and TN as for the tensor-core kernel.
// Includes: matmul_coop_common.wgsl.

enable f16;

const SUBGROUP_SIZE: u32 = 32u;

// #include "matmul_coop_common.wgsl"

// Elements of one tile per emulated lane.
const ELEMS: u32 = T * T / SUBGROUP_SIZE;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sg = lid / SUBGROUP_SIZE;
    let lane = lid % SUBGROUP_SIZE;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    // Element j of tile (ti, tj) at acc[(ti·TN + tj)·ELEMS + j]: row (lane + j·SUBGROUP_SIZE) / T,
    // column (lane + j·SUBGROUP_SIZE) % T of the tile.
    var acc: array<f32, TM * TN * ELEMS>;
    let k_begin = wg.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        stage(m0, n0, k0, k_end, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            for (var t = 0u; t < TM * TN; t++) {
                let row0 = tile_row(sg, t / TN);
                let col0 = tile_col(sg, t % TN);
                for (var j = 0u; j < ELEMS; j++) {
                    let e = lane + j * SUBGROUP_SIZE;
                    let r = row0 + e / T;
                    let c = col0 + e % T;
                    var s = acc[t * ELEMS + j];
                    for (var i = 0u; i < T; i++) {
                        s = fma(f32(a_s[r * BK + kk + i]), f32(b_s[(kk + i) * BN + c]), s);
                    }
                    acc[t * ELEMS + j] = s;
                }
            }
        }
        workgroupBarrier();
    }

    let slice_offset = wg.z * p.split_stride;
    for (var t = 0u; t < TM * TN; t++) {
        // What coopStoreT(acc[t], &c_s[sg·T·T], T) does for this lane's elements.
        for (var j = 0u; j < ELEMS; j++) {
            c_s[sg * T * T + lane + j * SUBGROUP_SIZE] = acc[t * ELEMS + j];
        }
        workgroupBarrier();
        epilogue_tile(sg, lane, m0, n0, tile_row(sg, t / TN), tile_col(sg, t % TN), slice_offset);
        workgroupBarrier();
    }
}
