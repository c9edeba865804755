// Parameter gradients of the modulated LayerNorm y = n·w·(1 + scale[s]) + shift[s] (see
// shaders/layernorm_backward.wgsl, which leaves each row's (μ, 1/σ) in `stats`):
//   dshift[s, j] += Σ_{r ∈ s} dy[r, j]
//   dscale[s, j] += Σ_{r ∈ s} dy[r, j]·n[r, j]·w[j]
//   dw[j]        += Σ_s (1 + scale[s, j]) Σ_{r ∈ s} dy[r, j]·n[r, j]
// Rows are mapped as in the forward kernel.
//
// Each sequence's rows are cut into `chunks` chunks of `rows_per_chunk` rows (chosen by the host,
// crates/bd3-gpu/src/ops/layernorm_param_grads.rs); workgroup row q = s·chunks + c writes its chunk's
//   dw_part[q, j] = (1 + scale[s, j]) Σ_{r ∈ chunk} dy·n     (dw[j] += Σ_q dw_part[q, j]: a col_sum pass)
// and, with modulation, adds dshift/dscale to dmod directly (one chunk) or writes them to
//   dmod_part[q, 0..dim] = Σ dy,  dmod_part[q, dim..2·dim] = w · Σ dy·n
// for a col_sum pass that adds each sequence's chunks into dmod (more than one chunk).
//
// Bindings: 0 params, 1 x, 2 stats [n_rows, 2], 3 dy [n_rows, dim], 4 w, 5 modv,
//           6 dw_part [n_seq · chunks, dim] (written), 7 dmod (accumulated at shift_offset /
//           scale_offset), 8 dmod_part [n_seq · chunks, 2·dim] (written when chunks > 1).
// Tiling: one thread per column j (256 per workgroup) and one workgroup row per (sequence, chunk)
// (workgroup_id.y), each thread walking its chunk's rows (coalesced across threads).
// Includes: layernorm_params.wgsl (the parameter block of all three LayerNorm kernels).

// #include "layernorm_params.wgsl"

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read> modv: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw_part: array<f32>;
@group(0) @binding(7) var<storage, read_write> dmod: array<f32>;
@group(0) @binding(8) var<storage, read_write> dmod_part: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let j = gid.x;
    let q = wg.y;
    let s = q / p.chunks;
    if (j >= p.dim) {
        return;
    }
    let first = (q % p.chunks) * p.rows_per_chunk;
    let last = min(p.out_rows_per_seq, first + p.rows_per_chunk);
    var s_dy = 0.0;
    var s_dyn = 0.0;
    for (var i = first; i < last; i++) {
        let r = s * p.out_rows_per_seq + i;
        let xi = x[(s * p.in_rows_per_seq + p.in_row_offset + i) * p.dim + j];
        let nj = (xi - stats[2u * r]) * stats[2u * r + 1u];
        let d = dy[r * p.dim + j];
        s_dy += d;
        s_dyn += d * nj;
    }
    if (p.has_mod != 0u) {
        let base = s * p.mod_stride;
        if (p.chunks == 1u) {
            dmod[base + p.shift_offset + j] = dmod[base + p.shift_offset + j] + s_dy;
            dmod[base + p.scale_offset + j] = dmod[base + p.scale_offset + j] + s_dyn * w[j];
        } else {
            dmod_part[q * 2u * p.dim + j] = s_dy;
            dmod_part[q * 2u * p.dim + p.dim + j] = s_dyn * w[j];
        }
        dw_part[q * p.dim + j] = s_dyn * (1.0 + modv[base + p.scale_offset + j]);
    } else {
        dw_part[q * p.dim + j] = s_dyn;
    }
}
