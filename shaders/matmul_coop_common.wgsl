// What the tensor-core product (matmul_coop.wgsl) and its emulated twin (matmul_coop_emulated.wgsl)
// share: the BM × BN output block of a workgroup, the f32 → f16 staging of A and B into workgroup
// memory, which subgroup owns which 16 × 16 output tiles, and the epilogue of a finished tile. The two
// kernels differ only in how a 16×16×16 tile product is computed (cooperative matrices there, loops
// over the same f16 values with f32 sums here), so the indexing the twin tests on lavapipe is the
// indexing the tensor cores run.
// Math, parameters and epilogue: those of matmul.wgsl (same Params, bindings 0-6, split K over the
// z dimension of the grid), with A and B rounded to f16 as they are staged and the sums in f32.
// Workgroup: 4 subgroups of SUBGROUP_SIZE invocations (the host sets the adapter's fixed size) as a
// 2 × 2 grid; subgroup s owns the TM × TN tiles of 16 × 16 at rows (s / 2)·TM·16, columns
// (s % 2)·TN·16 of the block, so BM = 32·TM and BN = 32·TN. The host sets TM and TN (the plan's
// choice, ops::matmul::CoopTiles): 2 × 2 gives 64 × 64 blocks, 4 × 4 gives 128 × 128.
// Workgroup memory: A slab [BM][BK] and B slab [BK][BN] in f16 and one 16 × 16 f32 tile per subgroup
// for the epilogue: 12 KiB at 2 × 2 (within the browsers' 16 KiB), 20 KiB at 4 × 4 (native only).
// The includer defines SUBGROUP_SIZE (u32) and `main`; it must stage, multiply and store tiles to c_s
// in uniform control flow (every subgroup runs the same loop trip counts).
// Includes: matmul_params.wgsl (Params, bindings), matmul_epilogue.wgsl (store_value, row_base).

// #include "matmul_params.wgsl"
// #include "matmul_epilogue.wgsl"

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

// Tiles per subgroup along M and N.
const TM: u32 = 2u;
const TN: u32 = 2u;
const THREADS: u32 = 4u * SUBGROUP_SIZE;
// The cooperative-matrix tile edge (M = N = K).
const T: u32 = 16u;
const BM: u32 = 2u * TM * T;
const BN: u32 = 2u * TN * T;
const BK: u32 = 32u;
var<workgroup> a_s: array<f16, BM * BK>; // [BM][BK]: A(m0 + i, k0 + kk) at i·BK + kk
var<workgroup> b_s: array<f16, BK * BN>; // [BK][BN]: B(k0 + kk, n0 + j) at kk·BN + j
var<workgroup> c_s: array<f32, 4u * T * T>; // subgroup s's finished tile at s·T·T, row-major

// Stage the K slab [k0, k0 + BK) of A's rows m0.. and B's columns n0.. as f16 (zeros past the edges
// and past k_end). As in matmul.wgsl, consecutive invocations read consecutive addresses: along k
// when the operand is contiguous in k, along rows (A) or columns (B) when it is stored transposed.
fn stage(m0: u32, n0: u32, k0: u32, k_end: u32, lid: u32) {
    let a_rows_contiguous = p.a_row_stride == 1u && p.a_k_stride != 1u;
    for (var idx = lid; idx < BM * BK; idx += THREADS) {
        var row = idx / BK;
        var kk = idx % BK;
        if (a_rows_contiguous) {
            row = idx % BM;
            kk = idx / BM;
        }
        let gk = k0 + kk;
        var v = 0.0;
        if (m0 + row < p.m && gk < k_end) {
            v = a[p.a_offset + (m0 + row) * p.a_row_stride + gk * p.a_k_stride];
        }
        a_s[row * BK + kk] = f16(v);
    }
    let b_cols_contiguous = p.b_col_stride == 1u && p.b_k_stride != 1u;
    for (var idx = lid; idx < BK * BN; idx += THREADS) {
        var col = idx / BK;
        var kk = idx % BK;
        if (b_cols_contiguous) {
            col = idx % BN;
            kk = idx / BN;
        }
        let gk = k0 + kk;
        var v = 0.0;
        if (n0 + col < p.n && gk < k_end) {
            v = f32(b[p.b_offset + gk * p.b_k_stride + (n0 + col) * p.b_col_stride]);
        }
        b_s[kk * BN + col] = f16(v);
    }
}

// The first row and column (within the block) of subgroup `sg`'s tile (ti, tj), ti < TM, tj < TN.
fn tile_row(sg: u32, ti: u32) -> u32 {
    return (sg / 2u) * TM * T + ti * T;
}
fn tile_col(sg: u32, tj: u32) -> u32 {
    return (sg % 2u) * TN * T + tj * T;
}

// The epilogue of subgroup `sg`'s finished tile in c_s, whose element (r, c) is output
// (m0 + row0 + r, n0 + col0 + c); lane `lane` of the subgroup takes every SUBGROUP_SIZE-th element.
fn epilogue_tile(sg: u32, lane: u32, m0: u32, n0: u32, row0: u32, col0: u32, slice_offset: u32) {
    for (var e = lane; e < T * T; e += SUBGROUP_SIZE) {
        let m = m0 + row0 + e / T;
        let n = n0 + col0 + e % T;
        if (m < p.m && n < p.n) {
            store_value(m, n, c_s[sg * T * T + e], row_base(m, slice_offset));
        }
    }
}
