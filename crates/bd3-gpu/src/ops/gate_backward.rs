//! `shaders/gate_backward.wgsl`: backward of the gated residual x += gate[s] ⊙ drop(v): the gate's
//! gradient (summed over each sequence's rows) and the branch gradient, the dropout mask regenerated
//! from the same hash as the forward matmul. Each sequence's rows are cut into chunks sized to the
//! adapter ([`col_sum::sequence_chunks`]); with more than one chunk the gate gradient goes through
//! per-chunk partials and a `col_sum` pass.

use super::col_sum::{self, Columns};
use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;

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
        pub rows_per_chunk: u32,
        pub chunks: u32,
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
        /// Scratch for the per-chunk gate gradients (at least [`scratch_floats`] floats); needed
        /// with a gate when the rows are chunked.
        dgate_part: OptOut2,
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

/// (rows per chunk, chunks per sequence) on `units` compute units.
pub fn chunks(g: &GateBackward, units: u32) -> (usize, usize) {
    col_sum::sequence_chunks(
        g.n_seq as usize,
        g.rows_per_seq as usize,
        g.dim as usize,
        units,
    )
}

/// Floats of `dgate_part` that [`record`] needs.
pub fn scratch_floats(g: &GateBackward, units: u32) -> usize {
    let (_, c) = chunks(g, units);
    if c > 1 {
        g.n_seq as usize * c * g.dim as usize
    } else {
        0
    }
}

pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    g: &GateBackward,
    b: Bindings,
) {
    let (stride, offset) = g.gate.unwrap_or((0, 0));
    let (rows_per_chunk, chunks) = chunks(g, pb.context().compute_units);
    let p = Params {
        n_seq: g.n_seq,
        rows_per_seq: g.rows_per_seq,
        dim: g.dim,
        has_gate: g.gate.is_some() as u32,
        gate_stride: stride,
        gate_offset: offset,
        dropout: g.dropout,
        seed: g.seed,
        salt: g.salt,
        rows_per_chunk: rows_per_chunk as u32,
        chunks: chunks as u32,
    };
    let rows = g.n_seq as u64 * g.rows_per_seq as u64;
    let d = g.dim as u64;
    let parts = g.n_seq as u64 * chunks as u64 * d;
    let cost = Cost {
        flops: 4 * rows * d,
        bytes: words(3 * rows * d + 2 * g.n_seq as u64 * d + parts),
    };
    let groups = [g.dim.div_ceil(THREADS), g.n_seq * chunks as u32, 1];
    let (dmod, part) = (b.dmod, b.dgate_part);
    pb.dispatch(
        "gate_backward",
        &tk.gate_backward,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    if let (Some(dmod), true) = (dmod, g.gate.is_some() && chunks > 1) {
        let part = part.expect("gate_backward: dgate_part is needed when the rows are chunked");
        let a = Columns {
            buffer: part,
            offset: 0,
            rows: g.n_seq as usize * chunks,
            cols: g.dim as usize,
            stride: g.dim as usize,
        };
        col_sum::record_groups(pb, k, tk, a, chunks, dmod, offset as usize, stride as usize);
    }
}
