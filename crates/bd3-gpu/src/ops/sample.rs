//! `shaders/sample.wgsl` and `shaders/sample_subgroup.wgsl` (the body is `sample_row.wgsl`): one
//! token per row of logits, drawn on the GPU (softmax, the official nucleus rule through a 16-ary
//! search for the threshold, exponential race with counter-based exponentials).

use super::{bindings, words, Kernels};
use crate::context::GpuContext;
use crate::program::{Cost, Kernel, ProgramBuilder};
use crate::{shaders, uniform_params};
use bd3_model::{Error, Result};

pub const THREADS: u32 = 256;
/// Passes of the 16-ary search for the nucleus threshold: each narrows the bracket of f32 bit
/// patterns (0, 0x3f800001] from w to ⌈w/16⌉, and 8 take it to 1 (the kernel is specialised with
/// this value; a test checks it suffices).
const SEARCH_PASSES: u64 = 8;
/// The search's initial upper end (ABOVE_ONE in sample_row.wgsl): one past the bits of 1.0.
const ABOVE_ONE: u32 = 0x3f80_0001;
/// Candidate thresholds each search pass sums the kept mass at, plus the top token's.
const SEARCH_SLOTS: u64 = 16;

/// How the sample kernel reduces across its workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reductions {
    /// Trees in workgroup memory (`sample.wgsl`): every adapter, the browser included.
    Workgroup,
    /// Subgroup operations combined through workgroup memory (`sample_subgroup.wgsl`): fewer
    /// barriers, for adapters with wgpu's SUBGROUP feature.
    Subgroup,
}

impl Reductions {
    /// Subgroups where the adapter has them with at least 4 lanes (the subgroup kernel keeps
    /// WG / 4 partial slots); a planning context follows its adapter description's feature.
    pub fn for_adapter(ctx: &GpuContext) -> Reductions {
        let sizes_fit = ctx.is_planning() || ctx.info.subgroup_min_size >= 4;
        if ctx.features.contains(wgpu::Features::SUBGROUP) && sizes_fit {
            Reductions::Subgroup
        } else {
            Reductions::Workgroup
        }
    }
}

/// The sample kernel built with `reductions` (an error if the adapter lacks subgroups and they
/// are asked for).
pub async fn kernel(ctx: &GpuContext, reductions: Reductions) -> Result<Kernel> {
    let (name, file) = match reductions {
        Reductions::Workgroup => ("sample", "sample.wgsl"),
        Reductions::Subgroup => ("sample_subgroup", "sample_subgroup.wgsl"),
    };
    if reductions == Reductions::Subgroup && !ctx.features.contains(wgpu::Features::SUBGROUP) {
        return Err(Error::Gpu(format!(
            "{file} needs subgroup operations, which {} does not offer",
            ctx.info.name
        )));
    }
    let source = shaders::kernel_source(file).map_err(Error::Gpu)?;
    let source = shaders::specialize(
        source,
        &[
            ("SEARCH_PASSES", SEARCH_PASSES as u32),
            ("ABOVE_ONE", ABOVE_ONE),
        ],
    )
    .map_err(Error::Gpu)?;
    ctx.pipeline(name, &source, THREADS).await
}

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
    // Max and sum (one online pass), the nucleus search (which also yields the kept mass) and the
    // race, each a pass over the row: 10 with a nucleus, 2 without (bisection took 36 and 3). A
    // pass costs about 4 FLOPs an element (exp, scale); a search pass adds at most a compare and
    // an add at each of its 16 slots (only tokens inside the current bracket pay them).
    let search = if s.top_p < 1.0 { SEARCH_PASSES } else { 0 };
    let passes = 2 + search;
    let (n, v) = (s.n_rows as u64, s.vocab as u64);
    let cost = Cost {
        flops: (passes * 4 + search * 2 * SEARCH_SLOTS) * n * v,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bracket widths after each pass: 8 passes reach 1 from the full range, 7 do not.
    #[test]
    fn the_search_passes_narrow_the_bracket_to_one_pattern() {
        let widths: Vec<u64> = (0..SEARCH_PASSES)
            .scan(ABOVE_ONE as u64, |w, _| {
                *w = w.div_ceil(16);
                Some(*w)
            })
            .collect();
        assert_eq!(widths.last(), Some(&1), "{widths:?}");
        assert!(
            widths[widths.len() - 2] > 1,
            "{widths:?}: one pass too many"
        );
    }
}
