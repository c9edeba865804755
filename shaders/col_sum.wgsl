// Column sums over a chunk of rows:
//   out[out_offset + c·out_chunk_stride + j] (+)= Σ_{i ∈ chunk c} a[a_offset + i·lda + j]   for j < n,
// chunk c = rows [c·rows_per_chunk, min(m, (c+1)·rows_per_chunk)), added onto out when accumulate = 1.
// The bias gradient of a Linear is the column sum of its output gradient over every row. Over many
// rows the host runs two passes (crates/bd3-gpu/src/ops/col_sum.rs, which sizes the chunks to the
// adapter's compute units): chunks of rows into a scratch matrix, then one chunk covering the partial
// sums, accumulated into the gradient — one workgroup walking 30 000 rows alone would leave a large
// GPU idle. The same kernel sums row-chunk partials per sequence (out_chunk_stride = the modulation
// row stride) for the gate and LayerNorm gradients.
//
// Bindings: 0 params, 1 a, 2 out.
// Tiling: one thread per column (256 per workgroup) and one workgroup row per chunk (workgroup_id.y);
// each thread walks its chunk's rows; consecutive threads read consecutive columns (coalesced).

struct Params {
    m: u32,
    n: u32,
    lda: u32,
    a_offset: u32,
    out_offset: u32,
    rows_per_chunk: u32,
    out_chunk_stride: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let j = gid.x;
    if (j >= p.n) {
        return;
    }
    let start = wg.y * p.rows_per_chunk;
    let end = min(p.m, start + p.rows_per_chunk);
    var s = 0.0;
    for (var i = start; i < end; i++) {
        s += a[p.a_offset + i * p.lda + j];
    }
    let o = p.out_offset + wg.y * p.out_chunk_stride + j;
    if (p.accumulate != 0u) {
        s += out[o];
    }
    out[o] = s;
}
