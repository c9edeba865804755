//! The GPU sample kernel (`shaders/sample.wgsl`): against the f64 sampler arithmetic with the same
//! draws, and a frequency test of its own random draws against a known distribution. Confidence
//! decoding (sample.wgsl in confidence mode, then `shaders/confidence.wgsl`): the same draws and the
//! same picks as the f64 reference, and end to end on small models.

mod common;
use bd3_gpu::ops::confidence::Reveal;
use bd3_gpu::ops::sample::{Reductions, Sample, SampleMode};
use bd3_gpu::ops::{self, Kernels};
use bd3_gpu::{generate, GpuModel, SampleEvent, SampleOptions, Sampler};
use bd3_model::sampler::{
    confidence_draw, confidence_pick, ddpm_q, nucleus, race, sedd_position, subs_probs,
};
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
    let (logits, inputs, streams, consts) = (
        upload(ctx, &r.logits),
        upload_u32(ctx, &r.inputs),
        upload_u32(ctx, &r.streams),
        upload(ctx, &r.consts),
    );
    let b = ops::sample::Bindings {
        logits: &logits,
        row_input: &inputs,
        row_stream: &streams,
        seq_consts: &consts,
        draws: draws.as_ref(),
        tokens: &out,
        token_prob: None,
    };
    run_recorded(ctx, |pb| ops::sample::record(pb, k, &p, b).unwrap());
    read(ctx, &out, p.n_rows as usize)
        .iter()
        .map(|f| f.to_bits())
        .collect()
}

fn softmax(row: &[f32], adjust: impl Fn(usize, f64) -> f64) -> Vec<f64> {
    let a: Vec<f64> = row
        .iter()
        .enumerate()
        .map(|(v, &x)| adjust(v, x as f64))
        .collect();
    let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = a.iter().map(|x| (x - m).exp()).sum();
    a.iter().map(|x| (x - m).exp() / z).collect()
}

#[test]
fn every_mode_matches_the_f64_sampler_given_the_same_draws() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    every_mode_matches_the_f64_sampler(&ctx, &k);
}

/// The same check with each reduction variant of the kernel forced.
#[test]
fn every_mode_matches_the_f64_sampler_with_each_reduction_variant() {
    let ctx = context();
    for (r, k) in reduction_variants(&ctx) {
        eprintln!("{r:?} reductions");
        every_mode_matches_the_f64_sampler(&ctx, &k);
    }
}

fn every_mode_matches_the_f64_sampler(ctx: &bd3_gpu::GpuContext, k: &Kernels) {
    let (ctx, k) = (ctx, k);
    let mut rng = Rng(21);
    let (rows, vocab) = (12usize, 300usize);
    let mask = (vocab - 1) as u32;
    let logits = rng.vec(rows * vocab, 3.0);
    let draws: Vec<f32> = (0..rows * vocab)
        .map(|_| -(rng.uniform().max(1e-12)).ln() as f32)
        .collect();
    let e: Vec<f64> = draws.iter().map(|&x| x as f64).collect();
    // Rows 0..5 masked, the rest carry a clean token (SUBS copies it; SEDD transitions from it).
    let inputs: Vec<u32> = (0..rows)
        .map(|r| if r < 6 { mask } else { rng.below(mask) })
        .collect();
    let (sigma, dsigma) = (0.8f64, 0.05f64);
    let shift = bd3_model::schedule::esigm1_log(sigma) + ((vocab - 1) as f64).ln();
    let consts: Vec<f32> = [
        shift,
        dsigma.exp(),
        -dsigma.exp_m1(),
        (-dsigma).exp(),
        -(-dsigma).exp_m1(),
        0.0,
        0.0,
        0.0,
    ]
    .iter()
    .map(|&x| x as f32)
    .collect::<Vec<_>>()
    .repeat(2);
    let data = Rows {
        logits: logits.clone(),
        inputs: inputs.clone(),
        streams: vec![0; rows],
        consts,
        draws,
    };
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
        let p = Sample {
            n_rows: rows as u32,
            vocab: vocab as u32,
            mask_id: mask,
            mode,
            top_p: top_p as f32,
            mask_prob: mask_prob as f32,
            seed: 0,
            call: 0,
            rows_per_seq: 6,
            row_offset: 0,
        };
        let got = run_sample(ctx, k, p, &data);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let er = &e[r * vocab..(r + 1) * vocab];
            let want = match mode {
                SampleMode::FirstHitting | SampleMode::Ddpm if inputs[r] != mask => {
                    inputs[r] as usize
                }
                SampleMode::FirstHitting => race(
                    &nucleus(
                        &softmax(row, |v, x| if v as u32 == mask { x - 1e6 } else { x }),
                        top_p,
                    ),
                    er,
                ),
                SampleMode::Ddpm => race(
                    &ddpm_q(
                        &nucleus(
                            &softmax(row, |v, x| if v as u32 == mask { x - 1e6 } else { x }),
                            top_p,
                        ),
                        mask as usize,
                        mask_prob,
                    ),
                    er,
                ),
                SampleMode::Ar => race(
                    &nucleus(
                        &softmax(row, |v, x| if v as u32 == mask { -1e6 } else { x }),
                        top_p,
                    ),
                    er,
                ),
                SampleMode::SeddStep | SampleMode::SeddDenoise => {
                    let ls: Vec<f64> = row
                        .iter()
                        .enumerate()
                        .map(|(v, &x)| {
                            if v as u32 == inputs[r] {
                                0.0
                            } else {
                                x as f64 - shift
                            }
                        })
                        .collect();
                    race(
                        &sedd_position(
                            &ls,
                            inputs[r] as usize,
                            mask as usize,
                            dsigma,
                            top_p,
                            mode == SampleMode::SeddDenoise,
                        )
                        .2,
                        er,
                    )
                }
                SampleMode::Confidence => unreachable!("tested below, with its selection"),
            };
            assert_eq!(got[r] as usize, want, "{mode:?} top_p {top_p} row {r}");
        }
    }
}

