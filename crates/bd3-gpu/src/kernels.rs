//! The WGSL kernels (`shaders/*.wgsl`), their parameter blocks, and `Program`: a recorded list of
//! dispatches and copies with every bind group built once, replayed into one command encoder per step.
//!
//! A program is built once per shape (batch, length, mode). Replaying it creates nothing: no buffer,
//! bind group or pipeline. All kernel parameters of a program share one uniform buffer.

use crate::context::GpuContext;
use bd3_model::{Error, Result};
use std::sync::Arc;

pub const EMBEDDING_WGSL: &str = include_str!("../../../shaders/embedding.wgsl");
pub const LAYERNORM_WGSL: &str = include_str!("../../../shaders/layernorm.wgsl");
pub const MATMUL_WGSL: &str = include_str!("../../../shaders/matmul.wgsl");
pub const ATTENTION_WGSL: &str = include_str!("../../../shaders/attention.wgsl");
pub const TOKEN_LOSS_WGSL: &str = include_str!("../../../shaders/token_loss.wgsl");
pub const SEDD_LOSS_WGSL: &str = include_str!("../../../shaders/sedd_loss.wgsl");
pub const REDUCE_SUM_WGSL: &str = include_str!("../../../shaders/reduce_sum.wgsl");
pub const SAMPLE_WGSL: &str = include_str!("../../../shaders/sample.wgsl");
pub const ATTENTION_COMMON_WGSL: &str = include_str!("../../../shaders/attention_common.wgsl");
pub const ATTENTION_DQ_WGSL: &str = include_str!("../../../shaders/attention_dq.wgsl");
pub const ATTENTION_DKV_WGSL: &str = include_str!("../../../shaders/attention_dkv.wgsl");
pub const COL_SUM_WGSL: &str = include_str!("../../../shaders/col_sum.wgsl");
pub const ELEMENTWISE_WGSL: &str = include_str!("../../../shaders/elementwise.wgsl");
pub const GATE_BACKWARD_WGSL: &str = include_str!("../../../shaders/gate_backward.wgsl");
pub const LAYERNORM_BACKWARD_WGSL: &str = include_str!("../../../shaders/layernorm_backward.wgsl");
pub const LAYERNORM_PARAM_GRADS_WGSL: &str = include_str!("../../../shaders/layernorm_param_grads.wgsl");
pub const EMBEDDING_BACKWARD_WGSL: &str = include_str!("../../../shaders/embedding_backward.wgsl");
pub const ADAMW_WGSL: &str = include_str!("../../../shaders/adamw.wgsl");
pub const DROPOUT_WGSL: &str = include_str!("../../../shaders/dropout.wgsl");
pub const HASH_WGSL: &str = include_str!("../../../shaders/hash.wgsl");

/// A kernel that uses the dropout mask, behind its shared definition (hash.wgsl + dropout.wgsl).
pub fn with_dropout(body: &str) -> String {
    format!("{HASH_WGSL}\n{DROPOUT_WGSL}\n{body}")
}

/// The sample kernel behind the hash it draws with (hash.wgsl).
pub fn sample_source() -> String {
    format!("{HASH_WGSL}\n{SAMPLE_WGSL}")
}

/// Every shader file with its name, for validation tests. The attention kernels are listed with the
/// shared prelude they are compiled with (see [`attention_source`]).
pub fn all_shaders() -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = SHADER_FILES.iter().map(|(n, s)| (*n, s.to_string())).collect();
    for (name, body) in [("attention.wgsl", ATTENTION_WGSL), ("attention_dq.wgsl", ATTENTION_DQ_WGSL), ("attention_dkv.wgsl", ATTENTION_DKV_WGSL)] {
        v.push((name, attention_source(body, 64)));
    }
    // The prelude uses bindings each kernel declares: it is validated inside the forward kernel.
    v.push(("attention_common.wgsl", attention_source(ATTENTION_WGSL, 64)));
    v.push(("matmul.wgsl", with_dropout(MATMUL_WGSL)));
    v.push(("gate_backward.wgsl", with_dropout(GATE_BACKWARD_WGSL)));
    v.push(("dropout.wgsl", with_dropout(MATMUL_WGSL)));
    v.push(("sample.wgsl", sample_source()));
    v.push(("hash.wgsl", sample_source()));
    v
}

