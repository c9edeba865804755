// The parameter block of the three LayerNorm kernels (layernorm.wgsl, layernorm_backward.wgsl,
// layernorm_param_grads.wgsl), so the host fills one struct for all of them:
//   output row r of sequence s = r / out_rows_per_seq reads input row
//   s·in_rows_per_seq + in_row_offset + i, i = r % out_rows_per_seq (or row_index[r] when use_row_index);
//   has_mod: adaLN modulation at shift_offset / scale_offset of rows of mod_stride floats;
//   rows_per_chunk, chunks: the row chunks of each sequence (the parameter gradients only).
// Declares binding 0. The includer defines nothing.

struct Params {
    n_rows: u32,
    dim: u32,
    in_rows_per_seq: u32,
    out_rows_per_seq: u32,
    in_row_offset: u32,
    has_mod: u32,
    shift_offset: u32,
    scale_offset: u32,
    mod_stride: u32,
    use_row_index: u32,
    rows_per_chunk: u32,
    chunks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