#[test]
fn draws_follow_a_known_distribution_including_small_probabilities() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    draws_follow_a_known_distribution(&ctx, &k);
}

/// The same check with each reduction variant of the kernel forced.
#[test]
fn draws_follow_a_known_distribution_with_each_reduction_variant() {
    let ctx = context();
    for (r, k) in reduction_variants(&ctx) {
        eprintln!("{r:?} reductions");
        draws_follow_a_known_distribution(&ctx, &k);
    }
}

fn draws_follow_a_known_distribution(ctx: &bd3_gpu::GpuContext, k: &Kernels) {
    let probs = [0.5, 0.25, 0.15, 0.07, 0.02, 0.0099, 0.0001];
    let vocab = probs.len() + 1; // + the mask token, which SUBS never draws
    let n = 200_000usize;
    let row: Vec<f32> = probs
        .iter()
        .map(|p: &f64| p.ln() as f32)
        .chain([0.0])
        .collect();
    let data = Rows {
        logits: row.repeat(n),
        inputs: vec![(vocab - 1) as u32; n],
        streams: (0..n as u32).collect(),
        consts: vec![0.0; 8],
        draws: Vec::new(),
    };
    let p = Sample {
        n_rows: n as u32,
        vocab: vocab as u32,
        mask_id: (vocab - 1) as u32,
        mode: SampleMode::FirstHitting,
        top_p: 1.0,
        mask_prob: 0.0,
        seed: 0x5eed_0123_4567,
        call: 3,
        rows_per_seq: n as u32,
        row_offset: 0,
    };
    let got = run_sample(ctx, k, p, &data);
    let mut counts = vec![0usize; vocab];
    for t in got {
        counts[t as usize] += 1;
    }
    assert_eq!(counts[vocab - 1], 0, "the mask token was drawn");
    // Pearson's χ² with 6 degrees of freedom: 22.46 is the 0.1% critical value.
    let chi2: f64 = probs
        .iter()
        .zip(&counts)
        .map(|(p, &c)| (c as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum();
    assert!(chi2 < 22.46, "χ² = {chi2:.2} for counts {counts:?}");
    // The rarest token (expected 20 times) must neither vanish nor be inflated.
    assert!(
        (5..=45).contains(&counts[6]),
        "p = 1e-4 drawn {} times in {n}",
        counts[6]
    );

    // Same key, same draws; another call counter, other draws (on a smaller batch).
    let m = 2000;
    let small = Rows {
        logits: data.logits[..m * vocab].to_vec(),
        inputs: data.inputs[..m].to_vec(),
        streams: data.streams[..m].to_vec(),
        consts: vec![0.0; 8],
        draws: Vec::new(),
    };
    let p = Sample {
        n_rows: m as u32,
        ..p
    };
    let first = run_sample(ctx, k, p, &small);
    assert_eq!(first, run_sample(ctx, k, p, &small), "same key, same draws");
    assert_ne!(first, run_sample(ctx, k, Sample { call: 4, ..p }, &small));
}

/// Confidence decoding's step on the GPU, in two programs so the draws can be read before the choice:
/// sample.wgsl (confidence mode, supplied exponentials) → (tokens, probabilities), then
/// confidence.wgsl over the same buffers → the tokens kept.
fn run_confidence(
    ctx: &bd3_gpu::GpuContext,
    k: &Kernels,
    p: Sample,
    r: &Rows,
    reveal: Reveal,
) -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    let n = p.n_rows as usize;
    let (out, probs) = (upload_u32(ctx, &vec![0; n]), upload(ctx, &vec![0.0; n]));
    let (logits, inputs, streams, consts, draws) = (
        upload(ctx, &r.logits),
        upload_u32(ctx, &r.inputs),
        upload_u32(ctx, &r.streams),
        upload(ctx, &r.consts),
        upload(ctx, &r.draws),
    );
    let b = ops::sample::Bindings {
        logits: &logits,
        row_input: &inputs,
        row_stream: &streams,
        seq_consts: &consts,
        draws: Some(&draws),
        tokens: &out,
        token_prob: Some(&probs),
    };
    run_recorded(ctx, |pb| ops::sample::record(pb, k, &p, b).unwrap());
    let drawn: Vec<u32> = read(ctx, &out, n).iter().map(|f| f.to_bits()).collect();
    let conf = read(ctx, &probs, n);
    let cb = ops::confidence::Bindings {
        row_input: &inputs,
        token_prob: &probs,
        tokens: &out,
    };
    run_recorded(ctx, |pb| {
        ops::confidence::record(pb, k, p.n_rows, p.rows_per_seq, p.mask_id, reveal, cb).unwrap()
    });
    let kept = read(ctx, &out, n).iter().map(|f| f.to_bits()).collect();
    (drawn, conf, kept)
}

#[test]
fn confidence_steps_match_the_f64_reference_with_the_same_draws() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(17);
    let vocab = 293usize; // prime, more than one stride of the 256 threads
    let mask = (vocab - 1) as u32;
    let mut checked = (0usize, 0usize, 0usize); // (draws, reveals, masked rows left)
    for bs in [1usize, 3, 4, 16] {
        // Three sequences: all masked; every other row masked; only the last row masked (fewer than K).
        let seqs = 3;
        let n = seqs * bs;
        let masked = |s: usize, r: usize| match s {
            0 => true,
            1 => r.is_multiple_of(2),
            _ => r + 1 == bs,
        };
        let inputs: Vec<u32> = (0..n)
            .map(|i| {
                if masked(i / bs, i % bs) {
                    mask
                } else {
                    rng.below(mask)
                }
            })
            .collect();
        // Rows from flat to peaked, so confidences spread over (0, 1) and the thresholds matter.
        let mut logits = Vec::with_capacity(n * vocab);
        for _ in 0..n {
            let scale = 2.0 + 18.0 * rng.uniform() as f32;
            logits.extend(rng.vec(vocab, scale));
        }
        let mut draws: Vec<f32> = (0..n * vocab)
            .map(|_| -(rng.uniform().max(1e-12)).ln() as f32)
            .collect();
        if bs >= 3 {
            // An exact tie: sequence 0's last row repeats its first (logits and draws), peaked so both
            // are its most confident draws; the tie goes to row 0.
            logits[..vocab]
                .iter_mut()
                .enumerate()
                .for_each(|(v, l)| *l = if v == 11 { 12.0 } else { (v % 7) as f32 * 0.1 });
            let (row0, last) = ((0..vocab), ((bs - 1) * vocab..bs * vocab));
            let copy: Vec<f32> = logits[row0.clone()].to_vec();
            logits[last.clone()].copy_from_slice(&copy);
            let copy: Vec<f32> = draws[row0].to_vec();
            draws[last].copy_from_slice(&copy);
        }
        let e: Vec<f64> = draws.iter().map(|&x| x as f64).collect();
        let data = Rows {
            logits: logits.clone(),
            inputs: inputs.clone(),
            streams: vec![0; n],
            consts: vec![0.0; 8 * seqs],
            draws,
        };
        for top_p in [0.9, 1.0] {
            // The f64 reference: draw and confidence at every masked row.
            let reference: Vec<Option<(usize, f64)>> = (0..n)
                .map(|i| {
                    (inputs[i] == mask).then(|| {
                        let row: Vec<f64> = logits[i * vocab..(i + 1) * vocab]
                            .iter()
                            .map(|&x| x as f64)
                            .collect();
                        confidence_draw(
                            &subs_probs(&row, mask as usize),
                            top_p,
                            &e[i * vocab..(i + 1) * vocab],
                        )
                    })
                })
                .collect();
            for (at_least, threshold) in [
                (1usize, f64::INFINITY),
                (2, f64::INFINITY),
                (5, f64::INFINITY),
                (1, 0.3),
                (1, 0.7),
            ] {
                let reveal = if threshold.is_finite() {
                    Reveal::threshold(threshold as f32)
                } else {
                    Reveal::top(at_least as u32)
                };
                let p = Sample {
                    n_rows: n as u32,
                    vocab: vocab as u32,
                    mask_id: mask,
                    mode: SampleMode::Confidence,
                    top_p: top_p as f32,
                    mask_prob: 0.0,
                    seed: 0,
                    call: 0,
                    rows_per_seq: bs as u32,
                    row_offset: 0,
                };
                let (drawn, conf, kept) = run_confidence(&ctx, &k, p, &data, reveal);
                let what = |i: usize| {
                    format!("block {bs}, top_p {top_p}, at_least {at_least}, threshold {threshold}, row {i}")
                };
                for s in 0..seqs {
                    let rows = s * bs..(s + 1) * bs;
                    let c: Vec<Option<f64>> = reference[rows.clone()]
                        .iter()
                        .map(|r| r.map(|x| x.1))
                        .collect();
                    // Near ties or values near the threshold would make f32 against f64 a coin toss.
                    let mut sorted: Vec<f64> = c.iter().flatten().copied().collect();
                    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    for w in sorted.windows(2) {
                        assert!(
                            w[1] == w[0] || w[1] - w[0] > 1e-5,
                            "{}: the test data has a near tie",
                            what(rows.start)
                        );
                    }
                    assert!(
                        sorted.iter().all(|x| (x - threshold).abs() > 1e-5),
                        "{}: a confidence sits on the threshold",
                        what(rows.start)
                    );
                    let keep = confidence_pick(&c, at_least, threshold);
                    let n_masked = c.iter().flatten().count();
                    let n_keep = keep.iter().filter(|&&b| b).count();
                    if threshold.is_infinite() {
                        assert_eq!(n_keep, at_least.min(n_masked), "{}", what(rows.start));
                    }
                    for (j, i) in rows.enumerate() {
                        match reference[i] {
                            None => {
                                assert_eq!(
                                    drawn[i],
                                    inputs[i],
                                    "{}: a clean row is carried over",
                                    what(i)
                                );
                                assert_eq!(kept[i], inputs[i], "{}", what(i));
                            }
                            Some((token, prob)) => {
                                assert_eq!(drawn[i] as usize, token, "{}: the draw", what(i));
                                assert!(
                                    (conf[i] as f64 - prob).abs() <= 1e-5 * prob.max(1e-3),
                                    "{}: confidence {} against {prob}",
                                    what(i),
                                    conf[i]
                                );
                                let want = if keep[j] { token as u32 } else { mask };
                                assert_eq!(kept[i], want, "{}: the pick", what(i));
                                checked.0 += 1;
                                if keep[j] {
                                    checked.1 += 1
                                } else {
                                    checked.2 += 1
                                }
                            }
                        }
                    }
                    if bs >= 3 && s == 0 {
                        assert_eq!(
                            conf[0].to_bits(),
                            conf[bs - 1].to_bits(),
                            "the planted tie is exact on the GPU"
                        );
                        assert!(
                            kept[0] != mask
                                && (at_least >= 2 || threshold < 0.9 || kept[bs - 1] == mask),
                            "{}: the tie goes to the lower position",
                            what(0)
                        );
                    }
                }
            }
        }
    }
    // The test could fail both ways: draws were kept and draws were sent back to the mask.
    assert!(checked.1 > 50 && checked.2 > 50, "{checked:?}");
}

