// Embedding gather (official models/dit.py: EmbeddingLayer): out[r, j] = table[ids[r], j]. No scaling, no position term.
//
// A vocabulary table can exceed one storage binding (GPT-2: 50258 x 768 x 4 B = 154 MB > 128 MiB), so
// it is split by rows into parts; each part is one dispatch and writes only the rows whose id falls
// inside [row_start, row_start + part_rows). Ids were range-checked on the CPU.
//
// Bindings: 0 params (uniform), 1 ids: array<u32> [n_rows], 2 table: this part [part_rows, dim],
//           3 out: [n_rows, dim].
// A table stored in f16 uses a twin of this file reading `table` as array<f16> (shaders::with_f16_weights).
// Tiling: one thread per output element, 256 threads per workgroup, grid folded into x/y.

struct Params {
    n_rows: u32,
    dim: u32,
    row_start: u32,
    part_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n_rows * p.dim) {
        return;
    }
    let r = i / p.dim;
    let j = i % p.dim;
    let id = ids[r];
    if (id >= p.row_start && id < p.row_start + p.part_rows) {
        out[i] = f32(table[(id - p.row_start) * p.dim + j]);
    }
}
