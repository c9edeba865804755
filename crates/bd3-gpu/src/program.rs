//! Recorded programs: a list of dispatches and copies with every bind group built once, replayed into
//! one command encoder per call.
//!
//! A program is built once per shape (batch, length, mode). Replaying it creates nothing: no buffer,
//! bind group or pipeline. All kernel parameters of a program share one uniform buffer.
//!
//! Every dispatch also carries its [`PlannedDispatch`] (label, workgroups, threads, FLOPs, bytes),
//! computed by the op module from its parameters. Recording against a planning context
//! ([`GpuContext::planning`]) runs the very same code without a device: buffers are sizes, kernels
//! are names, and the result is the plan alone (see [`crate::plan`]).

use crate::context::GpuContext;
use bd3_model::{Error, Result};
use std::sync::Arc;

/// A GPU buffer, or a byte range of one (a view: [`Buf::view`]), or in a planning context only its
/// size.
#[derive(Clone, Debug)]
pub struct Buf {
    gpu: Option<wgpu::Buffer>,
    /// Bytes of the buffer, or of the view.
    size: u64,
    /// Where a view starts in its GPU buffer (0 for a whole buffer).
    offset: u64,
    view: bool,
}

impl Buf {
    pub(crate) fn gpu(b: wgpu::Buffer) -> Buf {
        Buf {
            size: b.size(),
            gpu: Some(b),
            offset: 0,
            view: false,
        }
    }

    pub(crate) fn planned(size: u64) -> Buf {
        Buf {
            gpu: None,
            size,
            offset: 0,
            view: false,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where this buffer's bytes start in its GPU buffer: 0, or a view's offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// `size` bytes of this whole buffer from `offset` (a multiple of the adapter's storage offset
    /// alignment), bound, cleared and copied as a buffer of its own: tensors packed into one
    /// allocation (the gradients) can then also be read as one binding. WebGPU tracks usage per
    /// buffer, not per range: one dispatch must not bind two views of a buffer one read-only and the
    /// other writable (no kernel binds two gradients so).
    pub fn view(&self, offset: u64, size: u64) -> Buf {
        assert!(
            !self.view && size > 0 && offset + size <= self.size,
            "a view is a non-empty range of a whole buffer"
        );
        Buf {
            gpu: self.gpu.clone(),
            size,
            offset,
            view: true,
        }
    }

    /// The GPU buffer this buffer or view lies in; the caller adds [`Buf::offset`].
    pub(crate) fn whole(&self) -> &wgpu::Buffer {
        self.gpu
            .as_ref()
            .expect("a planned buffer has no GPU memory")
    }
}

/// Code that touches GPU memory (uploads, copies, readback) runs only on a device context; planning
/// stops at recording, so it never dereferences a planned buffer. A view is not a wgpu buffer of its
/// own: code that takes one goes through [`Buf::whole`] and [`Buf::offset`] (bindings, clears and
/// copies of programs, reads), so dereferencing a view is a bug.
impl std::ops::Deref for Buf {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        assert!(
            !self.view,
            "a view is used through Buf::whole and its offset"
        );
        self.whole()
    }
}

/// A compute kernel: its name, its workgroup size, and (on a device) the pipeline.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: &'static str,
    /// Invocations per workgroup (`@workgroup_size` x·y·z).
    pub threads: u32,
    pub(crate) pipeline: Option<Arc<wgpu::ComputePipeline>>,
}

impl Kernel {
    fn pipeline(&self) -> &Arc<wgpu::ComputePipeline> {
        self.pipeline
            .as_ref()
            .expect("a planned kernel has no pipeline")
    }
}

/// A whole buffer or a byte range of one, as a kernel binding.
#[derive(Clone, Debug)]
pub struct Slice {
    pub buffer: Buf,
    pub offset: u64,
    pub size: Option<u64>,
}

impl From<&Buf> for Slice {
    fn from(b: &Buf) -> Slice {
        Slice {
            buffer: b.clone(),
            offset: b.offset,
            size: b.view.then_some(b.size),
        }
    }
}

/// The work of one dispatch, as its op module counts it: FLOPs (a multiply-add is 2) and the bytes
/// it reads and writes in global memory (each operand counted once per pass the kernel makes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

/// One dispatch of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDispatch {
    pub label: &'static str,
    pub kernel: &'static str,
    pub groups: [u32; 3],
    pub threads: u32,
    pub flops: u64,
    pub bytes: u64,
}

impl PlannedDispatch {
    pub fn workgroups(&self) -> u64 {
        self.groups.iter().map(|&g| g as u64).product()
    }
}

/// A `#[repr(C)]` parameter block whose layout matches a WGSL uniform struct; `FIELDS` lists its
/// members (name, byte offset, Rust type) for the test that compares it with the shader.
pub trait UniformParams: bytemuck::Pod {
    const FIELDS: &'static [ParamField];
}

#[derive(Clone, Copy, Debug)]
pub struct ParamField {
    pub name: &'static str,
    pub offset: usize,
    pub ty: &'static str,
}