/// Generate with `sampler` and check every reveal: only masked positions after the prompt, each once,
/// at most `k` per sequence and call (exactly min(k, still masked in the block) when `exact`), at least
/// one per sequence with masked positions left; the final sequences hold what was revealed. Returns
/// the result and the number of calls that revealed something.
fn check_confidence_run(
    model: &mut GpuModel,
    opts: &SampleOptions,
    k: usize,
    exact: bool,
    block_of: impl Fn(usize) -> usize,
) -> bd3_gpu::SampleResult {
    let mask = model.cfg.mask_id();
    let prefix = 1 + opts.prompt.len();
    let mut revealed_at: Vec<Vec<Option<u32>>> = vec![vec![None; opts.length]; opts.batch];
    let mut calls_revealing = 0;
    let mut events = Vec::new();
    let result = pollster::block_on(generate(model, opts, &mut |e| {
        if let SampleEvent::Revealed { revealed, .. } = e {
            events.push(revealed.to_vec());
        }
    }))
    .unwrap();
    for revealed in &events {
        calls_revealing += 1;
        for (s, seen) in revealed_at.iter_mut().enumerate() {
            let mine: Vec<_> = revealed.iter().filter(|r| r.0 == s).collect();
            let block = mine.first().map(|r| block_of(r.1));
            for &&(_, pos, tok) in &mine {
                assert!(
                    pos >= prefix && pos < opts.length,
                    "position {pos} is not a generated one"
                );
                assert_eq!(
                    block_of(pos),
                    block.unwrap(),
                    "one call reveals within one block"
                );
                assert!(
                    seen[pos].is_none(),
                    "position {pos} of sequence {s} revealed twice"
                );
                assert_ne!(tok, mask);
                seen[pos] = Some(tok);
            }
            assert!(
                mine.len() <= k,
                "{} reveals in one call, K = {k}",
                mine.len()
            );
            if let (true, Some(b)) = (exact, block) {
                let left = (prefix..opts.length)
                    .filter(|&p| block_of(p) == b && seen[p].is_none())
                    .count();
                assert!(
                    mine.len() == k || left == 0,
                    "sequence {s}: {} reveals with {left} masked positions left, K = {k}",
                    mine.len()
                );
            }
        }
    }
    assert_eq!(
        calls_revealing, result.nfe,
        "NFE counts the calls that revealed something"
    );
    for (s, seq) in result.sequences.iter().enumerate() {
        assert_eq!(seq.len(), opts.length);
        for p in prefix..opts.length {
            assert_eq!(
                Some(seq[p]),
                revealed_at[s][p],
                "sequence {s} position {p}: every generated token was revealed once, as it is"
            );
        }
    }
    result
}

