//! Shared helpers of the kernel tests: a device, a deterministic RNG, uploads and comparisons.
#![allow(dead_code)]

use bd3_gpu::ops::matmul::{Epilogue, Matmul};
use bd3_gpu::ops::{Kernels, TrainKernels};
use bd3_gpu::program::{Buf, ProgramBuilder};
use bd3_gpu::{ContextOptions, GpuContext};
use bd3_model::cpu_ref;
use std::sync::Arc;

pub fn context() -> Arc<GpuContext> {
    context_with(ContextOptions::default())
}

/// A device whose work is sized for `opts.compute_units`, or for an H200's 132 units where the test
/// does not say: lavapipe would be sized for the machine's threads, and the splits a GPU takes (split
/// K, split-KV attention, columns per workgroup) are the ones worth checking.
pub fn context_with(mut opts: ContextOptions) -> Arc<GpuContext> {
    opts.compute_units
        .get_or_insert(bd3_gpu::plan::DEFAULT_COMPUTE_UNITS);
    Arc::new(pollster::block_on(GpuContext::new(opts)).expect("a GPU adapter (lavapipe in CI)"))
}

pub fn kernels(ctx: &GpuContext, head_dim: usize) -> Kernels {
    pollster::block_on(Kernels::new(ctx, head_dim)).unwrap()
}

pub fn train_kernels(ctx: &GpuContext, head_dim: usize) -> TrainKernels {
    pollster::block_on(TrainKernels::new(ctx, head_dim)).unwrap()
}

/// Every epilogue of the matrix products with its CPU reference: the gated residual adds `gate`
/// (a row of n per sequence of `rows_per_seq` rows) times the product, the plain residual is the
/// same with a gate of `ones`.
pub fn epilogue_cases<'a>(
    gate: &'a [f32],
    ones: &'a [f32],
    rows_per_seq: usize,
) -> [(Epilogue, cpu_ref::Epilogue<'a>); 5] {
    [
        (Epilogue::Store, cpu_ref::Epilogue::Store),
        (Epilogue::Gelu, cpu_ref::Epilogue::Gelu),
        (Epilogue::Silu, cpu_ref::Epilogue::Silu),
        (
            Epilogue::GatedResidual,
            cpu_ref::Epilogue::GatedResidual { gate, rows_per_seq },
        ),
        (
            Epilogue::Residual,
            cpu_ref::Epilogue::GatedResidual {
                gate: ones,
                rows_per_seq,
            },
        ),
    ]
}

/// Workgroup memory budgets the attention kernels are specialised for: the browser's and the native cap.
pub const BROWSER_BUDGET: usize = bd3_gpu::shaders::WORKGROUP_MEMORY_BUDGET;
pub const NATIVE_BUDGET: usize = bd3_gpu::ops::attention::NATIVE_WORKGROUP_MEMORY_CAP;

/// The kernels with the four tiled attention kernels specialised for `budget` bytes of workgroup memory
/// (whatever the device's own choice would be), so each variant is tested on any adapter.
pub fn attention_kernels(
    ctx: &GpuContext,
    head_dim: usize,
    budget: usize,
) -> (Kernels, TrainKernels) {
    use bd3_gpu::ops::attention::{kernel_within, Pass};
    let (mut k, mut tk) = (kernels(ctx, head_dim), train_kernels(ctx, head_dim));
    let make = |pass| pollster::block_on(kernel_within(ctx, pass, head_dim, budget)).unwrap();
    k.attention = make(Pass::Forward);
    k.attention_decode = make(Pass::Decode);
    tk.attention_dq = make(Pass::QueryGrad);
    tk.attention_dkv = make(Pass::KeyValueGrad);
    (k, tk)
}

/// Deterministic test data on top of the project's SplitMix64.
pub struct Rng(pub u64);
impl Rng {
    fn gen(&mut self) -> bd3_model::init::SplitMix {
        bd3_model::init::SplitMix(self.0)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut g = self.gen();
        let v = g.next_u64();
        self.0 = g.0;
        v
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-scale, scale), never exactly zero.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = ((self.uniform() * 2.0 - 1.0) as f32) * scale;
                if v == 0.0 {
                    scale * 0.5
                } else {
                    v
                }
            })
            .collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

pub fn upload(ctx: &GpuContext, data: &[f32]) -> Buf {
    ctx.storage_init("test", bytemuck::cast_slice(data))
        .unwrap()
}

pub fn upload_u32(ctx: &GpuContext, data: &[u32]) -> Buf {
    ctx.storage_init("test", bytemuck::cast_slice(data))
        .unwrap()
}

pub fn read(ctx: &GpuContext, b: &Buf, n: usize) -> Vec<f32> {
    pollster::block_on(ctx.read_f32(b, 0, n)).unwrap()
}

/// Record with `record`, then run it as one submission and check for GPU errors.
pub fn run_recorded<'a>(ctx: &'a GpuContext, record: impl FnOnce(&mut ProgramBuilder<'a>)) {
    let mut pb = ProgramBuilder::new(ctx);
    record(&mut pb);
    let program = pb.finish().unwrap();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    program.encode(&mut enc);
    ctx.submit(enc);
    ctx.check().unwrap();
}

/// max|got − want| ≤ rel · max|want|, with a message naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max_ref = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    assert!(
        max_ref > 0.0,
        "{what}: reference is all zeros, the test could not fail"
    );
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| ((a as f64) - (b as f64)).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |m, (i, e)| if e > m.1 || e.is_nan() { (i, e) } else { m },
        );
    assert!(
        err <= rel * max_ref,
        "{what}: element {i}: got {} want {} (err {err:.3e} > {:.3e})",
        got[i],
        want[i],
        rel * max_ref
    );
}

/// Σ_k A(i, k)·B(k, j) in f64 with `mm`'s strides and offsets, as a dense [m, n]: the reference of
/// the strided products (every layout of matmul.wgsl and its variants).
pub fn product(mm: &Matmul, a: &[f32], b: &[f32]) -> Vec<f64> {
    let (m, n, k) = (mm.m as usize, mm.n as usize, mm.k as usize);
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| {
                    let av = a[mm.a_offset as usize
                        + i * mm.a_row_stride as usize
                        + t * mm.a_k_stride as usize];
                    let bv = b[mm.b_offset as usize
                        + t * mm.b_k_stride as usize
                        + j * mm.b_col_stride as usize];
                    av as f64 * bv as f64
                })
                .sum();
        }
    }
    out
}
