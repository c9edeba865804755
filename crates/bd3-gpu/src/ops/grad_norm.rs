//! `shaders/grad_norm.wgsl` then `shaders/reduce_sum.wgsl`: the squared global norm of many tensors,
//! Σ_k Σ_i x_k[i]², into one value on the GPU (adamw reads it there).
//!
//! Pass 1 sums squares over slices of up to [`PER_DISPATCH`] buffers per dispatch into a partials
//! vector (one float per workgroup); pass 2 is one `reduce_sum` over the partials. WGSL cannot index
//! bindings, so a dispatch reads at most 7 buffers (with the partials, the 8 storage buffers WebGPU
//! guarantees per stage): ⌈buffers / 7⌉ + 1 dispatches in all. The trainer passes the packs its
//! gradients are views of ([`crate::Weights::zeros_like_packed`]: one pack up to the binding limit,
//! six for the 170M model at the browser's 128 MiB), so a step's norm is two dispatches rather than
//! one per tensor part. Buffers are grouped largest first, so the big ones share dispatches, and each
//! dispatch's slice length is chosen from its size and the adapter's compute units so it launches
//! about [`WORKGROUPS_PER_UNIT`] workgroups per unit.

use super::{bindings, reduce_sum, words, Kernels, TrainKernels};
use crate::program::{Buf, Cost, ProgramBuilder};
use crate::uniform_params;
use bd3_model::Result;

pub const THREADS: u32 = 256;
/// Tensor parts read by one dispatch of the first pass.
pub const PER_DISPATCH: usize = 7;
/// Workgroups per compute unit a first-pass dispatch aims for.
pub const WORKGROUPS_PER_UNIT: usize = 4;
/// The slice one workgroup sums at least (64 values per thread), unless that would leave a dispatch
/// under 2 workgroups per unit; never under a quarter of it. Software adapters pay per workgroup (and
/// per barrier of its tree), and a small dispatch gains nothing from more.
pub const MIN_CHUNK: usize = 64 * THREADS as usize;

uniform_params! {
    pub struct Params {
        pub n0: u32,
        pub n1: u32,
        pub n2: u32,
        pub n3: u32,
        pub n4: u32,
        pub n5: u32,
        pub n6: u32,
        pub start1: u32,
        pub start2: u32,
        pub start3: u32,
        pub start4: u32,
        pub start5: u32,
        pub start6: u32,
        pub groups: u32,
        pub chunk: u32,
        pub out_offset: u32,
    }
}

bindings! {
    pub struct Bindings {
        x0: Req,
        x1: OptIn,
        x2: OptIn,
        x3: OptIn,
        x4: OptIn,
        x5: OptIn,
        x6: OptIn,
        partials: Req,
    }
}

/// One first-pass dispatch: which parts (indices into the caller's list), its parameters.
struct Group {
    members: Vec<usize>,
    params: Params,
}

/// The first pass over parts of these sizes with `units` compute units (the same for recording and
/// for sizing the partials).
fn groups(sizes: &[usize], units: u32) -> Vec<Group> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let target = WORKGROUPS_PER_UNIT * units.max(1) as usize;
    let mut out_offset = 0usize;
    order
        .chunks(PER_DISPATCH)
        .map(|members| {
            let total: usize = members.iter().map(|&i| sizes[i]).sum();
            // About `target` workgroups, with slices of at least MIN_CHUNK where that still gives 2 per
            // unit, of a quarter of it in any case.
            let fill = total.div_ceil(2 * units.max(1) as usize);
            let chunk = total
                .div_ceil(target)
                .max(MIN_CHUNK.min(fill.max(MIN_CHUNK / 4)))
                .next_multiple_of(THREADS as usize);
            let mut n = [0u32; PER_DISPATCH];
            let mut start = [0u32; PER_DISPATCH];
            let mut g = 0usize;
            for (slot, &i) in members.iter().enumerate() {
                start[slot] = g as u32;
                n[slot] = sizes[i] as u32;
                g += sizes[i].div_ceil(chunk);
            }
            // Unused bindings start past the last workgroup, so none selects them.
            for s in start.iter_mut().skip(members.len()) {
                *s = g as u32;
            }
            let params = Params {
                n0: n[0],
                n1: n[1],
                n2: n[2],
                n3: n[3],
                n4: n[4],
                n5: n[5],
                n6: n[6],
                start1: start[1],
                start2: start[2],
                start3: start[3],
                start4: start[4],
                start5: start[5],
                start6: start[6],
                groups: g as u32,
                chunk: chunk as u32,
                out_offset: out_offset as u32,
            };
            out_offset += g;
            Group {
                members: members.to_vec(),
                params,
            }
        })
        .collect()
}

/// Floats of the partials buffer [`record`] needs for parts of these sizes.
pub fn partials_len(sizes: &[usize], units: u32) -> usize {
    groups(sizes, units)
        .iter()
        .map(|g| g.params.groups as usize)
        .sum::<usize>()
        .max(1)
}

/// out[out_index] = Σ over `parts` (buffer, floats) of Σ x², through `partials` (at least
/// [`partials_len`] floats).
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    parts: &[(&Buf, usize)],
    partials: &Buf,
    out: &Buf,
    out_index: u32,
) -> Result<()> {
    let sizes: Vec<usize> = parts.iter().map(|p| p.1).collect();
    let units = pb.context().compute_units;
    let mut total = 0u32;
    for g in groups(&sizes, units) {
        let x = |slot: usize| g.members.get(slot).map(|&i| parts[i].0);
        let b = Bindings {
            x0: x(0).expect("a group has a part"),
            x1: x(1),
            x2: x(2),
            x3: x(3),
            x4: x(4),
            x5: x(5),
            x6: x(6),
            partials,
        };
        let n: u64 = g.members.iter().map(|&i| sizes[i] as u64).sum();
        let cost = Cost {
            flops: 2 * n,
            bytes: words(n + g.params.groups as u64),
        };
        let wg = pb.fold(g.params.groups as u64)?;
        pb.dispatch(
            "grad_norm",
            &tk.grad_norm,
            &g.params,
            b.slices(&k.placeholders),
            wg,
            cost,
        );
        total += g.params.groups;
    }
    reduce_sum::record(
        pb,
        k,
        "grad_norm_sum",
        total,
        out_index,
        reduce_sum::Reduction::Sum,
        reduce_sum::Bindings { x: partials, out },
    );
    Ok(())
}