fn fixture_model(ctx: std::sync::Arc<bd3_gpu::GpuContext>) -> GpuModel {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-a");
    let bd3_model::ModelDir {
        config: cfg,
        checkpoint: ckpt,
        ..
    } = bd3_model::load_model_dir(&dir, None).unwrap();
    pollster::block_on(GpuModel::load(ctx, cfg, &ckpt)).unwrap()
}

#[test]
fn confidence_decoding_end_to_end_reveals_k_masked_positions_per_call() {
    let ctx = context();
    // BD3LM (the fixture: block 4, length 16): the prompt leaves 1 masked position in block 0, then 4
    // per block, so top-K takes ⌈1/K⌉ + 3⌈4/K⌉ calls.
    let mut model = fixture_model(ctx.clone());
    let bs = model.cfg.block_size;
    assert_eq!((bs, model.cfg.model_length), (4, 16));
    let base = SampleOptions {
        batch: 2,
        prompt: vec![5, 6],
        seed: 9,
        ..SampleOptions::defaults_for(&model.cfg)
    };
    for k in [1usize, 2, 3, 4, 6] {
        let opts = SampleOptions {
            sampler: Sampler::Confidence { tokens_per_call: k },
            ..base.clone()
        };
        let r = check_confidence_run(&mut model, &opts, k, true, |p| p / bs);
        assert_eq!(
            r.nfe,
            1usize.div_ceil(k) + 3 * 4usize.div_ceil(k),
            "K = {k}"
        );
        assert_eq!(r.calls, r.nfe + 3, "and one commit per block but the last");
    }
    for threshold in [0.05, 0.5, 1.0] {
        let opts = SampleOptions {
            sampler: Sampler::ConfidenceThreshold { threshold },
            ..base.clone()
        };
        let r = check_confidence_run(&mut model, &opts, bs, false, |p| p / bs);
        assert!(
            (4..=13).contains(&r.nfe),
            "threshold {threshold}: {} NFEs",
            r.nfe
        );
        if threshold == 1.0 {
            // Nothing reaches probability 1 on this model: one position per call.
            assert_eq!(r.nfe, 13);
        }
    }

    // MDLM, windowed: a first window of L = 20 (17 masked after the prompt), then one stride of 10.
    let json = r#"{"model_type":"mdlm","block_size":20,"cond_dim":24,"hidden_dim":40,"model_length":20,"n_blocks":2,"n_heads":2,"vocab_size":70}"#;
    let cfg = bd3_model::ModelConfig::from_json_bytes(json.as_bytes(), "mdlm test", None).unwrap();
    let mut mdlm = pollster::block_on(GpuModel::allocate(ctx.clone(), cfg.clone())).unwrap();
    for t in bd3_model::init::random_weights(&cfg, 5, 0.3) {
        mdlm.write_tensor(t.name.strip_prefix("backbone.").unwrap(), &t.data)
            .unwrap();
    }
    for k in [1usize, 3, 4] {
        let opts = SampleOptions {
            batch: 2,
            length: 30,
            prompt: vec![1, 2],
            seed: 4,
            sampler: Sampler::Confidence { tokens_per_call: k },
            ..SampleOptions::defaults_for(&cfg)
        };
        let r = check_confidence_run(&mut mdlm, &opts, k, true, |p| if p < 20 { 0 } else { 1 });
        assert_eq!(
            r.nfe,
            17usize.div_ceil(k) + 10usize.div_ceil(k),
            "MDLM, K = {k}"
        );
    }

    // AR and SEDD models have no masked block to decode in parallel.
    for (json, kind) in [
        (
            r#"{"model_type":"bd3lm","parameterization":"ar","causal":true,"adaln":false,"block_size":1,"cond_dim":24,"hidden_dim":40,"model_length":20,"n_blocks":1,"n_heads":2,"vocab_size":70}"#,
            "ar",
        ),
        (
            r#"{"model_type":"mdlm","parameterization":"sedd","time_conditioning":true,"cond_dim":24,"hidden_dim":40,"model_length":20,"n_blocks":1,"n_heads":2,"vocab_size":70}"#,
            "sedd",
        ),
    ] {
        let cfg =
            bd3_model::ModelConfig::from_json_bytes(json.as_bytes(), "refusal test", None).unwrap();
        let mut m = pollster::block_on(GpuModel::allocate(ctx.clone(), cfg.clone())).unwrap();
        let opts = SampleOptions {
            sampler: Sampler::Confidence { tokens_per_call: 2 },
            ..SampleOptions::defaults_for(&cfg)
        };
        let err = pollster::block_on(generate(&mut m, &opts, &mut |_| {}))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("confidence sampler is for BD3LM and MDLM models") && err.contains(kind),
            "{err}"
        );
    }
    let bad = SampleOptions {
        sampler: Sampler::Confidence { tokens_per_call: 0 },
        ..base
    };
    assert!(pollster::block_on(generate(&mut model, &bad, &mut |_| {})).is_err());
}

