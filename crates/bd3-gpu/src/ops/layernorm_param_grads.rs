//! `shaders/layernorm_param_grads.wgsl`: per-sequence partial sums of the LayerNorm weight gradient
//! (summed by a column sum afterwards) and the shift/scale gradients of the modulation.

use super::layernorm::LayerNorm;
use super::{bindings, layernorm_backward, words, Kernels, TrainKernels};
use crate::program::{Cost, ProgramBuilder};

pub const THREADS: u32 = 256;

/// The same block as the input-gradient kernel's.
pub use layernorm_backward::Params;

bindings! {
    pub struct Bindings {
        x: Req,
        /// (μ, 1/σ) per row from the input-gradient kernel.
        stats: Req,
        dy: Req,
        w: Req,
        modv: OptIn,
        /// [sequences, dim] partial weight gradients (written).
        dw_part: Req,
        dmod: OptOut,
    }
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, ln: &LayerNorm, b: Bindings) {
    let p = layernorm_backward::params(ln);
    let n_seq = ln.sequences();
    let (rows, d) = (p.n_rows as u64, p.dim as u64);
    let cost = Cost { flops: 5 * rows * d, bytes: words(2 * rows * d + 2 * rows + 5 * n_seq as u64 * d) };
    pb.dispatch("layernorm_param_grads", &tk.layernorm_param_grads, &p, b.slices(&k.placeholders), [p.dim.div_ceil(THREADS), n_seq, 1], cost);
}
