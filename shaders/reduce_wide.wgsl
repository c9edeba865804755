// Wider workgroup reductions for a kernel that reduces a row in one workgroup and needs more than
// one sum at a time (sample.wgsl), in workgroup memory; reduce_subgroup.wgsl has the same functions
// built on subgroup operations. With reduce.wgsl's workgroup_sum and workgroup_max:
//   workgroup_sum16(v, lid) = Σ_t v_t for sixteen values per thread (four vec4) in one halving tree:
//       at each level the upper half of the active threads hands its values to the lower half
//       (2 barriers a level, 18 in all, where four vec4 trees would take 36);
//   workgroup_argmax(key, i, lid) = the i of the largest key, the lowest i among equal keys
//       (torch.argmax's rule; keys are never NaN: the includer starts each thread at a finite key).
// The includer defines `const WG: u32` (a power of two, lid < WG) and calls these from uniform
// control flow. Workgroup memory: red16 (WG/2 × 4 vec4 = 8 KiB at WG = 256), red_u (WG u32) and
// reduce.wgsl's red, free again when a call returns (the trailing barrier).

// #include "reduce.wgsl"

var<workgroup> red16: array<vec4<f32>, 2u * WG>;
var<workgroup> red_u: array<u32, WG>;

fn workgroup_sum16(v: array<vec4<f32>, 4>, lid: u32) -> array<vec4<f32>, 4> {
    var acc = v;
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid >= s && lid < 2u * s) {
            let o = 4u * (lid - s);
            red16[o] = acc[0];
            red16[o + 1u] = acc[1];
            red16[o + 2u] = acc[2];
            red16[o + 3u] = acc[3];
        }
        workgroupBarrier();
        if (lid < s) {
            let o = 4u * lid;
            acc[0] = acc[0] + red16[o];
            acc[1] = acc[1] + red16[o + 1u];
            acc[2] = acc[2] + red16[o + 2u];
            acc[3] = acc[3] + red16[o + 3u];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        red16[0] = acc[0];
        red16[1] = acc[1];
        red16[2] = acc[2];
        red16[3] = acc[3];
    }
    workgroupBarrier();
    let total = array<vec4<f32>, 4>(red16[0], red16[1], red16[2], red16[3]);
    workgroupBarrier();
    return total;
}

fn workgroup_argmax(key: f32, i: u32, lid: u32) -> u32 {
    red[lid] = key;
    red_u[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let ok = red[lid + s];
            let oi = red_u[lid + s];
            if (ok > red[lid] || (ok == red[lid] && oi < red_u[lid])) {
                red[lid] = ok;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let best = red_u[0];
    workgroupBarrier();
    return best;
}
