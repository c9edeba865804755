// The per-value epilogue of the matrix products (matmul.wgsl, matmul_large.wgsl, the cooperative
// kernels, gemv.wgsl and gemv_subgroup.wgsl: the variants of one product; see matmul.wgsl's header
// for the math). store_value(m, n, v, row_base(m, …)) takes the product v = Σ_k A(m, k)·B(k, n) of output (m, n), m < p.m and n < p.n, and applies bias,
// dropout, aux, the activation or the (gated) residual, placing the result at row(m) and column n;
// store_quad does so for four columns of a row (a thread's register quad in the tiled kernels).
// The includer declares the uniform `p` with the fields named here (matmul_params.wgsl's Params has
// them all) and the bindings `bias`, `gate` (array<f32>), `out` and `aux` (read_write array<f32>).
// Includes: dropout.wgsl (keep), gelu.wgsl (gelu_tanh).

// #include "dropout.wgsl"
// #include "gelu.wgsl"

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

// The epilogue of output row m for its 4 columns n_first … n_first + 3 (those < p.n): the store of
// a thread's register quad in the tiled kernels. `slice_offset` places a K slice's partial product.
fn store_quad(m: u32, n_first: u32, acc: vec4<f32>, slice_offset: u32) {
    if (m >= p.m) {
        return;
    }
    let base = row_base(m, slice_offset);
    for (var j = 0u; j < 4u; j++) {
        let n = n_first + j;
        if (n >= p.n) {
            return;
        }
        store_value(m, n, acc[j], base);
    }
}