/// The kernels with the sample kernel built with each reduction variant the adapter can run: the
/// workgroup-memory one always, the subgroup one where the adapter has subgroups (lavapipe does).
fn reduction_variants(ctx: &bd3_gpu::GpuContext) -> Vec<(Reductions, Kernels)> {
    let mut variants = vec![Reductions::Workgroup];
    if ctx.features.contains(wgpu::Features::SUBGROUP) {
        variants.push(Reductions::Subgroup);
    } else {
        eprintln!(
            "{} has no subgroups: only the workgroup-memory variant runs",
            ctx.info.name
        );
    }
    variants
        .into_iter()
        .map(|r| {
            let mut k = kernels(ctx, 16);
            k.sample = pollster::block_on(ops::sample::kernel(ctx, r)).unwrap();
            (r, k)
        })
        .collect()
}

/// The nucleus as the kernel applies it, by a plain loop: tokens in decreasing p, a group of equal p
/// at a time, kept while the kept mass stays within top_p; the top group when even it exceeds top_p;
/// everything at top_p ≥ 1. Also the distance from top_p to the nearest cumulative mass at a group
/// boundary, which must exceed f32 rounding for the case to be decided.
fn kept_by_loop(p: &[f64], top_p: f64) -> (Vec<bool>, f64) {
    if top_p >= 1.0 {
        return (vec![true; p.len()], f64::INFINITY);
    }
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
    let (mut keep, mut cum, mut margin, mut open) =
        (vec![false; p.len()], 0.0, f64::INFINITY, true);
    let mut i = 0;
    while i < order.len() {
        let j = i + order[i..]
            .iter()
            .take_while(|&&v| p[v] == p[order[i]])
            .count();
        cum += order[i..j].iter().map(|&v| p[v]).sum::<f64>();
        margin = margin.min((cum - top_p).abs());
        if open && (cum <= top_p || i == 0) {
            for &v in &order[i..j] {
                keep[v] = true;
            }
        }
        open &= cum <= top_p;
        i = j;
    }
    (keep, margin)
}

