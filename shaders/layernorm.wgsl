// LayerNorm without bias, with optional adaLN modulation (official models/dit.py: LayerNorm, modulate):
//   y = (x - mean) / sqrt(var + 1e-5) * w * (1 + scale[seq]) + shift[seq]
// mean and the biased variance are taken over the row (two passes, f32), as F.layer_norm does.
//
// Rows can be re-mapped so the final layer normalises only the rows the head needs (the x_t half of
// x_t ⊕ x_0, or the last block of a window): output row r of sequence s = r / out_rows_per_seq reads
// input row s * in_rows_per_seq + in_row_offset + i, where i = r % out_rows_per_seq, or
// i = row_index[r] when use_row_index = 1 (the positions a sampler picked, one list per call).
// The modulation vectors live in `modv` at row s (stride mod_stride floats) and offsets shift_offset /
// scale_offset (chunks of the adaLN output). has_mod = 0 gives a plain LN * w (AR).
//
// Bindings: 0 params, 1 x [*, dim], 2 w [dim], 3 modv [n_seq, mod_stride], 4 out [n_rows, dim],
//           5 row_index [n_rows] (u32).
// Tiling: one workgroup of 256 threads per row, tree reductions in workgroup memory (1 KiB).
// Includes: layernorm_params.wgsl (the parameter block of all three LayerNorm kernels),
// layernorm_stats.wgsl (row_stats: mean and 1/σ, shared with the backward pass; it includes reduce.wgsl).

// #include "layernorm_stats.wgsl"

// #include "layernorm_params.wgsl"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> modv: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> row_index: array<u32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.n_rows) {
        return; // uniform per workgroup
    }
    let s = r / p.out_rows_per_seq;
    var i = r % p.out_rows_per_seq;
    if (p.use_row_index != 0u) {
        i = row_index[r];
    }
    let in_base = (s * p.in_rows_per_seq + p.in_row_offset + i) * p.dim;
    let out_base = r * p.dim;

    let mean_inv = row_stats(in_base, p.dim, lid);
    let mean = mean_inv.x;
    let inv = mean_inv.y;

    let mod_base = s * p.mod_stride;
    for (var j = lid; j < p.dim; j += WG) {
        var y = (x[in_base + j] - mean) * inv * w[j];
        if (p.has_mod != 0u) {
            y = y * (1.0 + modv[mod_base + p.scale_offset + j]) + modv[mod_base + p.shift_offset + j];
        }
        out[out_base + j] = y;
    }
}
