// The parameter block and bindings of matmul.wgsl (see its header for the meaning of each field);
// matmul_epilogue.wgsl reads the epilogue's fields from it. The includer declares the operands a
// (binding 1) and b (binding 2) in the element type it loads them as: f32 (matmul.wgsl, the
// cooperative kernels) or vec4<f32> (matmul_large.wgsl).

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
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> aux: array<f32>;
