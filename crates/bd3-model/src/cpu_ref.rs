//! Plain CPU loops, one per GPU kernel, in f64 accumulation: the oracles of the kernel tests.
//! They follow the math in each shader's header, written as directly as possible.

use crate::mask::AttentionMask;

pub fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// out[r] = table[ids[r]] (rows of width d).
pub fn embedding(ids: &[u32], table: &[f32], d: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].iter().copied())
        .collect()
}

/// y = LN(x)·w·(1 + scale[seq]) + shift[seq]; LN without bias, eps 1e-5, biased variance.
/// `shift_scale` holds per-sequence [shift | scale] rows of width 2d, or None (plain LN·w).
pub fn layernorm_modulate(
    x: &[f32],
    d: usize,
    w: &[f32],
    shift_scale: Option<&[f32]>,
    rows_per_seq: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(d).enumerate() {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for j in 0..d {
            let mut y = (row[j] as f64 - mean) * inv * w[j] as f64;
            if let Some(m) = shift_scale {
                let s = r / rows_per_seq;
                y = y * (1.0 + m[s * 2 * d + d + j] as f64) + m[s * 2 * d + j] as f64;
            }
            out.push(y as f32);
        }
    }
    out
}

/// What happens to a matmul result before it is stored (`shaders/matmul.wgsl`).
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    Store,
    Gelu,
    Silu,
    /// out += gate[seq]·value, gate rows of width n per sequence.
    GatedResidual {
        gate: &'a [f32],
        rows_per_seq: usize,
    },
}

/// A product's sizes: `m` rows, `n` output columns, `k` inputs per output.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// out[m, n] = epilogue(Σ_k a[m,k]·w[n,k] + bias[n]): a Linear with weight stored [out, in].
pub fn matmul_bt(
    a: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dims: Dims,
    epi: Epilogue,
    out: &mut [f32],
) {
    let Dims { m, n, k } = dims;
    for i in 0..m {
        for j in 0..n {
            let mut acc: f64 = (0..k)
                .map(|t| a[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            if let Some(b) = bias {
                acc += b[j] as f64;
            }
            out[i * n + j] = match epi {
                Epilogue::Store => acc as f32,
                Epilogue::Gelu => gelu_tanh(acc) as f32,
                Epilogue::Silu => silu(acc) as f32,
                Epilogue::GatedResidual { gate, rows_per_seq } => {
                    (out[i * n + j] as f64 + gate[(i / rows_per_seq) * n + j] as f64 * acc) as f32
                }
            };
        }
    }
}

/// Rotate-half rotary on one head vector at table row `pos` (cos/sin rows of width head_dim/2).
pub fn rotate(v: &[f32], cos: &[f32], sin: &[f32], pos: usize) -> Vec<f64> {
    let half = v.len() / 2;
    let mut out = vec![0.0; v.len()];
    for i in 0..half {
        let (c, s) = (cos[pos * half + i] as f64, sin[pos * half + i] as f64);
        out[i] = v[i] as f64 * c - v[i + half] as f64 * s;
        out[i + half] = v[i + half] as f64 * c + v[i] as f64 * s;
    }
    out
}

/// The shape of one attention call: `batch` sequences of `seq` rows, `n_heads` heads, the mask, and
/// rotary positions `index % pos_period`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub mask: AttentionMask,
    pub pos_period: usize,
}

/// Multi-head attention over a fused qkv buffer [batch·seq, 3·d] (q | k | v, head-major) with rotary on
/// q and k (tables `cos`, `sin`) and the given mask. Returns [batch·seq, d].
pub fn attention(qkv: &[f32], shape: AttentionShape, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let AttentionShape {
        batch,
        seq,
        n_heads,
        mask,
        pos_period,
    } = shape;
    let d = qkv.len() / (batch * seq * 3);
    let dh = d / n_heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0f32; batch * seq * d];
    for b in 0..batch {
        for h in 0..n_heads {
            let row =
                |i: usize, which: usize| &qkv[(b * seq + i) * 3 * d + which * d + h * dh..][..dh];
            for qi in 0..seq {
                let q = rotate(row(qi, 0), cos, sin, qi % pos_period);
                let scores: Vec<Option<f64>> = (0..seq)
                    .map(|ki| {
                        mask.allows(qi, ki).then(|| {
                            let k = rotate(row(ki, 1), cos, sin, ki % pos_period);
                            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() * scale
                        })
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let denom: f64 = scores.iter().flatten().map(|s| (s - max).exp()).sum();
                for (ki, s) in scores.iter().enumerate() {
                    if let Some(s) = s {
                        let p = (s - max).exp() / denom;
                        for (j, v) in row(ki, 2).iter().enumerate() {
                            out[(b * seq + qi) * d + h * dh + j] += (p * *v as f64) as f32;
                        }
                    }
                }
            }
        }
    }
    out
}

/// SUBS log-probabilities of one row (official `diffusion.py:_subs_parameterization`): the mask logit gets −1e6, log-softmax; a row whose
/// input token is not the mask becomes −1e6 everywhere except 0 at that token.
pub fn subs_log_probs(logits: &[f32], input_token: u32, mask_id: u32) -> Vec<f64> {
    if input_token != mask_id {
        return (0..logits.len())
            .map(|v| if v as u32 == input_token { 0.0 } else { -1e6 })
            .collect();
    }
    let l: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(v, &x)| x as f64 + if v as u32 == mask_id { -1e6 } else { 0.0 })
        .collect();
    let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    l.iter().map(|x| x - lse).collect()
}

/// AR log-probabilities of one row: the mask logit is set to −1e6, then log-softmax.
pub fn ar_log_probs(logits: &[f32], mask_id: u32) -> Vec<f64> {
    let l: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(v, &x)| if v as u32 == mask_id { -1e6 } else { x as f64 })
        .collect();
    let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    l.iter().map(|x| x - lse).collect()
}