/// The shader files that compile on their own.
const SHADER_FILES: [(&str, &str); 11] = [
    ("col_sum.wgsl", COL_SUM_WGSL),
    ("elementwise.wgsl", ELEMENTWISE_WGSL),
    ("layernorm_backward.wgsl", LAYERNORM_BACKWARD_WGSL),
    ("layernorm_param_grads.wgsl", LAYERNORM_PARAM_GRADS_WGSL),
    ("embedding_backward.wgsl", EMBEDDING_BACKWARD_WGSL),
    ("adamw.wgsl", ADAMW_WGSL),
    ("embedding.wgsl", EMBEDDING_WGSL),
    ("layernorm.wgsl", LAYERNORM_WGSL),
    ("token_loss.wgsl", TOKEN_LOSS_WGSL),
    ("sedd_loss.wgsl", SEDD_LOSS_WGSL),
    ("reduce_sum.wgsl", REDUCE_SUM_WGSL),
];

/// Workgroup memory budget for any kernel: the WebGPU default limit, which browsers enforce.
pub const WORKGROUP_MEMORY_BUDGET: usize = 16 * 1024;

/// An attention kernel (`body`: attention.wgsl, attention_dq.wgsl or attention_dkv.wgsl) behind the
/// shared prelude, specialised for one head dimension: private arrays need constant sizes, so the
/// host substitutes HEAD_DIM and a tile that keeps workgroup memory within 16 KiB.
pub fn attention_source(body: &str, head_dim: usize) -> String {
    // Two tiles of TILE head vectors, 2·TILE floats of statistics and 65 u32 flags fit the budget.
    let tile = ((WORKGROUP_MEMORY_BUDGET / 4 - 65) / (2 * head_dim + 2)).clamp(1, 32);
    let prelude = ATTENTION_COMMON_WGSL
        .replacen("const HEAD_DIM: u32 = 64u;", &format!("const HEAD_DIM: u32 = {head_dim}u;"), 1)
        .replacen("const TILE: u32 = 31u;", &format!("const TILE: u32 = {tile}u;"), 1);
    format!("{prelude}\n{body}")
}

/// The matmul kernel with one output row per thread: a 16-row tile for inputs of at most 16 rows.
pub fn matmul_narrow_source() -> String {
    with_dropout(MATMUL_WGSL).replacen("const ROWS_PER_THREAD: u32 = 4u;", "const ROWS_PER_THREAD: u32 = 1u;", 1)
}

/// All pipelines a model needs, built up front (lavapipe compiles lazily, so building is cheap here).
pub struct Kernels {
    pub embedding: Arc<wgpu::ComputePipeline>,
    pub layernorm: Arc<wgpu::ComputePipeline>,
    pub matmul: Arc<wgpu::ComputePipeline>,
    /// `matmul` for M ≤ 16 (see [`Kernels::matmul_for`]).
    pub matmul_narrow: Arc<wgpu::ComputePipeline>,
    pub attention: Arc<wgpu::ComputePipeline>,
    pub token_loss: Arc<wgpu::ComputePipeline>,
    pub sedd_loss: Arc<wgpu::ComputePipeline>,
    pub reduce_sum: Arc<wgpu::ComputePipeline>,
    pub sample: Arc<wgpu::ComputePipeline>,
    /// Bound where a kernel's optional input is switched off (no bias, no gate, no modulation).
    pub dummy: wgpu::Buffer,
    /// Bound where a kernel's optional output is switched off (a buffer may not be read-only and
    /// writable in one dispatch, so inputs and outputs get separate placeholders).
    pub dummy_out: wgpu::Buffer,
    /// A second output placeholder: two writable bindings may not alias (browsers check this).
    pub dummy_out2: wgpu::Buffer,
}

impl Kernels {
    /// The matmul variant for an input of `m` rows, and the rows of its output tile.
    pub fn matmul_for(&self, m: u32) -> (&Arc<wgpu::ComputePipeline>, u32) {
        if m <= 16 { (&self.matmul_narrow, 16) } else { (&self.matmul, 64) }
    }

