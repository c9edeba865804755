//! `shaders/adamw.wgsl`: one AdamW step on one tensor (PyTorch's order) after global-norm clipping,
//! then the EMA of the weights.

use super::{bindings, words, Kernels, TrainKernels};
use crate::program::{Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::Result;

pub const THREADS: u32 = 256;

uniform_params! {
    pub struct Params {
        pub n: u32,
        pub lr: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub bc1: f32,
        pub bc2_sqrt: f32,
        pub max_norm: f32,
        pub ema_decay: f32,
        pub grad_unscale: f32,
        pub skip_nonfinite: u32,
    }
}

bindings! {
    pub struct Bindings {
        w: Req,
        grad: Req,
        m: Req,
        v: Req,
        /// The EMA of the weights, or None without one.
        ema: OptOut,
        /// The squared global gradient norm.
        norm_sq: Req,
    }
}

/// One step's settings; `step` counts from 1.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    /// Global gradient-norm clip; 0 disables it.
    pub max_norm: f64,
    /// This step's EMA decay; 0 disables the EMA.
    pub ema_decay: f64,
    /// 1 / the loss scale (mixed precision; 1 in f32).
    pub grad_unscale: f64,
    /// Skip the step when the global norm is inf or NaN (loss scaling).
    pub skip_nonfinite: bool,
}

impl AdamW {
    pub fn params(&self, n: u32) -> Params {
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.step as i32)).sqrt();
        let f = |x: f64| x as f32;
        Params {
            n,
            lr: f(self.lr),
            beta1: f(self.beta1),
            beta2: f(self.beta2),
            eps: f(self.eps),
            weight_decay: f(self.weight_decay),
            bc1: f(bc1),
            bc2_sqrt: f(bc2_sqrt),
            max_norm: f(self.max_norm),
            ema_decay: f(self.ema_decay),
            grad_unscale: f(self.grad_unscale),
            skip_nonfinite: self.skip_nonfinite as u32,
        }
    }
}

pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    a: &AdamW,
    n: usize,
    b: Bindings,
) -> Result<()> {
    let groups = pb.fold((n as u64).div_ceil(THREADS as u64))?;
    let ema = b.ema.is_some() as u64;
    let cost = Cost {
        flops: 16 * n as u64,
        bytes: words(n as u64 * (7 + 2 * ema)),
    };
    pb.dispatch(
        "adamw",
        &tk.adamw,
        &a.params(n as u32),
        b.slices(&k.placeholders),
        groups,
        cost,
    );
    Ok(())
}