/// The top_p halfway between the kept mass at the group boundary nearest `target` and the next one,
/// so the case is decided with the widest margin there.
fn top_p_near(p: &[f64], target: f64) -> f64 {
    let mut sorted = p.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let mut cums = Vec::new();
    let mut cum = 0.0;
    for (i, &x) in sorted.iter().enumerate() {
        cum += x;
        if sorted.get(i + 1) != Some(&x) {
            cums.push(cum);
        }
    }
    let g = (0..cums.len() - 1)
        .min_by(|&a, &b| {
            (cums[a] - target)
                .abs()
                .partial_cmp(&(cums[b] - target).abs())
                .unwrap()
        })
        .unwrap();
    (cums[g] + cums[g + 1]) / 2.0
}

/// Which tokens the kernel keeps, probed one token a row: the row's draws are 1 except 1e-30 at the
/// probed token w, so the race picks w exactly when w is kept (q_w / 1e-30 beats every q_v ≤ 1) and
/// the top token otherwise. Checked against [`kept_by_loop`] for `probes` (every token of a small
/// vocabulary; around the cut, the ends and a few random ones of a large one).
fn check_kept_set(
    ctx: &bd3_gpu::GpuContext,
    k: &Kernels,
    what: &str,
    logits: &[f32],
    top_p: f64,
    rng: &mut Rng,
) {
    let vocab = logits.len();
    let p = softmax(logits, |_, x| x);
    let (keep, margin) = kept_by_loop(&p, top_p);
    // The kernel's kept masses are f32 sums of f32 p_v: a few 1e-7 off at most (per-thread runs of
    // ~200 terms, then a tree), so 2e-6 decides every comparison.
    assert!(
        margin > 2e-6,
        "{what}: top_p {top_p} is {margin:e} from a cumulative mass, too close to decide in f32"
    );
    assert!(
        p.iter().all(|&x| x > 1e-30),
        "{what}: every probed probability must survive the 1e-30 draw"
    );
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
    let top = order[0];
    let n_kept = keep.iter().filter(|&&x| x).count();
    let mut probes: Vec<usize> = if vocab <= 16 {
        (0..vocab).collect()
    } else {
        let around = n_kept.saturating_sub(6)..(n_kept + 6).min(vocab);
        let ends = [0, 1, vocab - 2, vocab - 1];
        let mut v: Vec<usize> = around.chain(ends).map(|rank| order[rank]).collect();
        v.extend((0..6).map(|_| rng.below(vocab as u32) as usize));
        v
    };
    probes.sort();
    probes.dedup();
    let rows = probes.len();
    // A mask id outside the vocabulary: every row is drawn and no token is adjusted.
    let mask = vocab as u32;
    let mut draws = vec![1.0f32; rows * vocab];
    for (r, &w) in probes.iter().enumerate() {
        draws[r * vocab + w] = 1e-30;
    }
    let data = Rows {
        logits: logits.repeat(rows),
        inputs: vec![mask; rows],
        streams: vec![0; rows],
        consts: vec![0.0; 8],
        draws,
    };
    let s = Sample {
        n_rows: rows as u32,
        vocab: vocab as u32,
        mask_id: mask,
        mode: SampleMode::FirstHitting,
        top_p: top_p as f32,
        mask_prob: 0.0,
        seed: 0,
        call: 0,
        rows_per_seq: rows as u32,
        row_offset: 0,
    };
    let got = run_sample(ctx, k, s, &data);
    for (r, &w) in probes.iter().enumerate() {
        let want = if keep[w] { w } else { top };
        assert_eq!(
            got[r] as usize,
            want,
            "{what}: token {w} (p = {:e}) should be {} ({n_kept} of {vocab} kept at top_p {top_p})",
            p[w],
            if keep[w] { "kept" } else { "dropped" }
        );
    }
}

