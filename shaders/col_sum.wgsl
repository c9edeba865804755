// Column sums, accumulated: out[out_offset + j] += Σ_{i<m} a[a_offset + i·lda + j] for j < n.
// The bias gradient of a Linear is the column sum of its output gradient.
//
// Bindings: 0 params, 1 a, 2 out.
// Tiling: one thread per column (256 per workgroup), each walking the rows; consecutive threads read
// consecutive columns, so every row is read coalesced.

struct Params {
    m: u32,
    n: u32,
    lda: u32,
    a_offset: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.n) {
        return;
    }
    var s = 0.0;
    for (var i = 0u; i < p.m; i++) {
        s += a[p.a_offset + i * p.lda + j];
    }
    out[p.out_offset + j] = out[p.out_offset + j] + s;
}
