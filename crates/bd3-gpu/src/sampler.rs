//! Generation (official `diffusion.py:_semi_ar_sampler`, paper Alg. 2): the block loop of BD3-LM with its KV cache, MDLM's windowed decoding, the AR
//! sampler and SEDD's analytic sampler, all driving [`GpuModel::step`].
//!
//! Draws happen on the GPU (`shaders/sample.wgsl`); the host chooses which masked position a
//! first-hitting call reveals (uniformly, from the same seed) and keeps the sequences. Confidence
//! decoding chooses on the GPU too (`shaders/confidence.wgsl`, in the same submission). One seed gives
//! the same tokens on the same adapter.

use crate::model::GpuModel;
use crate::model_call::{CallAction, CallInputs, CallShape};
use crate::ops::confidence::Reveal;
use crate::ops::sample::SampleMode;
use bd3_model::init::SplitMix;
use bd3_model::schedule::sigma_from_p;
use bd3_model::{Error, ModelConfig, ModelKind, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// One masked position per model call, chosen uniformly; its token from the nucleus-filtered model.
    FirstHitting,
    /// T steps per block from t = 1 to 0; each masked token unmasks with probability dt/t.
    Ddpm,
    /// Parallel decoding by confidence (not one of the paper's samplers; BD3LM and MDLM models). Per
    /// model call, a token is drawn at every masked position of the current block (of the window, for
    /// MDLM) from the nucleus-filtered distribution, exactly as first-hitting draws its one position.
    /// Each draw's confidence is the drawn token's probability under the model *before* the nucleus:
    /// p_v = softmax(logits)_v with the mask's logit at −∞ (the SUBS distribution), not renormalised
    /// over the nucleus. The `tokens_per_call` draws with the highest confidence are revealed (ties:
    /// the lower position first; all of them when fewer positions are masked); the other positions
    /// stay masked and are drawn afresh by the next call. A block of m masked positions takes
    /// ⌈m / K⌉ calls.
    Confidence { tokens_per_call: usize },
    /// Adaptive confidence decoding: as [`Sampler::Confidence`], but each call reveals every masked
    /// position whose draw has confidence ≥ `threshold` (compared in f32 on the GPU), and at least the
    /// most confident one.
    ConfidenceThreshold { threshold: f64 },
}

/// The sampler names the CLI and the page accept.
pub const SAMPLER_NAMES: &[&str] = &[
    "first-hitting",
    "ddpm",
    "confidence",
    "confidence-threshold",
];

/// Defaults of the sampling options, defined once for the CLI, the page and the library.
pub mod defaults {
    /// Nucleus mass of the masked-diffusion and AR samplers (the official sampling configs' 0.9).
    pub const TOP_P: f64 = 0.9;
    /// SEDD's nucleus mass (its official configs use 0.99 with the analytic sampler).
    pub const SEDD_TOP_P: f64 = 0.99;
    /// SEDD's analytic steps over the whole sequence (the official 1000).
    pub const SEDD_STEPS: usize = 1000;
    pub const SEED: u64 = 1;
    pub const BATCH: usize = 1;
    /// Confidence decoding: positions revealed per call.
    pub const TOKENS_PER_CALL: usize = 2;
    /// Adaptive confidence decoding: the probability a draw needs to be revealed.
    pub const CONFIDENCE_THRESHOLD: f64 = 0.9;
}

impl Sampler {
    /// A sampler by name, with the default parameters of the confidence samplers.
    pub fn parse(s: &str) -> Option<Sampler> {
        Sampler::from_name(s, None, None).ok()
    }