/// Declares an op's parameter block: a `#[repr(C)]` Pod struct plus its [`UniformParams`] field list.
#[macro_export]
macro_rules! uniform_params {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        impl $crate::program::UniformParams for $name {
            const FIELDS: &'static [$crate::program::ParamField] =
                &[$($crate::program::ParamField { name: stringify!($f), offset: ::std::mem::offset_of!($name, $f), ty: stringify!($t) },)*];
        }
    };
}

struct PendingDispatch {
    kernel: Kernel,
    params: std::ops::Range<u64>,
    bindings: Vec<Slice>,
    planned: PlannedDispatch,
}

enum PendingStep {
    Dispatch(PendingDispatch),
    Clear(Buf),
    /// A copy into the program's output buffer, which exists only once the layout is complete.
    OutputCopy {
        src: Buf,
        dst_float: usize,
        floats: usize,
    },
    Copy {
        src: Buf,
        src_offset: u64,
        dst: Buf,
        dst_offset: u64,
        size: u64,
    },
}

pub enum Step {
    /// Zero a buffer (gradient accumulators).
    Clear(Buf),
    Dispatch {
        pipeline: Arc<wgpu::ComputePipeline>,
        bind_group: wgpu::BindGroup,
        planned: PlannedDispatch,
    },
    Copy {
        src: Buf,
        src_offset: u64,
        dst: Buf,
        dst_offset: u64,
        size: u64,
    },
}

/// Collects dispatches; `finish` uploads all parameters into one uniform buffer and builds the bind groups.
pub struct ProgramBuilder<'a> {
    ctx: &'a GpuContext,
    params: Vec<u8>,
    steps: Vec<PendingStep>,
    plan: Vec<PlannedDispatch>,
    max_groups: u32,
    /// Only lay out parameters (a program whose parameters change per call re-records into this).
    params_only: bool,
}

/// Replayable list of GPU steps, and its plan (one entry per dispatch, in order).
pub struct Program {
    pub steps: Vec<Step>,
    pub plan: Vec<PlannedDispatch>,
    params: Option<Buf>,
}

impl<'a> ProgramBuilder<'a> {
    pub fn new(ctx: &'a GpuContext) -> Self {
        ProgramBuilder {
            ctx,
            params: Vec::new(),
            steps: Vec::new(),
            plan: Vec::new(),
            max_groups: ctx.limits.max_compute_workgroups_per_dimension,
            params_only: false,
        }
    }

    /// A builder that records only the parameter bytes (and the plan): re-running the code that
    /// recorded a program with new values yields the bytes to write over that program's parameters.
    pub fn params_only(ctx: &'a GpuContext) -> Self {
        ProgramBuilder {
            params_only: true,
            ..Self::new(ctx)
        }
    }

    pub fn context(&self) -> &'a GpuContext {
        self.ctx
    }

    /// The dispatches recorded so far.
    pub fn planned(&self) -> &[PlannedDispatch] {
        &self.plan
    }

    pub fn finish_params(self) -> Vec<u8> {
        self.params
    }

    /// The plan alone (a params-only builder, or any builder whose program is not needed).
    pub fn finish_plan(self) -> Vec<PlannedDispatch> {
        self.plan
    }

    /// Fold a 1-D workgroup count into x/y so it fits the per-dimension limit; kernels index by
    /// `wg.x + wg.y * num_workgroups.x`.
    pub fn fold(&self, groups: u64) -> Result<[u32; 3]> {
        let max = self.max_groups as u64;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::Gpu(format!(
                "{groups} workgroups exceed the adapter's dispatch limit"
            )));
        }
        Ok([x as u32, y as u32, 1])
    }

    /// Append one dispatch of `kernel` with its parameter block and bindings (in binding order,
    /// from binding 1; binding 0 is the parameter block). Op modules call this; nothing else does.
    pub fn dispatch<P: UniformParams>(
        &mut self,
        label: &'static str,
        kernel: &Kernel,
        params: &P,
        bindings: Vec<Slice>,
        groups: [u32; 3],
        cost: Cost,
    ) {
        let align = self.ctx.limits.min_uniform_buffer_offset_alignment as usize;
        let start = self.params.len().div_ceil(align) * align;
        self.params.resize(start, 0);
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        // Uniform structs are padded to 16 bytes.
        let end = self.params.len().div_ceil(16) * 16;
        self.params.resize(end, 0);
        let planned = PlannedDispatch {
            label,
            kernel: kernel.name,
            groups,
            threads: kernel.threads,
            flops: cost.flops,
            bytes: cost.bytes,
        };
        self.plan.push(planned.clone());
        if self.params_only {
            return;
        }
        self.steps.push(PendingStep::Dispatch(PendingDispatch {
            kernel: kernel.clone(),
            params: start as u64..end as u64,
            bindings,
            planned,
        }));
    }

    /// Zero `buffer` at this point of the program.
    pub fn clear(&mut self, buffer: &Buf) {
        if !self.params_only {
            self.steps.push(PendingStep::Clear(buffer.clone()));
        }
    }

    pub fn copy(&mut self, src: &Buf, src_offset: u64, dst: &Buf, dst_offset: u64, size: u64) {
        if self.params_only {
            return;
        }
        self.steps.push(PendingStep::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Copy `floats` floats from the start of `src` to float offset `dst_float` of the output buffer
    /// handed to [`ProgramBuilder::finish_with_outputs`].
    pub fn copy_to_output(&mut self, src: &Buf, dst_float: usize, floats: usize) {
        if self.params_only {
            return;
        }
        self.steps.push(PendingStep::OutputCopy {
            src: src.clone(),
            dst_float,
            floats,
        });
    }

    pub fn finish(self) -> Result<Program> {
        let dummy = self.ctx.storage("no outputs", 4)?;
        self.finish_with_outputs(&dummy)
    }

    pub fn finish_with_outputs(self, outputs: &Buf) -> Result<Program> {
        let ctx = self.ctx;
        let params = ctx.buffer(
            "program params",
            self.params.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        if ctx.is_planning() {
            return Ok(Program {
                steps: Vec::new(),
                plan: self.plan,
                params: None,
            });
        }
        if !self.params.is_empty() {
            ctx.queue().write_buffer(&params, 0, &self.params);
        }
        let steps = self
            .steps
            .into_iter()
            .map(|s| match s {
                PendingStep::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => Step::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                },
                PendingStep::Clear(b) => Step::Clear(b),
                PendingStep::OutputCopy {
                    src,
                    dst_float,
                    floats,
                } => Step::Copy {
                    src,
                    src_offset: 0,
                    dst: outputs.clone(),
                    dst_offset: (dst_float * 4) as u64,
                    size: (floats * 4) as u64,
                },
                PendingStep::Dispatch(d) => {
                    let mut res = vec![wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: d.params.start,
                        size: std::num::NonZeroU64::new(d.params.end - d.params.start),
                    })];
                    for b in &d.bindings {
                        res.push(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: b.buffer.whole(),
                            offset: b.offset,
                            size: b.size.and_then(std::num::NonZeroU64::new),
                        }));
                    }
                    let pipeline = d.kernel.pipeline().clone();
                    let bind_group = ctx.bind_group(&pipeline, &res);
                    Step::Dispatch {
                        pipeline,
                        bind_group,
                        planned: d.planned,
                    }
                }
            })
            .collect();
        Ok(Program {
            steps,
            plan: self.plan,
            params: Some(params),
        })
    }
}

