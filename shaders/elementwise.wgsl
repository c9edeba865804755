// Elementwise activation and its derivative, for the backward pass:
//   mode 0: g[i] = gelu_tanh(x[i])                 (recompute the MLP activation from its input)
//   mode 1: g[i] = g[i] · gelu_tanh'(x[i])
//   mode 2: g[i] = g[i] · silu'(x[i]),  silu'(x) = σ(x)(1 + x(1 − σ(x)))
// gelu_tanh(x) = 0.5x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³);
// gelu_tanh'(x) = 0.5(1 + tanh u) + 0.5x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²).
//
// Bindings: 0 params, 1 x [n], 2 g [n].
// Tiling: one thread per element, 256 per workgroup, grid folded into x/y.
// Includes: gelu.wgsl (gelu_tanh, gelu_tanh_grad: the same formula as matmul.wgsl's epilogue).

// #include "gelu.wgsl"

struct Params {
    n: u32,
    mode: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    switch p.mode {
        case 0u: {
            g[i] = gelu_tanh(v);
        }
        case 1u: {
            g[i] = g[i] * gelu_tanh_grad(v);
        }
        default: {
            let s = 1.0 / (1.0 + exp(-v));
            g[i] = g[i] * s * (1.0 + v * (1.0 - s));
        }
    }
}
