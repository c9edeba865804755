// Confidence decoding's choice of which draws to keep (after sample.wgsl in mode 5 wrote, for every row
// of the block, a drawn token and its probability c_i under the model). Within each sequence, among
// the rows whose input x_i is the mask (the candidates):
//   rank_i = #{ candidates j : c_j > c_i, or c_j = c_i and j < i }     (ties: the lower position first)
//   keep_i = rank_i < at_least  or  c_i ≥ threshold
// A kept row keeps its drawn token; a candidate not kept goes back to the mask (it is drawn again by the
// next call); a row that was not masked keeps the token sample.wgsl carried over. So each call reveals
// min(at_least, candidates) rows plus every other candidate at or above the threshold:
//   top-K decoding: at_least = K, threshold = 2 (above any probability);
//   threshold decoding: at_least = 1, threshold = p.
// Each thread reads and writes only its own row's token, so updating `tokens` in place is race-free.
//
// Bindings: 0 params, 1 row_input [n_rows] (x_t), 2 token_prob [n_rows] (c), 3 tokens [n_rows]
//           (in: the draws; out: the draws kept, the mask elsewhere among the candidates).
// Tiling: one thread per row (256 per workgroup, folded over x/y); each compares its c with the
// rows_per_seq rows of its sequence, reading them from global memory (O(rows²) per sequence: the
// block, or an MDLM window, is at most a few thousand rows).

struct Params {
    n_rows: u32,
    rows_per_seq: u32,
    mask_id: u32,
    at_least: u32,
    threshold: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_input: array<u32>;
@group(0) @binding(2) var<storage, read> token_prob: array<f32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.n_rows || row_input[i] != p.mask_id) {
        return;
    }
    let first = (i / p.rows_per_seq) * p.rows_per_seq;
    let c = token_prob[i];
    var rank = 0u;
    for (var j = first; j < first + p.rows_per_seq; j++) {
        if (row_input[j] == p.mask_id) {
            let cj = token_prob[j];
            if (cj > c || (cj == c && j < i)) {
                rank += 1u;
            }
        }
    }
    if (!(rank < p.at_least || c >= p.threshold)) {
        tokens[i] = p.mask_id;
    }
}
