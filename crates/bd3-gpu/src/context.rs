//! The GPU: adapter and device selection, error capture, counters, buffer creation and readback.
//!
//! Every wgpu validation error is turned into `Error::Gpu` (never a panic): pipeline creation runs
//! inside an error scope, and everything else lands in the uncaptured-error slot that
//! [`GpuContext::check`] drains after each submission.

use crate::program::{Buf, Kernel};
use bd3_model::{Error, Result};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// What a caller may ask of the device beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Split weights and chunk logits as if storage bindings held at most this many bytes (tests use it
    /// to exercise the paths the 154 MB GPT-2 embedding takes on a real adapter).
    pub split_threshold: Option<u64>,
    /// Ask for timestamp queries (per-kernel timing in benchmarks) when the adapter has them.
    pub timestamps: bool,
    /// Compute units the work is sized for (default: [`default_compute_units`]).
    pub compute_units: Option<u32>,
    /// Worker threads of a software adapter, where the platform cannot count them (see
    /// [`default_compute_units`]).
    pub cpu_threads: Option<u32>,
}

/// The compute units work is sized for when the caller does not say: wgpu does not report them, so
/// a GPU is assumed to have an H200's ([`crate::plan::DEFAULT_COMPUTE_UNITS`]); a software adapter
/// (lavapipe natively, a browser's fallback adapter such as SwiftShader) runs one workgroup per
/// worker thread, so its units are the machine's threads: `cpu_threads` where the caller knows them
/// (the page passes `navigator.hardwareConcurrency`), else what the platform reports (nothing in
/// wasm, which keeps the GPU default). Sizing a CPU's work for 132 units splits it into many small
/// workgroups, each paying its own setup (and, for the matrix-vector products, its own LayerNorm
/// statistics) for nothing.
pub fn default_compute_units(info: &wgpu::AdapterInfo, cpu_threads: Option<u32>) -> u32 {
    if info.device_type != wgpu::DeviceType::Cpu {
        return crate::plan::DEFAULT_COMPUTE_UNITS;
    }
    cpu_threads
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get().min(1024) as u32)
        })
        .map_or(crate::plan::DEFAULT_COMPUTE_UNITS, |n| n.clamp(1, 1024))
}

/// Tensor cores as wgpu exposes them to WGSL (cooperative matrices, `enable wgpu_cooperative_matrix;`):
/// the one configuration the kernels use, 16×16×16 tiles with f16 inputs and an f32 accumulator
/// (`shaders/matmul_coop.wgsl`). Present only when the adapter lists that configuration and also has
/// shader-f16 and subgroups with one fixed subgroup size (the kernel's workgroup is four subgroups and
/// each subgroup owns its output tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooperativeMatrix {
    /// Invocations per subgroup (32 on NVIDIA).
    pub subgroup_size: u32,
}

impl CooperativeMatrix {
    /// The tile edge of the configuration used (M = N = K).
    pub const TILE: u32 = 16;

    /// The capability of an adapter listing `configs`, with `features` and subgroup sizes
    /// `subgroup_min..=subgroup_max`: `None` unless a 16×16×16 f16→f32 configuration is listed and the
    /// kernel's other needs are met.
    pub fn select(
        configs: &[wgpu::CooperativeMatrixProperties],
        features: wgpu::Features,
        subgroup_min: u32,
        subgroup_max: u32,
    ) -> Option<CooperativeMatrix> {
        let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP;
        let listed = configs.iter().any(|c| {
            c.m_size == Self::TILE
                && c.n_size == Self::TILE
                && c.k_size == Self::TILE
                && c.ab_type == wgpu::CooperativeScalarType::F16
                && c.cr_type == wgpu::CooperativeScalarType::F32
        });
        (listed && features.contains(needed) && subgroup_min == subgroup_max && subgroup_min > 0)
            .then_some(CooperativeMatrix {
                subgroup_size: subgroup_min,
            })
    }

