// Partial sums of squares over up to 7 tensors at once (the first pass of the global gradient norm):
//   partials[out_offset + g] = Σ_{i ∈ slice of workgroup g} x_k[i]²
// where workgroup g covers elements [(g − start_k)·chunk, (g − start_k + 1)·chunk) of tensor k
// (start_0 = 0, start_k ≤ g < start_{k+1}; a tensor of n_k elements has ⌈n_k / chunk⌉ workgroups).
// The second pass (reduce_sum.wgsl, Sum) adds every partial into norm_sq, so the squared norm stays
// on the GPU for adamw.wgsl. Fixed slices and trees: the result does not depend on timing.
//
// Seven tensors per dispatch: 7 read bindings + the partials are the 8 storage buffers that WebGPU
// guarantees per shader stage (storage buffers cannot be indexed dynamically, so each one is a
// binding). The host groups the buffers (crates/bd3-gpu/src/ops/grad_norm.rs); unused bindings get
// n_k = 0 and a placeholder. The trainer's gradients are views of a few packed buffers, so one
// dispatch usually covers them all.
//
// Bindings: 0 params, 1–7 x0…x6, 8 partials.
// Tiling: 256 threads per workgroup, strided over the workgroup's slice (coalesced), then a tree.
// Includes: reduce.wgsl (workgroup_sum).

// #include "reduce.wgsl"

struct Params {
    n0: u32,
    n1: u32,
    n2: u32,
    n3: u32,
    n4: u32,
    n5: u32,
    n6: u32,
    start1: u32,
    start2: u32,
    start3: u32,
    start4: u32,
    start5: u32,
    start6: u32,
    groups: u32,
    chunk: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x0: array<f32>;
@group(0) @binding(2) var<storage, read> x1: array<f32>;
@group(0) @binding(3) var<storage, read> x2: array<f32>;
@group(0) @binding(4) var<storage, read> x3: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<f32>;
@group(0) @binding(6) var<storage, read> x5: array<f32>;
@group(0) @binding(7) var<storage, read> x6: array<f32>;
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wg.x + wg.y * nwg.x;
    if (g >= p.groups) {
        return;
    }
    // Which tensor this workgroup reads, and where its slice begins.
    var k = 0u;
    var first = 0u;
    var n = p.n0;
    if (g >= p.start1) { k = 1u; first = p.start1; n = p.n1; }
    if (g >= p.start2) { k = 2u; first = p.start2; n = p.n2; }
    if (g >= p.start3) { k = 3u; first = p.start3; n = p.n3; }
    if (g >= p.start4) { k = 4u; first = p.start4; n = p.n4; }
    if (g >= p.start5) { k = 5u; first = p.start5; n = p.n5; }
    if (g >= p.start6) { k = 6u; first = p.start6; n = p.n6; }
    let begin = (g - first) * p.chunk;
    let end = min(n, begin + p.chunk);
    var acc = 0.0;
    switch k {
        case 0u: { for (var i = begin + lid; i < end; i += WG) { let v = x0[i]; acc += v * v; } }
        case 1u: { for (var i = begin + lid; i < end; i += WG) { let v = x1[i]; acc += v * v; } }
        case 2u: { for (var i = begin + lid; i < end; i += WG) { let v = x2[i]; acc += v * v; } }
        case 3u: { for (var i = begin + lid; i < end; i += WG) { let v = x3[i]; acc += v * v; } }
        case 4u: { for (var i = begin + lid; i < end; i += WG) { let v = x4[i]; acc += v * v; } }
        case 5u: { for (var i = begin + lid; i < end; i += WG) { let v = x5[i]; acc += v * v; } }
        default: { for (var i = begin + lid; i < end; i += WG) { let v = x6[i]; acc += v * v; } }
    }
    let total = workgroup_sum(acc, lid);
    if (lid == 0u) {
        partials[p.out_offset + g] = total;
    }
}
