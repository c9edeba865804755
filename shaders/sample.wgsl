// One token per row, drawn on the GPU from the model's distribution (the official diffusion.py: _nucleus_sample,
// _sample_categorical; SEDD: the analytic sampler):
//   a_v  = adjusted logit:  SUBS  l_v (+ −1e6 at the mask)        modes 0 (first-hitting), 1 (DDPM),
//                                                                  5 (confidence)
//                           AR    l_v (:= −1e6 at the mask)        mode 2
//                           SEDD  l_v − shift, 0 at v = x_t         modes 3 (analytic step), 4 (final denoise)
//   p_v  = softmax(a)_v, then the nucleus: keep the k most likely tokens where k is the largest with
//          cumsum_k ≤ top_p, always at least the top one, renormalise (the official rule: the token that
//          crosses top_p is dropped). The cut is found by bisection on the threshold τ over the f32 bit
//          patterns: the smallest τ with Σ_{p_v ≥ τ} p_v ≤ top_p gives exactly that set.
//   q_v  = mode 0, 2, 5: p̃_v;  mode 1: p̃_v (1 − m), q_mask = m  (m = (t − dt)/t);
//          modes 3, 4: staggered score × transposed transition with per-sequence constants
//          (e^{dσ}, 1 − e^{dσ}, e^{−dσ}, 1 − e^{−dσ}); mode 4 sets q_mask = 0. Without a nucleus
//          (top_p ≥ 1) SEDD uses exp(a_v) unnormalised, as the official get_score does.
//   token = argmax_v q_v / E_v with E_v ~ Exp(1) independent (the exponential race = a draw from q/Σq);
//           ties go to the lowest index, so an all-zero row gives token 0 as torch.argmax does.
// SUBS rows whose input is not the mask are carried over unchanged.
// Mode 5 (confidence decoding) also writes token_prob[row] = p_token, the drawn token's probability
// under the model before the nucleus (softmax of a: the mask excluded, not renormalised over the
// kept set); carried-over rows get −1. confidence.wgsl then keeps the most confident draws.
//
// E_v comes from a counter-based generator keyed by (seed, call, stream, v), built so E keeps full
// relative precision near 0: E = −log(1 − U') with U' drawn at float resolution down to 2^-33 (its
// octave from the leading zeros of 32 random bits) and a series for small U'. A 32-bit Gumbel or a
// fixed-point uniform would truncate E near 0 and starve low-probability tokens (paper Suppl. C.5).
// With supplied = 1 the E_v are read from `draws` instead (verification against recorded draws).
//
// Bindings: 0 params, 1 logits [n_rows, vocab], 2 row_input [n_rows] (x_t), 3 row_stream [n_rows],
//           4 seq_consts [n_seq][2] vec4 (shift, e^{dσ}, 1−e^{dσ}, e^{−dσ}; 1−e^{−dσ}, 0, 0, 0),
//           5 draws [all rows, vocab] (indexed by global row), 6 tokens [all rows] (out),
//           7 token_prob [all rows] (out, mode 5 only; a placeholder otherwise).
// Tiling: one workgroup of 256 threads per row; every reduction in workgroup memory (2 KiB).
// Includes: hash.wgsl (mix32), reduce.wgsl (workgroup_max, workgroup_sum; the argmax below reuses its
// `red` array next to `red_u`).

// #include "hash.wgsl"
// #include "reduce.wgsl"