/// Logits whose softmax is `probs` (given up to a common factor).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// A permutation of 0..n, so the order of p is not the order of the tokens.
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u32 + 1) as usize);
    }
    v
}

#[test]
fn the_nucleus_keeps_what_a_plain_loop_keeps_at_awkward_sizes() {
    let ctx = context();
    let mut rng = Rng(77);
    let mut cases: Vec<(String, Vec<f32>, f64)> = Vec::new();
    // One token: kept whatever top_p says.
    for top_p in [0.5, 1.0] {
        cases.push((format!("vocab 1, top_p {top_p}"), vec![0.3], top_p));
    }
    // Seven tokens with a tie of three at 0.15 after a top of 0.4: at 0.6 the tie would cross, so
    // all three go and the top stays alone; at 0.9 all three stay; at 0.3 the top alone exceeds
    // top_p and is kept anyway; at 1 everything is kept.
    let seven = [0.15, 0.04, 0.4, 0.15, 0.01, 0.1, 0.15];
    for top_p in [0.6, 0.9, 0.3, 1.0] {
        cases.push((
            format!("vocab 7 with ties, top_p {top_p}"),
            logits_of(&seven),
            top_p,
        ));
    }
    // A thousand spread logits, cut near 0.5 and 0.95.
    let spread = rng.vec(1000, 4.0);
    let p = softmax(&spread, |_, x| x);
    for target in [0.5, 0.95] {
        cases.push((
            "vocab 1000, spread".into(),
            spread.clone(),
            top_p_near(&p, target),
        ));
    }
    let big = 50_258;
    // Flat: p within 10 % of each other (distinct logits 2e-6 apart), so the nucleus spans ~90 %
    // of the tokens and the cut falls between two nearly equal neighbours.
    let perm = shuffled(big, &mut rng);
    let flat: Vec<f32> = perm.iter().map(|&rank| -(rank as f32) * 2e-6).collect();
    let p = softmax(&flat, |_, x| x);
    cases.push((
        "vocab 50258, flat".into(),
        flat.clone(),
        top_p_near(&p, 0.9),
    ));
    cases.push(("vocab 50258, flat, top_p 1".into(), flat, 1.0));
    // Peaked: one token holds ~99.9 %, so only it survives top_p 0.9.
    let mut peaked = rng.vec(big, 2.0);
    peaked[big / 3] = 20.0;
    cases.push(("vocab 50258, peaked".into(), peaked, 0.9));
    // A tie of four at 0.1 after a top of 0.3, the rest spread thinly: top_p 0.5 drops the whole
    // tie (0.7 > 0.5); near 0.8 the tie is kept and the cut falls among the thin tail.
    let mut tail: Vec<f64> = rng
        .vec(big - 5, 1.0)
        .iter()
        .map(|&x| (x as f64).exp())
        .collect();
    let tail_sum: f64 = tail.iter().sum();
    tail.iter_mut().for_each(|x| *x *= 0.3 / tail_sum);
    let mut tied = tail;
    for (i, q) in [0.1, 0.3, 0.1, 0.1, 0.1].into_iter().enumerate() {
        tied.insert(perm[i] % tied.len(), q);
    }
    let tied = logits_of(&tied);
    let p = softmax(&tied, |_, x| x);
    cases.push(("vocab 50258, tie at the cut".into(), tied.clone(), 0.5));
    cases.push(("vocab 50258, tie kept".into(), tied, top_p_near(&p, 0.8)));

    for (r, k) in reduction_variants(&ctx) {
        for (what, logits, top_p) in &cases {
            let what = format!("{what} ({r:?} reductions)");
            check_kept_set(&ctx, &k, &what, logits, *top_p, &mut rng);
        }
    }
}

