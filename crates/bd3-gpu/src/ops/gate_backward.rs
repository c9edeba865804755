//! `shaders/gate_backward.wgsl`: backward of the gated residual x += gate[s] ⊙ drop(v): the gate's
//! gradient (summed over each sequence's rows) and the branch gradient, the dropout mask regenerated
//! from the same hash as the forward matmul.

use super::{bindings, words, Kernels, TrainKernels};
use crate::uniform_params;
use crate::program::{Cost, ProgramBuilder};

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n_seq: u32,
        pub rows_per_seq: u32,
        pub dim: u32,
        pub has_gate: u32,
        pub gate_stride: u32,
        pub gate_offset: u32,
        pub dropout: f32,
        pub seed: u32,
        pub salt: u32,
    }
}

bindings! {
    pub struct Bindings {
        /// The residual's gradient.
        dx: Req,
        /// The branch output after dropout (kept by the forward pass).
        y: Req,
        /// Modulation rows holding the gate, or None (gate ≡ 1).
        gate: OptIn,
        dv: Req,
        dmod: OptOut,
    }
}

/// The gate's place in the modulation rows (None without adaLN) and the branch's dropout key.
#[derive(Clone, Copy, Debug)]
pub struct GateBackward {
    pub n_seq: u32,
    pub rows_per_seq: u32,
    pub dim: u32,
    /// (row stride, float offset) of the gate chunk.
    pub gate: Option<(u32, u32)>,
    pub dropout: f32,
    pub seed: u32,
    pub salt: u32,
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, tk: &TrainKernels, g: &GateBackward, b: Bindings) {
    let (stride, offset) = g.gate.unwrap_or((0, 0));
    let p = Params {
        n_seq: g.n_seq, rows_per_seq: g.rows_per_seq, dim: g.dim, has_gate: g.gate.is_some() as u32, gate_stride: stride,
        gate_offset: offset, dropout: g.dropout, seed: g.seed, salt: g.salt,
    };
    let rows = g.n_seq as u64 * g.rows_per_seq as u64;
    let d = g.dim as u64;
    let cost = Cost { flops: 4 * rows * d, bytes: words(3 * rows * d + 3 * g.n_seq as u64 * d) };
    pb.dispatch("gate_backward", &tk.gate_backward, &p, b.slices(&k.placeholders), [(g.n_seq * g.dim).div_ceil(THREADS), 1, 1], cost);
}
