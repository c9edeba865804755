// One AdamW step on one parameter tensor, exactly in PyTorch's order (torch.optim.AdamW, foreach=False),
// after global gradient-norm clipping, followed by the EMA of the weights:
//   g     = grad·u · c,  c = min(1, max_norm / (‖grad‖₂·u + 1e-6))   (‖·‖ over all parameters; max_norm 0: c = 1)
//   w     = w · (1 − lr·wd)
//   m     = m + (1 − β1)(g − m)
//   v     = β2·v + (1 − β2)·g²
//   w     = w − (lr / bc1) · m / (√v / √bc2 + eps),   bc1 = 1 − β1^t, bc2 = 1 − β2^t
//   ema   = d·ema + (1 − d)·w                         (when ema_decay > 0)
// u = grad_unscale undoes mixed precision's loss scale (1/S; exactly 1 in f32, where nothing changes).
// With skip_nonfinite = 1 (loss scaling) a step whose norm is inf or NaN changes nothing: the scaled
// gradients overflowed, and the host halves S (loss_scale.rs).
// The squared norm is read from `norm_sq` (reduced on the GPU), so no value leaves the GPU.
//
// Bindings: 0 params, 1 w, 2 grad, 3 m, 4 v, 5 ema, 6 norm_sq [1].
// Tiling: one thread per element, 256 per workgroup, grid folded into x/y.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    ema_decay: f32,
    grad_unscale: f32,
    skip_nonfinite: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> ema: array<f32>;
@group(0) @binding(6) var<storage, read> norm_sq: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    // An exponent of all ones is inf or NaN (a bit test: comparisons with NaN may be optimised away).
    if (p.skip_nonfinite != 0u && (bitcast<u32>(norm_sq[0]) & 0x7f800000u) == 0x7f800000u) {
        return;
    }
    var c = 1.0;
    if (p.max_norm > 0.0) {
        c = min(1.0, p.max_norm / (sqrt(norm_sq[0]) * p.grad_unscale + 1e-6));
    }
    let g = grad[i] * p.grad_unscale * c;
    var wi = w[i] * (1.0 - p.lr * p.weight_decay);
    let mi = m[i] + (1.0 - p.beta1) * (g - m[i]);
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    wi = wi - (p.lr / p.bc1) * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
    m[i] = mi;
    v[i] = vi;
    w[i] = wi;
    if (p.ema_decay > 0.0) {
        ema[i] = p.ema_decay * ema[i] + (1.0 - p.ema_decay) * wi;
    }
}
