//! Scoring finished samples under an autoregressive checkpoint: the generative perplexity and
//! unigram entropy with which the paper judges samples (Arriola et al., "Block Diffusion", ICLR 2025,
//! arXiv 2503.09573, Suppl. C.5), computed as the official code does (kuleshov-group/bd3lms:
//! `diffusion.py` `compute_generative_perplexity` → `metrics.py` `record_generative_perplexity`,
//! which scores with GPT-2 Large):
//!
//! * next-token NLL of every token of a sample after its first (the first is context only; in the
//!   official pipeline it is the BOS `<|endoftext|>` that the decoded text starts with);
//! * samples longer than the scorer's context C go through a sliding window with stride C/2 (the
//!   official stride is 512 for GPT-2's 1024): the first window scores tokens 1..C−1, each later
//!   window (start += stride) only its last `stride` positions, so every token is scored once, with at
//!   least C/2 tokens of context once the first window is passed ([`windows`]);
//! * targets equal to EOS are left out of the sums (the official `valid_tokens` mask);
//! * the unigram entropy of each sample's tokens in nats (`torch.special.entr` of the token
//!   frequencies, as `record_generative_perplexity` does), [`unigram_entropy`].
//!
//! Only per-token losses come back from the GPU (one f32 per scored row), never logits; the sums are
//! taken in f64 on the host.
//!
//! Where this differs from the official code: the scorer is any AR checkpoint of this project
//! (ours, or the official `ar-noeos-owt`, GPT-2-shaped), not GPT-2 Large through `transformers`; its
//! context is the checkpoint's `model_length` (a window of C tokens feeds C − 1 inputs, as the AR
//! training does), and re-tokenisation (when the sample's tokenizer is not the scorer's) is the
//! caller's choice rather than always on.

use crate::model::{ForwardInput, ForwardShape, GpuModel, Objective};
use bd3_model::{AttentionMask, Error, ModelKind, Result};

/// One pass of the scorer over `tokens[start..end]`: targets `first_target..end` are scored, each
/// conditioned on the tokens from `start` up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub first_target: usize,
}

/// The sliding windows of `metrics.py` `record_generative_perplexity` for a sequence of `len` tokens
/// and a scorer context of `context` tokens, stride `context / 2`: every position 1..len is a target
/// of exactly one window. Empty when there is nothing to score (fewer than 2 tokens, or a context
/// under 2).
pub fn windows(len: usize, context: usize) -> Vec<Window> {
    if len < 2 || context < 2 {
        return Vec::new();
    }
    let stride = context / 2;
    // Official: num_strides = max(1, ceil((len − C + stride) / stride)).
    let n = if len <= context {
        1
    } else {
        (len - context).div_ceil(stride) + 1
    };
    (0..n)
        .map(|i| {
            if i == 0 {
                Window {
                    start: 0,
                    end: context.min(len),
                    first_target: 1,
                }
            } else {
                let start = i * stride;
                Window {
                    start,
                    end: (start + context).min(len),
                    first_target: start + context - stride,
                }
            }
        })
        .collect()
}

/// The summed next-token NLL of one sample and the number of tokens it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleScore {
    /// Σ −log p(token | preceding tokens in its window), nats.
    pub nll_sum: f64,
    /// Tokens scored (targets that are not EOS).
    pub tokens: usize,
}

impl SampleScore {
    /// exp(mean NLL), the per-sample generative perplexity the official scripts average
    /// (`scripts/log_sample_stats.py` over batches of one sample); None without scored tokens.
    pub fn perplexity(&self) -> Option<f64> {
        (self.tokens > 0).then(|| (self.nll_sum / self.tokens as f64).exp())
    }
}

/// How [`score_sequences`] batches and what it leaves out.
#[derive(Clone, Copy, Debug)]
pub struct ScoreOptions {
    /// Windows per forward.
    pub batch: usize,
    /// Targets equal to this id are not scored (the scorer's EOS, as the official code does).
    pub exclude: Option<u32>,
}