    pub async fn new(ctx: &GpuContext, head_dim: usize) -> Result<Kernels> {
        Ok(Kernels {
            embedding: ctx.pipeline("embedding", EMBEDDING_WGSL).await?,
            layernorm: ctx.pipeline("layernorm", LAYERNORM_WGSL).await?,
            matmul: ctx.pipeline("matmul", &with_dropout(MATMUL_WGSL)).await?,
            matmul_narrow: ctx.pipeline("matmul_narrow", &matmul_narrow_source()).await?,
            attention: ctx.pipeline("attention", &attention_source(ATTENTION_WGSL, head_dim)).await?,
            token_loss: ctx.pipeline("token_loss", TOKEN_LOSS_WGSL).await?,
            sedd_loss: ctx.pipeline("sedd_loss", SEDD_LOSS_WGSL).await?,
            reduce_sum: ctx.pipeline("reduce_sum", REDUCE_SUM_WGSL).await?,
            sample: ctx.pipeline("sample", &sample_source()).await?,
            dummy: ctx.storage("dummy", 16)?,
            dummy_out: ctx.storage("dummy out", 16)?,
            dummy_out2: ctx.storage("dummy out 2", 16)?,
        })
    }
}

/// The kernels only training needs, built when a trainer is made (sampling never pays for them).
pub struct TrainKernels {
    pub attention_dq: Arc<wgpu::ComputePipeline>,
    pub attention_dkv: Arc<wgpu::ComputePipeline>,
    pub col_sum: Arc<wgpu::ComputePipeline>,
    pub elementwise: Arc<wgpu::ComputePipeline>,
    pub gate_backward: Arc<wgpu::ComputePipeline>,
    pub layernorm_backward: Arc<wgpu::ComputePipeline>,
    pub layernorm_param_grads: Arc<wgpu::ComputePipeline>,
    pub embedding_backward: Arc<wgpu::ComputePipeline>,
    pub adamw: Arc<wgpu::ComputePipeline>,
}

impl TrainKernels {
    pub async fn new(ctx: &GpuContext, head_dim: usize) -> Result<TrainKernels> {
        Ok(TrainKernels {
            attention_dq: ctx.pipeline("attention_dq", &attention_source(ATTENTION_DQ_WGSL, head_dim)).await?,
            attention_dkv: ctx.pipeline("attention_dkv", &attention_source(ATTENTION_DKV_WGSL, head_dim)).await?,
            col_sum: ctx.pipeline("col_sum", COL_SUM_WGSL).await?,
            elementwise: ctx.pipeline("elementwise", ELEMENTWISE_WGSL).await?,
            gate_backward: ctx.pipeline("gate_backward", &with_dropout(GATE_BACKWARD_WGSL)).await?,
            layernorm_backward: ctx.pipeline("layernorm_backward", LAYERNORM_BACKWARD_WGSL).await?,
            layernorm_param_grads: ctx.pipeline("layernorm_param_grads", LAYERNORM_PARAM_GRADS_WGSL).await?,
            embedding_backward: ctx.pipeline("embedding_backward", EMBEDDING_BACKWARD_WGSL).await?,
            adamw: ctx.pipeline("adamw", ADAMW_WGSL).await?,
        })
    }
}

/// A whole buffer or a byte range of one, as a kernel binding.
#[derive(Clone, Debug)]
pub struct Slice {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: Option<u64>,
}

impl From<&wgpu::Buffer> for Slice {
    fn from(b: &wgpu::Buffer) -> Slice {
        Slice { buffer: b.clone(), offset: 0, size: None }
    }
}

struct PendingDispatch {
    label: &'static str,
    pipeline: Arc<wgpu::ComputePipeline>,
    params: std::ops::Range<u64>,
    bindings: Vec<Slice>,
    groups: [u32; 3],
    flops: u64,
}

enum PendingStep {
    Dispatch(PendingDispatch),
    Clear(wgpu::Buffer),
    /// A copy into the program's output buffer, which exists only once the layout is complete.
    OutputCopy { src: wgpu::Buffer, dst_float: usize, floats: usize },
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, size: u64 },
}

pub enum Step {
    /// Zero a buffer (gradient accumulators).
    Clear(wgpu::Buffer),
    /// `flops` counts the multiply-adds ×2 of GEMM dispatches (0 elsewhere), for benchmarks.
    Dispatch { label: &'static str, pipeline: Arc<wgpu::ComputePipeline>, bind_group: wgpu::BindGroup, groups: [u32; 3], flops: u64 },
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, size: u64 },
}

/// Collects dispatches; `finish` uploads all parameters into one uniform buffer and builds the bind groups.
pub struct ProgramBuilder<'a> {
    ctx: &'a GpuContext,
    params: Vec<u8>,
    steps: Vec<PendingStep>,
    max_groups: u32,
    /// Only lay out parameters (a program whose parameters change per call re-records into this).
    params_only: bool,
}

