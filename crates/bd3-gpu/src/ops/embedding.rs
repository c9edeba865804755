//! `shaders/embedding.wgsl`: x[r] = table[ids[r] − row_start] for the ids inside one row range of
//! the table (a table larger than a binding is stored in parts, one dispatch each).

use super::{bindings, words, Kernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
use crate::weights::WeightFormat;
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n_rows: u32,
        pub dim: u32,
        pub row_start: u32,
        pub part_rows: u32,
    }
}

bindings! {
    pub struct Bindings {
        ids: Req,
        table: Req,
        out: Req,
    }
}

/// Gather `p.n_rows` rows from a part of `p.part_rows` rows of a table of `table_rows` rows stored
/// as `format`.
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    p: Params,
    (table_rows, format): (usize, WeightFormat),
    b: Bindings,
) -> Result<()> {
    let groups = pb.fold((p.n_rows as u64 * p.dim as u64).div_ceil(THREADS as u64))?;
    // Rows whose token lies in this part, in proportion to the part's share of the table.
    let moved = p.n_rows as u64 * p.dim as u64 * p.part_rows as u64 / table_rows.max(1) as u64;
    let cost = Cost {
        flops: 0,
        bytes: words(p.n_rows as u64 + moved) + moved * format.bytes(),
    };
    let kernel = match format {
        WeightFormat::F32 => &k.embedding,
        WeightFormat::F16 => &k.f16("embedding").embedding,
    };
    pb.dispatch(
        "embedding",
        kernel,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
