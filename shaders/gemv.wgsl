// Matrix-vector products for a few rows (M ≤ 16: a sampling call's block, the conditioning of a small
// batch), with the epilogue of matmul.wgsl and an optional LayerNorm/adaLN prologue:
//   x_r = a[row(r) …]                                   (row(r): see input_rows in gemv_body.wgsl)
//         (an embedding prologue: a is the embedding table and row(r) the token id; the first
//         workgroup also writes x_r to aux, the residual stream of the block it starts)
//   x_r ← (x_r − μ_r)/σ_r · ln_w · (1 + scale[s_r]) + shift[s_r]   when p.norm = 1 (has_mod for the
//         modulation; μ_r and the biased σ_r² + 1e-5 in two passes, as layernorm_stats.wgsl)
//   v[r, n] = Σ_k x_r[k] · b[b_offset + n·b_col_stride + k],  r < M ≤ 16, n < N
// then store_value of matmul_epilogue.wgsl (bias, dropout, aux, activation, gated residual, rows
// mapped into a KV cache), exactly as matmul.wgsl applies it. The weight is stored [N, K] as every
// forward Linear's; the input rows are contiguous in k. The modulation rows (shift, scale of the
// prologue) and the gate of a gated residual come from the same binding `gate` (a block's adaLN row).
//
// Bindings: 0 params, 1 a (or the embedding table), 2 b, 3 bias, 4 gate, 5 out, 6 aux (or the kept
//           rows of an embedding prologue), 7 ln_w (LayerNorm weight [K]), 8 row_index (u32: the
//           input row of each mapped row: a sampler's picked positions, or the token ids).
// Tiling: a workgroup of 64 threads owns COLS ∈ {1, 2, 4, 8} consecutive output columns (compiled in;
// the host picks the most that still give every compute unit two workgroups) for all M rows; thread t takes the k of
// lanes(base, t) for base = 0, 256, … (vec4 views: 4 consecutive k, one 16-byte load each; scalar
// views: k = base + t + 64i, for K or offsets not multiples of 4), loads each of its columns' weights
// once and multiplies them into every row, so a weight read serves all ≤ 16 rows; the input rows are
// shared by the columns. Partial sums stay in registers (acc, COLS × 16), then are added across the
// workgroup through workgroup memory, two columns per round (one when COLS = 1): each thread writes
// its 32 values (rows padded to 33 floats, no bank conflicts), two threads sum 32 partials each of one
// output (four threads 16 each for one column), and thread v < 32 adds the shares and stores (8.5 KiB). The LayerNorm statistics are added the same way,
// 16 rows at a time, and thread r < M writes row r's total for every thread to read. gemv_subgroup.wgsl is the same product reduced with
// subgroup operations.
// Includes: gemv_body.wgsl (parameters, bindings, prologue and K loop; matmul_epilogue.wgsl through it).

// #include "gemv_body.wgsl"

// Columns per reduction round, and the padded row of one thread's values of a round.
const ROUND_COLS: u32 = min(2u, COLS);
const ROUND: u32 = ROUND_COLS * ROWS;
const PAD: u32 = ROUND + 1u;
// The threads are split into PARTS groups, each adding one share of every value of a round.
const PARTS: u32 = THREADS / ROUND;
var<workgroup> partials: array<f32, THREADS * PAD>;
var<workgroup> halves: array<f32, THREADS>;
var<workgroup> row_totals: array<f32, ROWS>;

fn sum_rows(v: array<f32, ROWS>, t: u32) -> array<f32, ROWS> {
    for (var r = 0u; r < ROWS; r++) {
        if (r < p.m) {
            partials[t * PAD + r] = v[r];
        }
    }
    workgroupBarrier();
    // Thread t adds row t % 16 over the 16 threads of quarter t / 16; thread r < M the quarters.
    let r = t % ROWS;
    if (r < p.m) {
        let q = t / ROWS;
        var s = 0.0;
        for (var j = 0u; j < THREADS / 4u; j++) {
            s += partials[(q * (THREADS / 4u) + j) * PAD + r];
        }
        halves[t] = s;
    }
    workgroupBarrier();
    if (t < p.m) {
        row_totals[t] = (halves[t] + halves[ROWS + t]) + (halves[2u * ROWS + t] + halves[3u * ROWS + t]);
    }
    workgroupBarrier();
    var totals: array<f32, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        if (i < p.m) {
            totals[i] = row_totals[i];
        }
    }
    // `partials`, `halves` and `row_totals` are rewritten only after barriers of the next call
    // that every thread reaches after its reads here.
    return totals;
}

// Add acc over the workgroup and store columns n0 .. n0 + COLS.
fn finish(n0: u32, t: u32) {
    for (var c0 = 0u; c0 < COLS; c0 += ROUND_COLS) {
        for (var j = 0u; j < ROUND; j++) {
            partials[t * PAD + j] = acc[c0 * ROWS + j];
        }
        workgroupBarrier();
        // Value v = t % ROUND of the round (column c0 + v / 16, row v % 16), share t / ROUND.
        let v = t % ROUND;
        let h = t / ROUND;
        var s = 0.0;
        for (var j = 0u; j < THREADS / PARTS; j++) {
            s += partials[(h * (THREADS / PARTS) + j) * PAD + v];
        }
        halves[t] = s;
        workgroupBarrier();
        if (t < ROUND) {
            var total = 0.0;
            for (var q = 0u; q < PARTS; q++) {
                total += halves[q * ROUND + t];
            }
            store_total(n0, c0 + t / ROWS, t % ROWS, total);
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let n0 = (wg.x + wg.y * nwg.x) * COLS;
    if (n0 >= p.n) {
        return; // uniform per workgroup
    }
    accumulate(n0, t);
    finish(n0, t);
}
