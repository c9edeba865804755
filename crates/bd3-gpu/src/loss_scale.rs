//! Dynamic loss scaling for mixed-precision training: the products round their operands to f16,
//! whose smallest normal value is 6.1e-5, so small gradients would flush to zero; the loss gradient is
//! multiplied by a scale S before the backward pass and the gradients divided by S before clipping
//! and AdamW (in adamw.wgsl). When the scaled gradients overflow (the on-GPU global norm is inf or NaN)
//! the step is skipped on the GPU (weights, moments and EMA untouched) and S is halved; after
//! `growth_interval` good steps in a row S doubles. The policy and defaults are PyTorch's
//! `torch.cuda.amp.GradScaler` (init 2¹⁶, growth ×2, backoff ×0.5, interval 2000), which the official
//! code's bf16 autocast does not need (bf16 has f32's range) but f16 inputs do.

/// The scale's first value.
pub const INITIAL_SCALE: f64 = 65536.0;
/// Good steps in a row before the scale doubles.
pub const GROWTH_INTERVAL: u32 = 2000;
/// The scale never goes below this (a run whose gradients overflow even at 1 has diverged).
pub const MIN_SCALE: f64 = 1.0;
/// Nor above this (f32 gradients scaled further would overflow the f32 sums themselves).
pub const MAX_SCALE: f64 = 16_777_216.0;

/// What the scaler decided about a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The norm was finite: the optimizer step was applied.
    Applied,
    /// The norm was inf or NaN: the step was skipped and the scale halved.
    Skipped,
}

/// The dynamic loss scale of a run (CPU-side; the GPU applies and skips, see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    scale: f64,
    growth_interval: u32,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(INITIAL_SCALE, GROWTH_INTERVAL)
    }
}

impl LossScaler {
    /// A scaler starting at `scale` (clamped to [MIN_SCALE, MAX_SCALE]) that doubles after
    /// `growth_interval` good steps (at least 1).
    pub fn new(scale: f64, growth_interval: u32) -> LossScaler {
        LossScaler {
            scale: scale.clamp(MIN_SCALE, MAX_SCALE),
            growth_interval: growth_interval.max(1),
            good_steps: 0,
        }
    }

    /// The scale S the loss gradient is multiplied by this step.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Record the outcome of a step whose scaled gradients had global norm `scaled_norm` (as the GPU
    /// computed it, before unscaling).
    pub fn update(&mut self, scaled_norm: f64) -> StepOutcome {
        if !scaled_norm.is_finite() {
            self.scale = (self.scale * 0.5).max(MIN_SCALE);
            self.good_steps = 0;
            return StepOutcome::Skipped;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale = (self.scale * 2.0).min(MAX_SCALE);
            self.good_steps = 0;
        }
        StepOutcome::Applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infs_and_nans_halve_the_scale_and_skip_and_good_runs_double_it() {
        let mut s = LossScaler::new(1024.0, 3);
        assert_eq!(s.update(f64::INFINITY), StepOutcome::Skipped);
        assert_eq!(s.scale(), 512.0);
        assert_eq!(s.update(f64::NAN), StepOutcome::Skipped);
        assert_eq!(s.update(f64::NEG_INFINITY), StepOutcome::Skipped);
        assert_eq!(s.scale(), 128.0);
        // Two good steps, an overflow (the count restarts), then three good steps: doubled once.
        assert_eq!(s.update(3.0), StepOutcome::Applied);
        assert_eq!(s.update(3.0), StepOutcome::Applied);
        assert_eq!(s.update(f64::INFINITY), StepOutcome::Skipped);
        assert_eq!(s.scale(), 64.0);
        for _ in 0..3 {
            assert_eq!(s.update(1e30), StepOutcome::Applied);
        }
        assert_eq!(s.scale(), 128.0);
        for _ in 0..2 {
            s.update(0.0);
        }
        assert_eq!(s.scale(), 128.0, "not yet a full interval");
        s.update(0.0);
        assert_eq!(s.scale(), 256.0);
    }

    #[test]
    fn the_scale_stays_within_its_bounds() {
        let mut s = LossScaler::new(2.0, 1);
        for _ in 0..5 {
            s.update(f64::NAN);
        }
        assert_eq!(s.scale(), MIN_SCALE);
        for _ in 0..100 {
            s.update(1.0);
        }
        assert_eq!(s.scale(), MAX_SCALE);
        assert_eq!(LossScaler::default().scale(), INITIAL_SCALE);
        assert_eq!(LossScaler::new(1e12, 0).scale(), MAX_SCALE);
    }
}
