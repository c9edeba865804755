// The parameters, bindings and per-value epilogue shared by matmul.wgsl and matvec.wgsl (the two
// variants of one product; see matmul.wgsl's header for the math). store_value(m, n, v, row_base(m, …))
// takes the product v = Σ_k A(m, k)·B(k, n) of output (m, n), m < p.m and n < p.n, and applies bias,
// dropout, aux, the activation or the (gated) residual, placing the result at row(m) and column n.
// Includes: dropout.wgsl (keep), gelu.wgsl (gelu_tanh). The includer defines nothing.

// #include "dropout.wgsl"
// #include "gelu.wgsl"

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_offset: u32,
    a_row_stride: u32,
    a_k_stride: u32,
    b_offset: u32,
    b_k_stride: u32,
    b_col_stride: u32,
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
    store_aux: u32,
    dropout: f32,
    seed: u32,
    salt: u32,
    k_split: u32,
    split_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> aux: array<f32>;

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

// Where row m's outputs start (column 0 of this weight part) in `out` and `aux`; computed once per
// row, since the divisions cost more than the epilogue itself on some adapters.
fn row_base(m: u32, slice_offset: u32) -> u32 {
    let out_row = (m / p.out_rows_per_seq) * p.out_seq_stride + p.out_row_offset + m % p.out_rows_per_seq;
    return slice_offset + out_row * p.ldc + p.out_col_offset;
}

fn store_value(m: u32, n: u32, product: f32, base: u32) {
    var v = product;
    if (p.has_bias != 0u) {
        v += bias[p.bias_offset + n];
    }
    let o = base + n;
    if (p.epilogue >= 3u && p.dropout > 0.0) {
        v = select(0.0, v / (1.0 - p.dropout), keep(m, p.out_col_offset + n));
    }
    if (p.store_aux != 0u) {
        aux[o] = v;
    }
    switch p.epilogue {
        case 1u: { out[o] = gelu_tanh(v); }
        case 2u: { out[o] = silu(v); }
        case 3u: { out[o] = out[o] + gate[(m / p.rows_per_seq) * p.gate_stride + p.gate_offset + n] * v; }
        case 4u: { out[o] = out[o] + v; }
        default: { out[o] = v; }
    }
}
