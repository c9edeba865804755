//! `shaders/token_loss.wgsl`: SUBS (BD3LM, MDLM) or AR log-probabilities of a chunk of logits rows,
//! the per-token loss −w·log p(target), and optionally the logits gradient.

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
        pub mode: u32,
        pub write_log_probs: u32,
        pub row_offset: u32,
        pub grad_scale: f32,
    }
}

bindings! {
    pub struct Bindings {
        logits: Req,
        input_ids: Req,
        targets: Req,
        weights: Req,
        log_probs: OptOut,
        token_loss: Req,
        dlogits: OptOut2,
    }
}

/// How the mask token's logit is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// SUBS: −1e6 added to the mask logit; unmasked rows carried over.
    Subs = 0,
    /// Next-token cross-entropy: the mask logit set to −1e6.
    Ar = 1,
}

/// A chunk of logits rows for a loss kernel (this one and `sedd_loss`): `n_rows` rows starting at
/// global row `row_offset`; with `grad_scale` > 0 (and a `dlogits` binding) the gradient of
/// grad_scale·token_loss is written.
#[derive(Clone, Copy, Debug)]
pub struct LossChunk {
    pub n_rows: u32,
    pub vocab: u32,
    pub mask_id: u32,
    pub row_offset: u32,
    pub grad_scale: f32,
}

pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    head: Head,
    c: &LossChunk,
    b: Bindings,
) -> Result<()> {
    let p = Params {
        n_rows: c.n_rows,
        vocab: c.vocab,
        mask_id: c.mask_id,
        mode: head as u32,
        write_log_probs: b.log_probs.is_some() as u32,
        row_offset: c.row_offset,
        grad_scale: c.grad_scale,
    };
    let (n, v) = (c.n_rows as u64, c.vocab as u64);
    // Passes: max, sum of exponentials, then the written outputs.
    let outputs = b.log_probs.is_some() as u64 + b.dlogits.is_some() as u64;
    let cost = Cost {
        flops: 6 * n * v,
        bytes: words(n * v * (2 + 2 * outputs) + 5 * n),
    };
    let groups = pb.fold(n)?;
    pb.dispatch(
        "token_loss",
        &k.token_loss,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