/// SEDD log-score of one row and the score entropy at a masked position (official `diffusion.py`: `_sedd_parameterization`, `_score_entropy`):
/// s = logits − log(expm1 σ) − log(V−1), s[x_t] = 0;
/// entropy = Σ_{y≠mask} exp(s_y) − r·s[x0] + r(log r − 1), r = 1/expm1(σ), 0 where x_t ≠ mask.
pub fn sedd_row(
    logits: &[f32],
    input_token: u32,
    target: u32,
    mask_id: u32,
    sigma: f64,
) -> (Vec<f64>, f64) {
    let shift = crate::schedule::esigm1_log(sigma) + ((logits.len() - 1) as f64).ln();
    let s: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(v, &x)| {
            if v as u32 == input_token {
                0.0
            } else {
                x as f64 - shift
            }
        })
        .collect();
    if input_token != mask_id {
        return (s, 0.0);
    }
    let r = 1.0 / sigma.exp_m1();
    let pos: f64 = s
        .iter()
        .enumerate()
        .filter(|(v, _)| *v as u32 != mask_id)
        .map(|(_, x)| x.exp())
        .sum();
    (s.clone(), pos - r * s[target as usize] + r * (r.ln() - 1.0))
}

/// Backward of [`attention`]: given the output gradient `d_o` [batch·seq, d], the gradient of the
/// fused qkv rows [batch·seq, 3d] (through the rotary embedding, by the chain rule in f64).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    qkv: &[f32],
    d_o: &[f32],
    batch: usize,
    seq: usize,
    n_heads: usize,
    mask: AttentionMask,
    cos: &[f32],
    sin: &[f32],
    pos_period: usize,
) -> Vec<f32> {
    let d = qkv.len() / (batch * seq * 3);
    let dh = d / n_heads;
    let half = dh / 2;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut grad = vec![0f64; qkv.len()];
    for b in 0..batch {
        for h in 0..n_heads {
            let row =
                |i: usize, which: usize| &qkv[(b * seq + i) * 3 * d + which * d + h * dh..][..dh];
            let qs: Vec<Vec<f64>> = (0..seq)
                .map(|i| rotate(row(i, 0), cos, sin, i % pos_period))
                .collect();
            let ks: Vec<Vec<f64>> = (0..seq)
                .map(|i| rotate(row(i, 1), cos, sin, i % pos_period))
                .collect();
            let (mut dq, mut dk) = (vec![vec![0f64; dh]; seq], vec![vec![0f64; dh]; seq]);
            for qi in 0..seq {
                let allowed: Vec<usize> = (0..seq).filter(|&k| mask.allows(qi, k)).collect();
                let s: Vec<f64> = allowed
                    .iter()
                    .map(|&k| qs[qi].iter().zip(&ks[k]).map(|(a, b)| a * b).sum::<f64>() * scale)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                let dout: Vec<f64> = d_o[(b * seq + qi) * d + h * dh..][..dh]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let dp: Vec<f64> = allowed
                    .iter()
                    .map(|&k| {
                        row(k, 2)
                            .iter()
                            .zip(&dout)
                            .map(|(v, g)| *v as f64 * g)
                            .sum()
                    })
                    .collect();
                let delta: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
                for (j, &k) in allowed.iter().enumerate() {
                    let ds = p[j] * (dp[j] - delta) * scale;
                    for e in 0..dh {
                        dq[qi][e] += ds * ks[k][e];
                        dk[k][e] += ds * qs[qi][e];
                        grad[(b * seq + k) * 3 * d + 2 * d + h * dh + e] += p[j] * dout[e];
                    }
                }
            }
            // Through the rotation: x' = R x, so dx = Rᵀ dx'.
            for i in 0..seq {
                let pos = i % pos_period;
                for (which, g) in [(0, &dq[i]), (1, &dk[i])] {
                    let base = (b * seq + i) * 3 * d + which * d + h * dh;
                    for e in 0..half {
                        let (c, s) = (cos[pos * half + e] as f64, sin[pos * half + e] as f64);
                        grad[base + e] += g[e] * c + g[e + half] * s;
                        grad[base + e + half] += g[e + half] * c - g[e] * s;
                    }
                }
            }
        }
    }
    grad.into_iter().map(|x| x as f32).collect()
}

