// The emulated twin of matmul_coop.wgsl, for adapters without cooperative matrices (lavapipe in the
// tests): the same staging, block, subgroup tiles and epilogue (matmul_coop_common.wgsl), with each
// 16×16×16 tile product done by plain loops over the same f16-rounded values in workgroup memory,
// summed in f32. It needs only shader-f16. Math, parameters and bindings: matmul_coop.wgsl.
// Subgroups are emulated: invocation lid plays lane lid % SUBGROUP_SIZE of subgroup lid / SUBGROUP_SIZE
// and holds the elements lane, lane + SUBGROUP_SIZE, … of each of its subgroup's 4 tiles (ELEMS each)
// in registers; a finished tile goes through c_s to the shared epilogue exactly as coopStoreT puts it.
// Includes: matmul_coop_common.wgsl.

enable f16;

const SUBGROUP_SIZE: u32 = 32u;

// #include "matmul_coop_common.wgsl"

// Elements of one tile per emulated lane.
const ELEMS: u32 = T * T / SUBGROUP_SIZE;

// Lane `lane`'s share of the tile product at slab offset kk: A rows from `row0`, B columns from `col0`.
fn tile_product(lane: u32, row0: u32, col0: u32, kk: u32, acc: ptr<function, array<f32, ELEMS>>) {
    for (var j = 0u; j < ELEMS; j++) {
        let e = lane + j * SUBGROUP_SIZE;
        let r = row0 + e / T;
        let c = col0 + e % T;
        var s = (*acc)[j];
        for (var t = 0u; t < T; t++) {
            s = fma(f32(a_s[r * BK + kk + t]), f32(b_s[(kk + t) * BN + c]), s);
        }
        (*acc)[j] = s;
    }
}

// What coopStoreT(acc, &c_s[sg·T·T], T) does for this lane's elements.
fn store_tile(sg: u32, lane: u32, acc: ptr<function, array<f32, ELEMS>>) {
    for (var j = 0u; j < ELEMS; j++) {
        c_s[sg * T * T + lane + j * SUBGROUP_SIZE] = (*acc)[j];
    }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sg = lid / SUBGROUP_SIZE;
    let lane = lid % SUBGROUP_SIZE;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let r0 = tile_row(sg, 0u);
    let r1 = tile_row(sg, 1u);
    let c0 = tile_col(sg, 0u);
    let c1 = tile_col(sg, 1u);
    var acc00: array<f32, ELEMS>;
    var acc01: array<f32, ELEMS>;
    var acc10: array<f32, ELEMS>;
    var acc11: array<f32, ELEMS>;
    let k_begin = wg.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        stage(m0, n0, k0, k_end, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            tile_product(lane, r0, c0, kk, &acc00);
            tile_product(lane, r0, c1, kk, &acc01);
            tile_product(lane, r1, c0, kk, &acc10);
            tile_product(lane, r1, c1, kk, &acc11);
        }
        workgroupBarrier();
    }

    let slice_offset = wg.z * p.split_stride;
    store_tile(sg, lane, &acc00);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r0, c0, slice_offset);
    workgroupBarrier();
    store_tile(sg, lane, &acc01);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r0, c1, slice_offset);
    workgroupBarrier();
    store_tile(sg, lane, &acc10);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r1, c0, slice_offset);
    workgroupBarrier();
    store_tile(sg, lane, &acc11);
    workgroupBarrier();
    epilogue_tile(sg, lane, m0, n0, r1, c1, slice_offset);
}
