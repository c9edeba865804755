// General matrix product with a fused epilogue — every Linear of the forward and backward passes:
//   v[i, j] = Σ_k A(i, k) · B(k, j)  (+ bias[bias_offset + j])
//   A(i, k) = a[a_offset + i·a_row_stride + k·a_k_stride]
//   B(k, j) = b[b_offset + k·b_k_stride + j·b_col_stride]
// Strides select the layout: y = x·Wᵀ (forward, W stored [out, in]: b_k_stride = 1, b_col_stride = K),
// dx = dy·W (b_k_stride = N, b_col_stride = 1), dW += dyᵀ·x (a_row_stride = 1, a_k_stride = ld).
//   epilogue 0: out = v                      (attn_qkv, head, gradients)
//   epilogue 1: out = gelu_tanh(v)           (mlp.0)
//   epilogue 2: out = silu(v)                (sigma_map)
//   epilogue 3: out += gate[s, j] · drop(v)  (attn_out / mlp.2 into the residual, adaLN gate)
//   epilogue 4: out += drop(v)               (AR residual; gradient accumulation)
// where s = i / rows_per_seq selects the sequence's gate row: gate[s·gate_stride + gate_offset + j], and
// drop is inverted dropout with probability `dropout` keyed by (seed, salt, row, column) — keep() of
// dropout.wgsl, included here and by gate_backward.wgsl (it regenerates the mask). With store_aux = 1 the value before
// the activation (gelu/silu) or after dropout (residual modes) also goes to aux at the same index:
// the backward pass needs it.
// The result lands at out[row(i)·ldc + out_col_offset + j], where
//   row(i) = (i / out_rows_per_seq)·out_seq_stride + out_row_offset + i % out_rows_per_seq
// places each sequence's rows (a KV cache) and out_col_offset a weight part's column range.
// Split K: workgroup z sums only k in [z·k_split, min(K, (z+1)·k_split)) and writes z·split_stride
// floats further on (a partial product per slice, summed afterwards by col_sum.wgsl); with one slice
// (k_split ≥ K, split_stride 0) this is the plain product. The host splits only products whose output
// tiles cannot fill the GPU (weight gradients over many rows), and only with a plain store.
//
// Bindings: 0 params, 1 a, 2 b, 3 bias, 4 gate, 5 out, 6 aux.
// Tiling: a (16·ROWS_PER_THREAD) x 64 output tile per workgroup of 16x16 threads, ROWS_PER_THREAD x 4
// outputs per thread in registers (a vec4 per row), K in slabs of 16 staged in workgroup memory (at most 2 x 16 x 64
// floats = 8 KiB); which thread stages which element follows the operands' strides, so global reads are
// coalesced for transposed operands too. Edges are bounds-checked, so any M, N, K works. The host substitutes
// ROWS_PER_THREAD: 4 for wide inputs, 1 when M ≤ 16 (sampling steps), so a step of a few rows does not
// pay for a 64-row tile. The z dimension of the grid indexes the K slices. Products large enough to
// give every compute unit two 128 × 128 tiles take matmul_large.wgsl instead (same parameters).
// Weights in f16: the host also compiles a twin reading `b` as array<f16> (shaders::with_f16_weights;
// f32(b[…]) converts while staging, the identity here), for models whose weights are stored in f16.
// Includes: matmul_params.wgsl (the parameters and bindings but a and b, declared here),
// matmul_epilogue.wgsl (the epilogue of one value, shared with gemv.wgsl; dropout.wgsl, hash.wgsl and gelu.wgsl through it).

// #include "matmul_params.wgsl"
// #include "matmul_epilogue.wgsl"

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

const ROWS_PER_THREAD: u32 = 4u;
const BM: u32 = 16u * ROWS_PER_THREAD;
const BN: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> a_tile: array<f32, BK * BM>; // [BK][BM]
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>; // [BK][BN], four columns per element

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let tx = lid3.x; // column group
    let ty = lid3.y; // row group
    // The thread's rows, each as its 4 columns in one vector. Named variables rather than an array:
    // an array indexed in a loop can end up in (slow, bounds-checked) memory instead of registers.
    // With ROWS_PER_THREAD = 1 the branches on it fold away.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let k_begin = wg.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // Each thread stages ROWS_PER_THREAD elements of A and 4 of B.
        for (var e = 0u; e < ROWS_PER_THREAD; e++) {
            let idx = lid + e * 256u;
            // Consecutive threads read consecutive addresses: along k when A's rows are contiguous in k,
            // along the rows when A is stored transposed (dyᵀ of a weight gradient: a_row_stride = 1).
            var row = idx / BK;
            var kk = idx % BK;
            if (p.a_row_stride == 1u && p.a_k_stride != 1u) {
                row = idx % BM;
                kk = idx / BM;
            }
            let gk = k0 + kk;
            var av = 0.0;
            if (m0 + row < p.m && gk < k_end) {
                av = a[p.a_offset + (m0 + row) * p.a_row_stride + gk * p.a_k_stride];
            }
            a_tile[kk * BM + row] = av;
        }
        for (var e = 0u; e < 4u; e++) {
            let idx = lid + e * 256u;
            // Along k for a weight stored [out, in] (y = x·Wᵀ), along the columns when B's columns are
            // contiguous (dy·W and the x of a weight gradient: b_col_stride = 1).
            var col = idx / BK;
            var kk = idx % BK;
            if (p.b_col_stride == 1u && p.b_k_stride != 1u) {
                col = idx % BN;
                kk = idx / BN;
            }
            let gk = k0 + kk;
            var bv = 0.0;
            if (n0 + col < p.n && gk < k_end) {
                bv = f32(b[p.b_offset + gk * p.b_k_stride + (n0 + col) * p.b_col_stride]);
            }
            b_tile[(kk * BN + col) / 4u][col % 4u] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bv = b_tile[kk * (BN / 4u) + tx];
            let a_row = kk * BM + ty * ROWS_PER_THREAD;
            acc0 = fma(vec4<f32>(a_tile[a_row]), bv, acc0);
            if (ROWS_PER_THREAD == 4u) {
                acc1 = fma(vec4<f32>(a_tile[a_row + 1u]), bv, acc1);
                acc2 = fma(vec4<f32>(a_tile[a_row + 2u]), bv, acc2);
                acc3 = fma(vec4<f32>(a_tile[a_row + 3u]), bv, acc3);
            }
        }
        workgroupBarrier();
    }

    let m_first = m0 + ty * ROWS_PER_THREAD;
    let n_first = n0 + tx * 4u;
    let slice_offset = wg.z * p.split_stride;
    store_quad(m_first, n_first, acc0, slice_offset);
    if (ROWS_PER_THREAD == 4u) {
        store_quad(m_first + 1u, n_first, acc1, slice_offset);
        store_quad(m_first + 2u, n_first, acc2, slice_offset);
        store_quad(m_first + 3u, n_first, acc3, slice_offset);
    }
}
