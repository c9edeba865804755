// The large-tile f32 matrix product: the same product, epilogue, row mapping and K slices as
// matmul.wgsl (see its header for the math and the parameters), for products big enough to give
// every compute unit two 128 × 128 output tiles (the Linears of training at L = 1024 and their
// gradients, split in K where needed):
//   v[i, j] = Σ_k A(i, k) · B(k, j),  A(i, k) = a[a_offset + i·a_row_stride + k·a_k_stride],
//   B(k, j) = b[b_offset + k·b_k_stride + j·b_col_stride], then store_quad (matmul_epilogue.wgsl).
// Why a second kernel: matmul.wgsl's 4 × 4 register block spends 5 workgroup-memory loads per 16
// multiply-adds and stalls on every staging barrier. Here a thread owns an 8 × 8 block (4 vec4
// loads of workgroup memory per 64 multiply-adds), global loads are 16-byte vectors, and the next
// K slab is loaded into registers while the current one is multiplied (double-buffered staging:
// one barrier per slab).
//
// Bindings: 0 params, 1 a, 2 b (both read as array<vec4<f32>>: the host binds only buffers whose
// sizes are multiples of 16 bytes), 3 bias, 4 gate, 5 out, 6 aux.
// Tiling: 16 × 16 threads, thread (tx, ty) owning rows {4ty + r, 64 + 4ty + r} and columns
// {4tx + c, 64 + 4tx + c} (r, c < 4) of the tile: sixteen vec4 sums in registers. K in slabs of BK
// (8: 2 buffers × 2 operands × BK × 128 floats = 16 KiB, the browser default; 16: 32 KiB, for
// native adapters that allow it; the host substitutes BK from the adapter's limits). Each slab of
// an operand is BK·128/4 quads of four consecutive elements along its contiguous dimension (along k
// for x and a weight stored [out, in]; along the rows or columns for the transposed operands of the
// gradients), so global reads are coalesced in every layout; a quad is one 16-byte load when
// ALIGNED = 1 (the host checks unit stride, offsets and strides and the quad's extent multiples of
// 4) and four element loads otherwise (any strides, bounds-checked element by element). The
// workgroup-memory slabs are [k][rows / 4] and [k][cols / 4] of vec4: a thread reads two of each per
// k. Edges are bounds-checked, so any M, N, K works. The z dimension of the grid indexes K slices.
// Includes: matmul_params.wgsl (Params, bindings 0, 3–6), matmul_epilogue.wgsl (store_quad).

// #include "matmul_params.wgsl"
// #include "matmul_epilogue.wgsl"

@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;

const BK: u32 = 8u;
const ALIGNED: u32 = 1u;
const BM: u32 = 128u;
const BN: u32 = 128u;
const THREADS: u32 = 256u;
// Quads of one operand's slab per thread: 1 (BK = 8) or 2 (BK = 16); the prefetch registers hold
// at most 2.
const QUADS: u32 = BK * BM / 4u / THREADS;
const_assert QUADS >= 1u && QUADS <= 2u && BK % 4u == 0u;
// vec4s of one operand's slab.
const SLAB_A: u32 = BK * BM / 4u;
const SLAB_B: u32 = BK * BN / 4u;
var<workgroup> a_tile: array<vec4<f32>, 2u * SLAB_A>; // [buffer][k][row / 4]
var<workgroup> b_tile: array<vec4<f32>, 2u * SLAB_B>; // [buffer][k][col / 4]