    /// How `info` names it.
    pub fn describe(capability: Option<CooperativeMatrix>) -> String {
        match capability {
            Some(c) => format!(
                "{t}×{t}×{t} f16→f32 (subgroups of {})",
                c.subgroup_size,
                t = Self::TILE
            ),
            None => "none".into(),
        }
    }
}

/// Counts that benchmarks and tests assert on: they reveal per-step allocations and extra submits.
#[derive(Debug, Default)]
pub struct Counters {
    pub buffers_created: AtomicU64,
    pub bytes_allocated: AtomicU64,
    pub pipelines_created: AtomicU64,
    pub bind_groups_created: AtomicU64,
    pub submits: AtomicU64,
    pub bytes_read_back: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub buffers_created: u64,
    pub bytes_allocated: u64,
    pub pipelines_created: u64,
    pub bind_groups_created: u64,
    pub submits: u64,
    pub bytes_read_back: u64,
}

impl std::ops::Sub for CounterSnapshot {
    type Output = CounterSnapshot;
    fn sub(self, o: CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            buffers_created: self.buffers_created - o.buffers_created,
            bytes_allocated: self.bytes_allocated - o.bytes_allocated,
            pipelines_created: self.pipelines_created - o.pipelines_created,
            bind_groups_created: self.bind_groups_created - o.bind_groups_created,
            submits: self.submits - o.submits,
            bytes_read_back: self.bytes_read_back - o.bytes_read_back,
        }
    }
}

/// A device and its queue; absent in a planning context.
struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

/// The GPU a program is recorded for. A *planning* context ([`GpuContext::planning`]) has no device:
/// it describes an adapter (limits, features, compute units), its buffers are sizes only and its
/// kernels are names, so the same recording code yields a dispatch plan on a machine without a GPU.
pub struct GpuContext {
    gpu: Option<Gpu>,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Tensor cores, when granted (`features` then holds EXPERIMENTAL_COOPERATIVE_MATRIX).
    pub cooperative_matrix: Option<CooperativeMatrix>,
    pub counters: Counters,
    /// Compute units (SMs, CUs) the plans' fill figures divide the work over; wgpu does not report it.
    pub compute_units: u32,
    max_binding: u64,
    split_threshold: u64,
    /// Whether wgpu adds its own bounds checks to every shader and zeroes workgroup memory (see
    /// `pipeline`). Off natively unless BD3_SHADER_CHECKS is set; always on in the browser.
    shader_checks: bool,
    uncaptured: Arc<Mutex<Option<String>>>,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    staging: Mutex<Vec<Buf>>,
}

