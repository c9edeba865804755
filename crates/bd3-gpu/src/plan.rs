//! Dispatch plans: which kernels a program runs, in what order, with how many workgroups, and how
//! many FLOPs and bytes each — computed without a GPU.
//!
//! A plan is what recording a program against a planning context ([`GpuContext::planning`]) yields:
//! the same code that records the real program runs with buffers that are sizes and kernels that are
//! names. So a plan is a pure function of the model shape, the batch/length and an [`AdapterDesc`],
//! and the plan of an H200 can be computed on a laptop. A test records a small model on a real
//! adapter and checks its dispatches equal the plan made from that adapter's description.

use crate::context::GpuContext;
use crate::program::PlannedDispatch;

/// An H200 has 132 streaming multiprocessors; plans default to it.
pub const DEFAULT_COMPUTE_UNITS: u32 = 132;

/// A dispatch counts as significant for the fill figures above this much work.
pub const SIGNIFICANT_BYTES: u64 = 1 << 20;
pub const SIGNIFICANT_FLOPS: u64 = 1_000_000;

/// What recording needs to know of an adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterDesc {
    pub name: String,
    pub compute_units: u32,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroups_per_dimension: u32,
    pub max_workgroup_storage: u32,
    pub min_uniform_offset_alignment: u32,
    pub min_storage_offset_alignment: u32,
    pub f16: bool,
    pub subgroups: bool,
    pub subgroup_size: Option<u32>,
    /// Tensor cores (cooperative matrices), as [`GpuContext::new`] would grant them.
    pub cooperative_matrix: Option<crate::context::CooperativeMatrix>,
}

impl AdapterDesc {
    /// A large native adapter as wgpu reports an NVIDIA H200 over Vulkan (storage bindings up to
    /// 2 GiB, buffers up to 4 GiB, 48 KiB of workgroup memory), with `compute_units` units and
    /// only the optional features named.
    pub fn native(compute_units: u32, f16: bool, subgroups: bool) -> AdapterDesc {
        AdapterDesc {
            name: format!("planned native adapter ({compute_units} units)"),
            compute_units,
            max_storage_binding: (2u64 << 30) - 4,
            max_buffer: 4u64 << 30,
            max_workgroups_per_dimension: 65535,
            max_workgroup_storage: 48 << 10,
            min_uniform_offset_alignment: 64,
            min_storage_offset_alignment: 16,
            f16,
            subgroups,
            subgroup_size: subgroups.then_some(32),
            cooperative_matrix: None,
        }
    }

    /// [`AdapterDesc::native`] with an H200's tensor cores (16×16×16 f16→f32, subgroups of 32), which
    /// also need shader-f16 and subgroups.
    pub fn with_cooperative_matrix(self) -> AdapterDesc {
        AdapterDesc {
            f16: true,
            subgroups: true,
            subgroup_size: Some(32),
            cooperative_matrix: Some(crate::context::CooperativeMatrix { subgroup_size: 32 }),
            ..self
        }
    }

    /// The description of a real context's adapter.
    pub fn of(ctx: &GpuContext) -> AdapterDesc {
        let l = &ctx.limits;
        AdapterDesc {
            name: ctx.info.name.clone(),
            compute_units: ctx.compute_units,
            max_storage_binding: l.max_storage_buffer_binding_size,
            max_buffer: l.max_buffer_size,
            max_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_workgroup_storage: l.max_compute_workgroup_storage_size,
            min_uniform_offset_alignment: l.min_uniform_buffer_offset_alignment,
            min_storage_offset_alignment: l.min_storage_buffer_offset_alignment,
            f16: ctx.features.contains(wgpu::Features::SHADER_F16),
            subgroups: ctx.features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: (ctx.info.subgroup_min_size == ctx.info.subgroup_max_size)
                .then_some(ctx.info.subgroup_min_size),
            cooperative_matrix: ctx.cooperative_matrix,
        }
    }

    pub fn limits(&self) -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffer_binding_size: self.max_storage_binding.min(u32::MAX as u64) as _,
            max_buffer_size: self.max_buffer,
            max_compute_workgroups_per_dimension: self.max_workgroups_per_dimension,
            max_compute_workgroup_storage_size: self.max_workgroup_storage,
            min_uniform_buffer_offset_alignment: self.min_uniform_offset_alignment,
            min_storage_buffer_offset_alignment: self.min_storage_offset_alignment,
            ..wgpu::Limits::default()
        }
    }

    pub fn features(&self) -> wgpu::Features {
        let mut f = wgpu::Features::empty();
        if self.f16 {
            f |= wgpu::Features::SHADER_F16;
        }
        if self.subgroups {
            f |= wgpu::Features::SUBGROUP;
        }
        if self.cooperative_matrix.is_some() {
            f |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        f
    }
}

/// The totals of a plan, as the last line of `bench … --plan` prints them.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSummary {
    /// Dispatches (per call, for a mean over calls).
    pub dispatches: f64,
    pub flops: f64,
    pub bytes: f64,
    /// Shares of the significant work done by dispatches with fewer than 2 workgroups per unit.
    pub underfilled_flops: f64,
    pub underfilled_bytes: f64,
    /// The significant dispatch with the fewest workgroups (any dispatch if none is significant).
    pub smallest: Option<(u64, &'static str)>,
}

