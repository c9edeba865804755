// The tanh approximation of GELU and its derivative, shared by matmul.wgsl (the forward epilogue)
// and elementwise.wgsl (the backward pass), so both sides use the same formula:
//   gelu_tanh(x)  = 0.5x(1 + tanh u),  u = √(2/π)(x + 0.044715x³)
//   gelu_tanh'(x) = 0.5(1 + tanh u) + 0.5x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)
// tanh is written through exp of a non-positive argument, so it never overflows.
// Needs nothing from the includer.

fn tanh_safe(u: f32) -> f32 {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

fn gelu_tanh(x: f32) -> f32 {
    let t = tanh_safe(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * x * (1.0 + t);
}

fn gelu_tanh_grad(x: f32) -> f32 {
    let t = tanh_safe(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * x * x);
}
