//! `shaders/reduce_sum.wgsl`: out[i] (+)= Σ x or Σ x² in one workgroup (the batch loss, so only 4
//! bytes come back; the squared gradient norm).

use super::{bindings, words, Kernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n: u32,
        pub out_index: u32,
        pub square: u32,
        pub accumulate: u32,
    }
}

bindings! {
    pub struct Bindings {
        x: Req,
        out: Req,
    }
}

/// What is summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// out[i] = Σ x
    Sum,
    /// out[i] += Σ x² (squared norms over several tensors)
    AddSquares,
}

pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    label: &'static str,
    n: u32,
    out_index: u32,
    r: Reduction,
    b: Bindings,
) {
    let p = match r {
        Reduction::Sum => Params {
            n,
            out_index,
            square: 0,
            accumulate: 0,
        },
        Reduction::AddSquares => Params {
            n,
            out_index,
            square: 1,
            accumulate: 1,
        },
    };
    let cost = Cost {
        flops: 2 * n as u64,
        bytes: words(n as u64 + 1),
    };
    pb.dispatch(
        label,
        &k.reduce_sum,
        &p,
        b.slices(&k.placeholders),
        [1, 1, 1],
        cost,
    );
}
