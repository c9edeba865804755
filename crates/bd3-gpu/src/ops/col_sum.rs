//! `shaders/col_sum.wgsl`: column sums over chunks of rows (bias gradients, the sum of per-sequence
//! LayerNorm weight-gradient partials). Long sums run in two passes so a large GPU has work for every
//! unit: chunks of [`CHUNK_ROWS`] rows into a scratch matrix, then one pass over the partial sums.

use super::{bindings, words, Kernels, TrainKernels};
use crate::uniform_params;
use crate::program::{Buf, Cost, ProgramBuilder};

pub const THREADS: u32 = 256;
/// Rows per workgroup in the first pass of a long column sum.
pub const CHUNK_ROWS: usize = 256;

uniform_params! {
    pub struct Params {
        pub m: u32,
        pub n: u32,
        pub lda: u32,
        pub a_offset: u32,
        pub out_offset: u32,
        pub rows_per_chunk: u32,
        pub out_chunk_stride: u32,
        pub accumulate: u32,
    }
}

bindings! {
    pub struct Bindings {
        a: Req,
        out: Req,
    }
}

/// A [rows, cols] window of a row-major matrix with row stride `stride`, starting at `offset`.
pub struct Columns<'b> {
    pub buffer: &'b Buf,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

fn dispatch(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, p: Params, chunks: u32, b: Bindings) {
    let cost = Cost { flops: p.m as u64 * p.n as u64, bytes: words(p.m as u64 * p.n as u64 + chunks as u64 * p.n as u64 * (1 + p.accumulate as u64)) };
    pb.dispatch("col_sum", &tk.col_sum, &p, b.slices(&k.placeholders), [p.n.div_ceil(THREADS), chunks, 1], cost);
}

/// out[out_offset + j] += Σ_i a[i, j]: one pass up to 2·CHUNK_ROWS rows, else two through `scratch`
/// (at least ⌈rows / CHUNK_ROWS⌉ × cols floats).
pub fn record(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, a: Columns, out: &Buf, out_offset: usize, scratch: &Buf) {
    let (m, n, lda, off) = (a.rows as u32, a.cols as u32, a.stride as u32, a.offset as u32);
    if a.rows <= 2 * CHUNK_ROWS {
        let p = Params { m, n, lda, a_offset: off, out_offset: out_offset as u32, rows_per_chunk: m.max(1), out_chunk_stride: 0, accumulate: 1 };
        dispatch(pb, k, tk, p, 1, Bindings { a: a.buffer, out });
        return;
    }
    let chunks = a.rows.div_ceil(CHUNK_ROWS) as u32;
    let first = Params { m, n, lda, a_offset: off, out_offset: 0, rows_per_chunk: CHUNK_ROWS as u32, out_chunk_stride: n, accumulate: 0 };
    dispatch(pb, k, tk, first, chunks, Bindings { a: a.buffer, out: scratch });
    let second = Params { m: chunks, n, lda: n, a_offset: 0, out_offset: out_offset as u32, rows_per_chunk: chunks, out_chunk_stride: 0, accumulate: 1 };
    dispatch(pb, k, tk, second, 1, Bindings { a: scratch, out });
}

/// out[j] (+)= Σ_i a[i, j] in one pass over few rows (the K slices of a split product), written
/// (`accumulate` false) or added.
pub fn record_sum(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, a: Columns, out: &Buf, accumulate: bool) {
    let (m, n) = (a.rows as u32, a.cols as u32);
    let p = Params { m, n, lda: a.stride as u32, a_offset: a.offset as u32, out_offset: 0, rows_per_chunk: m.max(1), out_chunk_stride: 0, accumulate: accumulate as u32 };
    dispatch(pb, k, tk, p, 1, Bindings { a: a.buffer, out });
}
