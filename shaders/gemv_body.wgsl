// The shared body of the few-row matrix products (gemv.wgsl reduces through workgroup memory,
// gemv_subgroup.wgsl with subgroup operations; see gemv.wgsl's header for the math and the tiling):
// the parameters and bindings, the input rows, the LayerNorm prologue and the K loop that leaves each
// thread's partial sums in `acc`.
// The includer defines `fn sum_rows(v: array<f32, ROWS>, t: u32) -> array<f32, ROWS>` (the
// workgroup's per-row totals for thread t, returned to every thread, called from uniform control
// flow) and the entry point.
// The lines between the VIEWS markers are the vec4 f32 views of a, b and ln_w; ops/gemv.rs rewrites them for the
// scalar views (K or an offset not a multiple of 4), for f16 weights (`enable f16;` prepended) and for
// an f16 `a` (an embedding table stored in f16, gathered by the prologue).
// Includes: matmul_epilogue.wgsl (store_value and row_base, the epilogue of matmul.wgsl).

// #include "matmul_epilogue.wgsl"

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_offset: u32,
    a_row_stride: u32,
    b_offset: u32,
    b_col_stride: u32,
    ldc: u32,
    out_col_offset: u32,
    has_bias: u32,
    bias_offset: u32,
    epilogue: u32,
    rows_per_seq: u32,
    gate_stride: u32,
    gate_offset: u32,
    out_rows_per_seq: u32,
    out_seq_stride: u32,
    out_row_offset: u32,
    store_aux: u32,
    dropout: f32,
    seed: u32,
    salt: u32,
    in_rows_per_seq: u32,
    map_rows_per_seq: u32,
    in_row_offset: u32,
    first_row: u32,
    use_row_index: u32,
    norm: u32,
    has_mod: u32,
    shift_offset: u32,
    scale_offset: u32,
    mod_stride: u32,
    keep_input: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// VIEWS BEGIN
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;

// The k of thread t's four lanes in the step from `base`: four consecutive k, one 16-byte load.
fn lanes(base: u32, t: u32) -> vec4<u32> {
    return vec4<u32>(base + 4u * t) + vec4<u32>(0u, 1u, 2u, 3u);
}