/// Score each sequence under the AR model `model`, the official way (module docs). Sequences of
/// different lengths share batches: each window row is padded at its end, which a causal model
/// cannot see from earlier positions, and the padded rows' losses are dropped.
pub async fn score_sequences(
    model: &mut GpuModel,
    seqs: &[Vec<u32>],
    opts: &ScoreOptions,
) -> Result<Vec<SampleScore>> {
    if model.cfg.kind != ModelKind::Ar {
        return Err(Error::Invalid(format!(
            "the scorer must be an autoregressive (ar) model, not {}",
            model.cfg.kind.name()
        )));
    }
    if opts.batch == 0 {
        return Err(Error::Invalid(
            "the scoring batch must be at least 1".into(),
        ));
    }
    let context = model.cfg.model_length;
    let mask = model.cfg.mask_id();
    for (i, s) in seqs.iter().enumerate() {
        // In range of the embedding is checked by the forward; the mask token is in range but is not
        // a token a finished sample can hold (the AR head gives it log-probability −1e6).
        if let Some(&t) = s.iter().find(|&&t| t >= mask) {
            return Err(Error::Invalid(format!("sample {i}: token id {t} is not a text token of the scorer (its vocabulary has {mask} text tokens)")));
        }
    }
    let jobs: Vec<(usize, Window)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| windows(s.len(), context).into_iter().map(move |w| (i, w)))
        .collect();
    let mut scores = vec![SampleScore::default(); seqs.len()];
    let Some(rows) = jobs.iter().map(|(_, w)| w.end - w.start - 1).max() else {
        return Ok(scores);
    };
    let batch = opts.batch.min(jobs.len());
    let shape = ForwardShape {
        per_token: true,
        ..ForwardShape::plain(batch, rows, AttentionMask::Causal, Objective::Ar)
    };
    let ones = vec![1f32; batch * rows];
    for group in jobs.chunks(batch) {
        let (mut inputs, mut targets) = (
            Vec::with_capacity(batch * rows),
            Vec::with_capacity(batch * rows),
        );
        for r in 0..batch {
            // A short last group repeats its first window; those rows are not read.
            let (i, w) = group.get(r).unwrap_or(&group[0]);
            let s = &seqs[*i];
            let n = w.end - w.start - 1;
            inputs.extend_from_slice(&s[w.start..w.end - 1]);
            targets.extend_from_slice(&s[w.start + 1..w.end]);
            // Padding after the window: any valid id, here the window's last token.
            inputs.extend(std::iter::repeat_n(s[w.end - 1], rows - n));
            targets.extend(std::iter::repeat_n(s[w.end - 1], rows - n));
        }
        let input = ForwardInput {
            tokens: &inputs,
            sigma: &[],
            input_ids: &inputs,
            targets: &targets,
            weights: &ones,
            sedd_t: &[],
        };
        let out = model.forward(&shape, &input).await?;
        let losses = out
            .token_loss
            .ok_or_else(|| Error::Gpu("the forward returned no per-token losses".into()))?;
        for (r, (i, w)) in group.iter().enumerate() {
            // Row j predicts position start + 1 + j; targets before first_target belong to an
            // earlier window.
            let window_targets = &seqs[*i][w.start + 1..w.end];
            for (j, &target) in window_targets
                .iter()
                .enumerate()
                .skip(w.first_target - w.start - 1)
            {
                if opts.exclude == Some(target) {
                    continue;
                }
                scores[*i].nll_sum += losses[r * rows + j] as f64;
                scores[*i].tokens += 1;
            }
        }
    }
    Ok(scores)
}

/// The unigram entropy of a sample's tokens in nats, −Σ_v π_v ln π_v over the token frequencies π
/// (`metrics.py` `record_generative_perplexity`: `torch.special.entr(counts / counts.sum()).sum()`);
/// 0 for an empty sample.
pub fn unigram_entropy(tokens: &[u32]) -> f64 {
    let mut sorted = tokens.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as f64;
    sorted
        .chunk_by(|a, b| a == b)
        .map(|run| {
            let p = run.len() as f64 / n;
            -p * p.ln()
        })
        .sum::<f64>()
        // A single distinct token gives −1·ln 1 = −0.0; report +0.
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_target_once_with_the_official_layout() {
        // Hand values for C = 16 (stride 8): the official loop gives windows [0,16), [8,24), [16,30)
        // scoring 1..16, 16..24, 24..30.
        assert_eq!(
            windows(30, 16),
            vec![
                Window {
                    start: 0,
                    end: 16,
                    first_target: 1
                },
                Window {
                    start: 8,
                    end: 24,
                    first_target: 16
                },
                Window {
                    start: 16,
                    end: 30,
                    first_target: 24
                },
            ]
        );
        assert_eq!(
            windows(16, 16),
            vec![Window {
                start: 0,
                end: 16,
                first_target: 1
            }]
        );
        assert_eq!(
            windows(5, 16),
            vec![Window {
                start: 0,
                end: 5,
                first_target: 1
            }]
        );
        assert_eq!(
            windows(17, 16),
            vec![
                Window {
                    start: 0,
                    end: 16,
                    first_target: 1
                },
                Window {
                    start: 8,
                    end: 17,
                    first_target: 16
                }
            ]
        );
        assert!(windows(1, 16).is_empty() && windows(0, 16).is_empty());
        // Odd context (stride 3) and many lengths: targets 1..len exactly once, context never over C.
        for c in [2usize, 3, 7, 16] {
            for len in 2..60 {
                let ws = windows(len, c);
                let targets: Vec<usize> = ws.iter().flat_map(|w| w.first_target..w.end).collect();
                assert_eq!(targets, (1..len).collect::<Vec<_>>(), "C {c} len {len}");
                assert!(
                    ws.iter()
                        .all(|w| w.end - w.start <= c && w.start < w.first_target),
                    "C {c} len {len}"
                );
            }
        }
    }

    #[test]
    fn unigram_entropy_hand_values() {
        assert_eq!(unigram_entropy(&[7; 12]), 0.0);
        assert_eq!(unigram_entropy(&[]), 0.0);
        // Two tokens equally often: ln 2.
        assert!((unigram_entropy(&[1, 2, 1, 2]) - std::f64::consts::LN_2).abs() < 1e-15);
        // Frequencies 1/2, 1/4, 1/4: 1.5 ln 2.
        assert!((unigram_entropy(&[5, 9, 5, 3]) - 1.5 * std::f64::consts::LN_2).abs() < 1e-15);
    }
}
