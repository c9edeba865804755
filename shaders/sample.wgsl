// The sample kernel with its reductions in workgroup memory (every adapter, the browser included):
// one workgroup of 256 threads per row of logits draws that row's token. The math, the passes and the
// bindings are in sample_row.wgsl; sample_subgroup.wgsl is the same kernel with subgroup reductions,
// which the host picks where the adapter has them (ops/sample.rs).
// Includes: reduce_wide.wgsl (with reduce.wgsl: workgroup_max, workgroup_sum, workgroup_sum16,
// workgroup_argmax; 10 KiB of workgroup memory), sample_row.wgsl.

// #include "reduce_wide.wgsl"
// #include "sample_row.wgsl"

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    sample_row(wg.x + wg.y * nwg.x, lid);
}