/// Backward of [`layernorm_modulate`] for rows of width d in sequences of `rows_per_seq`:
/// returns (dx, dw, d_shift_scale) with d_shift_scale per sequence as [shift | scale] rows of 2d.
pub fn layernorm_modulate_backward(
    x: &[f32],
    d: usize,
    w: &[f32],
    shift_scale: Option<&[f32]>,
    rows_per_seq: usize,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n_seq = x.len() / d / rows_per_seq;
    let (mut dx, mut dw, mut dmod) = (
        vec![0f64; x.len()],
        vec![0f64; d],
        vec![0f64; n_seq * 2 * d],
    );
    for (r, row) in x.chunks(d).enumerate() {
        let s = r / rows_per_seq;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + 1e-5).sqrt();
        let n: Vec<f64> = row.iter().map(|&v| (v as f64 - mean) * inv).collect();
        let g = &dy[r * d..(r + 1) * d];
        let scale = |j: usize| shift_scale.map_or(0.0, |m| m[s * 2 * d + d + j] as f64);
        let dn: Vec<f64> = (0..d)
            .map(|j| g[j] as f64 * w[j] as f64 * (1.0 + scale(j)))
            .collect();
        let mean_dn = dn.iter().sum::<f64>() / d as f64;
        let mean_dnn = dn.iter().zip(&n).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for j in 0..d {
            dx[r * d + j] = (dn[j] - mean_dn - n[j] * mean_dnn) * inv;
            dw[j] += g[j] as f64 * n[j] * (1.0 + scale(j));
            dmod[s * 2 * d + j] += g[j] as f64;
            dmod[s * 2 * d + d + j] += g[j] as f64 * n[j] * w[j] as f64;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(dx), f(dw), f(dmod))
}
