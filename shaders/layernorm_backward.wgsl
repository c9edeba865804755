// Backward of the modulated LayerNorm y = n·w·(1 + scale[s]) + shift[s], n = (x − μ)/σ (σ² biased, +1e-5),
// for the input: with dn = dy·w·(1 + scale[s]),
//   dx += (dn − mean(dn) − n·mean(dn·n)) / σ
// Rows are mapped as in shaders/layernorm.wgsl (output row r of sequence s = r / out_rows_per_seq reads
// input row s·in_rows_per_seq + in_row_offset + r % out_rows_per_seq), and dx accumulates at the input
// row. The row's (μ, 1/σ) go to `stats` for shaders/layernorm_param_grads.wgsl.
//
// Bindings: 0 params, 1 x, 2 w [dim], 3 modv, 4 dy [n_rows, dim], 5 dx (accumulated), 6 stats [n_rows, 2].
// Tiling: one workgroup of 256 threads per row, tree reductions in workgroup memory (1 KiB).
// Includes: layernorm_params.wgsl (the parameter block of all three LayerNorm kernels),
// layernorm_stats.wgsl (row_stats: μ and 1/σ exactly as the forward kernel computes them;
// workgroup_sum from reduce.wgsl through it).

// #include "layernorm_stats.wgsl"

// #include "layernorm_params.wgsl"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> modv: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.n_rows) {
        return;
    }
    let s = r / p.out_rows_per_seq;
    let in_base = (s * p.in_rows_per_seq + p.in_row_offset + r % p.out_rows_per_seq) * p.dim;
    let dy_base = r * p.dim;
    let mod_base = s * p.mod_stride;
    let n = f32(p.dim);

    let mean_inv = row_stats(in_base, p.dim, lid);
    let mean = mean_inv.x;
    let inv = mean_inv.y;

    var s_dn = 0.0;
    var s_dnn = 0.0;
    for (var j = lid; j < p.dim; j += WG) {
        var dn = dy[dy_base + j] * w[j];
        if (p.has_mod != 0u) {
            dn = dn * (1.0 + modv[mod_base + p.scale_offset + j]);
        }
        s_dn += dn;
        s_dnn += dn * (x[in_base + j] - mean) * inv;
    }
    let mean_dn = workgroup_sum(s_dn, lid) / n;
    let mean_dnn = workgroup_sum(s_dnn, lid) / n;
    for (var j = lid; j < p.dim; j += WG) {
        var dn = dy[dy_base + j] * w[j];
        if (p.has_mod != 0u) {
            dn = dn * (1.0 + modv[mod_base + p.scale_offset + j]);
        }
        let nj = (x[in_base + j] - mean) * inv;
        dx[in_base + j] = dx[in_base + j] + (dn - mean_dn - nj * mean_dnn) * inv;
    }
    if (lid == 0u) {
        stats[2u * r] = mean;
        stats[2u * r + 1u] = inv;
    }
}
