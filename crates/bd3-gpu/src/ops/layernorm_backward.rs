//! `shaders/layernorm_backward.wgsl`: the input gradient of the modulated LayerNorm (accumulated at
//! the input rows), leaving each row's (μ, 1/σ) for the parameter gradients.

use super::layernorm::LayerNorm;
use super::{bindings, words, Kernels, TrainKernels};
use crate::uniform_params;
use crate::program::{Cost, ProgramBuilder};
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n_rows: u32,
        pub dim: u32,
        pub in_rows_per_seq: u32,
        pub out_rows_per_seq: u32,
        pub in_row_offset: u32,
        pub has_mod: u32,
        pub shift_offset: u32,
        pub scale_offset: u32,
        pub mod_stride: u32,
    }
}

bindings! {
    pub struct Bindings {
        x: Req,
        w: Req,
        modv: OptIn,
        dy: Req,
        dx: Req,
        stats: Req,
    }
}

/// The parameter block of the backward kernels: the forward's without the row index.
pub fn params(ln: &LayerNorm) -> Params {
    let f = ln.params(false);
    Params {
        n_rows: f.n_rows, dim: f.dim, in_rows_per_seq: f.in_rows_per_seq, out_rows_per_seq: f.out_rows_per_seq,
        in_row_offset: f.in_row_offset, has_mod: f.has_mod, shift_offset: f.shift_offset, scale_offset: f.scale_offset, mod_stride: f.mod_stride,
    }
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, ln: &LayerNorm, b: Bindings) -> Result<()> {
    let p = params(ln);
    let (rows, d) = (p.n_rows as u64, p.dim as u64);
    let groups = pb.fold(rows)?;
    let cost = Cost { flops: 14 * rows * d, bytes: words(4 * rows * d + 2 * rows + d) };
    pb.dispatch("layernorm_backward", &tk.layernorm_backward, &p, b.slices(&k.placeholders), groups, cost);
    Ok(())
}
