// Linear layer with a fused epilogue:  v = Σ_k A[a_offset + m*lda + k] · W[n*K + k]  (+ bias[bias_offset + n])
//   epilogue 0: out = v                        (attn_qkv, head, conditioning)
//   epilogue 1: out = gelu_tanh(v)             (mlp.0)
//   epilogue 2: out = silu(v)                  (sigma_map)
//   epilogue 3: out += gate[s, n] · v          (attn_out / mlp.2 into the residual, adaLN gate)
//   epilogue 4: out += v                       (AR residual, gate = 1)
// where s = m / rows_per_seq selects the sequence's gate row: gate[s * gate_stride + gate_offset + n].
// The result lands at out[row(m) * ldc + out_col_offset + n]: a weight split by output rows (the
// 50258-row head) writes its column range of the logits from one dispatch per part, and
//   row(m) = (m / out_rows_per_seq) * out_seq_stride + out_row_offset + m % out_rows_per_seq
// places the rows of each sequence into a KV cache (plain use: out_rows_per_seq = M, stride 0, offset 0).
// W is stored [N, K] as PyTorch stores Linear weights, so this computes A·Wᵀ.
//
// Bindings: 0 params, 1 a, 2 w (this part) [N, K], 3 bias, 4 gate, 5 out.
// Tiling: a (16·ROWS_PER_THREAD) x 64 output tile per workgroup of 16x16 threads, ROWS_PER_THREAD x 4
// outputs per thread in registers, K in slabs of 16 staged in workgroup memory (at most 2 x 16 x 64
// floats = 8 KiB). Edges are bounds-checked, so any M, N, K works. The host substitutes
// ROWS_PER_THREAD: 4 for wide inputs, 1 when M ≤ 16 (sampling steps), so a step of a few rows does not
// pay for a 64-row tile.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    a_offset: u32,
    ldc: u32,
    out_col_offset: u32,
    has_bias: u32,
    bias_offset: u32,
    epilogue: u32,
    rows_per_seq: u32,
    gate_stride: u32,
    gate_offset: u32,
    out_rows_per_seq: u32,
    out_seq_stride: u32,
    out_row_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const ROWS_PER_THREAD: u32 = 4u;
const BM: u32 = 16u * ROWS_PER_THREAD;
const BN: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> a_tile: array<f32, BK * BM>; // [BK][BM]
var<workgroup> w_tile: array<f32, BK * BN>; // [BK][BN]

fn gelu_tanh(x: f32) -> f32 {
    // tanh written through exp of a non-positive argument, so it never overflows.
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    let e = exp(-2.0 * abs(u));
    let t = sign(u) * (1.0 - e) / (1.0 + e);
    return 0.5 * x * (1.0 + t);
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let tx = lid3.x; // column group
    let ty = lid3.y; // row group
    var acc: array<array<f32, 4>, ROWS_PER_THREAD>;
    for (var i = 0u; i < ROWS_PER_THREAD; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Each thread stages ROWS_PER_THREAD elements of A and 4 of W; consecutive threads read
        // consecutive k.
        for (var e = 0u; e < ROWS_PER_THREAD; e++) {
            let idx = lid + e * 256u;
            let row = idx / BK;
            let kk = idx % BK;
            let gk = k0 + kk;
            var av = 0.0;
            if (m0 + row < p.m && gk < p.k) {
                av = a[p.a_offset + (m0 + row) * p.lda + gk];
            }
            a_tile[kk * BM + row] = av;
        }
        for (var e = 0u; e < 4u; e++) {
            let idx = lid + e * 256u;
            let row = idx / BK;
            let kk = idx % BK;
            let gk = k0 + kk;
            var wv = 0.0;
            if (n0 + row < p.n && gk < p.k) {
                wv = w[(n0 + row) * p.k + gk];
            }
            w_tile[kk * BN + row] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, ROWS_PER_THREAD>;
            var wv: array<f32, 4>;
            for (var i = 0u; i < ROWS_PER_THREAD; i++) {
                av[i] = a_tile[kk * BM + ty * ROWS_PER_THREAD + i];
            }
            for (var i = 0u; i < 4u; i++) {
                wv[i] = w_tile[kk * BN + tx * 4u + i];
            }
            for (var i = 0u; i < ROWS_PER_THREAD; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], wv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < ROWS_PER_THREAD; i++) {
        let m = m0 + ty * ROWS_PER_THREAD + i;
        if (m >= p.m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx * 4u + j;
            if (n >= p.n) {
                continue;
            }
            var v = acc[i][j];
            if (p.has_bias != 0u) {
                v += bias[p.bias_offset + n];
            }
            let out_row = (m / p.out_rows_per_seq) * p.out_seq_stride + p.out_row_offset + m % p.out_rows_per_seq;
            let o = out_row * p.ldc + p.out_col_offset + n;
            switch p.epilogue {
                case 1u: { out[o] = gelu_tanh(v); }
                case 2u: { out[o] = silu(v); }
                case 3u: { out[o] = out[o] + gate[(m / p.rows_per_seq) * p.gate_stride + p.gate_offset + n] * v; }
                case 4u: { out[o] = out[o] + v; }
                default: { out[o] = v; }
            }
        }
    }
}