    /// A sampler by name (one of [`SAMPLER_NAMES`]); `tokens_per_call` and `threshold` set the
    /// confidence samplers' parameters (defaults: [`defaults::TOKENS_PER_CALL`],
    /// [`defaults::CONFIDENCE_THRESHOLD`]) and may be given only to the sampler that uses them.
    pub fn from_name(
        name: &str,
        tokens_per_call: Option<usize>,
        threshold: Option<f64>,
    ) -> Result<Sampler> {
        let s = match name {
            "first-hitting" => Sampler::FirstHitting,
            "ddpm" => Sampler::Ddpm,
            "confidence" => Sampler::Confidence {
                tokens_per_call: tokens_per_call.unwrap_or(defaults::TOKENS_PER_CALL),
            },
            "confidence-threshold" => Sampler::ConfidenceThreshold {
                threshold: threshold.unwrap_or(defaults::CONFIDENCE_THRESHOLD),
            },
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown sampler `{name}` (expected {})",
                    SAMPLER_NAMES.join(", ")
                )))
            }
        };
        if tokens_per_call.is_some() && !matches!(s, Sampler::Confidence { .. }) {
            return Err(Error::Invalid(format!(
                "tokens per call are for the confidence sampler, not {name}"
            )));
        }
        if threshold.is_some() && !matches!(s, Sampler::ConfidenceThreshold { .. }) {
            return Err(Error::Invalid(format!(
                "a confidence threshold is for the confidence-threshold sampler, not {name}"
            )));
        }
        s.check()?;
        Ok(s)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sampler::FirstHitting => "first-hitting",
            Sampler::Ddpm => "ddpm",
            Sampler::Confidence { .. } => "confidence",
            Sampler::ConfidenceThreshold { .. } => "confidence-threshold",
        }
    }

    /// The parameters are in range: K ≥ 1, threshold in (0, 1].
    pub fn check(&self) -> Result<()> {
        match *self {
            Sampler::Confidence { tokens_per_call: 0 } => {
                Err(Error::Invalid("tokens per call must be at least 1".into()))
            }
            Sampler::Confidence { tokens_per_call } if tokens_per_call > u32::MAX as usize => Err(
                Error::Invalid(format!("{tokens_per_call} tokens per call is too many")),
            ),
            Sampler::ConfidenceThreshold { threshold }
                if !(threshold > 0.0 && threshold <= 1.0) =>
            {
                Err(Error::Invalid(format!(
                    "the confidence threshold {threshold} must be in (0, 1]"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Which draws a confidence call keeps (None for the other samplers).
    fn reveal(&self) -> Option<Reveal> {
        match *self {
            Sampler::Confidence { tokens_per_call } => Some(Reveal::top(tokens_per_call as u32)),
            Sampler::ConfidenceThreshold { threshold } => Some(Reveal::threshold(threshold as f32)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub batch: usize,
    /// Tokens per sequence, BOS and prompt included (the official `model.length` at sample time).
    pub length: usize,
    /// Token ids placed after BOS as clean context.
    pub prompt: Vec<u32>,
    /// Nucleus mass (the official rule keeps tokens with cumulative probability ≤ p).
    pub top_p: f64,
    pub sampler: Sampler,
    /// Steps per block (DDPM) or in total (SEDD); first-hitting needs none.
    pub steps: usize,
    pub seed: u64,
    /// Stop each sequence at its first generated EOS.
    pub var_length: bool,
    /// The official low-entropy check: entropy of the last 256 tokens < 4 nats rejects the sample
    /// (fixed length: regenerate, up to 10 tries) or ends it (variable length).
    pub entropy_check: bool,
    /// Set from elsewhere (a Stop button) to end generation before the next model call, or, where
    /// first-hitting submits a block's calls at once (`GpuModel::block_recording`), the next block.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl SampleOptions {
    /// The defaults for a model: one sequence of the model's length from BOS, seed 1, first-hitting
    /// with nucleus 0.9 and one DDPM step per block position; for SEDD nucleus 0.99 and 1000
    /// analytic steps (the official sampling settings). The CLI, the page and the library all start
    /// from here.
    pub fn defaults_for(cfg: &ModelConfig) -> SampleOptions {
        let sedd = cfg.kind == ModelKind::Sedd;
        SampleOptions {
            batch: defaults::BATCH,
            length: cfg.model_length,
            prompt: Vec::new(),
            top_p: if sedd {
                defaults::SEDD_TOP_P
            } else {
                defaults::TOP_P
            },
            sampler: Sampler::FirstHitting,
            steps: if sedd {
                defaults::SEDD_STEPS
            } else {
                cfg.block_size
            },
            seed: defaults::SEED,
            var_length: false,
            entropy_check: false,
            stop: None,
        }
    }
}

/// What the sampler reports while it works (for streaming, traces and the page).
#[derive(Debug)]
pub enum SampleEvent<'a> {
    /// A model call revealed tokens: (sequence, position, token).
    Revealed {
        block: usize,
        call: u32,
        revealed: &'a [(usize, usize, u32)],
    },
    /// A block is final: sequence s now holds `sequences[s][..end]`.
    Committed {
        block: usize,
        end: usize,
        sequences: &'a [Vec<u32>],
    },
}

pub struct SampleResult {
    pub sequences: Vec<Vec<u32>>,
    /// Model calls that changed the sequence (the official NFE count).
    pub nfe: usize,
    /// All model calls, cache commits included.
    pub calls: usize,
}

struct Run<'m, 'e> {
    model: &'m mut GpuModel,
    opts: SampleOptions,
    rng: SplitMix,
    call: u32,
    nfe: usize,
    calls: usize,
    on_event: &'e mut dyn FnMut(SampleEvent),
}

fn stream(seq: usize, pos: usize) -> u32 {
    (seq as u32).wrapping_mul(0x9e37_79b1) ^ pos as u32
}

/// The longest block whose first-hitting calls are submitted at once: one recorded instance of the
/// call per row (BD3-LM blocks are 4 to 16 rows; MDLM's windows of hundreds go call by call).
const BLOCK_RECORDING_MAX_ROWS: usize = 16;
const ENTROPY_WINDOW: usize = 256;
const ENTROPY_MIN: f64 = 4.0;
const MAX_TRIES: usize = 10;

/// Unigram entropy (nats) of the last 256 tokens.
pub fn tail_entropy(seq: &[u32]) -> f64 {
    let tail = &seq[seq.len().saturating_sub(ENTROPY_WINDOW)..];
    let mut counts = std::collections::HashMap::new();
    for t in tail {
        *counts.entry(t).or_insert(0usize) += 1;
    }
    let n = tail.len() as f64;
    counts
        .values()
        .map(|&c| -(c as f64 / n) * (c as f64 / n).ln())
        .sum()
}

impl SampleOptions {
    /// Refuse a request the model cannot serve (prompt too long or outside the vocabulary, no
    /// room to generate, a sampler the model kind does not support) before any GPU work: the
    /// CLI calls this before it loads the weights, and [`generate`] calls it again.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        let prefix = 1 + self.prompt.len();
        if self.batch == 0 {
            return Err(Error::Invalid(
                "batch size 0: at least one sequence is needed".into(),
            ));
        }
        if prefix >= cfg.model_length {
            return Err(Error::Invalid(format!(
                "the prompt ({} tokens with BOS) does not fit the model's context of {} tokens",
                prefix, cfg.model_length
            )));
        }
        if self.length <= prefix {
            return Err(Error::Invalid(format!(
                "length {} leaves no room to generate after {} prompt tokens (BOS included)",
                self.length, prefix
            )));
        }
        if let Some(t) = self
            .prompt
            .iter()
            .find(|&&t| t as usize >= cfg.vocab_size - 1)
        {
            return Err(Error::Invalid(format!(
                "prompt token {t} is outside the model's vocabulary"
            )));
        }
        self.sampler.check()?;
        if self.sampler != Sampler::FirstHitting
            && matches!(cfg.kind, ModelKind::Ar | ModelKind::Sedd)
        {
            return Err(Error::Invalid(format!(
                "the {} sampler is for BD3LM and MDLM models, not {}",
                self.sampler.name(),
                cfg.kind.name()
            )));
        }
        Ok(())
    }
}

/// Generate `opts.batch` sequences.
pub async fn generate(
    model: &mut GpuModel,
    opts: &SampleOptions,
    on_event: &mut dyn FnMut(SampleEvent),
) -> Result<SampleResult> {
    let cfg = model.cfg.clone();
    opts.check(&cfg)?;
    model.begin_generation();
    let mut run = Run {
        model,
        opts: opts.clone(),
        rng: SplitMix(opts.seed),
        call: 0,
        nfe: 0,
        calls: 0,
        on_event,
    };
    for _try in 0..MAX_TRIES {
        let result = match cfg.kind {
            ModelKind::Bd3lm => run.blocks().await?,
            ModelKind::Mdlm => run.windows().await?,
            ModelKind::Ar => run.autoregressive().await?,
            ModelKind::Sedd => run.analytic().await?,
        };
        if let Some(sequences) = result {
            return Ok(SampleResult {
                sequences,
                nfe: run.nfe,
                calls: run.calls,
            });
        }
    }
    Err(Error::Invalid(format!("sampling failed: {MAX_TRIES} samples in a row had a low-entropy tail (entropy of the last 256 tokens < 4)")))
}

impl Run<'_, '_> {
    fn bos(&self) -> u32 {
        self.model.cfg.bos_id()
    }
    fn mask(&self) -> u32 {
        self.model.cfg.mask_id()
    }

    fn start(&self) -> Vec<Vec<u32>> {
        let mut s = vec![self.bos()];
        s.extend(&self.opts.prompt);
        vec![s; self.opts.batch]
    }

    async fn commit(&mut self, tokens: &[u32], rows: usize, cache_idx: usize) -> Result<()> {
        let shape = CallShape {
            batch: self.opts.batch,
            rows,
            cache_len: self.model.cfg.model_length,
            action: CallAction::Commit,
        };
        let call = CallInputs {
            tokens,
            cache_idx,
            sigma: &[],
            picked: &[],
            top_p: 1.0,
            mask_prob: 0.0,
            dsigma: &[],
            seed: self.opts.seed,
            call: self.call,
            streams: &[],
            draws: None,
            reveal: None,
        };
        self.calls += 1;
        self.model.call(&shape, &call).await.map(|_| ())
    }

    /// Draw at every row of the block (DDPM, confidence decoding) and put each draw that replaced
    /// a mask in place, noting it in `revealed`. `at` is (rows per sequence, first position, cache
    /// index) of the block.
    async fn draw_every_row(
        &mut self,
        block: &mut [u32],
        at: (usize, usize, usize),
        mode: SampleMode,
        mask_prob: f64,
        revealed: &mut Vec<(usize, usize, u32)>,
    ) -> Result<()> {
        let (rows, start, cache_idx) = at;
        let mask = self.mask();
        // Rows in position order: the GPU's confidence tie rule relies on it.
        let picked: Vec<u32> = (0..block.len() / rows)
            .flat_map(|_| 0..rows as u32)
            .collect();
        let tokens = self
            .sample(
                block,
                rows,
                start,
                cache_idx,
                &picked,
                rows,
                mode,
                mask_prob,
                &[],
                &[],
            )
            .await?;
        for (j, &tok) in tokens.iter().enumerate() {
            if block[j] == mask && tok != mask {
                block[j] = tok;
                revealed.push((j / rows, start + j % rows, tok));
            }
        }
        Ok(())
    }

    /// One sampling call over `block` ([batch, rows]) whose first token is at logical position `start`
    /// and sits at cache position `cache_idx` (equal for the cached samplers, 0 for a window).
    #[allow(clippy::too_many_arguments)]
    async fn sample(
        &mut self,
        block: &[u32],
        rows: usize,
        start: usize,
        cache_idx: usize,
        picked: &[u32],
        head_rows: usize,
        mode: SampleMode,
        mask_prob: f64,
        sigma: &[f64],
        dsigma: &[f64],
    ) -> Result<Vec<u32>> {
        let cache_len = self.model.cfg.model_length;
        let streams: Vec<u32> = picked
            .iter()
            .enumerate()
            .map(|(i, &r)| stream(i / head_rows, start + r as usize))
            .collect();
        let shape = CallShape {
            batch: self.opts.batch,
            rows,
            cache_len,
            action: CallAction::Sample {
                head_rows,
                mode,
                verify: false,
            },
        };
        if self
            .opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(Error::Cancelled);
        }
        let reveal = if mode == SampleMode::Confidence {
            self.opts.sampler.reveal()
        } else {
            None
        };
        let call = CallInputs {
            tokens: block,
            cache_idx,
            sigma,
            picked,
            top_p: self.opts.top_p,
            mask_prob,
            dsigma,
            seed: self.opts.seed,
            call: self.call,
            streams: &streams,
            draws: None,
            reveal,
        };
        self.call = self.call.wrapping_add(1);
        self.calls += 1;
        Ok(self.model.call(&shape, &call).await?.tokens)
    }

    /// Denoise the masked positions of `block` ([batch, rows] at logical `start`, cache position
    /// `cache_idx`) until none is left.
    async fn denoise_block(
        &mut self,
        block: &mut [u32],
        rows: usize,
        start: usize,
        cache_idx: usize,
        block_index: usize,
    ) -> Result<()> {
        if self.opts.sampler == Sampler::FirstHitting
            && self.model.block_recording
            && rows <= BLOCK_RECORDING_MAX_ROWS
        {
            return self
                .first_hitting_block(block, rows, start, cache_idx, block_index)
                .await;
        }
        let (batch, mask) = (self.opts.batch, self.mask());
        let steps = self.opts.steps.max(1);
        for i in 0.. {
            let masked: Vec<Vec<u32>> = (0..batch)
                .map(|s| {
                    (0..rows as u32)
                        .filter(|&r| block[s * rows + r as usize] == mask)
                        .collect()
                })
                .collect();
            if masked.iter().all(|m| m.is_empty()) {
                return Ok(());
            }
            let mut revealed = Vec::new();
            match self.opts.sampler {
                Sampler::FirstHitting => {
                    let picked: Vec<u32> = masked
                        .iter()
                        .map(|m| {
                            if m.is_empty() {
                                0
                            } else {
                                m[(self.rng.next_u64() % m.len() as u64) as usize]
                            }
                        })
                        .collect();
                    let tokens = self
                        .sample(
                            block,
                            rows,
                            start,
                            cache_idx,
                            &picked,
                            1,
                            SampleMode::FirstHitting,
                            0.0,
                            &[],
                            &[],
                        )
                        .await?;
                    for s in 0..batch {
                        let r = picked[s] as usize;
                        if !masked[s].is_empty() {
                            block[s * rows + r] = tokens[s];
                            revealed.push((s, start + r, tokens[s]));
                        }
                    }
                }
                Sampler::Ddpm => {
                    // t on the grid linspace(1, 0, T); the last step unmasks everything left.
                    let t = if steps == 1 {
                        1.0
                    } else {
                        1.0 - i as f64 / (steps - 1) as f64
                    };
                    let dt = 1.0 / steps as f64;
                    let mask_prob = if i + 1 >= steps || t <= dt {
                        0.0
                    } else {
                        (t - dt) / t
                    };
                    let at = (rows, start, cache_idx);
                    self.draw_every_row(block, at, SampleMode::Ddpm, mask_prob, &mut revealed)
                        .await?;
                }
                Sampler::Confidence { .. } | Sampler::ConfidenceThreshold { .. } => {
                    // Every row is drawn and the choice is made on the GPU: what comes back is the
                    // block with the kept draws in place and the mask at the other masked rows. The
                    // rows are passed in position order, which the GPU's tie rule relies on.
                    let at = (rows, start, cache_idx);
                    self.draw_every_row(block, at, SampleMode::Confidence, 0.0, &mut revealed)
                        .await?;
                    // Each call reveals at least one position of every sequence with masked ones.
                    for (s, m) in masked.iter().enumerate() {
                        if !m.is_empty() && !revealed.iter().any(|r| r.0 == s) {
                            return Err(Error::Gpu(format!(
                                "a confidence call revealed nothing in sequence {s}"
                            )));
                        }
                    }
                }
            }
            if !revealed.is_empty() {
                self.revealed(block_index, &revealed);
            }
        }
        Ok(())
    }

    /// A call that revealed tokens: one NFE, and the event.
    fn revealed(&mut self, block: usize, revealed: &[(usize, usize, u32)]) {
        self.nfe += 1;
        (self.on_event)(SampleEvent::Revealed {
            block,
            call: self.call,
            revealed,
        });
    }

    /// First-hitting over a whole block in one submission (`GpuModel::call_block`): which row each
    /// call reveals depends only on the random stream, never on the drawn tokens, so every call's
    /// pick is drawn here first, in the order and from the same stream as one call at a time would
    /// (`denoise_block`), and the GPU carries each drawn token into the next call. The tokens, the
    /// calls, the NFEs and the events are those of the call-by-call loop; cancelling is checked once
    /// per block.
    async fn first_hitting_block(
        &mut self,
        block: &mut [u32],
        rows: usize,
        start: usize,
        cache_idx: usize,
        block_index: usize,
    ) -> Result<()> {
        let (batch, mask) = (self.opts.batch, self.mask());
        let mut masked: Vec<Vec<u32>> = (0..batch)
            .map(|s| {
                (0..rows as u32)
                    .filter(|&r| block[s * rows + r as usize] == mask)
                    .collect()
            })
            .collect();
        // Per call: each sequence's pick and whether it reveals (the sequence had a masked row).
        let mut picks: Vec<Vec<(u32, bool)>> = Vec::new();
        while masked.iter().any(|m| !m.is_empty()) {
            picks.push(
                masked
                    .iter_mut()
                    .map(|m| {
                        if m.is_empty() {
                            (0, false)
                        } else {
                            let i = (self.rng.next_u64() % m.len() as u64) as usize;
                            (m.remove(i), true)
                        }
                    })
                    .collect(),
            );
        }
        if picks.is_empty() {
            return Ok(());
        }
        if self
            .opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(Error::Cancelled);
        }
        let picked: Vec<Vec<u32>> = picks
            .iter()
            .map(|p| p.iter().map(|&(r, _)| r).collect())
            .collect();
        let streams: Vec<Vec<u32>> = picked
            .iter()
            .map(|p| {
                p.iter()
                    .enumerate()
                    .map(|(s, &r)| stream(s, start + r as usize))
                    .collect()
            })
            .collect();
        let shape = CallShape {
            batch,
            rows,
            cache_len: self.model.cfg.model_length,
            action: CallAction::Sample {
                head_rows: 1,
                mode: SampleMode::FirstHitting,
                verify: false,
            },
        };
        let initial = block.to_vec();
        let calls: Vec<CallInputs> = (0..picks.len())
            .map(|j| CallInputs {
                tokens: &initial,
                cache_idx,
                sigma: &[],
                picked: &picked[j],
                top_p: self.opts.top_p,
                mask_prob: 0.0,
                dsigma: &[],
                seed: self.opts.seed,
                call: self.call.wrapping_add(j as u32),
                streams: &streams[j],
                draws: None,
                reveal: None,
            })
            .collect();
        let outputs = self.model.call_block(&shape, &calls).await?;
        for (p, out) in picks.iter().zip(outputs) {
            self.call = self.call.wrapping_add(1);
            self.calls += 1;
            let mut revealed = Vec::new();
            for (s, &(r, reveals)) in p.iter().enumerate() {
                if reveals {
                    block[s * rows + r as usize] = out.tokens[s];
                    revealed.push((s, start + r as usize, out.tokens[s]));
                }
            }
            self.revealed(block_index, &revealed);
        }
        Ok(())
    }

    /// Checks after a block: EOS (variable length) and the entropy rule. Returns Err(()) to reject.
    fn after_block(
        &self,
        seqs: &mut [Vec<u32>],
        done: &mut [bool],
        generated_from: usize,
    ) -> std::result::Result<(), ()> {
        let eos = self.bos();
        for (s, seq) in seqs.iter_mut().enumerate() {
            if done[s] {
                continue;
            }
            if self.opts.var_length {
                if let Some(p) = seq
                    .iter()
                    .skip(generated_from.max(1))
                    .position(|&t| t == eos)
                {
                    seq.truncate(generated_from.max(1) + p + 1);
                    done[s] = true;
                    continue;
                }
            }
            if self.opts.entropy_check
                && seq.len() > ENTROPY_WINDOW
                && tail_entropy(seq) < ENTROPY_MIN
            {
                if !self.opts.var_length {
                    return Err(());
                }
                let keep = seq.len() - ENTROPY_WINDOW;
                seq.truncate(keep);
                done[s] = true;
            }
        }
        Ok(())
    }

    /// BD3-LM: blocks left to right; clean blocks live in the KV cache.
    async fn blocks(&mut self) -> Result<Option<Vec<Vec<u32>>>> {
        let (batch, mask, bs) = (self.opts.batch, self.mask(), self.model.cfg.block_size);
        let total = self.opts.length;
        let mut seqs = self.start();
        let prefix = seqs[0].len();
        let mut done = vec![false; batch];
        // Whole clean blocks of the prompt go straight into the cache.
        for blk in 0..prefix / bs {
            let tokens: Vec<u32> = seqs
                .iter()
                .flat_map(|s| s[blk * bs..(blk + 1) * bs].to_vec())
                .collect();
            self.commit(&tokens, bs, blk * bs).await?;
        }
        for blk in prefix / bs..total.div_ceil(bs) {
            let start = blk * bs;
            let mut block: Vec<u32> = (0..batch)
                .flat_map(|s| {
                    (start..start + bs)
                        .map(|p| if p < prefix { seqs[s][p] } else { mask })
                        .collect::<Vec<_>>()
                })
                .collect();
            self.denoise_block(&mut block, bs, start, start, blk)
                .await?;
            for s in 0..batch {
                if !done[s] {
                    seqs[s].truncate(start);
                    seqs[s].extend_from_slice(&block[s * bs..(s + 1) * bs]);
                }
            }
            if self
                .after_block(&mut seqs, &mut done, start.max(prefix))
                .is_err()
            {
                return Ok(None);
            }
            (self.on_event)(SampleEvent::Committed {
                block: blk,
                end: start + bs,
                sequences: &seqs,
            });
            if done.iter().all(|&d| d) || start + bs >= total {
                break;
            }
            self.commit(&block, bs, start).await?;
        }
        Ok(Some(finish(seqs, total)))
    }

    /// MDLM: the first window of L tokens as one block, then strides of L/2 new tokens, each decoded
    /// with a window of L/2 context + L/2 masks and full attention recomputed per call (official `_semi_ar_sampler`, the `mdlm_semi_ar` branch).
    async fn windows(&mut self) -> Result<Option<Vec<Vec<u32>>>> {
        let (batch, mask, l) = (self.opts.batch, self.mask(), self.model.cfg.model_length);
        let total = self.opts.length;
        let mut seqs = self.start();
        let prefix = seqs[0].len();
        let mut done = vec![false; batch];
        let stride = (l / 2).max(1);
        let mut end = total.min(l);
        let mut window_index = 0;
        loop {
            let start = end.saturating_sub(l);
            let rows = end - start;
            let mut window: Vec<u32> = (0..batch)
                .flat_map(|s| {
                    (start..end)
                        .map(|p| seqs[s].get(p).copied().unwrap_or(mask))
                        .collect::<Vec<_>>()
                })
                .collect();
            // The whole window is processed from scratch every call, placed at cache rows 0..rows.
            self.denoise_block(&mut window, rows, start, 0, window_index)
                .await?;
            let generated_from = seqs[0].len().max(prefix);
            for s in 0..batch {
                if !done[s] {
                    seqs[s].truncate(start);
                    seqs[s].extend_from_slice(&window[s * rows..(s + 1) * rows]);
                }
            }
            if self
                .after_block(&mut seqs, &mut done, generated_from)
                .is_err()
            {
                return Ok(None);
            }
            (self.on_event)(SampleEvent::Committed {
                block: window_index,
                end,
                sequences: &seqs,
            });
            if done.iter().all(|&d| d) || end >= total {
                break;
            }
            end = (end + stride).min(total);
            window_index += 1;
        }
        Ok(Some(finish(seqs, total)))
    }

    /// AR: one token per call; every fed token's q|k|v stays in the cache.
    async fn autoregressive(&mut self) -> Result<Option<Vec<Vec<u32>>>> {
        let batch = self.opts.batch;
        let total = self.opts.length;
        let mut seqs = self.start();
        let prefix = seqs[0].len();
        let mut done = vec![false; batch];
        for i in 0..prefix - 1 {
            let tokens: Vec<u32> = seqs.iter().map(|s| s[i]).collect();
            self.commit(&tokens, 1, i).await?;
        }
        for i in prefix - 1..total - 1 {
            // A finished sequence keeps being fed EOS; its output is already cut.
            let tokens: Vec<u32> = seqs
                .iter()
                .map(|s| s.get(i).copied().unwrap_or(self.bos()))
                .collect();
            let picked = vec![0u32; batch];
            let next = self
                .sample(&tokens, 1, i, i, &picked, 1, SampleMode::Ar, 0.0, &[], &[])
                .await?;
            self.nfe += 1;
            let revealed: Vec<(usize, usize, u32)> = next
                .iter()
                .enumerate()
                .map(|(s, &t)| (s, i + 1, t))
                .collect();
            (self.on_event)(SampleEvent::Revealed {
                block: i + 1,
                call: self.call,
                revealed: &revealed,
            });
            for s in 0..batch {
                if !done[s] {
                    seqs[s].push(next[s]);
                }
            }
            if (i + 2 - prefix).is_multiple_of(16) || i + 2 == total {
                if self.after_block(&mut seqs, &mut done, prefix).is_err() {
                    return Ok(None);
                }
                (self.on_event)(SampleEvent::Committed {
                    block: i + 1,
                    end: i + 2,
                    sequences: &seqs,
                });
                if done.iter().all(|&d| d) {
                    break;
                }
            }
        }
        Ok(Some(finish(seqs, total)))
    }

    /// SEDD: T analytic steps over the whole sequence, then the final denoiser (official `diffusion.py:_analytic_sampler`, `_denoiser_update`).
    async fn analytic(&mut self) -> Result<Option<Vec<Vec<u32>>>> {
        let (batch, mask, l) = (self.opts.batch, self.mask(), self.model.cfg.model_length);
        let total = self.opts.length;
        if total > l {
            return Err(Error::Invalid(format!("SEDD generates at most the model length ({l} tokens); the requested length is {total}")));
        }
        let start = self.start();
        let prefix = start[0].len();
        let mut x: Vec<u32> = start
            .iter()
            .flat_map(|s| {
                (0..total)
                    .map(|p| s.get(p).copied().unwrap_or(mask))
                    .collect::<Vec<_>>()
            })
            .collect();
        let steps = self.opts.steps.max(1);
        let dt = (1.0 - 1e-5) / steps as f64;
        let picked: Vec<u32> = (0..batch).flat_map(|_| 0..total as u32).collect();
        for i in 0..=steps {
            let (mode, sigma_t, dsigma) = if i < steps {
                let t = 1.0 - i as f64 * dt;
                let st = sigma_from_p(t);
                (SampleMode::SeddStep, st, st - sigma_from_p(t - dt))
            } else {
                let st = sigma_from_p(1e-5);
                (SampleMode::SeddDenoise, st, st)
            };
            let sigma = vec![sigma_t; batch];
            let ds = vec![dsigma; batch];
            let tokens = self
                .sample(&x, total, 0, 0, &picked, total, mode, 0.0, &sigma, &ds)
                .await?;
            let mut revealed = Vec::new();
            for (j, &t) in tokens.iter().enumerate() {
                // BOS and the prompt stay as given; the official sampler has no prompt.
                if j % total >= prefix && x[j] != t {
                    x[j] = t;
                    revealed.push((j / total, j % total, t));
                }
            }
            self.nfe += 1;
            if !revealed.is_empty() {
                (self.on_event)(SampleEvent::Revealed {
                    block: 0,
                    call: self.call,
                    revealed: &revealed,
                });
            }
        }
        let seqs: Vec<Vec<u32>> = x.chunks(total).map(|c| c.to_vec()).collect();
        (self.on_event)(SampleEvent::Committed {
            block: 0,
            end: total,
            sequences: &seqs,
        });
        Ok(Some(seqs))
    }
}

/// Cut every sequence to the requested length (sequences stopped early are already shorter).
fn finish(mut seqs: Vec<Vec<u32>>, total: usize) -> Vec<Vec<u32>> {
    for s in &mut seqs {
        s.truncate(total);
    }
    seqs
}
