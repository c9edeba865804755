// Embedding gradient, scatter-added without atomics: dE[t] += Σ_{rows r with token t} dx[r].
// The host groups the rows of a batch by token (it has the tokens anyway) and cuts each token's rows
// into pieces of at most `piece_rows` rows (crates/bd3-gpu/src/ops/embedding_backward.rs), so the mask
// token's segment — half the batch — is spread over many workgroups. Two passes, one workgroup each:
//   pass 1, per piece g: rows[seg_start[g] .. seg_start[g + 1]) (through seg_rows), token seg_token[g];
//           a token in one piece adds its sum to its table row (the only writer of that row);
//           a piece of a longer token writes its sum to partials[seg_slot[g]] instead.
//   pass 2, per split token g: partials rows [seg_start[g] .. seg_start[g + 1]) (its pieces' slots,
//           consecutive), token seg_token[g], summed in order into its table row.
// Fixed pieces and order: the result does not depend on timing. As in the forward gather, a table
// split into row ranges is one dispatch per part and pass (tokens outside the part are skipped).
//
// Bindings: 0 params, 1 dx [rows, dim] (pass 2: the partials), 2 seg_token [n_seg], 3 seg_start
//           [n_seg + 1], 4 seg_rows (pass 1), 5 seg_slot [n_seg] (pass 1), 6 d_table (this part,
//           accumulated), 7 partials [slots, dim] (pass 1, written).
// Tiling: one workgroup of 256 threads per piece (pass 1) or split token (pass 2), threads over the
// columns.

struct Params {
    n_seg: u32,
    dim: u32,
    row_start: u32,
    part_rows: u32,
    stage: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> seg_token: array<u32>;
@group(0) @binding(3) var<storage, read> seg_start: array<u32>;
@group(0) @binding(4) var<storage, read> seg_rows: array<u32>;
@group(0) @binding(5) var<storage, read> seg_slot: array<u32>;
@group(0) @binding(6) var<storage, read_write> d_table: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

const DIRECT: u32 = 0xffffffffu;

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
    let first = seg_start[g];
    let last = seg_start[g + 1u];
    if (p.stage == 2u) {
        for (var j = lid; j < p.dim; j += 256u) {
            var s = 0.0;
            for (var e = first; e < last; e++) {
                s += dx[e * p.dim + j];
            }
            d_table[out + j] = d_table[out + j] + s;
        }
        return;
    }
    let slot = seg_slot[g];
    for (var j = lid; j < p.dim; j += 256u) {
        var s = 0.0;
        for (var e = first; e < last; e++) {
            s += dx[seg_rows[e] * p.dim + j];
        }
        if (slot == DIRECT) {
            d_table[out + j] = d_table[out + j] + s;
        } else {
            partials[slot * p.dim + j] = s;
        }
    }
}
