//! `shaders/confidence.wgsl`: confidence decoding's selection. After `sample.wgsl` drew a token at
//! every row of the block (mode 5, with each draw's probability), keep the `at_least` most confident
//! draws of each sequence among its masked rows (ties: the lower position), plus every other one whose
//! probability reaches `threshold`; the rest go back to the mask. A tiny pass over ≤ block rows, in the
//! same submission as the draws, so only token ids come back to the host.

use super::{bindings, words, Kernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n_rows: u32,
        pub rows_per_seq: u32,
        pub mask_id: u32,
        pub at_least: u32,
        pub threshold: f32,
    }
}

bindings! {
    pub struct Bindings {
        /// x_t of each row: the candidates are the masked rows.
        row_input: Req,
        /// The drawn token's probability of each row (from `sample.wgsl` in confidence mode).
        token_prob: Req,
        /// In: the drawn tokens; out: the kept draws, the mask at the other candidates.
        tokens: Req,
    }
}

/// Which draws a confidence step keeps, per sequence: the `at_least` most confident masked rows,
/// and every other masked row whose drawn token's probability is ≥ `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reveal {
    pub at_least: u32,
    pub threshold: f32,
}

/// A threshold no probability reaches (top-K decoding keeps exactly K).
pub const NO_THRESHOLD: f32 = 2.0;

impl Reveal {
    /// Exactly the `k` most confident draws (fewer when fewer rows are masked).
    pub fn top(k: u32) -> Reveal {
        Reveal {
            at_least: k,
            threshold: NO_THRESHOLD,
        }
    }
    /// Every draw with probability ≥ `p`, and at least the most confident one.
    pub fn threshold(p: f32) -> Reveal {
        Reveal {
            at_least: 1,
            threshold: p,
        }
    }
}

/// The selection over `n_rows` rows, `rows_per_seq` per sequence.
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    n_rows: u32,
    rows_per_seq: u32,
    mask_id: u32,
    r: Reveal,
    b: Bindings,
) -> Result<()> {
    let p = Params {
        n_rows,
        rows_per_seq,
        mask_id,
        at_least: r.at_least,
        threshold: r.threshold,
    };
    let (n, rows) = (n_rows as u64, rows_per_seq as u64);
    let cost = Cost {
        flops: 2 * n * rows,
        bytes: words(2 * n * rows + 3 * n),
    };
    let groups = pb.fold(n.div_ceil(THREADS as u64))?;
    pb.dispatch(
        "confidence",
        &k.confidence,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
