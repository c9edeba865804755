//! `shaders/embedding_backward.wgsl`: dE[t] += Σ_{rows with token t} dx[row], one workgroup per
//! segment of rows sharing a token (grouped by the host), so no atomics are needed.

use super::{bindings, words, Kernels, TrainKernels};
use crate::uniform_params;
use crate::program::{Cost, ProgramBuilder};
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n_seg: u32,
        pub dim: u32,
        pub row_start: u32,
        pub part_rows: u32,
    }
}

bindings! {
    pub struct Bindings {
        dx: Req,
        seg_token: Req,
        seg_start: Req,
        seg_rows: Req,
        d_table: Req,
    }
}

/// `n_seg` segments over `rows` rows, scattered into the part of the table starting at `row_start`.
/// The workgroup count is sized for one segment per row (the most there can be), so the program
/// does not change with the batch's tokens.
pub fn record(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, p: Params, rows: usize, table_rows: usize, b: Bindings) -> Result<()> {
    let groups = pb.fold(rows as u64)?;
    let moved = rows as u64 * p.dim as u64 * p.part_rows as u64 / table_rows.max(1) as u64;
    let cost = Cost { flops: moved, bytes: words(3 * moved + 3 * rows as u64) };
    pb.dispatch("embedding_backward", &tk.embedding_backward, &p, b.slices(&k.placeholders), groups, cost);
    Ok(())
}
