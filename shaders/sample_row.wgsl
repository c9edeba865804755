// The body of the sample kernels (sample.wgsl: reductions in workgroup memory; sample_subgroup.wgsl:
// subgroup reductions): one token per row, drawn on the GPU from the model's distribution (the
// official diffusion.py: _nucleus_sample, _sample_categorical; SEDD: the analytic sampler):
//   a_v  = adjusted logit:  SUBS  l_v (+ −1e6 at the mask)        modes 0 (first-hitting), 1 (DDPM),
//                                                                  5 (confidence)
//                           AR    l_v (:= −1e6 at the mask)        mode 2
//                           SEDD  l_v − shift, 0 at v = x_t         modes 3 (analytic step), 4 (final denoise)
//   p_v  = softmax(a)_v, then the nucleus: keep the k most likely tokens where k is the largest with
//          cumsum_k ≤ top_p, always at least the top one, renormalise (the official rule: the token that
//          crosses top_p is dropped). The cut is the threshold τ: the smallest f32 τ with
//          Σ_{p_v ≥ τ} p_v ≤ top_p keeps exactly that set (tokens of equal p are kept or dropped
//          together); if it keeps nothing, the top token(s) alone are kept.
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
// Passes over the row (each reads it once and recomputes p_v = exp(a_v − max)·(1/Σ)):
//   1. max and Σ exp(a_v − max) together (online: a thread rescales its sum when its max grows);
//   2–9. (top_p < 1 only) a 16-ary search for τ over the f32 bit patterns in (0, 1.0⁺]: each pass
//        sums the kept mass at 15 candidate thresholds at once (four vec4 register accumulators, one
//        halving-tree reduction) and keeps the sixteenth of the interval where the mass crosses top_p,
//        so the 2^30 patterns take 8 passes where bisection took 30. Only p inside the current
//        interval is compared with the candidates (p above it counts at all of them, p below at
//        none), so after the first passes most tokens cost one comparison. The sixteenth slot
//        holds the mass at the top token's p (the fallback when τ keeps nothing), and the mass kept
//        at τ is the one measured when τ became the upper end: no separate pass for either.
//   10. the exponential race (and the argmax reduction).
// So 10 passes with a nucleus and 2 without, where the bisection made 36 and 3. Every candidate of
// a pass is summed in the same order, so the measured mass is monotone in the threshold (f32 addition
// is monotone) and the search finds the boundary of those sums; the kept set can differ from a CPU
// loop (or the bisection) only where the sums' rounding decides a comparison with top_p.
//
// Why one workgroup per row and one dispatch: the search is a chain of dependent global sums over the
// row, so splitting a row over workgroups needs a dispatch (or a grid-wide barrier, which WebGPU lacks)
// per pass. Within a 2-dispatch budget only the first pass could be split (per-slice max and sum,
// combined by the second dispatch), which takes 1 of 10 passes off the single workgroup for one more
// dispatch and launch gap per call. In the plan of a first-hitting call of the 170M model (vocab
// 50,258, `bench sample --size small --plan`) the draw is 2.0 MB of the 576 MB a call moves (0.35 %
// of the bytes, counted underfilled); the split would move 0.2 MB of that to a full dispatch and add
// 1 to the 74 dispatches of a sampling call (six per block, the head, the draw).
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
// Tiling: one workgroup of WG = 256 threads per row (the kernel file's entry point calls sample_row).
// Includes: hash.wgsl (mix32). The kernel file includes the reductions: workgroup_max, workgroup_sum,
// workgroup_sum16, workgroup_argmax (reduce_wide.wgsl or reduce_subgroup.wgsl).

// #include "hash.wgsl"

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
// Passes of the 16-ary search: the bracket (0, ABOVE_ONE] narrows to ⌈w/16⌉ a pass, 2^30 → 1 in 8
// (the host specialises both constants: ops/sample.rs).
const SEARCH_PASSES: u32 = 8u;
// One past the f32 bit pattern of 1.0 (0x3f800001): nothing has p ≥ that, so the mass there is 0.
const ABOVE_ONE: u32 = 1065353217u;

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

// p_v: every pass and the confidence output use this one expression, so equal inputs give
// bit-equal probabilities.
fn prob(base: u32, v: u32, x: u32, shift: f32, row_max: f32, inv_total: f32) -> f32 {
    return exp(adjusted(base, v, x, shift) - row_max) * inv_total;
}

// The candidate thresholds j·stride above lo (j = j0..j0+3), capped at hi.
fn candidates(lo: u32, stride: u32, hi: u32, j0: u32) -> vec4<f32> {
    let j = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u);
    return bitcast<vec4<f32>>(min(vec4<u32>(lo) + j * stride, vec4<u32>(hi)));
}

// The smallest j among slots j0..j0+3 of `mass` whose mass is ≤ top_p, or 16 if none is.
fn first_within(mass: vec4<f32>, j0: u32) -> u32 {
    let j = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u);
    let hit = select(vec4<u32>(16u), j, mass <= vec4<f32>(p.top_p));
    return min(min(hit.x, hit.y), min(hit.z, hit.w));
}

// Slot j (1..15) of the four accumulators [1..4], [5..8], [9..12], [13, 14, 15, top], without
// indexing a private array.
fn slot(m: array<vec4<f32>, 4>, j: u32) -> f32 {
    let k = j - 1u;
    let q = select(select(m[0], m[1], k >= 4u), select(m[2], m[3], k >= 12u), k >= 8u);
    return q[k & 3u];
}

