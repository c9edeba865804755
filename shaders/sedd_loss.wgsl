// SEDD log-score and score-entropy loss (official diffusion.py: _sedd_parameterization, _score_entropy):
//   s_v = l_v − log(expm1 σ) − log(V−1), and s[x_t] = 0
//   at a masked row: entropy = Σ_{v≠mask} exp(s_v) − r·s[x0] + r(log r − 1), r = 1/expm1(σ)
//   token_loss = dσ · entropy (0 on unmasked rows)
// With grad_scale > 0 the gradient of grad_scale·token_loss goes to dlogits:
//   dl_v = grad_scale·dσ·(exp(s_v)·[v ≠ mask] − r·[v = x0]) on masked rows (s[x_t] is a constant), 0 elsewhere.
// The per-sequence constants are computed on the CPU in f64 (log(expm1 σ) needs care near σ = 0):
//   seq_consts[s] = (shift = log(expm1 σ) + log(V−1), r, r(log r − 1), dσ).
//
// Bindings: 0 params, 1 logits [n_rows, vocab] (chunk), 2 input_ids, 3 targets (global rows),
//           4 seq_consts [n_seq, 4], 5 log_score [n_rows, vocab] (chunk), 6 entropy, 7 token_loss (global rows),
//           8 dlogits (chunk; this kernel then uses 8 storage buffers, the WebGPU default maximum).
// Tiling: one workgroup of 256 threads per row, one sum reduction in workgroup memory (1 KiB).
// Includes: reduce.wgsl (workgroup_sum).

// #include "reduce.wgsl"

struct Params {
    n_rows: u32,
    vocab: u32,
    mask_id: u32,
    write_log_score: u32,
    row_offset: u32,
    rows_per_seq: u32,
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> input_ids: array<u32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read> seq_consts: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> log_score: array<f32>;
@group(0) @binding(6) var<storage, read_write> entropy: array<f32>;
@group(0) @binding(7) var<storage, read_write> token_loss: array<f32>;
@group(0) @binding(8) var<storage, read_write> dlogits: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.n_rows) {
        return;
    }
    let row = p.row_offset + r;
    let base = r * p.vocab;
    let x_t = input_ids[row];
    let c = seq_consts[row / p.rows_per_seq];

    var sum = 0.0;
    for (var v = lid; v < p.vocab; v += WG) {
        let s = select(logits[base + v] - c.x, 0.0, v == x_t);
        if (p.write_log_score != 0u) {
            log_score[base + v] = s;
        }
        if (v != p.mask_id) {
            sum += exp(s);
        }
    }
    let total = workgroup_sum(sum, lid);
    if (lid == 0u) {
        var e = 0.0;
        if (x_t == p.mask_id) {
            let target_id = targets[row];
            let s_target = select(logits[base + target_id] - c.x, 0.0, target_id == x_t);
            e = total - c.y * s_target + c.z;
        }
        entropy[row] = e;
        token_loss[row] = c.w * e;
    }
    if (p.grad_scale > 0.0) {
        let masked = x_t == p.mask_id;
        let target_id = targets[row];
        for (var v = lid; v < p.vocab; v += WG) {
            var d = 0.0;
            if (masked && v != x_t) {
                d = p.grad_scale * c.w * (select(exp(logits[base + v] - c.x), 0.0, v == p.mask_id) - select(0.0, c.y, v == target_id));
            }
            dlogits[base + v] = d;
        }
    }
}
