//! `shaders/embedding_backward.wgsl`: dE[t] += Σ_{rows with token t} dx[row] without atomics. The host
//! groups the rows by token and cuts each token's rows into pieces of at most [`piece_rows`] rows
//! ([`Pieces::split`]); pass 1 runs one workgroup per piece (a token of one piece adds to its table
//! row directly, the pieces of longer tokens write partial sums), pass 2 one workgroup per split token
//! summing its pieces in order. Deterministic, and the mask token's segment (about half the rows of a
//! masked-diffusion batch) no longer runs on one workgroup while the rest of the GPU waits.

use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Buf, Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::Result;

pub const THREADS: u32 = 256;
/// The shortest piece length [`piece_rows`] chooses.
pub const MIN_PIECE_ROWS: usize = 32;
/// Pieces per compute unit the longest possible segment (every row) would be cut into.
pub const PIECES_PER_UNIT: usize = 4;
/// A piece's slot when its token has no other piece (its sum goes straight to the table).
pub const DIRECT: u32 = u32::MAX;

uniform_params! {
    pub struct Params {
        pub n_seg: u32,
        pub dim: u32,
        pub row_start: u32,
        pub part_rows: u32,
        pub stage: u32,
    }
}

bindings! {
    pub struct Bindings {
        dx: Req,
        seg_token: Req,
        seg_start: Req,
        seg_rows: OptIn,
        seg_slot: OptIn,
        d_table: Req,
        partials: OptOut,
    }
}

/// The longest piece for a batch of `rows` rows on `units` compute units.
pub fn piece_rows(rows: usize, units: u32) -> usize {
    rows.div_ceil(PIECES_PER_UNIT * units.max(1) as usize)
        .max(MIN_PIECE_ROWS)
}

/// The most tokens that can be split (longer than `piece` rows) in `rows` rows.
pub fn max_split(rows: usize, piece: usize) -> usize {
    rows / (piece + 1)
}

/// Floats of the partials for `rows` rows of `dim` columns: a token of L > piece rows has
/// ⌈L / piece⌉ < 2L / piece pieces, so there are fewer than 2·rows / piece slots.
pub fn partials_floats(rows: usize, dim: usize, units: u32) -> usize {
    (2 * rows / piece_rows(rows, units) + 1) * dim
}

/// Rows grouped by token (as `segments` in train.rs makes them: tokens ascending, `seg_start` with a
/// final end), cut into pieces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pieces {
    /// Per piece: its token, its first position in the row order (plus a final end), its slot.
    pub token: Vec<u32>,
    pub start: Vec<u32>,
    pub slot: Vec<u32>,
    /// Per split token: the token and its first slot (plus a final end); slots are consecutive.
    pub split_token: Vec<u32>,
    pub split_first: Vec<u32>,
}

impl Pieces {
    pub fn split(seg_token: &[u32], seg_start: &[u32], piece: usize) -> Pieces {
        let mut p = Pieces::default();
        let mut slots = 0u32;
        for (g, &t) in seg_token.iter().enumerate() {
            let (a, b) = (seg_start[g] as usize, seg_start[g + 1] as usize);
            let split = b - a > piece;
            if split {
                p.split_token.push(t);
                p.split_first.push(slots);
            }
            for s in (a..b).step_by(piece.max(1)) {
                p.token.push(t);
                p.start.push(s as u32);
                p.slot.push(if split {
                    slots += 1;
                    slots - 1
                } else {
                    DIRECT
                });
            }
        }
        p.start.push(*seg_start.last().unwrap_or(&0));
        p.split_first.push(slots);
        p
    }
}

/// The host-side arrays of [`Pieces`] on the GPU, with their counts for this batch.
pub struct PieceBuffers<'a> {
    pub token: &'a Buf,
    pub start: &'a Buf,
    /// The rows in token order.
    pub rows: &'a Buf,
    pub slot: &'a Buf,
    pub split_token: &'a Buf,
    pub split_first: &'a Buf,
    pub n_pieces: u32,
    pub n_split: u32,
}

/// Scatter dx ([rows, dim]) into one part of the table (table rows row_start .. row_start +
/// part_rows of `table_rows`). Workgroup counts are sized for the most pieces and split tokens there
/// can be, so the program does not change with the batch's tokens.
#[allow(clippy::too_many_arguments)]
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    dx: &Buf,
    rows: usize,
    dim: usize,
    pieces: &PieceBuffers,
    (d_table, row_start, part_rows): (&Buf, usize, usize),
    table_rows: usize,
    partials: &Buf,
) -> Result<()> {
    let piece = piece_rows(rows, pb.context().compute_units);
    let moved = rows as u64 * dim as u64 * part_rows as u64 / table_rows.max(1) as u64;
    let slots = (partials_floats(rows, dim, pb.context().compute_units) / dim.max(1)) as u64;
    let p1 = Params {
        n_seg: pieces.n_pieces,
        dim: dim as u32,
        row_start: row_start as u32,
        part_rows: part_rows as u32,
        stage: 1,
    };
    let b1 = Bindings {
        dx,
        seg_token: pieces.token,
        seg_start: pieces.start,
        seg_rows: Some(pieces.rows),
        seg_slot: Some(pieces.slot),
        d_table,
        partials: Some(partials),
    };
    let cost = Cost {
        flops: moved,
        bytes: words(3 * moved + 4 * rows as u64),
    };
    let groups = pb.fold(rows as u64)?;
    pb.dispatch(
        "embedding_backward",
        &tk.embedding_backward,
        &p1,
        b1.slices(&k.placeholders),
        groups,
        cost,
    );
    let p2 = Params {
        n_seg: pieces.n_split,
        stage: 2,
        ..p1
    };
    let b2 = Bindings {
        dx: partials,
        seg_token: pieces.split_token,
        seg_start: pieces.split_first,
        seg_rows: None,
        seg_slot: None,
        d_table,
        partials: None,
    };
    let moved2 = slots * dim as u64 * part_rows as u64 / table_rows.max(1) as u64;
    let cost = Cost {
        flops: moved2,
        bytes: words(moved2 + 2 * max_split(rows, piece) as u64 * dim as u64),
    };
    let groups = pb.fold(max_split(rows, piece).max(1) as u64)?;
    pb.dispatch(
        "embedding_backward_sum",
        &tk.embedding_backward,
        &p2,
        b2.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