fn sample_row(r: u32, lid: u32) {
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

    // Softmax statistics in one pass: each thread keeps its max m and Σ exp(a − m).
    var m = -3.0e38;
    var z = 0.0;
    for (var v = lid; v < p.vocab; v += WG) {
        let a = adjusted(base, v, x, shift);
        if (a > m) {
            z = z * exp(m - a) + 1.0;
            m = a;
        } else {
            z += exp(a - m);
        }
    }
    let row_max = workgroup_max(m, lid);
    let total = workgroup_sum(z * exp(m - row_max), lid);
    let inv_total = 1.0 / total;

    // Nucleus threshold τ: keep p_v ≥ τ. τ = 0 keeps everything.
    var tau = 0.0;
    var kept_mass = 1.0;
    let nucleus = p.top_p < 1.0;
    if (nucleus) {
        let top = inv_total; // the maximum has p = exp(0) / total
        // Invariant: mass(lo) > top_p (or lo = 0, never measured), mass(hi) = hi_mass ≤ top_p.
        var lo = 0u;
        var hi = ABOVE_ONE;
        var hi_mass = 0.0;
        var top_mass = 0.0;
        for (var it = 0u; it < SEARCH_PASSES; it++) {
            let stride = (hi - lo + 15u) / 16u;
            let t0 = candidates(lo, stride, hi, 1u);
            let t1 = candidates(lo, stride, hi, 5u);
            let t2 = candidates(lo, stride, hi, 9u);
            let t3 = candidates(lo, stride, hi, 13u);
            let lowest = min(lo + stride, hi);
            // Only p inside [first candidate, hi) needs the 15 comparisons: p ≥ hi counts at every
            // candidate (all are ≤ hi), so it goes to `above`, added to every slot before the
            // reduction; p below the first candidate counts nowhere. After two passes the bracket
            // is a fraction of an octave, and most of a spread distribution skips the comparisons.
            var s0 = vec4<f32>(0.0);
            var s1 = vec4<f32>(0.0);
            var s2 = vec4<f32>(0.0);
            var s3 = vec4<f32>(0.0);
            var above = 0.0;
            var at_top = 0.0;
            for (var v = lid; v < p.vocab; v += WG) {
                let pv = prob(base, v, x, shift, row_max, inv_total);
                let bits = bitcast<u32>(pv);
                at_top += select(0.0, pv, pv >= top);
                if (bits >= hi) {
                    above += pv;
                } else if (bits >= lowest) {
                    let p4 = vec4<f32>(pv);
                    s0 += select(vec4<f32>(0.0), p4, p4 >= t0);
                    s1 += select(vec4<f32>(0.0), p4, p4 >= t1);
                    s2 += select(vec4<f32>(0.0), p4, p4 >= t2);
                    s3 += select(vec4<f32>(0.0), p4, p4 >= t3);
                }
            }
            let a4 = vec4<f32>(above);
            let slots = array<vec4<f32>, 4>(s0 + a4, s1 + a4, s2 + a4, vec4<f32>((s3 + a4).xyz, at_top));
            let mass = workgroup_sum16(slots, lid);
            top_mass = mass[3].w;
            // The first candidate within top_p becomes hi, the one before it lo (16: none, hi stays).
            let j = min(
                min(first_within(mass[0], 1u), first_within(mass[1], 5u)),
                min(first_within(mass[2], 9u), first_within(vec4<f32>(mass[3].xyz, 2.0), 13u)),
            );
            let new_lo = min(lo + (j - 1u) * stride, hi);
            if (j < 16u) {
                hi = min(lo + j * stride, hi);
                hi_mass = select(slot(mass, j), hi_mass, hi == ABOVE_ONE);
            }
            lo = new_lo;
        }
        tau = bitcast<f32>(hi);
        // τ keeps nothing when the top token alone exceeds top_p: keep the top token(s).
        kept_mass = select(hi_mass, top_mass, hi_mass == 0.0);
        tau = select(tau, top, hi_mass == 0.0);
    }
    // SEDD without a nucleus scores with exp(log_score) unnormalised.
    let raw_scale = select(1.0 / kept_mass, exp(row_max), sedd && !nucleus);
    let score_sum = select(1.0, total * exp(row_max), sedd && !nucleus);

    var best_key = -3.0e38;
    var best_v = 0u;
    for (var v = lid; v < p.vocab; v += WG) {
        let pv = prob(base, v, x, shift, row_max, inv_total);
        var pr = select(0.0, pv * raw_scale, pv >= tau);
        if (sedd && !nucleus) {
            pr = exp(adjusted(base, v, x, shift) - row_max) * raw_scale;
        }
        var q = pr;
        switch p.mode {
            case 1u: {
                q = select(pr * (1.0 - p.mask_prob), p.mask_prob, v == p.mask_id);
            }
            case 3u, 4u: {
                var stag = pr * c0.y;
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
    let token = workgroup_argmax(best_key, best_v, lid);
    if (lid == 0u) {
        tokens[row] = token;
        if (p.mode == CONFIDENCE) {
            token_prob[row] = prob(base, token, x, shift, row_max, inv_total);
        }
    }
}
