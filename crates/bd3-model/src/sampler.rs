//! The sampler's arithmetic in f64 on the CPU, written as the official code does it (official `diffusion.py`:
//! `_ddpm_caching_update`, `_nucleus_sample`, `_sample_categorical`, `_analytic_sampler`): the reference the GPU kernel (`shaders/sample.wgsl`) is tested against, and what `verify`
//! checks against the recorded draws of the official sampler.

/// `_nucleus_sample`: sort descending, keep the tokens whose inclusive cumulative probability is ≤ p,
/// always the top one, renormalise. Ties keep index order (a stable sort).
pub fn nucleus(probs: &[f64], top_p: f64) -> Vec<f64> {
    if top_p >= 1.0 {
        let z: f64 = probs.iter().sum();
        return probs.iter().map(|p| p / z).collect();
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap().then(a.cmp(&b)));
    let mut keep = vec![false; probs.len()];
    let mut cum = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum <= top_p || rank == 0 {
            keep[i] = true;
        }
    }
    let z: f64 = probs
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(p, _)| p)
        .sum();
    probs
        .iter()
        .zip(&keep)
        .map(|(p, &k)| if k { p / z } else { 0.0 })
        .collect()
}

/// The official exponential variate of `_sample_categorical`: 1e-10 − log(u + 1e-10).
pub fn official_exponential(u: f64) -> f64 {
    1e-10 - (u + 1e-10).ln()
}

/// argmax_v q_v / e_v, first index on ties (torch.argmax).
pub fn race(q: &[f64], e: &[f64]) -> usize {
    let mut best = (f64::NEG_INFINITY, 0);
    for (v, (q, e)) in q.iter().zip(e).enumerate() {
        let key = q / e;
        if key > best.0 {
            best = (key, v);
        }
    }
    best.1
}

/// q of the DDPM step: nucleus probabilities scaled by (1 − m), the mask entry set to m.
pub fn ddpm_q(p_nucleus: &[f64], mask_id: usize, mask_prob: f64) -> Vec<f64> {
    p_nucleus
        .iter()
        .enumerate()
        .map(|(v, p)| {
            if v == mask_id {
                mask_prob
            } else {
                p * (1.0 - mask_prob)
            }
        })
        .collect()
}

/// The SEDD analytic update of one position (`_analytic_update` / `_denoiser_update`):
/// score from the log-score (softmax + nucleus when top_p < 1, else exp unnormalised), staggered by
/// e^{dσ}, times the transposed transition of the current token x. Returns (score, stag, probs).
pub fn sedd_position(
    log_score: &[f64],
    x: usize,
    mask_id: usize,
    dsigma: f64,
    top_p: f64,
    denoise: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let score = if top_p < 1.0 {
        let m = log_score.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = log_score.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        nucleus(&e.iter().map(|x| x / z).collect::<Vec<_>>(), top_p)
    } else {
        log_score.iter().map(|s| s.exp()).collect()
    };
    let total: f64 = score.iter().sum();
    let mut stag: Vec<f64> = score.iter().map(|s| s * dsigma.exp()).collect();
    stag[mask_id] += -dsigma.exp_m1() * total;
    let edm = (-dsigma).exp();
    let mut probs: Vec<f64> = stag
        .iter()
        .enumerate()
        .map(|(v, s)| {
            s * ((if v == x { edm } else { 0.0 })
                + if x == mask_id {
                    -(-dsigma).exp_m1()
                } else {
                    0.0
                })
        })
        .collect();
    if denoise {
        probs[mask_id] = 0.0;
    }
    (score, stag, probs)
}

/// SUBS probabilities of one row of logits: softmax with the mask token's logit at −∞ (its
/// probability exactly 0), in f64.
pub fn subs_probs(logits: &[f64], mask_id: usize) -> Vec<f64> {
    let m = logits
        .iter()
        .enumerate()
        .filter(|&(v, _)| v != mask_id)
        .map(|(_, &l)| l)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(v, &l)| if v == mask_id { 0.0 } else { (l - m).exp() })
        .collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// One draw of confidence decoding at a masked position: the token drawn from the nucleus-filtered
/// distribution by the exponential race with `e` (as first-hitting draws), and its confidence: the
/// token's probability under `probs`, the model's distribution before the nucleus.
pub fn confidence_draw(probs: &[f64], top_p: f64, e: &[f64]) -> (usize, f64) {
    let token = race(&nucleus(probs, top_p), e);
    (token, probs[token])
}

/// Which positions a confidence step reveals, given each position's confidence (None: not masked).
/// Candidates are ranked by confidence, highest first, ties to the lower position; the first
/// `at_least` of them are revealed, and every other whose confidence is ≥ `threshold`.
/// Top-K decoding is (K, +∞); threshold decoding (1, p).
pub fn confidence_pick(confidence: &[Option<f64>], at_least: usize, threshold: f64) -> Vec<bool> {
    let mut keep = vec![false; confidence.len()];
    for (i, ci) in confidence.iter().enumerate() {
        let Some(c) = *ci else { continue };
        let mut rank = 0;
        for (j, cj) in confidence.iter().enumerate() {
            if let Some(d) = *cj {
                if d > c || (d == c && j < i) {
                    rank += 1;
                }
            }
        }
        keep[i] = rank < at_least || c >= threshold;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_drops_the_token_that_crosses_p() {
        let p = nucleus(&[0.5, 0.3, 0.15, 0.05], 0.9);
        assert_eq!(
            p[2], 0.0,
            "0.5 + 0.3 + 0.15 = 0.95 > 0.9: the third token goes"
        );
        assert!((p[0] - 0.5 / 0.8).abs() < 1e-15);
        let p = nucleus(&[0.95, 0.05], 0.9);
        assert_eq!(p, vec![1.0, 0.0], "the top token is always kept");
    }

    #[test]
    fn confidence_pick_keeps_the_top_k_with_ties_to_the_lower_position() {
        let c = [Some(0.2), None, Some(0.7), Some(0.2), Some(0.9), None];
        let picks = |k, t| {
            confidence_pick(&c, k, t)
                .iter()
                .enumerate()
                .filter(|(_, &b)| b)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(1, f64::INFINITY), vec![4]);
        assert_eq!(
            picks(3, f64::INFINITY),
            vec![0, 2, 4],
            "0.2 at positions 0 and 3: the lower wins"
        );
        assert_eq!(
            picks(10, f64::INFINITY),
            vec![0, 2, 3, 4],
            "K capped by the masked count; unmasked never picked"
        );
        assert_eq!(picks(1, 0.5), vec![2, 4]);
        assert_eq!(picks(1, 0.95), vec![4], "at least the most confident one");
    }

    #[test]
    fn subs_probs_give_the_mask_nothing() {
        let p = subs_probs(&[0.0, (2.0f64).ln(), 50.0], 2);
        assert_eq!(p[2], 0.0);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-15 && (p[1] - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn race_prefers_the_first_index_on_ties() {
        assert_eq!(race(&[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0]), 0);
        assert_eq!(race(&[0.1, 0.5, 0.5], &[1.0, 1.0, 1.0]), 1);
    }
}