impl Program {
    /// Overwrite the program's kernel parameters (bytes from a params-only re-recording).
    pub fn write_params(&self, queue: &wgpu::Queue, bytes: &[u8]) {
        if let Some(params) = &self.params {
            debug_assert!(bytes.len() as u64 <= params.size());
            queue.write_buffer(params, 0, bytes);
        }
    }

    /// Record the whole program: consecutive dispatches share one compute pass.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let mut i = 0;
        while i < self.steps.len() {
            match &self.steps[i] {
                Step::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    copy(enc, src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Step::Clear(b) => {
                    clear(enc, b);
                    i += 1;
                }
                Step::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    while let Some(Step::Dispatch {
                        pipeline,
                        bind_group,
                        planned,
                    }) = self.steps.get(i)
                    {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind_group, &[]);
                        pass.dispatch_workgroups(
                            planned.groups[0],
                            planned.groups[1],
                            planned.groups[2],
                        );
                        i += 1;
                    }
                }
            }
        }
    }

    /// Record with a timestamp pair around every dispatch (one pass each), for per-kernel timing.
    /// Returns the dispatches in query order.
    pub fn encode_timed(
        &self,
        enc: &mut wgpu::CommandEncoder,
        queries: &wgpu::QuerySet,
    ) -> Vec<&PlannedDispatch> {
        let mut timed = Vec::new();
        for step in &self.steps {
            match step {
                Step::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => copy(enc, src, *src_offset, dst, *dst_offset, *size),
                Step::Clear(b) => clear(enc, b),
                Step::Dispatch {
                    pipeline,
                    bind_group,
                    planned,
                } => {
                    let q = 2 * timed.len() as u32;
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
                    pass.dispatch_workgroups(
                        planned.groups[0],
                        planned.groups[1],
                        planned.groups[2],
                    );
                    timed.push(planned);
                }
            }
        }
        timed
    }

    pub fn dispatch_count(&self) -> usize {
        self.plan.len()
    }

    /// The dispatches as recorded (what `encode` will dispatch), for comparison with a plan.
    pub fn recorded(&self) -> Vec<&PlannedDispatch> {
        self.steps
            .iter()
            .filter_map(|s| {
                if let Step::Dispatch { planned, .. } = s {
                    Some(planned)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Zero a buffer or view.
fn clear(enc: &mut wgpu::CommandEncoder, b: &Buf) {
    enc.clear_buffer(b.whole(), b.offset(), Some(b.size()));
}

/// Copy `size` bytes between buffers or views, at offsets within each.
fn copy(
    enc: &mut wgpu::CommandEncoder,
    src: &Buf,
    src_offset: u64,
    dst: &Buf,
    dst_offset: u64,
    size: u64,
) {
    enc.copy_buffer_to_buffer(
        src.whole(),
        src.offset() + src_offset,
        dst.whole(),
        dst.offset() + dst_offset,
        size,
    );
}