/// Replayable list of GPU steps.
pub struct Program {
    pub steps: Vec<Step>,
    params: wgpu::Buffer,
}

impl<'a> ProgramBuilder<'a> {
    pub fn new(ctx: &'a GpuContext) -> Self {
        ProgramBuilder { ctx, params: Vec::new(), steps: Vec::new(), max_groups: ctx.limits.max_compute_workgroups_per_dimension, params_only: false }
    }

    /// A builder that records nothing but the parameter bytes: re-running the code that recorded a
    /// program with new values yields the bytes to write over that program's parameter buffer.
    pub fn params_only(ctx: &'a GpuContext) -> Self {
        ProgramBuilder { params_only: true, ..Self::new(ctx) }
    }

    pub fn finish_params(self) -> Vec<u8> {
        self.params
    }

    /// Fold a 1-D workgroup count into x/y so it fits the per-dimension limit; kernels index by
    /// `wg.x + wg.y * num_workgroups.x`.
    pub fn fold(&self, groups: u64) -> Result<[u32; 3]> {
        let max = self.max_groups as u64;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::Gpu(format!("{groups} workgroups exceed the adapter's dispatch limit")));
        }
        Ok([x as u32, y as u32, 1])
    }

    pub fn dispatch(&mut self, label: &'static str, pipeline: &Arc<wgpu::ComputePipeline>, params: &[u32], bindings: Vec<Slice>, groups: [u32; 3]) {
        let align = self.ctx.limits.min_uniform_buffer_offset_alignment as usize;
        let start = self.params.len().div_ceil(align) * align;
        self.params.resize(start, 0);
        self.params.extend_from_slice(bytemuck::cast_slice(params));
        // Uniform structs are padded to 16 bytes.
        let end = self.params.len().div_ceil(16) * 16;
        self.params.resize(end, 0);
        if self.params_only {
            return;
        }
        self.steps.push(PendingStep::Dispatch(PendingDispatch {
            label,
            pipeline: pipeline.clone(),
            params: start as u64..end as u64,
            bindings,
            groups,
            flops: 0,
        }));
    }

    /// Record the floating-point work of the last dispatch (GEMMs), for throughput reports.
    pub fn annotate_flops(&mut self, flops: u64) {
        if let Some(PendingStep::Dispatch(d)) = self.steps.last_mut() {
            d.flops = flops;
        }
    }

    /// Zero `buffer` at this point of the program.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        if !self.params_only {
            self.steps.push(PendingStep::Clear(buffer.clone()));
        }
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) {
        if self.params_only {
            return;
        }
        self.steps.push(PendingStep::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset, size });
    }

    /// Copy `floats` floats from the start of `src` to float offset `dst_float` of the output buffer
    /// handed to [`ProgramBuilder::finish_with_outputs`].
    pub fn copy_to_output(&mut self, src: &wgpu::Buffer, dst_float: usize, floats: usize) {
        if self.params_only {
            return;
        }
        self.steps.push(PendingStep::OutputCopy { src: src.clone(), dst_float, floats });
    }

    pub fn finish(self) -> Result<Program> {
        let dummy = self.ctx.storage("no outputs", 4)?;
        self.finish_with_outputs(&dummy)
    }

    pub fn finish_with_outputs(self, outputs: &wgpu::Buffer) -> Result<Program> {
        let ctx = self.ctx;
        let params = ctx.buffer("program params", self.params.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
        if !self.params.is_empty() {
            ctx.queue.write_buffer(&params, 0, &self.params);
        }
        let steps = self
            .steps
            .into_iter()
            .map(|s| match s {
                PendingStep::Copy { src, src_offset, dst, dst_offset, size } => Step::Copy { src, src_offset, dst, dst_offset, size },
                PendingStep::Clear(b) => Step::Clear(b),
                PendingStep::OutputCopy { src, dst_float, floats } => {
                    Step::Copy { src, src_offset: 0, dst: outputs.clone(), dst_offset: (dst_float * 4) as u64, size: (floats * 4) as u64 }
                }
                PendingStep::Dispatch(d) => {
                    let mut res = vec![wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: d.params.start,
                        size: std::num::NonZeroU64::new(d.params.end - d.params.start),
                    })];
                    for b in &d.bindings {
                        res.push(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &b.buffer,
                            offset: b.offset,
                            size: b.size.and_then(std::num::NonZeroU64::new),
                        }));
                    }
                    let bind_group = ctx.bind_group(&d.pipeline, &res);
                    Step::Dispatch { label: d.label, pipeline: d.pipeline, bind_group, groups: d.groups, flops: d.flops }
                }
            })
            .collect();
        Ok(Program { steps, params })
    }
}