/// First-hitting with a whole block's calls in one submission (`GpuModel::call_block`) gives what
/// one submission per call gives: the same sequences, model calls, NFEs and events (which row each
/// call revealed, and the token), so the GPU carries every drawn token into the next call as the CPU
/// did. Two sequences, a prompt that leaves one masked row in the first block, a second generation
/// on the same workspaces; then the submissions: one per block and one per commit, not one per call.
#[test]
fn first_hitting_blocks_in_one_submission_match_one_call_at_a_time() {
    let ctx = context();
    let mut model = fixture_model(ctx.clone());
    let block = model.cfg.block_size;
    let run = |model: &mut GpuModel, recording: bool, seed: u64| {
        model.block_recording = recording;
        let opts = SampleOptions {
            batch: 2,
            length: model.cfg.model_length,
            prompt: vec![5, 6],
            top_p: 0.9,
            sampler: Sampler::FirstHitting,
            steps: block,
            seed,
            var_length: false,
            entropy_check: false,
            stop: None,
        };
        let mut events = Vec::new();
        let before = ctx.snapshot();
        let result = pollster::block_on(generate(model, &opts, &mut |e| {
            if let SampleEvent::Revealed {
                block,
                call,
                revealed,
            } = e
            {
                events.push((block, call, revealed.to_vec()));
            }
        }))
        .unwrap();
        let counts = ctx.snapshot() - before;
        // The cache ends with the last block's q|k|v as its last call computed them (the last block
        // is not committed): from the tokens the GPU copied in, when the block went at once.
        let (length, layers) = (model.cfg.model_length, model.cfg.n_blocks);
        let cache: Vec<Vec<u32>> = (0..layers)
            .map(|l| {
                pollster::block_on(model.read_kv_cache(2, length, l))
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect();
        (result, events, counts, cache)
    };
    for seed in [3, 11] {
        let (one, one_events, one_counts, one_cache) = run(&mut model, false, seed);
        let (all, all_events, all_counts, all_cache) = run(&mut model, true, seed);
        assert_eq!(all.sequences, one.sequences, "seed {seed}");
        assert_eq!((all.calls, all.nfe), (one.calls, one.nfe), "seed {seed}");
        assert_eq!(all_events, one_events, "seed {seed}");
        assert!(all_cache == one_cache, "seed {seed}: the KV caches differ");
        // Each sampling call revealed a row of both sequences, at a masked position.
        assert!(all_events.iter().all(|(_, _, r)| r.len() == 2));
        let blocks = model.cfg.model_length / block;
        assert_eq!(one_counts.submits as usize, one.calls, "seed {seed}");
        // One per block and one per commit (the last block is not committed).
        assert_eq!(all_counts.submits as usize, 2 * blocks - 1, "seed {seed}");
        if seed == 11 {
            // The instances were built by the first generation; the second creates nothing.
            assert_eq!(
                (all_counts.buffers_created, all_counts.bind_groups_created),
                (0, 0)
            );
        }
    }
    // The instances run the dispatches of the shape's program, one for one.
    let programs: Vec<_> = model.call_programs().collect();
    let mut instances = 0;
    for (shape, list) in model.block_call_programs() {
        let program = programs.iter().find(|(s, _)| *s == shape).unwrap().1;
        for p in list {
            assert_eq!(p.recorded(), program.recorded(), "{shape:?}");
            instances += 1;
        }
    }
    assert_eq!(
        instances, block,
        "one instance per row of the sampling shape"
    );
}
