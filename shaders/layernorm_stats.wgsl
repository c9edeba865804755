// LayerNorm statistics of one row, shared by layernorm.wgsl and layernorm_backward.wgsl so the
// forward and backward passes normalise identically:
//   mean = Σ_j x[base + j] / dim,  inv_std = 1 / sqrt(Σ_j (x[base + j] − mean)² / dim + 1e-5)
// (two passes over the row in f32, biased variance, as F.layer_norm). One workgroup per row: thread
// lid takes the columns j ≡ lid (mod WG), then workgroup_sum (reduce.wgsl, included here).
// The includer defines `const WG: u32` (see reduce.wgsl) and binds the input as `x: array<f32>`.

// #include "reduce.wgsl"

// (mean, inv_std) of the row x[base .. base + dim), returned to every thread; uniform control flow.
fn row_stats(base: u32, dim: u32, lid: u32) -> vec2<f32> {
    let n = f32(dim);
    var acc = 0.0;
    for (var j = lid; j < dim; j += WG) {
        acc += x[base + j];
    }
    let mean = workgroup_sum(acc, lid) / n;
    var acc2 = 0.0;
    for (var j = lid; j < dim; j += WG) {
        let d = x[base + j] - mean;
        acc2 += d * d;
    }
    return vec2<f32>(mean, inverseSqrt(workgroup_sum(acc2, lid) / n + 1e-5));
}
