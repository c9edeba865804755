//! The GPU sample kernel (`shaders/sample.wgsl`): against the f64 sampler arithmetic with the same
//! draws, and a frequency test of its own random draws against a known distribution.

mod common;
use bd3_gpu::ops::sample::{Sample, SampleMode};
use bd3_gpu::ops::{self, Kernels};
use bd3_model::sampler::{ddpm_q, nucleus, race, sedd_position};
use common::*;

struct Rows {
    logits: Vec<f32>,
    inputs: Vec<u32>,
    streams: Vec<u32>,
    consts: Vec<f32>,
    draws: Vec<f32>,
}

/// Draw one token per row; `r.draws` empty means the kernel generates its own exponentials.
fn run_sample(ctx: &bd3_gpu::GpuContext, k: &Kernels, p: Sample, r: &Rows) -> Vec<u32> {
    let out = upload_u32(ctx, &vec![0; p.n_rows as usize]);
    let draws = (!r.draws.is_empty()).then(|| upload(ctx, &r.draws));
    let (logits, inputs, streams, consts) = (upload(ctx, &r.logits), upload_u32(ctx, &r.inputs), upload_u32(ctx, &r.streams), upload(ctx, &r.consts));
    let b = ops::sample::Bindings { logits: &logits, row_input: &inputs, row_stream: &streams, seq_consts: &consts, draws: draws.as_ref(), tokens: &out };
    run_recorded(ctx, |pb| ops::sample::record(pb, k, &p, b).unwrap());
    read(ctx, &out, p.n_rows as usize).iter().map(|f| f.to_bits()).collect()
}

fn softmax(row: &[f32], adjust: impl Fn(usize, f64) -> f64) -> Vec<f64> {
    let a: Vec<f64> = row.iter().enumerate().map(|(v, &x)| adjust(v, x as f64)).collect();
    let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = a.iter().map(|x| (x - m).exp()).sum();
    a.iter().map(|x| (x - m).exp() / z).collect()
}

#[test]
fn every_mode_matches_the_f64_sampler_given_the_same_draws() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(21);
    let (rows, vocab) = (12usize, 300usize);
    let mask = (vocab - 1) as u32;
    let logits = rng.vec(rows * vocab, 3.0);
    let draws: Vec<f32> = (0..rows * vocab).map(|_| -(rng.uniform().max(1e-12)).ln() as f32).collect();
    let e: Vec<f64> = draws.iter().map(|&x| x as f64).collect();
    // Rows 0..5 masked, the rest carry a clean token (SUBS copies it; SEDD transitions from it).
    let inputs: Vec<u32> = (0..rows).map(|r| if r < 6 { mask } else { rng.below(mask) }).collect();
    let (sigma, dsigma) = (0.8f64, 0.05f64);
    let shift = bd3_model::schedule::esigm1_log(sigma) + ((vocab - 1) as f64).ln();
    let consts: Vec<f32> = [shift, dsigma.exp(), -dsigma.exp_m1(), (-dsigma).exp(), -(-dsigma).exp_m1(), 0.0, 0.0, 0.0].iter().map(|&x| x as f32).collect::<Vec<_>>().repeat(2);
    let data = Rows { logits: logits.clone(), inputs: inputs.clone(), streams: vec![0; rows], consts, draws };
    for (mode, top_p) in [
        (SampleMode::FirstHitting, 0.9),
        (SampleMode::FirstHitting, 1.0),
        (SampleMode::Ddpm, 0.8),
        (SampleMode::Ar, 0.95),
        (SampleMode::SeddStep, 0.99),
        (SampleMode::SeddStep, 1.0),
        (SampleMode::SeddDenoise, 0.99),
    ] {
        let mask_prob = 0.3;
        let p = Sample { n_rows: rows as u32, vocab: vocab as u32, mask_id: mask, mode, top_p: top_p as f32, mask_prob: mask_prob as f32, seed: 0, call: 0, rows_per_seq: 6, row_offset: 0 };
        let got = run_sample(&ctx, &k, p, &data);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let er = &e[r * vocab..(r + 1) * vocab];
            let want = match mode {
                SampleMode::FirstHitting | SampleMode::Ddpm if inputs[r] != mask => inputs[r] as usize,
                SampleMode::FirstHitting => race(&nucleus(&softmax(row, |v, x| if v as u32 == mask { x - 1e6 } else { x }), top_p), er),
                SampleMode::Ddpm => race(&ddpm_q(&nucleus(&softmax(row, |v, x| if v as u32 == mask { x - 1e6 } else { x }), top_p), mask as usize, mask_prob), er),
                SampleMode::Ar => race(&nucleus(&softmax(row, |v, x| if v as u32 == mask { -1e6 } else { x }), top_p), er),
                SampleMode::SeddStep | SampleMode::SeddDenoise => {
                    let ls: Vec<f64> = row.iter().enumerate().map(|(v, &x)| if v as u32 == inputs[r] { 0.0 } else { x as f64 - shift }).collect();
                    race(&sedd_position(&ls, inputs[r] as usize, mask as usize, dsigma, top_p, mode == SampleMode::SeddDenoise).2, er)
                }
            };
            assert_eq!(got[r] as usize, want, "{mode:?} top_p {top_p} row {r}");
        }
    }
}

#[test]
fn draws_follow_a_known_distribution_including_small_probabilities() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let probs = [0.5, 0.25, 0.15, 0.07, 0.02, 0.0099, 0.0001];
    let vocab = probs.len() + 1; // + the mask token, which SUBS never draws
    let n = 200_000usize;
    let row: Vec<f32> = probs.iter().map(|p: &f64| p.ln() as f32).chain([0.0]).collect();
    let data = Rows {
        logits: row.repeat(n),
        inputs: vec![(vocab - 1) as u32; n],
        streams: (0..n as u32).collect(),
        consts: vec![0.0; 8],
        draws: Vec::new(),
    };
    let p = Sample {
        n_rows: n as u32, vocab: vocab as u32, mask_id: (vocab - 1) as u32, mode: SampleMode::FirstHitting, top_p: 1.0, mask_prob: 0.0,
        seed: 0x5eed_0123_4567, call: 3, rows_per_seq: n as u32, row_offset: 0,
    };
    let got = run_sample(&ctx, &k, p, &data);
    let mut counts = vec![0usize; vocab];
    for t in got {
        counts[t as usize] += 1;
    }
    assert_eq!(counts[vocab - 1], 0, "the mask token was drawn");
    // Pearson's χ² with 6 degrees of freedom: 22.46 is the 0.1% critical value.
    let chi2: f64 = probs.iter().zip(&counts).map(|(p, &c)| (c as f64 - p * n as f64).powi(2) / (p * n as f64)).sum();
    assert!(chi2 < 22.46, "χ² = {chi2:.2} for counts {counts:?}");
    // The rarest token (expected 20 times) must neither vanish nor be inflated.
    assert!((5..=45).contains(&counts[6]), "p = 1e-4 drawn {} times in {n}", counts[6]);

    // Same key, same draws; another call counter, other draws (on a smaller batch).
    let m = 2000;
    let small = Rows { logits: data.logits[..m * vocab].to_vec(), inputs: data.inputs[..m].to_vec(), streams: data.streams[..m].to_vec(), consts: vec![0.0; 8], draws: Vec::new() };
    let p = Sample { n_rows: m as u32, ..p };
    let first = run_sample(&ctx, &k, p, &small);
    assert_eq!(first, run_sample(&ctx, &k, p, &small), "same key, same draws");
    assert_ne!(first, run_sample(&ctx, &k, Sample { call: 4, ..p }, &small));
}
