//! `shaders/sample.wgsl`: one token per row of logits, drawn on the GPU (softmax, the official
//! nucleus rule by bisection on the threshold, exponential race with counter-based exponentials).

use super::{bindings, words, Kernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::{Error, Result};

pub const THREADS: u32 = 256;
/// Bisection passes over the vocabulary to find the nucleus threshold.
const BISECTION_PASSES: u64 = 31;

uniform_params! {
    pub struct Params {
        pub n_rows: u32,
        pub vocab: u32,
        pub mask_id: u32,
        pub mode: u32,
        pub top_p: f32,
        pub mask_prob: f32,
        pub supplied: u32,
        pub seed_lo: u32,
        pub seed_hi: u32,
        pub call: u32,
        pub rows_per_seq: u32,
        pub row_offset: u32,
    }
}

bindings! {
    pub struct Bindings {
        logits: Req,
        /// x_t of each row.
        row_input: Req,
        /// The random stream of each row (sequence, position).
        row_stream: Req,
        /// Per sequence: (shift, e^{dσ}, 1−e^{dσ}, e^{−dσ}; 1−e^{−dσ}, 0, 0, 0).
        seq_consts: Req,
        /// Supplied exponentials (verification), or None to generate them.
        draws: OptIn,
        tokens: Req,
        /// The drawn token's probability (confidence mode only, else None).
        token_prob: OptOut,
    }
}

/// How a row of logits becomes q before the race.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleMode {
    /// SUBS, one position per call (the first-hitting sampler): q = nucleus(p).
    FirstHitting = 0,
    /// SUBS DDPM step: q = nucleus(p)·(1 − m), q[mask] = m.
    Ddpm = 1,
    /// AR next token: q = nucleus(p), mask logit := −1e6.
    Ar = 2,
    /// SEDD analytic (Tweedie τ-leaping) step.
    SeddStep = 3,
    /// SEDD final denoising step (q[mask] = 0).
    SeddDenoise = 4,
    /// SUBS at every row of the block for confidence decoding: q = nucleus(p) as first-hitting, and
    /// the drawn token's probability under the model (softmax, before the nucleus) is written to
    /// `token_prob` for [`super::confidence`] to choose from.
    Confidence = 5,
}

/// One call's draw settings.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub n_rows: u32,
    pub vocab: u32,
    pub mask_id: u32,
    pub mode: SampleMode,
    pub top_p: f32,
    pub mask_prob: f32,
    pub seed: u64,
    pub call: u32,
    pub rows_per_seq: u32,
    pub row_offset: u32,
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, s: &Sample, b: Bindings) -> Result<()> {
    if (s.mode == SampleMode::Confidence) != b.token_prob.is_some() {
        return Err(Error::Gpu(
            "the sample kernel writes token probabilities in confidence mode, and only there"
                .into(),
        ));
    }
    let p = Params {
        n_rows: s.n_rows,
        vocab: s.vocab,
        mask_id: s.mask_id,
        mode: s.mode as u32,
        top_p: s.top_p,
        mask_prob: s.mask_prob,
        supplied: b.draws.is_some() as u32,
        seed_lo: s.seed as u32,
        seed_hi: (s.seed >> 32) as u32,
        call: s.call,
        rows_per_seq: s.rows_per_seq,
        row_offset: s.row_offset,
    };
    // Max, sum, (nucleus: bisection, then the kept mass) and the race, each a pass over the row.
    let passes = 3 + if s.top_p < 1.0 {
        BISECTION_PASSES + 1
    } else {
        0
    };
    let (n, v) = (s.n_rows as u64, s.vocab as u64);
    let cost = Cost {
        flops: passes * 4 * n * v,
        bytes: words(passes * n * v + 4 * n),
    };
    let groups = pb.fold(n)?;
    pb.dispatch(
        "sample",
        &k.sample,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
