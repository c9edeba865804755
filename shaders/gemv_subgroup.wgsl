// gemv.wgsl with the partial sums added by subgroup operations, for adapters with subgroups (native
// Vulkan, Metal, DX12; wgpu's browser backend has none). Same math, bindings and K loop (see gemv.wgsl).
// Reduction: each of a thread's COLS × 16 values is summed over its subgroup (subgroupAdd); one lane of
// each subgroup writes the subgroup's total to workgroup memory at [subgroup_id][value], and after
// one barrier thread t adds values t and t + 64 over the num_subgroups subgroups and stores them.
// Nothing assumes a subgroup size (lavapipe's is 8, NVIDIA's 32, AMD's 32 or 64): subgroup_id,
// num_subgroups, subgroup_size and subgroup_invocation_id come from the builtins, and the memory holds
// 16 subgroups (64 threads in subgroups of at least 4, WebGPU's minimum) × COLS·16 values (≤ 8 KiB),
// and for the LayerNorm statistics 2 × 16 subgroups × 16 rows (2 KiB), one barrier per sum.
// Bindings: as gemv.wgsl (0 params, 1 a, 2 b, 3 bias, 4 gate, 5 out, 6 aux, 7 ln_w, 8 row_index).
// Tiling: as gemv.wgsl; 64 threads own COLS ∈ {1, 2, 4, 8} output columns of every row.
// Includes: gemv_body.wgsl (parameters, bindings, prologue and K loop; matmul_epilogue.wgsl through it).

// #include "gemv_body.wgsl"

const MAX_SUBGROUPS: u32 = 16u;
const VALUES: u32 = COLS * ROWS;
var<workgroup> sg_totals: array<f32, MAX_SUBGROUPS * VALUES>;
var<workgroup> row_slots: array<f32, 2u * MAX_SUBGROUPS * ROWS>;
var<private> row_half: u32;

var<private> sg_id: u32;
var<private> sg_count: u32;
var<private> sg_lane: u32;
// Lanes that exist in this subgroup (a subgroup may be wider than the workgroup).
var<private> sg_width: u32;

// The subgroup's total of value i, written by one lane (the values are spread over the lanes).
fn to_slot(i: u32, v: f32) {
    let total = subgroupAdd(v);
    if (sg_lane == i % sg_width) {
        sg_totals[sg_id * VALUES + i] = total;
    }
}

fn slot_sum(i: u32) -> f32 {
    var s = 0.0;
    for (var g = 0u; g < sg_count; g++) {
        s += sg_totals[g * VALUES + i];
    }
    return s;
}

// The LayerNorm statistics: two calls per workgroup (Σx, then Σ(x − μ)²), each into its own half of
// row_slots, so one barrier suffices: a half is written again only by the next workgroup-wide
// step, which every thread reaches after reading it.
fn sum_rows(v: array<f32, ROWS>, t: u32) -> array<f32, ROWS> {
    let half = row_half * MAX_SUBGROUPS * ROWS;
    row_half = 1u - row_half;
    for (var r = 0u; r < ROWS; r++) {
        if (r < p.m) {
            let total = subgroupAdd(v[r]);
            if (sg_lane == r % sg_width) {
                row_slots[half + sg_id * ROWS + r] = total;
            }
        }
    }
    workgroupBarrier();
    var totals: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        if (r < p.m) {
            var s = 0.0;
            for (var g = 0u; g < sg_count; g++) {
                s += row_slots[half + g * ROWS + r];
            }
            totals[r] = s;
        }
    }
    return totals;
}

fn finish(n0: u32, t: u32) {
    for (var c = 0u; c < COLS; c++) {
        for (var r = 0u; r < ROWS; r++) {
            if (r < p.m) {
                to_slot(c * ROWS + r, acc[c * ROWS + r]);
            }
        }
    }
    workgroupBarrier();
    for (var i = t; i < VALUES; i += THREADS) {
        let c = i / ROWS;
        let r = i % ROWS;
        if (r < p.m) {
            store_total(n0, c, r, slot_sum(i));
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32, @builtin(subgroup_id) sid: u32, @builtin(num_subgroups) nsg: u32, @builtin(subgroup_size) size: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let n0 = (wg.x + wg.y * nwg.x) * COLS;
    if (n0 >= p.n) {
        return; // uniform per workgroup
    }
    sg_id = sid;
    sg_count = nsg;
    sg_lane = lane;
    sg_width = min(size, THREADS);
    accumulate(n0, t);
    finish(n0, t);
}