struct Params {
    n_rows: u32,
    vocab: u32,
    mask_id: u32,
    mode: u32,
    top_p: f32,
    mask_prob: f32,
    supplied: u32,
    seed_lo: u32,
    seed_hi: u32,
    call: u32,
    rows_per_seq: u32,
    row_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> row_input: array<u32>;
@group(0) @binding(3) var<storage, read> row_stream: array<u32>;
@group(0) @binding(4) var<storage, read> seq_consts: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> draws: array<f32>;
@group(0) @binding(6) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(7) var<storage, read_write> token_prob: array<f32>;

const WG: u32 = 256u;
const NEG: f32 = -1e6;
const CONFIDENCE: u32 = 5u;
var<workgroup> red_u: array<u32, WG>;

fn random2(stream: u32, v: u32) -> vec2<u32> {
    let k = mix32(p.seed_lo ^ mix32(p.seed_hi ^ mix32(p.call ^ 0x9e3779b9u)));
    let a = mix32(k ^ mix32(stream ^ mix32(v + 0x632be59bu)));
    let b = mix32(a ^ mix32(v * 0x85ebca6bu + stream));
    return vec2<u32>(a, b);
}

// E ~ Exp(1) with relative precision kept for small E.
fn exponential(stream: u32, v: u32) -> f32 {
    let r = random2(stream, v);
    let z = select(countLeadingZeros(r.x), 32u, r.x == 0u);
    let mantissa = 1.0 + f32(r.y >> 9u) * (1.0 / 8388608.0);
    let u = ldexp(mantissa, -i32(z) - 1); // uniform in [2^-(z+1), 2^-z): octave chosen with probability 2^-(z+1)
    if (u < 0.0625) {
        // −log(1 − u) = u + u²/2 + u³/3 + …; terms beyond u⁶ are below f32 precision here.
        return u * (1.0 + u * (0.5 + u * (1.0 / 3.0 + u * (0.25 + u * (0.2 + u * (1.0 / 6.0))))));
    }
    return -log(1.0 - u);
}

fn adjusted(base: u32, v: u32, x: u32, shift: f32) -> f32 {
    let l = logits[base + v];
    switch p.mode {
        case 0u, 1u, 5u: { return select(l, l + NEG, v == p.mask_id); }
        case 2u: { return select(l, NEG, v == p.mask_id); }
        default: { return select(l - shift, 0.0, v == x); }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.n_rows) {
        return;
    }
    let row = p.row_offset + r;
    let base = r * p.vocab;
    let x = row_input[row];
    let seq = row / p.rows_per_seq;
    let c0 = seq_consts[2u * seq];
    let c1 = seq_consts[2u * seq + 1u];
    let shift = c0.x;
    let sedd = p.mode == 3u || p.mode == 4u;
    let subs = p.mode <= 1u || p.mode == CONFIDENCE;

    if (subs && x != p.mask_id) {
        if (lid == 0u) {
            tokens[row] = x;
            if (p.mode == CONFIDENCE) {
                token_prob[row] = -1.0;
            }
        }
        return;
    }

    // Softmax statistics.
    var m = -3.0e38;
    for (var v = lid; v < p.vocab; v += WG) {
        m = max(m, adjusted(base, v, x, shift));
    }
    let row_max = workgroup_max(m, lid);
    var z = 0.0;
    for (var v = lid; v < p.vocab; v += WG) {
        z += exp(adjusted(base, v, x, shift) - row_max);
    }
    let total = workgroup_sum(z, lid);
    let inv_total = 1.0 / total;

    // Nucleus threshold τ: keep p_v ≥ τ. τ = 0 keeps everything.
    var tau = 0.0;
    var kept_mass = 1.0;
    let nucleus = p.top_p < 1.0;
    if (nucleus) {
        var lo = 0u;
        var hi = 0x3f800001u; // just above 1.0: nothing kept, Σ = 0 ≤ top_p
        for (var it = 0u; it < 31u; it++) {
            let mid = (lo + hi) / 2u;
            let t = bitcast<f32>(mid);
            var s = 0.0;
            for (var v = lid; v < p.vocab; v += WG) {
                let pv = exp(adjusted(base, v, x, shift) - row_max) * inv_total;
                s += select(0.0, pv, pv >= t);
            }
            let mass = workgroup_sum(s, lid);
            if (hi - lo > 1u) {
                if (mass <= p.top_p) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        }
        tau = bitcast<f32>(hi);
        // Mass kept at τ, and (if that is nothing: the top token alone exceeds top_p) the mass of the top
        // token(s); both sums run unconditionally so barriers stay in uniform control flow.
        let top = inv_total; // the maximum has p = exp(0) / total
        var s_tau = 0.0;
        var s_top = 0.0;
        for (var v = lid; v < p.vocab; v += WG) {
            let pv = exp(adjusted(base, v, x, shift) - row_max) * inv_total;
            s_tau += select(0.0, pv, pv >= tau);
            s_top += select(0.0, pv, pv >= top);
        }
        let mass_tau = workgroup_sum(s_tau, lid);
        let mass_top = workgroup_sum(s_top, lid);
        kept_mass = select(mass_tau, mass_top, mass_tau == 0.0);
        tau = select(tau, top, mass_tau == 0.0);
    }
    // SEDD without a nucleus scores with exp(log_score) unnormalised.
    let raw_scale = select(1.0 / kept_mass, exp(row_max), sedd && !nucleus);
    let score_sum = select(1.0, total * exp(row_max), sedd && !nucleus);

    var best_key = -3.0e38;
    var best_v = 0u;
    for (var v = lid; v < p.vocab; v += WG) {
        let pv = exp(adjusted(base, v, x, shift) - row_max) * inv_total;
        var prob = select(0.0, pv * raw_scale, pv >= tau);
        if (sedd && !nucleus) {
            prob = exp(adjusted(base, v, x, shift) - row_max) * raw_scale;
        }
        var q = prob;
        switch p.mode {
            case 1u: {
                q = select(prob * (1.0 - p.mask_prob), p.mask_prob, v == p.mask_id);
            }
            case 3u, 4u: {
                var stag = prob * c0.y;
                if (v == p.mask_id) {
                    stag = stag + c0.z * score_sum;
                }
                let trans = select(0.0, c0.w, v == x) + select(0.0, c1.x, x == p.mask_id);
                q = stag * trans;
                if (p.mode == 4u && v == p.mask_id) {
                    q = 0.0;
                }
            }
            default: {}
        }
        var e: f32;
        if (p.supplied != 0u) {
            e = draws[row * p.vocab + v];
        } else {
            e = exponential(row_stream[row], v);
        }
        let key = q / e;
        if (key > best_key) {
            best_key = key;
            best_v = v;
        }
    }
    red[lid] = best_key;
    red_u[lid] = best_v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let ok = red[lid + s];
            let ov = red_u[lid + s];
            if (ok > red[lid] || (ok == red[lid] && ov < red_u[lid])) {
                red[lid] = ok;
                red_u[lid] = ov;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let token = red_u[0];
        tokens[row] = token;
        if (p.mode == CONFIDENCE) {
            // The same expression as pv above, so equal rows give bit-equal probabilities.
            token_prob[row] = exp(adjusted(base, token, x, shift) - row_max) * inv_total;
        }
    }
}
