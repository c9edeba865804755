//! `shaders/sedd_loss.wgsl`: the SEDD log-score of a chunk of logits rows, the score entropy per token
//! and optionally the logits gradient.

use super::token_loss::LossChunk;
use super::{bindings, words, Kernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n_rows: u32,
        pub vocab: u32,
        pub mask_id: u32,
        pub write_log_score: u32,
        pub row_offset: u32,
        pub rows_per_seq: u32,
        pub grad_scale: f32,
    }
}

bindings! {
    pub struct Bindings {
        logits: Req,
        input_ids: Req,
        targets: Req,
        /// Per sequence: (log(expm1 σ) + log(V−1), r, r(log r − 1), dσ).
        seq_consts: Req,
        log_score: OptOut,
        entropy: OptOut2,
        token_loss: Req,
        dlogits: OptOut3,
    }
}

/// A chunk of rows (see [`LossChunk`]) of sequences of `rows_per_seq` scored rows.
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    c: &LossChunk,
    rows_per_seq: u32,
    b: Bindings,
) -> Result<()> {
    let p = Params {
        n_rows: c.n_rows,
        vocab: c.vocab,
        mask_id: c.mask_id,
        write_log_score: b.log_score.is_some() as u32,
        row_offset: c.row_offset,
        rows_per_seq,
        grad_scale: c.grad_scale,
    };
    let (n, v) = (c.n_rows as u64, c.vocab as u64);
    let outputs = b.log_score.is_some() as u64 + b.dlogits.is_some() as u64;
    let cost = Cost {
        flops: 6 * n * v,
        bytes: words(n * v * (1 + 2 * outputs) + 5 * n),
    };
    let groups = pb.fold(n)?;
    pb.dispatch(
        "sedd_loss",
        &k.sedd_loss,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
