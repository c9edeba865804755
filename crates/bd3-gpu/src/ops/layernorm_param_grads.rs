//! `shaders/layernorm_param_grads.wgsl`: the LayerNorm weight gradient and the shift/scale gradients
//! of the modulation. Each sequence's rows are cut into chunks sized to the adapter
//! ([`col_sum::sequence_chunks`]): per-chunk partial weight gradients are summed by a column sum, and
//! with more than one chunk the shift/scale partials by a per-sequence column sum.

use super::col_sum::{self, Columns};
use super::layernorm::LayerNorm;
use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Buf, Cost, ProgramBuilder};

pub const THREADS: u32 = 256;

/// The block of all three LayerNorm kernels, with the row chunks set.
pub use super::layernorm::Params;

bindings! {
    pub struct Bindings {
        x: Req,
        /// (μ, 1/σ) per row from the input-gradient kernel.
        stats: Req,
        dy: Req,
        w: Req,
        modv: OptIn,
        /// [sequences · chunks, dim] partial weight gradients (scratch of [`dw_part_floats`] floats).
        dw_part: Req,
        dmod: OptOut,
        /// [sequences · chunks, 2·dim] partial shift/scale gradients (scratch of
        /// [`dmod_part_floats`] floats; needed with modulation when the rows are chunked).
        dmod_part: OptOut2,
    }
}

/// (rows per chunk, chunks per sequence) on `units` compute units.
pub fn chunks(ln: &LayerNorm, units: u32) -> (usize, usize) {
    col_sum::sequence_chunks(
        ln.sequences() as usize,
        ln.out_rows_per_seq as usize,
        ln.dim as usize,
        units,
    )
}

/// Floats of `dw_part` that [`record`] needs.
pub fn dw_part_floats(ln: &LayerNorm, units: u32) -> usize {
    ln.sequences() as usize * chunks(ln, units).1 * ln.dim as usize
}

/// Floats of `dmod_part` that [`record`] needs.
pub fn dmod_part_floats(ln: &LayerNorm, units: u32) -> usize {
    let c = chunks(ln, units).1;
    if ln.modulation.is_some() && c > 1 {
        2 * dw_part_floats(ln, units)
    } else {
        0
    }
}

/// The parameter gradients: dw (+)= into `dweight`, dshift/dscale into `dmod`; `col_scratch` is the
/// scratch of the column sum over the weight partials (see [`col_sum::scratch_floats`]).
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    ln: &LayerNorm,
    b: Bindings,
    dweight: &Buf,
    col_scratch: &Buf,
) {
    let (rows_per_chunk, chunks) = chunks(ln, pb.context().compute_units);
    let p = Params {
        rows_per_chunk: rows_per_chunk as u32,
        chunks: chunks as u32,
        ..ln.params(false)
    };
    let n_seq = ln.sequences();
    let (rows, d) = (p.n_rows as u64, p.dim as u64);
    let part_rows = n_seq as usize * chunks;
    let cost = Cost {
        flops: 5 * rows * d,
        bytes: words(2 * rows * d + 2 * rows + 3 * part_rows as u64 * d + 3 * n_seq as u64 * d),
    };
    let (dw_part, dmod, dmod_part) = (b.dw_part, b.dmod, b.dmod_part);
    pb.dispatch(
        "layernorm_param_grads",
        &tk.layernorm_param_grads,
        &p,
        b.slices(&k.placeholders),
        [p.dim.div_ceil(THREADS), part_rows as u32, 1],
        cost,
    );
    let dim = d as usize;
    if let (Some(m), Some(dmod), true) = (ln.modulation, dmod, chunks > 1) {
        let part = dmod_part
            .expect("layernorm_param_grads: dmod_part is needed when the rows are chunked");
        let (shift, scale, stride) = (m.shift as usize, m.scale as usize, m.stride as usize);
        if scale == shift + dim {
            let a = Columns {
                buffer: part,
                offset: 0,
                rows: part_rows,
                cols: 2 * dim,
                stride: 2 * dim,
            };
            col_sum::record_groups(pb, k, tk, a, chunks, dmod, shift, stride);
        } else {
            for (col, at) in [(0, shift), (dim, scale)] {
                let a = Columns {
                    buffer: part,
                    offset: col,
                    rows: part_rows,
                    cols: dim,
                    stride: 2 * dim,
                };
                col_sum::record_groups(pb, k, tk, a, chunks, dmod, at, stride);
            }
        }
    }
    let partial = Columns {
        buffer: dw_part,
        offset: 0,
        rows: part_rows,
        cols: dim,
        stride: dim,
    };
    col_sum::record(pb, k, tk, partial, dweight, 0, col_scratch);
}