impl Program {
    /// Overwrite the program's kernel parameters (bytes from a params-only re-recording).
    pub fn write_params(&self, queue: &wgpu::Queue, bytes: &[u8]) {
        debug_assert!(bytes.len() as u64 <= self.params.size());
        queue.write_buffer(&self.params, 0, bytes);
    }

    /// Record the whole program: consecutive dispatches share one compute pass.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let mut i = 0;
        while i < self.steps.len() {
            match &self.steps[i] {
                Step::Copy { src, src_offset, dst, dst_offset, size } => {
                    enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Step::Clear(b) => {
                    enc.clear_buffer(b, 0, None);
                    i += 1;
                }
                Step::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    while let Some(Step::Dispatch { pipeline, bind_group, groups, .. }) = self.steps.get(i) {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind_group, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                    }
                }
            }
        }
    }

    /// Record with a timestamp pair around every dispatch (one pass each), for per-kernel timing.
    /// Returns the labels in query order.
    pub fn encode_timed(&self, enc: &mut wgpu::CommandEncoder, queries: &wgpu::QuerySet) -> Vec<&'static str> {
        let mut labels = Vec::new();
        for step in &self.steps {
            match step {
                Step::Copy { src, src_offset, dst, dst_offset, size } => enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size),
                Step::Clear(b) => enc.clear_buffer(b, 0, None),
                Step::Dispatch { label, pipeline, bind_group, groups, .. } => {
                    let q = 2 * labels.len() as u32;
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: queries,
                            beginning_of_pass_write_index: Some(q),
                            end_of_pass_write_index: Some(q + 1),
                        }),
                    });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    labels.push(*label);
                }
            }
        }
        labels
    }

    pub fn dispatch_count(&self) -> usize {
        self.steps.iter().filter(|s| matches!(s, Step::Dispatch { .. })).count()
    }
}

/// Parameter blocks, field for field as the WGSL `Params` structs.
pub mod params {
    pub fn embedding(n_rows: u32, dim: u32, row_start: u32, part_rows: u32) -> Vec<u32> {
        vec![n_rows, dim, row_start, part_rows]
    }