// Elements x, x + step, x + 2·step, x + 3·step of `a`; the first `live` of them exist, the others
// read as 0. Aligned: step = 1, x % 4 = 0 and live is 0 or 4 (the host's conditions).
fn a_quad(x: u32, step: u32, live: u32) -> vec4<f32> {
    if (ALIGNED == 1u) {
        if (live == 0u) {
            return vec4<f32>(0.0);
        }
        return a[x >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < live; i++) {
        let e = x + i * step;
        v[i] = a[e >> 2u][e & 3u];
    }
    return v;
}

fn b_quad(x: u32, step: u32, live: u32) -> vec4<f32> {
    if (ALIGNED == 1u) {
        if (live == 0u) {
            return vec4<f32>(0.0);
        }
        return b[x >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < live; i++) {
        let e = x + i * step;
        v[i] = b[e >> 2u][e & 3u];
    }
    return v;
}

// Whether A's quads run along the rows (A stored transposed: dyᵀ of a weight gradient) rather than
// along k; the same test for B's columns (dy·W, and the x of a weight gradient).
fn a_along_rows() -> bool {
    return p.a_row_stride == 1u && p.a_k_stride != 1u;
}

fn b_along_cols() -> bool {
    return p.b_col_stride == 1u && p.b_k_stride != 1u;
}

// How many of the four indices first … first + 3 are below `end`.
fn live_of(first: u32, end: u32) -> u32 {
    return select(0u, min(4u, end - first), first < end);
}

// Quad q of A's slab at k0 (of the tile at row m0), read from global memory.
fn load_a(q: u32, m0: u32, k0: u32, k_end: u32) -> vec4<f32> {
    if (a_along_rows()) {
        let kk = q / (BM / 4u);
        let row = 4u * (q % (BM / 4u));
        let live = select(0u, live_of(m0 + row, p.m), k0 + kk < k_end);
        return a_quad(p.a_offset + (m0 + row) * p.a_row_stride + (k0 + kk) * p.a_k_stride, p.a_row_stride, live);
    }
    let row = q / (BK / 4u);
    let kk = 4u * (q % (BK / 4u));
    let live = select(0u, live_of(k0 + kk, k_end), m0 + row < p.m);
    return a_quad(p.a_offset + (m0 + row) * p.a_row_stride + (k0 + kk) * p.a_k_stride, p.a_k_stride, live);
}

// Quad q of A's slab into buffer `buf` of workgroup memory.
fn store_a(buf: u32, q: u32, v: vec4<f32>) {
    let base = buf * SLAB_A;
    if (a_along_rows()) {
        a_tile[base + q] = v;
        return;
    }
    let row = q / (BK / 4u);
    let kk = 4u * (q % (BK / 4u));
    for (var i = 0u; i < 4u; i++) {
        a_tile[base + (kk + i) * (BM / 4u) + row / 4u][row % 4u] = v[i];
    }
}

fn load_b(q: u32, n0: u32, k0: u32, k_end: u32) -> vec4<f32> {
    if (b_along_cols()) {
        let kk = q / (BN / 4u);
        let col = 4u * (q % (BN / 4u));
        let live = select(0u, live_of(n0 + col, p.n), k0 + kk < k_end);
        return b_quad(p.b_offset + (k0 + kk) * p.b_k_stride + (n0 + col) * p.b_col_stride, p.b_col_stride, live);
    }
    let col = q / (BK / 4u);
    let kk = 4u * (q % (BK / 4u));
    let live = select(0u, live_of(k0 + kk, k_end), n0 + col < p.n);
    return b_quad(p.b_offset + (k0 + kk) * p.b_k_stride + (n0 + col) * p.b_col_stride, p.b_k_stride, live);
}

fn store_b(buf: u32, q: u32, v: vec4<f32>) {
    let base = buf * SLAB_B;
    if (b_along_cols()) {
        b_tile[base + q] = v;
        return;
    }
    let col = q / (BK / 4u);
    let kk = 4u * (q % (BK / 4u));
    for (var i = 0u; i < 4u; i++) {
        b_tile[base + (kk + i) * (BN / 4u) + col / 4u][col % 4u] = v[i];
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let tx = lid3.x;
    let ty = lid3.y;
    // Sums of rows 4ty + r (c_r*) and 64 + 4ty + r (c_{4+r}*), columns 4tx … (lo) and 64 + 4tx … (hi).
    // Named variables, not an array: an array indexed in a loop can end up in memory.
    var c0l = vec4<f32>(0.0);
    var c0h = vec4<f32>(0.0);
    var c1l = vec4<f32>(0.0);
    var c1h = vec4<f32>(0.0);
    var c2l = vec4<f32>(0.0);
    var c2h = vec4<f32>(0.0);
    var c3l = vec4<f32>(0.0);
    var c3h = vec4<f32>(0.0);
    var c4l = vec4<f32>(0.0);
    var c4h = vec4<f32>(0.0);
    var c5l = vec4<f32>(0.0);
    var c5h = vec4<f32>(0.0);
    var c6l = vec4<f32>(0.0);
    var c6h = vec4<f32>(0.0);
    var c7l = vec4<f32>(0.0);
    var c7h = vec4<f32>(0.0);

    let k_begin = wg.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    var slabs = 0u;
    if (k_begin < k_end) {
        slabs = (k_end - k_begin + BK - 1u) / BK;
    }
    // The first slab into buffer 0.
    for (var i = 0u; i < QUADS; i++) {
        let q = lid + i * THREADS;
        store_a(0u, q, load_a(q, m0, k_begin, k_end));
        store_b(0u, q, load_b(q, n0, k_begin, k_end));
    }
    workgroupBarrier();
    for (var s = 0u; s < slabs; s++) {
        let cur = s % 2u;
        let more = s + 1u < slabs;
        // The next slab's quads, loaded before this slab's multiply-adds so their latency overlaps.
        var na0 = vec4<f32>(0.0);
        var nb0 = vec4<f32>(0.0);
        var na1 = vec4<f32>(0.0);
        var nb1 = vec4<f32>(0.0);
        if (more) {
            let k_next = k_begin + (s + 1u) * BK;
            na0 = load_a(lid, m0, k_next, k_end);
            nb0 = load_b(lid, n0, k_next, k_end);
            if (QUADS == 2u) {
                na1 = load_a(lid + THREADS, m0, k_next, k_end);
                nb1 = load_b(lid + THREADS, n0, k_next, k_end);
            }
        }
        let a_base = cur * SLAB_A;
        let b_base = cur * SLAB_B;
        for (var kk = 0u; kk < BK; kk++) {
            let a_lo = a_tile[a_base + kk * (BM / 4u) + ty];
            let a_hi = a_tile[a_base + kk * (BM / 4u) + 16u + ty];
            let b_lo = b_tile[b_base + kk * (BN / 4u) + tx];
            let b_hi = b_tile[b_base + kk * (BN / 4u) + 16u + tx];
            c0l = fma(vec4<f32>(a_lo.x), b_lo, c0l);
            c0h = fma(vec4<f32>(a_lo.x), b_hi, c0h);
            c1l = fma(vec4<f32>(a_lo.y), b_lo, c1l);
            c1h = fma(vec4<f32>(a_lo.y), b_hi, c1h);
            c2l = fma(vec4<f32>(a_lo.z), b_lo, c2l);
            c2h = fma(vec4<f32>(a_lo.z), b_hi, c2h);
            c3l = fma(vec4<f32>(a_lo.w), b_lo, c3l);
            c3h = fma(vec4<f32>(a_lo.w), b_hi, c3h);
            c4l = fma(vec4<f32>(a_hi.x), b_lo, c4l);
            c4h = fma(vec4<f32>(a_hi.x), b_hi, c4h);
            c5l = fma(vec4<f32>(a_hi.y), b_lo, c5l);
            c5h = fma(vec4<f32>(a_hi.y), b_hi, c5h);
            c6l = fma(vec4<f32>(a_hi.z), b_lo, c6l);
            c6h = fma(vec4<f32>(a_hi.z), b_hi, c6h);
            c7l = fma(vec4<f32>(a_hi.w), b_lo, c7l);
            c7h = fma(vec4<f32>(a_hi.w), b_hi, c7h);
        }
        // The other buffer was last read in the previous slab, before the barrier that ended it.
        if (more) {
            store_a(1u - cur, lid, na0);
            store_b(1u - cur, lid, nb0);
            if (QUADS == 2u) {
                store_a(1u - cur, lid + THREADS, na1);
                store_b(1u - cur, lid + THREADS, nb1);
            }
        }
        workgroupBarrier();
    }

    let so = wg.z * p.split_stride;
    let r_lo = m0 + 4u * ty;
    let r_hi = r_lo + 64u;
    let n_lo = n0 + 4u * tx;
    let n_hi = n_lo + 64u;
    store_quad(r_lo, n_lo, c0l, so);
    store_quad(r_lo, n_hi, c0h, so);
    store_quad(r_lo + 1u, n_lo, c1l, so);
    store_quad(r_lo + 1u, n_hi, c1h, so);
    store_quad(r_lo + 2u, n_lo, c2l, so);
    store_quad(r_lo + 2u, n_hi, c2h, so);
    store_quad(r_lo + 3u, n_lo, c3l, so);
    store_quad(r_lo + 3u, n_hi, c3h, so);
    store_quad(r_hi, n_lo, c4l, so);
    store_quad(r_hi, n_hi, c4h, so);
    store_quad(r_hi + 1u, n_lo, c5l, so);
    store_quad(r_hi + 1u, n_hi, c5h, so);
    store_quad(r_hi + 2u, n_lo, c6l, so);
    store_quad(r_hi + 2u, n_hi, c6h, so);
    store_quad(r_hi + 3u, n_lo, c7l, so);
    store_quad(r_hi + 3u, n_hi, c7h, so);
}
