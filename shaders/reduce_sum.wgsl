// Sum of a vector into one value: out[out_index] = Σ_{i<n} x[i] (square = 0), or Σ x[i]² (square = 1),
// or either added to what is there (accumulate = 1). Used for the batch loss (Σ token_loss), so only
// 4 bytes come back to the CPU instead of every token's loss, and for the squared gradient norm.
//
// Bindings: 0 params, 1 x [n], 2 out.
// Tiling: a single workgroup of 256 threads; each sums a strided slice, then a tree in workgroup memory.
// Includes: reduce.wgsl (workgroup_sum).

// #include "reduce.wgsl"

struct Params {
    n: u32,
    out_index: u32,
    square: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = x[i];
        acc += select(v, v * v, p.square != 0u);
    }
    let total = workgroup_sum(acc, lid);
    if (lid == 0u) {
        out[p.out_index] = select(total, out[p.out_index] + total, p.accumulate != 0u);
    }
}
