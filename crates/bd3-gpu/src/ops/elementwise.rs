//! `shaders/elementwise.wgsl`: the MLP activation recomputed, and activation derivatives applied to
//! a gradient in place.

use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n: u32,
        pub mode: u32,
    }
}

bindings! {
    pub struct Bindings {
        x: Req,
        g: Req,
    }
}

/// What is computed at each element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elementwise {
    /// g = gelu_tanh(x)
    Gelu = 0,
    /// g = g · gelu_tanh'(x)
    TimesGeluDerivative = 1,
    /// g = g · silu'(x)
    TimesSiluDerivative = 2,
}

pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    op: Elementwise,
    n: usize,
    b: Bindings,
) -> Result<()> {
    let n = n as u64;
    let groups = pb.fold(n.div_ceil(THREADS as u64))?;
    let reads = if op == Elementwise::Gelu { 1 } else { 2 };
    let cost = Cost {
        flops: 12 * n,
        bytes: words((reads + 1) * n),
    };
    pb.dispatch(
        "elementwise",
        &tk.elementwise,
        &Params {
            n: n as u32,
            mode: op as u32,
        },
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
