//! `shaders/layernorm.wgsl`: y = (x − μ)/σ · w · (1 + scale[s]) + shift[s] over re-mapped rows.

use super::{bindings, words, Kernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
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
        pub use_row_index: u32,
        pub rows_per_chunk: u32,
        pub chunks: u32,
    }
}

bindings! {
    pub struct Bindings {
        x: Req,
        w: Req,
        /// adaLN modulation rows (one per sequence); None for a plain LayerNorm.
        modv: OptIn,
        out: Req,
        /// The input row of each output row (a sampler's picked positions).
        row_index: OptIn,
    }
}

/// Which rows a LayerNorm reads and how the adaLN modulation applies.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub n_rows: u32,
    pub dim: u32,
    /// Output row r of sequence s = r / out_rows_per_seq reads input row
    /// s·in_rows_per_seq + in_row_offset + r % out_rows_per_seq (or + row_index[r]).
    pub in_rows_per_seq: u32,
    pub out_rows_per_seq: u32,
    pub in_row_offset: u32,
    pub modulation: Option<Modulation>,
}

/// Where shift and scale sit in the modulation rows (float offsets, row stride).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulation {
    pub shift: u32,
    pub scale: u32,
    pub stride: u32,
}

impl LayerNorm {
    /// Every row of `batch` sequences of `rows_per_seq` rows.
    pub fn rows(
        batch: usize,
        rows_per_seq: usize,
        dim: usize,
        modulation: Option<Modulation>,
    ) -> LayerNorm {
        LayerNorm {
            n_rows: (batch * rows_per_seq) as u32,
            dim: dim as u32,
            in_rows_per_seq: rows_per_seq as u32,
            out_rows_per_seq: rows_per_seq as u32,
            in_row_offset: 0,
            modulation,
        }
    }

    /// The parameter block (`shaders/layernorm_params.wgsl`, shared by the three LayerNorm kernels;
    /// the parameter gradients set the row chunks).
    pub fn params(&self, use_row_index: bool) -> Params {
        let m = self.modulation.unwrap_or(Modulation {
            shift: 0,
            scale: 0,
            stride: 0,
        });
        Params {
            n_rows: self.n_rows,
            dim: self.dim,
            in_rows_per_seq: self.in_rows_per_seq,
            out_rows_per_seq: self.out_rows_per_seq,
            in_row_offset: self.in_row_offset,
            has_mod: self.modulation.is_some() as u32,
            shift_offset: m.shift,
            scale_offset: m.scale,
            mod_stride: m.stride,
            use_row_index: use_row_index as u32,
            rows_per_chunk: self.out_rows_per_seq,
            chunks: 1,
        }
    }

    /// Sequences covered (modulation rows read).
    pub fn sequences(&self) -> u32 {
        self.n_rows / self.out_rows_per_seq.max(1)
    }
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, ln: &LayerNorm, b: Bindings) -> Result<()> {
    let p = ln.params(b.row_index.is_some());
    let groups = pb.fold(p.n_rows as u64)?;
    let (rows, d) = (p.n_rows as u64, p.dim as u64);
    let modulation = if ln.modulation.is_some() {
        2 * ln.sequences() as u64 * d
    } else {
        0
    };
    // Three passes over the row (mean, variance, output): the row stays in cache, so x counts once.
    let cost = Cost {
        flops: 8 * rows * d,
        bytes: words(2 * rows * d + d + modulation),
    };
    pb.dispatch(
        "layernorm",
        &k.layernorm,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
