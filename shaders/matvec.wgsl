// The product of matmul.wgsl for a few rows (M ≤ 16: a sampling step's block, the conditioning of a
// small batch), shaped as matrix-vector products: out = epilogue(A·B + bias) with A's rows contiguous
// in k (a_k_stride = 1) and B a weight stored [N, K] (b_k_stride = 1), as in every forward Linear.
// The 16-row tile of matmul.wgsl gives a 768-wide layer only 12 workgroups; here each output column
// has its own, so a layer fills the GPU and the weights are read once, each by one workgroup.
//   v[m, n] = Σ_k a[a_offset + m·a_row_stride + k] · b[b_offset + n·b_col_stride + k],  m < M ≤ 16
// then the epilogue of matmul_epilogue.wgsl (bias, dropout, aux, activation, gated residual, rows
// mapped into a KV cache), exactly as matmul.wgsl applies it.
//
// Bindings: as matmul.wgsl (0 params, 1 a, 2 b, 3 bias, 4 gate, 5 out, 6 aux).
// Tiling: a workgroup of 64 threads per output column (columns folded into x/y of the grid); each
// thread walks k = lid, lid + 64, … reading one weight and the ≤ 16 input elements (consecutive threads,
// consecutive addresses), accumulating rows 4g..4g+3 in vec4 register g; the 64 partial sums are
// added by a tree in workgroup memory (4 × 64 vec4 = 4 KiB) and thread r < M stores row r.
// Includes: matmul_epilogue.wgsl.

// #include "matmul_epilogue.wgsl"

const WG: u32 = 64u;
var<workgroup> partial: array<vec4<f32>, 256>; // [row group g][thread]: rows 4g..4g+3

// Input element (row r, column k), or 0 past the last row.
fn a_at(r: u32, k: u32) -> f32 {
    if (r < p.m) {
        return a[p.a_offset + r * p.a_row_stride + k];
    }
    return 0.0;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wg.x + wg.y * nwg.x;
    if (n >= p.n) {
        return; // uniform per workgroup
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let b_row = p.b_offset + n * p.b_col_stride;
    for (var k = lid; k < p.k; k += WG) {
        let w = f32(b[b_row + k]);
        acc0 = fma(vec4<f32>(a_at(0u, k), a_at(1u, k), a_at(2u, k), a_at(3u, k)), vec4<f32>(w), acc0);
        if (p.m > 4u) {
            acc1 = fma(vec4<f32>(a_at(4u, k), a_at(5u, k), a_at(6u, k), a_at(7u, k)), vec4<f32>(w), acc1);
        }
        if (p.m > 8u) {
            acc2 = fma(vec4<f32>(a_at(8u, k), a_at(9u, k), a_at(10u, k), a_at(11u, k)), vec4<f32>(w), acc2);
        }
        if (p.m > 12u) {
            acc3 = fma(vec4<f32>(a_at(12u, k), a_at(13u, k), a_at(14u, k), a_at(15u, k)), vec4<f32>(w), acc3);
        }
    }
    partial[lid] = acc0;
    partial[WG + lid] = acc1;
    partial[2u * WG + lid] = acc2;
    partial[3u * WG + lid] = acc3;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            for (var g = 0u; g < 4u; g++) {
                partial[g * WG + lid] = partial[g * WG + lid] + partial[g * WG + lid + stride];
            }
        }
        workgroupBarrier();
    }
    if (lid < p.m) {
        store_value(lid, n, partial[(lid / 4u) * WG][lid % 4u], row_base(lid, 0u));
    }
}
