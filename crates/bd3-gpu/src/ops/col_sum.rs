//! `shaders/col_sum.wgsl`: column sums over chunks of rows (bias gradients, the sums of row-chunk
//! partials of the LayerNorm and gate gradients). Long sums run in two passes so a large GPU has work
//! for every unit: chunks of rows into a scratch matrix, then one pass over the partial sums. The chunk
//! length is chosen here from the shape and the adapter's compute units ([`chunk_rows`]).

use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Buf, Cost, ProgramBuilder};
use crate::uniform_params;

pub const THREADS: u32 = 256;
/// The shortest chunk of a two-pass sum (and of a per-sequence row chunk).
pub const MIN_CHUNK_ROWS: usize = 32;
/// Sums of up to this many rows take one pass (a second dispatch would cost more than it saves).
pub const SINGLE_PASS_ROWS: usize = 256;
/// Workgroups per compute unit the first pass of a long sum aims for.
pub const WORKGROUPS_PER_UNIT: usize = 4;

/// Rows per chunk of the first pass over `rows` rows and `cols` columns on `units` compute units, or
/// None for one pass (few rows, or enough column blocks to fill the GPU on their own).
pub fn chunk_rows(rows: usize, cols: usize, units: u32) -> Option<usize> {
    let col_groups = cols.div_ceil(THREADS as usize).max(1);
    if rows <= SINGLE_PASS_ROWS || col_groups >= 2 * units as usize {
        return None;
    }
    let chunks = (WORKGROUPS_PER_UNIT * units as usize)
        .div_ceil(col_groups)
        .min(rows.div_ceil(MIN_CHUNK_ROWS));
    (chunks > 1).then(|| rows.div_ceil(chunks))
}

/// Chunking of a per-sequence column reduction over `n_seq` sequences of `rows_per_seq` rows and
/// `cols` columns (the gate and LayerNorm gradients): (rows per chunk, chunks per sequence), enough
/// chunks for about [`WORKGROUPS_PER_UNIT`] workgroups per unit, none shorter than [`MIN_CHUNK_ROWS`].
/// One chunk per sequence means no second pass.
pub fn sequence_chunks(
    n_seq: usize,
    rows_per_seq: usize,
    cols: usize,
    units: u32,
) -> (usize, usize) {
    let col_groups = cols.div_ceil(THREADS as usize).max(1);
    let wanted = (WORKGROUPS_PER_UNIT * units as usize).div_ceil(col_groups * n_seq.max(1));
    let chunks = wanted.min(rows_per_seq.div_ceil(MIN_CHUNK_ROWS)).max(1);
    let rows_per_chunk = rows_per_seq.div_ceil(chunks).max(1);
    (rows_per_chunk, rows_per_seq.div_ceil(rows_per_chunk).max(1))
}

/// Floats of scratch that [`record`] needs for any sum of at most `rows` rows and `max_cols` columns.
pub fn scratch_floats(rows: usize, max_cols: usize, units: u32) -> usize {
    // chunks ≤ ⌈T / ⌈cols/256⌉⌉ with T = WORKGROUPS_PER_UNIT·units, so chunks·cols ≤ 256·T + cols.
    let by_rows = rows.div_ceil(MIN_CHUNK_ROWS) * max_cols;
    let by_units = WORKGROUPS_PER_UNIT * units as usize * THREADS as usize + max_cols;
    by_rows.min(by_units).max(1)
}

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

fn dispatch(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    p: Params,
    chunks: u32,
    b: Bindings,
) {
    let cost = Cost {
        flops: p.m as u64 * p.n as u64,
        bytes: words(
            p.m as u64 * p.n as u64 + chunks as u64 * p.n as u64 * (1 + p.accumulate as u64),
        ),
    };
    pb.dispatch(
        "col_sum",
        &tk.col_sum,
        &p,
        b.slices(&k.placeholders),
        [p.n.div_ceil(THREADS), chunks, 1],
        cost,
    );
}

/// out[out_offset + j] += Σ_i a[i, j]: one pass, or two through `scratch` (at least
/// [`scratch_floats`] floats) when [`chunk_rows`] says so.
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: Columns,
    out: &Buf,
    out_offset: usize,
    scratch: &Buf,
) {
    let (m, n, lda, off) = (
        a.rows as u32,
        a.cols as u32,
        a.stride as u32,
        a.offset as u32,
    );
    let Some(rows_per_chunk) = chunk_rows(a.rows, a.cols, pb.context().compute_units) else {
        let p = Params {
            m,
            n,
            lda,
            a_offset: off,
            out_offset: out_offset as u32,
            rows_per_chunk: m.max(1),
            out_chunk_stride: 0,
            accumulate: 1,
        };
        dispatch(pb, k, tk, p, 1, Bindings { a: a.buffer, out });
        return;
    };
    let chunks = a.rows.div_ceil(rows_per_chunk) as u32;
    let first = Params {
        m,
        n,
        lda,
        a_offset: off,
        out_offset: 0,
        rows_per_chunk: rows_per_chunk as u32,
        out_chunk_stride: n,
        accumulate: 0,
    };
    dispatch(
        pb,
        k,
        tk,
        first,
        chunks,
        Bindings {
            a: a.buffer,
            out: scratch,
        },
    );
    let second = Params {
        m: chunks,
        n,
        lda: n,
        a_offset: 0,
        out_offset: out_offset as u32,
        rows_per_chunk: chunks,
        out_chunk_stride: 0,
        accumulate: 1,
    };
    dispatch(pb, k, tk, second, 1, Bindings { a: scratch, out });
}

/// out[j] (+)= Σ_i a[i, j] in one pass over few rows (the K slices of a split product), written
/// (`accumulate` false) or added.
pub fn record_sum(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: Columns,
    out: &Buf,
    accumulate: bool,
) {
    let (m, n) = (a.rows as u32, a.cols as u32);
    let p = Params {
        m,
        n,
        lda: a.stride as u32,
        a_offset: a.offset as u32,
        out_offset: 0,
        rows_per_chunk: m.max(1),
        out_chunk_stride: 0,
        accumulate: accumulate as u32,
    };
    dispatch(pb, k, tk, p, 1, Bindings { a: a.buffer, out });
}

/// The second pass of a row-chunked reduction: for each group g of `rows_per_group` consecutive rows
/// of `a` (a.rows = groups · rows_per_group), out[out_offset + g·out_group_stride + j] += Σ a[i, j].
/// One dispatch (the partials are few: chunks × groups rows).
#[allow(clippy::too_many_arguments)]
pub fn record_groups(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: Columns,
    rows_per_group: usize,
    out: &Buf,
    out_offset: usize,
    out_group_stride: usize,
) {
    let groups = a.rows.div_ceil(rows_per_group.max(1)) as u32;
    let p = Params {
        m: a.rows as u32,
        n: a.cols as u32,
        lda: a.stride as u32,
        a_offset: a.offset as u32,
        out_offset: out_offset as u32,
        rows_per_chunk: rows_per_group.max(1) as u32,
        out_chunk_stride: out_group_stride as u32,
        accumulate: 1,
    };
    dispatch(pb, k, tk, p, groups, Bindings { a: a.buffer, out });
}
