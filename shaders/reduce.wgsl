// Workgroup tree reductions, included by the kernels that reduce a row in one workgroup
// (layernorm_stats.wgsl, token_loss.wgsl, sedd_loss.wgsl, reduce_sum.wgsl, grad_norm.wgsl, and
// sample.wgsl through reduce_wide.wgsl; reduce_subgroup.wgsl has the same functions on subgroup
// operations, for the kernels' subgroup variants):
//   workgroup_sum(v, lid) = Σ_t v_t,  workgroup_max(v, lid) = max_t v_t  over the WG threads t,
// as a pairwise tree (red[t] ⊕= red[t + s] for s = WG/2, WG/4, …, 1), returned to every thread.
// The includer defines `const WG: u32` (its workgroup size, a power of two; lid < WG) and calls these
// from uniform control flow. Workgroup memory: `red`, WG floats, free again when a call returns
// (the trailing barrier), so a kernel may reuse it for its own reductions (sample.wgsl's argmax).

var<workgroup> red: array<f32, WG>;

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn workgroup_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let top = red[0];
    workgroupBarrier();
    return top;
}
