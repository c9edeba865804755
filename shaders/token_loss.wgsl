// Log-probabilities and the per-token loss of the SUBS (BD3LM, MDLM) and AR heads (official diffusion.py: _subs_parameterization, AR cross-entropy).
//   SUBS (mode 0): l[mask] += -1e6; lp = l - logsumexp(l). A row whose input token x_t is not the mask is
//                  carried over: lp = -1e6 everywhere except 0 at x_t.
//   AR   (mode 1): l[mask] := -1e6; lp = l - logsumexp(l).
//   token_loss[row] = -weight[row] * lp[target_id[row]]     (weight = 1/t for SUBS, 1 for AR)
// The SUBS loss is exactly 0 on carried-over rows (target_id = x_t there), so the mean over all B·L rows
// is the NELBO per token. Rows arrive in chunks (the logits of a whole batch may not fit one buffer):
// chunk row r is global row row_offset + r; log_probs are written for the chunk only when asked.
//
// Bindings: 0 params, 1 logits [n_rows, vocab] (chunk), 2 input_ids, 3 targets, 4 weights (global rows),
//           5 log_probs [n_rows, vocab] (chunk), 6 token_loss (global rows), 7 dlogits (chunk).
// Tiling: one workgroup of 256 threads per row; max and sum reductions in workgroup memory (1 KiB).
// Includes: reduce.wgsl (workgroup_max, workgroup_sum).

// #include "reduce.wgsl"

struct Params {
    n_rows: u32,
    vocab: u32,
    mask_id: u32,
    mode: u32,
    write_log_probs: u32,
    row_offset: u32,
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> input_ids: array<u32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> log_probs: array<f32>;
@group(0) @binding(6) var<storage, read_write> token_loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogits: array<f32>;

const WG: u32 = 256u;
const NEG: f32 = -1e6;

fn adjusted(base: u32, v: u32) -> f32 {
    let x = logits[base + v];
    if (v == p.mask_id) {
        return select(x + NEG, NEG, p.mode == 1u);
    }
    return x;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.n_rows) {
        return;
    }
    let row = p.row_offset + r;
    let base = r * p.vocab;
    let x_t = input_ids[row];
    let target_id = targets[row];

    if (p.mode == 0u && x_t != p.mask_id) {
        if (p.write_log_probs != 0u) {
            for (var v = lid; v < p.vocab; v += WG) {
                log_probs[base + v] = select(NEG, 0.0, v == x_t);
            }
        }
        if (lid == 0u) {
            token_loss[row] = -weights[row] * select(NEG, 0.0, target_id == x_t);
        }
        if (p.grad_scale > 0.0) {
            for (var v = lid; v < p.vocab; v += WG) {
                dlogits[base + v] = 0.0;
            }
        }
        return;
    }

    var mx = -3.0e38;
    for (var v = lid; v < p.vocab; v += WG) {
        mx = max(mx, adjusted(base, v));
    }
    let row_max = workgroup_max(mx, lid);

    var sum = 0.0;
    for (var v = lid; v < p.vocab; v += WG) {
        sum += exp(adjusted(base, v) - row_max);
    }
    let lse = row_max + log(workgroup_sum(sum, lid));

    if (p.write_log_probs != 0u) {
        for (var v = lid; v < p.vocab; v += WG) {
            log_probs[base + v] = adjusted(base, v) - lse;
        }
    }
    if (lid == 0u) {
        token_loss[row] = -weights[row] * (adjusted(base, target_id) - lse);
    }
    if (p.grad_scale > 0.0) {
        let scale = p.grad_scale * weights[row];
        for (var v = lid; v < p.vocab; v += WG) {
            var d = scale * (exp(adjusted(base, v) - lse) - select(0.0, 1.0, v == target_id));
            if (p.mode == 1u && v == p.mask_id) {
                d = 0.0;
            }
            dlogits[base + v] = d;
        }
    }
}