impl GpuContext {
    /// Pick an adapter (respecting WGPU_BACKEND, WGPU_POWER_PREF, WGPU_ADAPTER_NAME through wgpu's
    /// environment handling) and open a device with the adapter's own limits.
    pub async fn new(opts: ContextOptions) -> Result<GpuContext> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                let backend = std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "any".into());
                Error::Gpu(format!("no GPU adapter found (WGPU_BACKEND={backend}): {e}; on Linux without a GPU install mesa-vulkan-drivers"))
            })?;
        let info = adapter.get_info();
        // Optional fast paths are requested only where present; the f32 path never needs them.
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | if opts.timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            };
        let features = adapter.features() & wanted;
        // Cooperative matrices are experimental in wgpu: asked for only when the adapter lists the
        // configuration the kernels use, so every other adapter opens exactly as before.
        let mut cooperative_matrix = CooperativeMatrix::select(
            &adapter.cooperative_matrix_properties(),
            adapter.features(),
            info.subgroup_min_size,
            info.subgroup_max_size,
        );
        let limits = adapter.limits();
        let open = |coop: bool| {
            let (features, experimental_features) = if coop {
                (
                    features
                        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                        | wgpu::Features::SHADER_F16
                        | wgpu::Features::SUBGROUP,
                    // SAFETY: the experimental feature is used only by the cooperative-matrix
                    // kernels, which the tests validate with naga and compare (through their
                    // emulated twin) against CPU loops; wgpu grants the feature only with this opt-in.
                    unsafe { wgpu::ExperimentalFeatures::enabled() },
                )
            } else {
                (features, wgpu::ExperimentalFeatures::disabled())
            };
            let request = adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("bd3-wgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            });
            async move { request.await.map(|dq| (dq, features)) }
        };
        let opened = match open(cooperative_matrix.is_some()).await {
            // An experimental feature must not cost the f32 path its device: without it, once more.
            Err(_) if cooperative_matrix.is_some() => {
                cooperative_matrix = None;
                open(false).await
            }
            r => r,
        };
        let ((device, queue), features) = opened
            .map_err(|e| Error::Gpu(format!("could not open the device on {}: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(None::<String>));
        let slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap();
            if s.is_none() {
                *s = Some(one_line(&e.to_string()));
            }
        }));
        let lost = uncaptured.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                *lost.lock().unwrap() = Some(format!(
                    "the GPU device was lost ({}); reload the page or restart the program",
                    one_line(&message)
                ));
            }
        });
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let split_threshold = max_binding
            .min(opts.split_threshold.unwrap_or(u64::MAX))
            .max(4);
        let compute_units = opts
            .compute_units
            .unwrap_or_else(|| default_compute_units(&info, opts.cpu_threads));
        Ok(GpuContext {
            gpu: Some(Gpu { device, queue }),
            info,
            limits,
            features,
            cooperative_matrix,
            counters: Counters::default(),
            compute_units,
            max_binding,
            split_threshold,
            shader_checks: cfg!(target_arch = "wasm32")
                || std::env::var_os("BD3_SHADER_CHECKS").is_some(),
            uncaptured,
            pipelines: Mutex::new(HashMap::new()),
            staging: Mutex::new(Vec::new()),
        })
    }

    /// A context without a device for `adapter`: buffers and kernels are descriptions only, so
    /// recording a program yields its plan (see [`crate::plan`]) without allocating anything.
    pub fn planning(adapter: &crate::plan::AdapterDesc, opts: ContextOptions) -> GpuContext {
        let limits = adapter.limits();
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        GpuContext {
            gpu: None,
            info: wgpu::AdapterInfo {
                name: adapter.name.clone(),
                driver_info: "planning only".into(),
                ..wgpu::AdapterInfo::new(wgpu::DeviceType::Other, wgpu::Backend::Noop)
            },
            features: adapter.features(),
            cooperative_matrix: adapter.cooperative_matrix,
            limits,
            counters: Counters::default(),
            compute_units: opts.compute_units.unwrap_or(adapter.compute_units),
            max_binding,
            split_threshold: max_binding
                .min(opts.split_threshold.unwrap_or(u64::MAX))
                .max(4),
            shader_checks: false,
            uncaptured: Arc::new(Mutex::new(None)),
            pipelines: Mutex::new(HashMap::new()),
            staging: Mutex::new(Vec::new()),
        }
    }

    /// Whether this context only plans (no device).
    pub fn is_planning(&self) -> bool {
        self.gpu.is_none()
    }

    /// The device. Only code that runs programs calls this; planning never reaches it.
    pub fn device(&self) -> &wgpu::Device {
        &self
            .gpu
            .as_ref()
            .expect("a planning context has no device")
            .device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self
            .gpu
            .as_ref()
            .expect("a planning context has no queue")
            .queue
    }

    /// Largest buffer a single storage binding may cover.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Size above which weights are split by rows and logits are produced in chunks.
    pub fn split_threshold(&self) -> u64 {
        self.split_threshold
    }

    /// Whether the adapter runs on the CPU (lavapipe, SwiftShader, WARP).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn adapter_summary(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            if self.info.name.is_empty() {
                "unnamed adapter"
            } else {
                &self.info.name
            },
            self.info.backend,
            self.info.device_type
        )
    }

    /// Whether wgpu's own shader bounds checks and workgroup-memory zeroing are on.
    pub fn shader_checks(&self) -> bool {
        self.shader_checks
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let c = &self.counters;
        CounterSnapshot {
            buffers_created: c.buffers_created.load(Ordering::Relaxed),
            bytes_allocated: c.bytes_allocated.load(Ordering::Relaxed),
            pipelines_created: c.pipelines_created.load(Ordering::Relaxed),
            bind_groups_created: c.bind_groups_created.load(Ordering::Relaxed),
            submits: c.submits.load(Ordering::Relaxed),
            bytes_read_back: c.bytes_read_back.load(Ordering::Relaxed),
        }
    }

    /// Return the first GPU error reported since the last check.
    pub fn check(&self) -> Result<()> {
        match self.uncaptured.lock().unwrap().take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// A buffer of `size` bytes (rounded up to 4, at least 4), counted; in a planning context only
    /// its size is kept.
    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<Buf> {
        let size = size.max(4).div_ceil(4) * 4;
        if size > self.limits.max_buffer_size {
            return Err(Error::Gpu(format!(
                "buffer `{label}` needs {size} bytes, over the adapter's max_buffer_size {}",
                self.limits.max_buffer_size
            )));
        }
        self.counters
            .buffers_created
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_allocated
            .fetch_add(size, Ordering::Relaxed);
        match &self.gpu {
            None => Ok(Buf::planned(size)),
            Some(g) => Ok(Buf::gpu(g.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            }))),
        }
    }

    /// A storage buffer usable by kernels and as a copy source/destination.
    pub fn storage(&self, label: &str, size: u64) -> Result<Buf> {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )
    }

    /// A storage buffer filled with `data` (only sized when planning).
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<Buf> {
        let b = self.storage(label, data.len() as u64)?;
        if !data.is_empty() && !self.is_planning() {
            self.queue().write_buffer(&b, 0, data);
        }
        Ok(b)
    }

    /// The compute kernel `label` from WGSL source, built once per distinct source and cached; its
    /// workgroups have `threads` invocations (the op module's constant, checked against the WGSL by
    /// a test). A planning context compiles nothing.
    pub async fn pipeline(
        &self,
        label: &'static str,
        source: &str,
        threads: u32,
    ) -> Result<Kernel> {
        if self.is_planning() {
            return Ok(Kernel {
                name: label,
                threads,
                pipeline: None,
            });
        }
        if let Some(p) = self.pipelines.lock().unwrap().get(source) {
            return Ok(Kernel {
                name: label,
                threads,
                pipeline: Some(p.clone()),
            });
        }
        let scope = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        // Every kernel bounds-checks its own indices and writes workgroup memory before reading it
        // (the kernel tests and `verify` run in both modes), so natively wgpu's extra clamps and
        // zeroing are dropped: they cost 2.4x per training step on an H200 (the clamped accesses in
        // attention spill to memory). BD3_SHADER_CHECKS=1 puts them back, e.g. to debug a new kernel.
        let module = if self.shader_checks {
            self.device().create_shader_module(desc)
        } else {
            // SAFETY: the kernels never index out of bounds (each checks against its sizes). A bug
            // that did would corrupt this program's GPU buffers or lose the device (reported as an
            // error), not reach other processes: the driver isolates each context's memory.
            unsafe {
                self.device()
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let pipeline = self
            .device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: self.shader_checks,
                    ..Default::default()
                },
                cache: None,
            });
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(format!(
                "kernel `{label}` failed to build: {}",
                one_line(&e.to_string())
            )));
        }
        self.counters
            .pipelines_created
            .fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(pipeline);
        self.pipelines
            .lock()
            .unwrap()
            .insert(source.to_string(), p.clone());
        Ok(Kernel {
            name: label,
            threads,
            pipeline: Some(p),
        })
    }

    pub fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        self.counters
            .bind_groups_created
            .fetch_add(1, Ordering::Relaxed);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        self.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        })
    }

    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.counters.submits.fetch_add(1, Ordering::Relaxed);
        self.queue().submit(Some(encoder.finish()))
    }

    /// A mappable staging buffer of at least `size` bytes, reused across calls.
    pub fn take_staging(&self, size: u64) -> Result<Buf> {
        let mut pool = self.staging.lock().unwrap();
        if let Some(i) = pool.iter().position(|b| b.size() >= size) {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        self.buffer(
            "staging",
            size.next_power_of_two().max(256),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )
    }

    pub fn return_staging(&self, b: Buf) {
        self.staging.lock().unwrap().push(b);
    }

    /// Map `staging` (already filled by a submitted copy) and return its first `size` bytes.
    pub async fn map_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slot = OneShot::new();
        let tx = slot.clone();
        staging
            .slice(..size)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        let mapped = slot.await;
        self.check()?;
        mapped.map_err(|e| Error::Gpu(format!("reading results back failed: {e}")))?;
        let data = {
            let view = staging
                .slice(..size)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(e.to_string()))?;
            view.to_vec()
        };
        staging.unmap();
        self.counters
            .bytes_read_back
            .fetch_add(size, Ordering::Relaxed);
        Ok(data)
    }

    /// Copy `len` floats from `buffer` (or view) at float offset `offset` back to the CPU (one
    /// submit).
    pub async fn read_f32(&self, buffer: &Buf, offset: u64, len: usize) -> Result<Vec<f32>> {
        let size = (len as u64 * 4).max(4);
        let staging = self.take_staging(size)?;
        let mut enc = self.device().create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(
            buffer.whole(),
            buffer.offset() + offset * 4,
            &staging,
            0,
            size,
        );
        self.submit(enc);
        let bytes = self.map_read(&staging, size).await;
        self.return_staging(staging);
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes?)[..len].to_vec())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A minimal one-shot channel: wgpu's map callback fills it, the async reader awaits it. On native the
/// device poll runs the callback before the await; in the browser the event loop does.
struct OneShot<T> {
    inner: Arc<Mutex<(Option<T>, Option<Waker>)>>,
}