    #[derive(Clone, Copy, Debug)]
    pub struct LayerNorm {
        pub n_rows: u32,
        pub dim: u32,
        pub in_rows_per_seq: u32,
        pub out_rows_per_seq: u32,
        pub in_row_offset: u32,
        /// (shift_offset, scale_offset, mod_stride) into the modulation buffer, or None.
        pub modulation: Option<(u32, u32, u32)>,
        /// Read the input row of each output row from the `row_index` binding.
        pub use_row_index: bool,
    }
    impl LayerNorm {
        pub fn words(&self) -> Vec<u32> {
            let (has, sh, sc, st) = match self.modulation {
                Some((sh, sc, st)) => (1, sh, sc, st),
                None => (0, 0, 0, 0),
            };
            vec![self.n_rows, self.dim, self.in_rows_per_seq, self.out_rows_per_seq, self.in_row_offset, has, sh, sc, st, self.use_row_index as u32]
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Epilogue {
        Store = 0,
        Gelu = 1,
        Silu = 2,
        GatedResidual = 3,
        Residual = 4,
    }

    /// Parameters of `shaders/matmul.wgsl` (see its header for the strides' meaning).
    #[derive(Clone, Copy, Debug)]
    pub struct Matmul {
        pub m: u32,
        pub n: u32,
        pub k: u32,
        pub a_offset: u32,
        pub a_row_stride: u32,
        pub a_k_stride: u32,
        pub b_offset: u32,
        pub b_k_stride: u32,
        pub b_col_stride: u32,
        pub ldc: u32,
        pub out_col_offset: u32,
        pub has_bias: bool,
        pub bias_offset: u32,
        pub epilogue: Epilogue,
        pub rows_per_seq: u32,
        pub gate_stride: u32,
        pub gate_offset: u32,
        /// Output row of input row m: (m / out_rows_per_seq)·out_seq_stride + out_row_offset + m % out_rows_per_seq.
        pub out_rows_per_seq: u32,
        pub out_seq_stride: u32,
        pub out_row_offset: u32,
        pub store_aux: bool,
        pub dropout: f32,
        pub seed: u32,
        pub salt: u32,
    }
    impl Matmul {
        /// `out[m, n] = a[m, :] · w[n, :]`: a Linear with its weight stored [out = n, in = k].
        pub fn plain(m: u32, n: u32, k: u32) -> Matmul {
            Matmul {
                m, n, k, a_offset: 0, a_row_stride: k, a_k_stride: 1, b_offset: 0, b_k_stride: 1, b_col_stride: k,
                ldc: n, out_col_offset: 0, has_bias: false, bias_offset: 0, epilogue: Epilogue::Store,
                rows_per_seq: m.max(1), gate_stride: 0, gate_offset: 0, out_rows_per_seq: m.max(1), out_seq_stride: 0,
                out_row_offset: 0, store_aux: false, dropout: 0.0, seed: 0, salt: 0,
            }
        }
        /// `out[m, c] = Σ_r dy[m, r] · w[r, c]`: the input gradient of a Linear whose weight is [rows, cols].
        pub fn input_grad(m: u32, rows: u32, cols: u32, ld_dy: u32) -> Matmul {
            Matmul { a_row_stride: ld_dy, b_k_stride: cols, b_col_stride: 1, ..Matmul::plain(m, cols, rows) }
        }
        /// `out[r, c] += Σ_m dy[m, r] · x[m, c]`: the weight gradient [rows, cols] over m input rows.
        pub fn weight_grad(m: u32, rows: u32, cols: u32, ld_dy: u32, ld_x: u32) -> Matmul {
            Matmul {
                a_row_stride: 1, a_k_stride: ld_dy, b_k_stride: ld_x, b_col_stride: 1, epilogue: Epilogue::Residual,
                ..Matmul::plain(rows, cols, m)
            }
        }
        pub fn words(&self) -> Vec<u32> {
            vec![
                self.m, self.n, self.k, self.a_offset, self.a_row_stride, self.a_k_stride, self.b_offset, self.b_k_stride,
                self.b_col_stride, self.ldc, self.out_col_offset, self.has_bias as u32, self.bias_offset, self.epilogue as u32,
                self.rows_per_seq, self.gate_stride, self.gate_offset, self.out_rows_per_seq, self.out_seq_stride,
                self.out_row_offset, self.store_aux as u32, self.dropout.to_bits(), self.seed, self.salt,
            ]
        }
        /// Workgroups for a kernel whose output tile has `tile_rows` rows (see `Kernels::matmul_for`).
        pub fn groups(&self, tile_rows: u32) -> [u32; 3] {
            [self.n.div_ceil(64), self.m.div_ceil(tile_rows), 1]
        }
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Attention {
        pub n_q: u32,
        pub n_kv: u32,
        pub n_heads: u32,
        pub q_seq_stride: u32,
        pub q_row_offset: u32,
        pub kv_seq_stride: u32,
        pub q_index_offset: u32,
        pub mask: bd3_model::AttentionMask,
        pub pos_period: u32,
        /// Rotary position of logical index i is (i + pos_offset) mod pos_period (ring-buffer caches).
        pub pos_offset: u32,
        pub head_dim: u32,
        /// Keep each query's log-sum-exp (training: the backward pass needs it).
        pub write_lse: bool,
    }
    impl Attention {
        /// Every token of each length-`seq` sequence attends to its own sequence (training layout).
        pub fn self_attention(seq: u32, n_heads: u32, head_dim: u32, mask: bd3_model::AttentionMask, pos_period: u32) -> Attention {
            Attention {
                n_q: seq, n_kv: seq, n_heads, q_seq_stride: seq, q_row_offset: 0, kv_seq_stride: seq, q_index_offset: 0,
                mask, pos_period, pos_offset: 0, head_dim, write_lse: false,
            }
        }

        pub fn words(&self) -> Vec<u32> {
            let scale = 1.0 / (self.head_dim as f32).sqrt();
            vec![
                self.n_q, self.n_kv, self.n_heads, self.q_seq_stride, self.q_row_offset, self.kv_seq_stride, self.q_index_offset,
                self.mask.code(), self.mask.block_size() as u32, self.mask.half_len().max(1) as u32, self.pos_period, scale.to_bits(),
                self.pos_offset, self.write_lse as u32,
            ]
        }
        pub fn groups(&self, batch: u32) -> [u32; 3] {
            [self.n_q.div_ceil(64), self.n_heads, batch]
        }
    }

    /// `grad_scale` > 0 also writes the gradient of grad_scale·token_loss w.r.t. the logits.
    pub fn token_loss(n_rows: u32, vocab: u32, mask_id: u32, ar: bool, write_log_probs: bool, row_offset: u32, grad_scale: f32) -> Vec<u32> {
        vec![n_rows, vocab, mask_id, ar as u32, write_log_probs as u32, row_offset, grad_scale.to_bits()]
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sedd_loss(n_rows: u32, vocab: u32, mask_id: u32, write_log_score: bool, row_offset: u32, rows_per_seq: u32, grad_scale: f32) -> Vec<u32> {
        vec![n_rows, vocab, mask_id, write_log_score as u32, row_offset, rows_per_seq, grad_scale.to_bits()]
    }

    pub fn reduce_sum(n: u32, out_index: u32) -> Vec<u32> {
        vec![n, out_index, 0, 0]
    }

    /// `shaders/col_sum.wgsl`: column sums of rows [c·rows_per_chunk, …) for each workgroup row c.
    #[allow(clippy::too_many_arguments)]
    pub fn col_sum(m: u32, n: u32, lda: u32, a_offset: u32, out_offset: u32, rows_per_chunk: u32, out_chunk_stride: u32, accumulate: bool) -> Vec<u32> {
        vec![m, n, lda, a_offset, out_offset, rows_per_chunk, out_chunk_stride, accumulate as u32]
    }

    /// `shaders/elementwise.wgsl`: 0 gelu, 1 × gelu', 2 × silu'.
    pub fn elementwise(n: u32, mode: u32) -> Vec<u32> {
        vec![n, mode]
    }

    #[allow(clippy::too_many_arguments)]
    pub fn gate_backward(n_seq: u32, rows_per_seq: u32, dim: u32, gate: Option<(u32, u32)>, dropout: f32, seed: u32, salt: u32) -> Vec<u32> {
        let (has, stride, offset) = match gate {
            Some((stride, offset)) => (1, stride, offset),
            None => (0, 0, 0),
        };
        vec![n_seq, rows_per_seq, dim, has, stride, offset, dropout.to_bits(), seed, salt]
    }

    pub fn embedding_backward(n_seg: u32, dim: u32, row_start: u32, part_rows: u32) -> Vec<u32> {
        vec![n_seg, dim, row_start, part_rows]
    }

    /// One AdamW step (see shaders/adamw.wgsl); `step` counts from 1.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(n: u32, lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, step: u64, max_norm: f64, ema_decay: f64) -> Vec<u32> {
        let bc1 = 1.0 - beta1.powi(step as i32);
        let bc2_sqrt = (1.0 - beta2.powi(step as i32)).sqrt();
        let f = |x: f64| (x as f32).to_bits();
        vec![n, f(lr), f(beta1), f(beta2), f(eps), f(weight_decay), f(bc1), f(bc2_sqrt), f(max_norm), f(ema_decay)]
    }

    /// Σ x² added to out[out_index] (squared gradient norms).
    pub fn reduce_sum_squares(n: u32, out_index: u32) -> Vec<u32> {
        vec![n, out_index, 1, 1]
    }

    /// How `shaders/sample.wgsl` turns a row of logits into q before the race.
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
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Sample {
        pub n_rows: u32,
        pub vocab: u32,
        pub mask_id: u32,
        pub mode: SampleMode,
        pub top_p: f32,
        pub mask_prob: f32,
        pub supplied_draws: bool,
        pub seed: u64,
        pub call: u32,
        pub rows_per_seq: u32,
        pub row_offset: u32,
    }
    impl Sample {
        pub fn words(&self) -> Vec<u32> {
            vec![
                self.n_rows, self.vocab, self.mask_id, self.mode as u32, self.top_p.to_bits(), self.mask_prob.to_bits(),
                self.supplied_draws as u32, self.seed as u32, (self.seed >> 32) as u32, self.call, self.rows_per_seq, self.row_offset,
            ]
        }
    }
}