// a[start + k] for the four lanes (0 where a lane is past K; with K % 4 = 0 all four are or none).
fn load_a(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {
    if (live.x) {
        return a[(start + k.x) >> 2u];
    }
    return vec4<f32>(0.0);
}

fn load_b(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {
    if (live.x) {
        return vec4<f32>(b[(start + k.x) >> 2u]);
    }
    return vec4<f32>(0.0);
}

@group(0) @binding(7) var<storage, read> ln_w: array<vec4<f32>>;

fn load_ln_w(k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {
    if (live.x) {
        return ln_w[k.x >> 2u];
    }
    return vec4<f32>(0.0);
}
// VIEWS END
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> aux: array<f32>;
@group(0) @binding(8) var<storage, read> row_index: array<u32>;

const THREADS: u32 = 64u;
// K advances by four lanes of every thread per step.
const STEP: u32 = 4u * THREADS;
const ROWS: u32 = 16u;
// Output columns per workgroup: the host compiles 1, 2, 4 and 8 (ops/gemv.rs, columns_per_group).
const COLS: u32 = 8u;

// Partial sums of this thread over its k: acc[c·ROWS + r] for column n0 + c and row r.
var<private> acc: array<f32, COLS * ROWS>;
// With at most 2 columns the accumulators take at most 32 registers, so when K fits one step (≤ 256:
// small models, the conditioning) each thread keeps its lanes of every row here between the
// LayerNorm statistics and the product: the rows are read once, not three times. With more columns
// the registers go to the accumulators (and the compiler drops this array).
const CACHE_ROWS: bool = COLS <= 2u;
var<private> xs: array<vec4<f32>, ROWS>;

fn rows_cached() -> bool {
    return CACHE_ROWS && p.norm != 0u && p.k <= STEP;
}

// Per row, the same for every thread (so in workgroup memory, not in each thread's registers): where
// its input starts in `a`, its modulation row in `gate`, its mean and 1/σ. Written by thread r.
var<workgroup> row_start: array<u32, ROWS>;
var<workgroup> row_mod: array<u32, ROWS>;
var<workgroup> row_mean: array<f32, ROWS>;
var<workgroup> row_inv: array<f32, ROWS>;

// The modulation (a scalar binding: the epilogue reads the gate from it) at the four lanes.
fn load_mod(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (live[i]) {
            v[i] = gate[start + k[i]];
        }
    }
    return v;
}

// Row r of this dispatch is row first_row + r of the mapping: sequence s = that / map_rows_per_seq,
// input row s·in_rows_per_seq + in_row_offset + (that % map_rows_per_seq, or row_index[that]).
// (An embedding prologue has in_rows_per_seq = in_row_offset = 0 and the token ids as row_index:
// the input row is the token's row of the table bound as `a`.)
fn input_rows(t: u32) {
    if (t < p.m) {
        let g = p.first_row + t;
        let s = g / p.map_rows_per_seq;
        var i = g % p.map_rows_per_seq;
        if (p.use_row_index != 0u) {
            i = row_index[g];
        }
        row_start[t] = p.a_offset + (s * p.in_rows_per_seq + p.in_row_offset + i) * p.a_row_stride;
        row_mod[t] = s * p.mod_stride;
    }
    workgroupBarrier();
}

// Mean and 1/σ of every row, as layernorm_stats.wgsl: two passes, biased variance, eps 1e-5.
// With `keep` (the first workgroup of a product with p.keep_input = 1) the first pass also writes each
// mapped row g's input, unnormalised, to aux[g·K + k]: a block that gathers its rows from the
// embedding table leaves them there as the residual stream it adds to.
fn norm_stats(t: u32, keep: bool) {
    var sums: array<f32, ROWS>;
    for (var base = 0u; base < p.k; base += STEP) {
        let k = lanes(base, t);
        let live = k < vec4<u32>(p.k);
        for (var r = 0u; r < ROWS; r++) {
            if (r < p.m) {
                let x = load_a(row_start[r], k, live);
                if (rows_cached()) {
                    xs[r] = x;
                }
                if (keep) {
                    let at = (p.first_row + r) * p.k;
                    for (var i = 0u; i < 4u; i++) {
                        if (live[i]) {
                            aux[at + k[i]] = x[i];
                        }
                    }
                }
                sums[r] += (x.x + x.y) + (x.z + x.w);
            }
        }
    }
    let n = f32(p.k);
    var mean = sum_rows(sums, t);
    for (var r = 0u; r < ROWS; r++) {
        mean[r] = mean[r] / n;
        sums[r] = 0.0;
    }
    for (var base = 0u; base < p.k; base += STEP) {
        let k = lanes(base, t);
        let live = k < vec4<u32>(p.k);
        for (var r = 0u; r < ROWS; r++) {
            if (r < p.m) {
                var x = xs[r];
                if (!rows_cached()) {
                    x = load_a(row_start[r], k, live);
                }
                let d = select(vec4<f32>(0.0), x - mean[r], live);
                sums[r] += dot(d, d);
            }
        }
    }
    let squares = sum_rows(sums, t);
    if (t < p.m) {
        row_mean[t] = mean[t];
        row_inv[t] = inverseSqrt(squares[t] / n + 1e-5);
    }
    workgroupBarrier();
}

// This thread's partial products of columns n0 .. n0 + COLS over its k (with the LayerNorm prologue
// when p.norm = 1), into acc. Uniform control flow: it may call sum_rows.
fn accumulate(n0: u32, t: u32) {
    input_rows(t);
    if (p.norm != 0u) {
        norm_stats(t, p.keep_input != 0u && n0 == 0u);
    }
    var col_start: array<u32, COLS>;
    for (var c = 0u; c < COLS; c++) {
        // Columns past N read the last one (kept in bounds) and are never stored.
        col_start[c] = p.b_offset + min(n0 + c, p.n - 1u) * p.b_col_stride;
    }
    for (var i = 0u; i < COLS * ROWS; i++) {
        acc[i] = 0.0;
    }
    for (var base = 0u; base < p.k; base += STEP) {
        let k = lanes(base, t);
        let live = k < vec4<u32>(p.k);
        var w: array<vec4<f32>, COLS>;
        for (var c = 0u; c < COLS; c++) {
            w[c] = load_b(col_start[c], k, live);
        }
        // The prologue's per-k factors: y = (x − μ)·(1/σ)·gain + shift with gain = ln_w·(1 + scale);
        // the modulation is loaded once per sequence (rows come in sequence order), not per row.
        var ln_g = vec4<f32>(1.0);
        if (p.norm != 0u) {
            ln_g = load_ln_w(k, live);
        }
        var gain = ln_g;
        var shift = vec4<f32>(0.0);
        var mod_row = 0xffffffffu;
        for (var r = 0u; r < ROWS; r++) {
            if (r < p.m) {
                var x = xs[r];
                if (!rows_cached()) {
                    x = load_a(row_start[r], k, live);
                }
                if (p.norm != 0u) {
                    if (p.has_mod != 0u && row_mod[r] != mod_row) {
                        mod_row = row_mod[r];
                        gain = ln_g * (1.0 + load_mod(mod_row + p.scale_offset, k, live));
                        shift = load_mod(mod_row + p.shift_offset, k, live);
                    }
                    x = (x - row_mean[r]) * row_inv[r] * gain + shift;
                }
                for (var c = 0u; c < COLS; c++) {
                    acc[c * ROWS + r] += dot(x, w[c]);
                }
            }
        }
    }
}

// Store the total of column n0 + c, row r (the caller has reduced it over the workgroup).
fn store_total(n0: u32, c: u32, r: u32, total: f32) {
    let n = n0 + c;
    if (r < p.m && c < COLS && n < p.n) {
        store_value(r, n, total, row_base(r, 0u));
    }
}