impl<T> Clone for OneShot<T> {
    fn clone(&self) -> Self {
        OneShot {
            inner: self.inner.clone(),
        }
    }
}

impl<T> OneShot<T> {
    fn new() -> Self {
        OneShot {
            inner: Arc::new(Mutex::new((None, None))),
        }
    }
    fn send(&self, v: T) {
        let mut g = self.inner.lock().unwrap();
        g.0 = Some(v);
        if let Some(w) = g.1.take() {
            w.wake();
        }
    }
}

impl<T> Future for OneShot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut g = self.inner.lock().unwrap();
        match g.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        m: u32,
        ab: wgpu::CooperativeScalarType,
        cr: wgpu::CooperativeScalarType,
    ) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: m,
            n_size: m,
            k_size: m,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: false,
        }
    }

    #[test]
    fn cooperative_matrix_needs_the_16_f16_f32_configuration_and_fixed_subgroups() {
        use wgpu::CooperativeScalarType::{F16, F32};
        let all = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP;
        // The H200's list (wgpu keeps the square shapes): f16→f16 and f16→f32 at 16.
        let h200 = [config(16, F16, F16), config(16, F16, F32)];
        assert_eq!(
            CooperativeMatrix::select(&h200, all, 32, 32),
            Some(CooperativeMatrix { subgroup_size: 32 })
        );
        assert_eq!(
            CooperativeMatrix::describe(CooperativeMatrix::select(&h200, all, 32, 32)),
            "16×16×16 f16→f32 (subgroups of 32)"
        );
        // No list (lavapipe, browsers), only f16 accumulation, only 8×8, a missing feature, or a
        // variable subgroup size: none.
        assert_eq!(CooperativeMatrix::select(&[], all, 32, 32), None);
        assert_eq!(
            CooperativeMatrix::select(&[config(16, F16, F16)], all, 32, 32),
            None
        );
        assert_eq!(
            CooperativeMatrix::select(&[config(8, F16, F32)], all, 32, 32),
            None
        );
        assert_eq!(
            CooperativeMatrix::select(&h200, all - wgpu::Features::SUBGROUP, 32, 32),
            None
        );
        assert_eq!(CooperativeMatrix::select(&h200, all, 32, 64), None);
        assert_eq!(CooperativeMatrix::describe(None), "none");
    }
}
