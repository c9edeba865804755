//! `shaders/layernorm_backward.wgsl`: the input gradient of the modulated LayerNorm (accumulated at
//! the input rows), leaving each row's (μ, 1/σ) for the parameter gradients.

use super::layernorm::LayerNorm;
use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Cost, ProgramBuilder};
use bd3_model::Result;

pub const THREADS: u32 = 256;

/// The block of all three LayerNorm kernels.
pub use super::layernorm::Params;

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

pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    ln: &LayerNorm,
    b: Bindings,
) -> Result<()> {
    let p = ln.params(false);
    let (rows, d) = (p.n_rows as u64, p.dim as u64);
    let groups = pb.fold(rows)?;
    let cost = Cost {
        flops: 14 * rows * d,
        bytes: words(4 * rows * d + 2 * rows + d),
    };
    pb.dispatch(
        "layernorm_backward",
        &tk.layernorm_backward,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
