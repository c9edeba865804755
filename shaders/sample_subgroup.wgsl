// The sample kernel with subgroup reductions (adapters with wgpu's SUBGROUP feature and a minimum
// subgroup size of at least 4; ops/sample.rs picks it): the same draw as sample.wgsl, with the sums
// combined in a different order. The math, the passes and the bindings are in sample_row.wgsl.
// Includes: reduce_subgroup.wgsl (workgroup_max, workgroup_sum, workgroup_sum16, workgroup_argmax;
// 4.3 KiB of workgroup memory), sample_row.wgsl.

// #include "reduce_subgroup.wgsl"
// #include "sample_row.wgsl"

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_id) index: u32,
    @builtin(num_subgroups) count: u32,
) {
    reduce_setup(lane, size, index, count);
    sample_row(wg.x + wg.y * nwg.x, lid);
}