fn significant(d: &PlannedDispatch) -> bool {
    d.bytes > SIGNIFICANT_BYTES || d.flops > SIGNIFICANT_FLOPS
}

/// Totals over `calls` lists of dispatches (one list per program run), as means per call.
pub fn summarize<'a>(
    calls: impl IntoIterator<Item = &'a [PlannedDispatch]>,
    compute_units: u32,
) -> PlanSummary {
    let full = 2 * compute_units as u64;
    let (mut n_calls, mut dispatches, mut flops, mut bytes, mut under_f, mut under_b) =
        (0u64, 0u64, 0f64, 0f64, 0f64, 0f64);
    let mut smallest: Option<(u64, &'static str)> = None;
    let mut smallest_any: Option<(u64, &'static str)> = None;
    for call in calls {
        n_calls += 1;
        for d in call {
            dispatches += 1;
            flops += d.flops as f64;
            bytes += d.bytes as f64;
            let wg = d.workgroups();
            if smallest_any.is_none_or(|s| wg < s.0) {
                smallest_any = Some((wg, d.label));
            }
            if significant(d) {
                if wg < full {
                    under_f += d.flops as f64;
                    under_b += d.bytes as f64;
                }
                if smallest.is_none_or(|s| wg < s.0) {
                    smallest = Some((wg, d.label));
                }
            }
        }
    }
    let n = n_calls.max(1) as f64;
    PlanSummary {
        dispatches: dispatches as f64 / n,
        flops: flops / n,
        bytes: bytes / n,
        underfilled_flops: if flops > 0.0 { under_f / flops } else { 0.0 },
        underfilled_bytes: if bytes > 0.0 { under_b / bytes } else { 0.0 },
        smallest: smallest.or(smallest_any),
    }
}

impl PlanSummary {
    /// `plan: D dispatches, F GFLOP, B MB moved, underfilled U% of FLOPs and V% of bytes (fewer than
    /// 2 workgroups per unit), smallest W workgroups (LABEL)`.
    pub fn line(&self) -> String {
        let d = if self.dispatches.fract() == 0.0 {
            format!("{}", self.dispatches)
        } else {
            format!("{:.1}", self.dispatches)
        };
        let (w, label) = self.smallest.unwrap_or((0, "none"));
        format!(
            "plan: {d} dispatches, {:.3} GFLOP, {:.1} MB moved, underfilled {:.1}% of FLOPs and {:.1}% of bytes (fewer than 2 workgroups per unit), smallest {w} workgroups ({label})",
            self.flops / 1e9,
            self.bytes / 1e6,
            100.0 * self.underfilled_flops,
            100.0 * self.underfilled_bytes
        )
    }
}

/// One line per dispatch: label, workgroups (x×y×z), threads per workgroup, FLOPs, bytes.
pub fn dispatch_line(d: &PlannedDispatch) -> String {
    let [x, y, z] = d.groups;
    format!(
        "{:<22} {:>16} {:>5} {:>16} {:>14}",
        d.label,
        format!("{x}x{y}x{z}"),
        d.threads,
        d.flops,
        d.bytes
    )
}

pub fn dispatch_header() -> String {
    format!(
        "{:<22} {:>16} {:>5} {:>16} {:>14}",
        "dispatch", "workgroups", "thr", "FLOPs", "bytes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(label: &'static str, groups: u32, flops: u64, bytes: u64) -> PlannedDispatch {
        PlannedDispatch {
            label,
            kernel: label,
            groups: [groups, 1, 1],
            threads: 256,
            flops,
            bytes,
        }
    }

    #[test]
    fn summary_counts_underfilled_significant_work_only() {
        // 4 units: full means at least 8 workgroups.
        let plan = [
            d("big", 100, 8_000_000, 4 << 20),
            d("thin", 3, 2_000_000, 4 << 20),
            d("tiny", 1, 10, 10),
        ];
        let s = summarize([&plan[..]], 4);
        assert_eq!(s.dispatches, 3.0);
        assert!((s.underfilled_flops - 0.2).abs() < 1e-6, "{s:?}");
        assert!((s.underfilled_bytes - 0.5).abs() < 1e-6, "{s:?}");
        // The 1-workgroup dispatch moves too little to count; the smallest significant one is named.
        assert_eq!(s.smallest, Some((3, "thin")));
        let line = s.line();
        assert!(line.starts_with("plan: 3 dispatches, 0.010 GFLOP, 8.4 MB moved, underfilled 20.0% of FLOPs and 50.0% of bytes"), "{line}");
        assert!(line.ends_with("smallest 3 workgroups (thin)"), "{line}");
    }

    #[test]
    fn summary_of_several_calls_is_a_mean_per_call() {
        let a = [d("x", 10, 0, 2 << 20), d("y", 10, 0, 2 << 20)];
        let b = [d("x", 10, 0, 2 << 20)];
        let s = summarize([&a[..], &b[..]], 1);
        assert_eq!(s.dispatches, 1.5);
        assert!(s.line().starts_with("plan: 1.5 dispatches"), "{}", s.line());
    }
}
