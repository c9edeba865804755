// Embedding gradient, scatter-added without atomics: dE[t] += Σ_{rows r with token t} dx[r].
// The host groups the rows of a batch by token (it has the tokens anyway): segment g covers
// rows[seg_start[g] .. seg_start[g + 1]), all holding token seg_token[g]. One workgroup per segment
// owns its table row, so no two workgroups write the same place. As in the forward gather, a table
// split into row ranges is one dispatch per part (tokens outside the part are skipped).
//
// Bindings: 0 params, 1 dx [rows, dim], 2 seg_token [n_seg], 3 seg_start [n_seg + 1], 4 seg_rows,
//           5 d_table (this part, accumulated).
// Tiling: one workgroup of 256 threads per segment, threads over the columns.

struct Params {
    n_seg: u32,
    dim: u32,
    row_start: u32,
    part_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> seg_token: array<u32>;
@group(0) @binding(3) var<storage, read> seg_start: array<u32>;
@group(0) @binding(4) var<storage, read> seg_rows: array<u32>;
@group(0) @binding(5) var<storage, read_write> d_table: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wg.x + wg.y * nwg.x;
    if (g >= p.n_seg) {
        return;
    }
    let t = seg_token[g];
    if (t < p.row_start || t >= p.row_start + p.part_rows) {
        return;
    }
    let out = (t - p.row_start) * p.dim;
    for (var j = lid; j < p.dim; j += 256u) {
        var s = 0.0;
        for (var e = seg_start[g]; e < seg_start[g + 1u]; e++) {
            s += dx[seg_rows[e] * p.dim + j];
        }
        d_table[out + j] = d_table[out + j] + s;
    }
}
