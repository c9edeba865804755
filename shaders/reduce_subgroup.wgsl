// The workgroup reductions of reduce.wgsl and reduce_wide.wgsl (same names, same results up to the
// order of the f32 additions) built on subgroup operations, for adapters with wgpu's SUBGROUP
// feature (native Vulkan, Metal, DX12; not the browser):
//   each subgroup reduces its lanes (subgroupAdd / subgroupMax / subgroupMin), its first lane writes
//   the partial to workgroup memory at the subgroup's index, and subgroup 0 combines the partials the
//   same way and publishes the result for every thread: 3 barriers a call instead of the tree's
//   log2(WG) + 1.
// Nothing assumes a subgroup size or which invocations form a subgroup: the partial slot is the
// subgroup_id builtin, the combine loop strides by subgroup_size over num_subgroups partials (lavapipe
// runs 8 lanes, NVIDIA 32, AMD 32 or 64; WebGPU guarantees at least 4, and the host picks this variant
// only where the adapter's minimum is at least 4, so WG / 4 slots suffice).
// The includer defines `const WG: u32` (a power of two, lid < WG), calls reduce_setup with the
// subgroup builtins first thing in its entry point, and calls the rest from uniform control flow.
// Workgroup memory: red_sg (WG / 4 × 4 vec4 = 4 KiB at WG = 256), red_sg_u, red_out.

const MAX_SUBGROUPS: u32 = WG / 4u;

var<workgroup> red_sg: array<vec4<f32>, 4u * MAX_SUBGROUPS>;
var<workgroup> red_sg_u: array<u32, MAX_SUBGROUPS>;
var<workgroup> red_out: array<vec4<f32>, 4>;
var<private> sg_lane: u32;
var<private> sg_size: u32;
var<private> sg_index: u32;
var<private> sg_count: u32;

fn reduce_setup(lane: u32, size: u32, index: u32, count: u32) {
    sg_lane = lane;
    sg_size = size;
    sg_index = index;
    sg_count = count;
}

fn workgroup_sum16(v: array<vec4<f32>, 4>, lid: u32) -> array<vec4<f32>, 4> {
    let s0 = subgroupAdd(v[0]);
    let s1 = subgroupAdd(v[1]);
    let s2 = subgroupAdd(v[2]);
    let s3 = subgroupAdd(v[3]);
    if (sg_lane == 0u) {
        let o = 4u * sg_index;
        red_sg[o] = s0;
        red_sg[o + 1u] = s1;
        red_sg[o + 2u] = s2;
        red_sg[o + 3u] = s3;
    }
    workgroupBarrier();
    if (sg_index == 0u) {
        var t0 = vec4<f32>(0.0);
        var t1 = vec4<f32>(0.0);
        var t2 = vec4<f32>(0.0);
        var t3 = vec4<f32>(0.0);
        for (var i = sg_lane; i < sg_count; i += sg_size) {
            t0 += red_sg[4u * i];
            t1 += red_sg[4u * i + 1u];
            t2 += red_sg[4u * i + 2u];
            t3 += red_sg[4u * i + 3u];
        }
        let u0 = subgroupAdd(t0);
        let u1 = subgroupAdd(t1);
        let u2 = subgroupAdd(t2);
        let u3 = subgroupAdd(t3);
        if (sg_lane == 0u) {
            red_out[0] = u0;
            red_out[1] = u1;
            red_out[2] = u2;
            red_out[3] = u3;
        }
    }
    workgroupBarrier();
    let total = red_out;
    workgroupBarrier();
    return total;
}

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red_sg[sg_index].x = s;
    }
    workgroupBarrier();
    if (sg_index == 0u) {
        var t = 0.0;
        for (var i = sg_lane; i < sg_count; i += sg_size) {
            t += red_sg[i].x;
        }
        let u = subgroupAdd(t);
        if (sg_lane == 0u) {
            red_out[0].x = u;
        }
    }
    workgroupBarrier();
    let total = red_out[0].x;
    workgroupBarrier();
    return total;
}

fn workgroup_max(v: f32, lid: u32) -> f32 {
    let s = subgroupMax(v);
    if (sg_lane == 0u) {
        red_sg[sg_index].x = s;
    }
    workgroupBarrier();
    if (sg_index == 0u) {
        var t = -3.0e38;
        for (var i = sg_lane; i < sg_count; i += sg_size) {
            t = max(t, red_sg[i].x);
        }
        let u = subgroupMax(t);
        if (sg_lane == 0u) {
            red_out[0].x = u;
        }
    }
    workgroupBarrier();
    let top = red_out[0].x;
    workgroupBarrier();
    return top;
}

// The best (key, i) of a subgroup: the largest key, then the lowest i among lanes holding it.
fn subgroup_best(key: f32, i: u32) -> vec2<u32> {
    let k = subgroupMax(key);
    let j = subgroupMin(select(0xffffffffu, i, key == k));
    return vec2<u32>(bitcast<u32>(k), j);
}

fn workgroup_argmax(key: f32, i: u32, lid: u32) -> u32 {
    let b = subgroup_best(key, i);
    if (sg_lane == 0u) {
        red_sg[sg_index].x = bitcast<f32>(b.x);
        red_sg_u[sg_index] = b.y;
    }
    workgroupBarrier();
    if (sg_index == 0u) {
        var bk = -3.4e38;
        var bi = 0xffffffffu;
        for (var s = sg_lane; s < sg_count; s += sg_size) {
            let ok = red_sg[s].x;
            let oi = red_sg_u[s];
            if (ok > bk || (ok == bk && oi < bi)) {
                bk = ok;
                bi = oi;
            }
        }
        let w = subgroup_best(bk, bi);
        if (sg_lane == 0u) {
            red_sg_u[0] = w.y;
        }
    }
    workgroupBarrier();
    let best = red_sg_u[0];
    workgroupBarrier();
    return best;
}
