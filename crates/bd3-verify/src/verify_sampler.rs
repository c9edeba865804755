//! `verify`'s sampler checks: the KV cache against the non-cached forward, and one step of each
//! official sampler replayed with its recorded draws — in f64 on the CPU (the reference arithmetic)
//! and through the GPU sample kernel fed the same draws.

use crate::report::{Report, Tolerance};
use bd3_gpu::ops::sample::SampleMode;
use bd3_gpu::{CallAction, CallInputs, CallShape, GpuModel};
use bd3_model::sampler::{ddpm_q, nucleus, official_exponential, race, sedd_position};
use bd3_model::schedule;
use bd3_model::tensor_file::TensorFile;
use bd3_model::{cpu_ref, Error, Result};

const ACTIVATIONS: Tolerance = Tolerance::MaxNormalised(1e-4);
/// Probabilities computed in f64 from the same stored f64 inputs.
const F64_PROBS: Tolerance = Tolerance::MaxNormalised(1e-9);
/// Probabilities computed in f64 from inputs the fixture stores rounded to f32 (the DDPM case starts
/// from `cached.log_probs`, F32, while the reference used the unrounded values): f32 input rounding.
const F32_INPUT_PROBS: Tolerance = Tolerance::MaxNormalised(1e-6);

/// The nucleus mass the boundary may move by under f32 rounding of the probabilities.
const NUCLEUS_SLACK: f64 = 1e-5;
/// Race keys this close (relative) to the winner are ties f32 rounding may break either way.
const RACE_SLACK: f64 = 1e-4;

/// Compare the GPU's tokens with the reference tokens. The GPU draws from its own f32 probabilities,
/// so a differing token is accepted only where rounding can explain it: `keys(row, p)` gives the race
/// keys of a row computed in f64 from the reference probabilities with nucleus mass p, and the GPU's
/// token must win (within RACE_SLACK) for p or p ± NUCLEUS_SLACK. The check counts the other mismatches.
fn compare_tokens(
    report: &mut Report<'_>,
    name: &str,
    gpu: &[u32],
    reference: &[u32],
    top_p: f64,
    keys: impl Fn(usize, f64) -> Vec<f64>,
) {
    let unexplained = gpu
        .iter()
        .zip(reference)
        .enumerate()
        .filter(|(row, (g, r))| {
            g != r
                && ![
                    top_p,
                    (top_p - NUCLEUS_SLACK).max(0.0),
                    (top_p + NUCLEUS_SLACK).min(1.0),
                ]
                .iter()
                .any(|&p| {
                    let k = keys(*row, p);
                    let best = k.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    k[**g as usize] >= best - RACE_SLACK * best.abs()
                })
        })
        .count();
    report.line(name, unexplained as f64, 0.0, unexplained == 0);
}

fn ids(a: &[i64]) -> Vec<u32> {
    a.iter().map(|&x| x as u32).collect()
}

/// A sampling step with everything defaulted but what a check sets.
fn call<'a>(
    tokens: &'a [u32],
    cache_idx: usize,
    picked: &'a [u32],
    streams: &'a [u32],
) -> CallInputs<'a> {
    CallInputs {
        tokens,
        cache_idx,
        sigma: &[],
        picked,
        top_p: 1.0,
        mask_prob: 0.0,
        dsigma: &[],
        seed: 0,
        call: 0,
        streams,
        draws: None,
        reveal: None,
    }
}

/// Commit the clean blocks before `upto` of each sequence of `x` ([batch, len]) into the cache.
async fn commit_prefix(
    model: &mut GpuModel,
    x: &[u32],
    batch: usize,
    len: usize,
    block: usize,
    upto: usize,
) -> Result<()> {
    let cache_len = model.cfg.model_length;
    for blk in 0..upto {
        let tokens: Vec<u32> = (0..batch)
            .flat_map(|s| x[s * len + blk * block..s * len + (blk + 1) * block].to_vec())
            .collect();
        let shape = CallShape {
            batch,
            rows: block,
            cache_len,
            action: CallAction::Commit,
        };
        model
            .call(&shape, &call(&tokens, blk * block, &[], &[]))
            .await?;
    }
    Ok(())
}

/// BD3LM `sample_case`: cache contents, cached logits, first-hitting and DDPM steps.
pub async fn bd3lm(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    let cfg = model.cfg.clone();
    let (v, mask) = (cfg.vocab_size, cfg.mask_id());
    let p = "sample_case.";
    let bs = cfg.block_size;
    let bi = tf.i64_scalar("block_index")?;
    let x_in = tf.i64_rank("ddpm.x_in", 2)?;
    let (b, len) = (x_in.shape[0], x_in.shape[1]);
    let bi = usize::try_from(bi).ok().filter(|&bi| (bi + 1) * bs <= len && len <= cfg.model_length).ok_or_else(|| {
        Error::Invalid(format!("sample_case: malformed fixture: block_index {bi} with block size {bs} does not fit ddpm.x_in of length {len}"))
    })?;
    let x_in = ids(&x_in.data);
    let cache_len = cfg.model_length;
    let d3 = 3 * cfg.hidden_dim;

    // The cache after committing the clean blocks, then the DDPM step on the current block.
    commit_prefix(model, &x_in, b, len, bs, bi).await?;
    for layer in 0..cfg.n_blocks {
        let name = format!("kv_cache.block{layer}");
        if !tf.has(&name) {
            continue;
        }
        let cache = model.read_kv_cache(b, cache_len, layer).await?;
        let ours: Vec<f32> = (0..b)
            .flat_map(|s| cache[s * cache_len * d3..(s * cache_len + bi * bs) * d3].to_vec())
            .collect();
        report.compare_f32(
            &format!("{p}{name}"),
            &ours,
            &tf.f64(&name)?.data,
            ACTIVATIONS,
        );
    }
    let block: Vec<u32> = (0..b)
        .flat_map(|s| x_in[s * len + bi * bs..s * len + (bi + 1) * bs].to_vec())
        .collect();
    let (t, dt) = (tf.f64_scalar("ddpm.t")?, tf.f64_scalar("ddpm.dt")?);
    let mask_prob = (t - dt) / t;
    let u = tf.f64("ddpm.uniform")?.data;
    let draws: Vec<f32> = u.iter().map(|&u| official_exponential(u) as f32).collect();
    let picked: Vec<u32> = (0..b).flat_map(|_| 0..bs as u32).collect();
    let streams = vec![0u32; b * bs];
    let shape = CallShape {
        batch: b,
        rows: bs,
        cache_len,
        action: CallAction::Sample {
            head_rows: bs,
            mode: SampleMode::Ddpm,
            verify: true,
        },
    };
    let c = CallInputs {
        top_p: 0.9,
        mask_prob,
        draws: Some(&draws),
        ..call(&block, bi * bs, &picked, &streams)
    };
    let out = model.call(&shape, &c).await?;
    let logits = out.logits.unwrap();
    report.compare_f32(
        &format!("{p}cached.logits"),
        &logits,
        &tf.f64("cached.logits")?.data,
        ACTIVATIONS,
    );
    let lp: Vec<f64> = logits
        .chunks(v)
        .zip(&block)
        .flat_map(|(row, &x)| cpu_ref::subs_log_probs(row, x, mask))
        .collect();
    let lp_ref = tf.f64("cached.log_probs")?.data;
    let keep: Vec<usize> = (0..lp.len())
        .filter(|&i| (i % v) as u32 != mask && lp_ref[i] > -1e5)
        .collect();
    report.compare(
        &format!("{p}cached.log_probs"),
        &keep.iter().map(|&i| lp[i]).collect::<Vec<_>>(),
        &keep.iter().map(|&i| lp_ref[i]).collect::<Vec<_>>(),
        ACTIVATIONS,
    );
    let x_out = ids(&tf.i64("ddpm.x_out")?.data);
    let want_block: Vec<u32> = (0..b)
        .flat_map(|s| x_out[s * len + bi * bs..s * len + (bi + 1) * bs].to_vec())
        .collect();
    let race_keys = |row: usize, top_p: f64| -> Vec<f64> {
        let probs: Vec<f64> = lp_ref[row * v..(row + 1) * v]
            .iter()
            .map(|l| l.exp())
            .collect();
        let q = ddpm_q(&nucleus(&probs, top_p), mask as usize, mask_prob);
        q.iter()
            .zip(&u[row * v..(row + 1) * v])
            .map(|(q, &u)| q / official_exponential(u))
            .collect()
    };
    // Rows whose input is not masked keep it; only masked rows are drawn.
    let drawn: Vec<usize> = (0..block.len()).filter(|&r| block[r] == mask).collect();
    let gpu_drawn: Vec<u32> = drawn.iter().map(|&r| out.tokens[r]).collect();
    let ref_drawn: Vec<u32> = drawn.iter().map(|&r| want_block[r]).collect();
    let carried: Vec<usize> = (0..block.len()).filter(|&r| block[r] != mask).collect();
    report.compare_ids(
        &format!("{p}ddpm.x_out carried (gpu)"),
        &carried.iter().map(|&r| out.tokens[r]).collect::<Vec<_>>(),
        &carried
            .iter()
            .map(|&r| want_block[r] as i64)
            .collect::<Vec<_>>(),
    );
    compare_tokens(
        report,
        &format!("{p}ddpm.x_out drawn (gpu)"),
        &gpu_drawn,
        &ref_drawn,
        0.9,
        |i, top_p| race_keys(drawn[i], top_p),
    );

    // DDPM in f64 from the stored log-probs, as `_ddpm_caching_update` computes it.
    let mut cpu_nucleus = Vec::new();
    let mut cpu_tokens = Vec::new();
    for (r, row) in lp_ref.chunks(v).enumerate() {
        let probs: Vec<f64> = row.iter().map(|l| l.exp()).collect();
        let pn = nucleus(&probs, 0.9);
        let e: Vec<f64> = u[r * v..(r + 1) * v]
            .iter()
            .map(|&u| official_exponential(u))
            .collect();
        let tok = race(&ddpm_q(&pn, mask as usize, mask_prob), &e) as u32;
        cpu_tokens.push(if block[r] == mask { tok } else { block[r] });
        cpu_nucleus.extend(pn);
    }
    report.compare(
        &format!("{p}ddpm.probs_nucleus"),
        &cpu_nucleus,
        &tf.f64("ddpm.probs_nucleus")?.data,
        F32_INPUT_PROBS,
    );
    report.compare_ids(
        &format!("{p}ddpm.x_out (f64)"),
        &cpu_tokens,
        &want_block.iter().map(|&x| x as i64).collect::<Vec<_>>(),
    );

    // First-hitting: one masked position (the randint-th in increasing order), its token by the race.
    let fh_in = ids(&tf.i64("fh.x_in")?.data);
    if fh_in.len() < (bi + 1) * bs {
        return Err(Error::Invalid(format!(
            "sample_case: malformed fixture: fh.x_in has {} tokens, fewer than block {bi} needs",
            fh_in.len()
        )));
    }
    let fh_block = &fh_in[bi * bs..(bi + 1) * bs];
    let masked: Vec<usize> = (0..bs).filter(|&i| fh_block[i] == mask).collect();
    let randint = tf.i64_scalar("fh.randint")?;
    let pos = *usize::try_from(randint).ok().and_then(|i| masked.get(i)).ok_or_else(|| {
        Error::Invalid(format!("sample_case: malformed fixture: fh.randint {randint} but the block has {} masked positions", masked.len()))
    })?;
    report.compare_ids(
        &format!("{p}fh.position"),
        &[pos as u32],
        &tf.i64("fh.position")?.data,
    );
    let probs = tf.f64("fh.probs")?.data;
    let pn: Vec<f64> = probs.chunks(v).flat_map(|row| nucleus(row, 0.9)).collect();
    report.compare(
        &format!("{p}fh.probs_nucleus"),
        &pn,
        &tf.f64("fh.probs_nucleus")?.data,
        F64_PROBS,
    );
    let fu = tf.f64("fh.uniform")?.data;
    let e: Vec<f64> = fu[pos * v..(pos + 1) * v]
        .iter()
        .map(|&u| official_exponential(u))
        .collect();
    let mut fh_out = fh_in.clone();
    fh_out[bi * bs + pos] = race(&pn[pos * v..(pos + 1) * v], &e) as u32;
    let want = tf.i64("fh.x_out")?.data;
    report.compare_ids(&format!("{p}fh.x_out (f64)"), &fh_out, &want);

    commit_prefix(model, &fh_in, 1, len, bs, bi).await?;
    let draws: Vec<f32> = e.iter().map(|&e| e as f32).collect();
    let shape = CallShape {
        batch: 1,
        rows: bs,
        cache_len,
        action: CallAction::Sample {
            head_rows: 1,
            mode: SampleMode::FirstHitting,
            verify: true,
        },
    };
    let picked = [pos as u32];
    let c = CallInputs {
        top_p: 0.9,
        draws: Some(&draws),
        ..call(fh_block, bi * bs, &picked, &[0])
    };
    let out = model.call(&shape, &c).await?;
    let fh_keys = |_: usize, top_p: f64| -> Vec<f64> {
        nucleus(&probs[pos * v..(pos + 1) * v], top_p)
            .iter()
            .zip(&e)
            .map(|(q, e)| q / e)
            .collect()
    };
    compare_tokens(
        report,
        &format!("{p}fh.x_out (gpu)"),
        &out.tokens,
        &[want[bi * bs + pos] as u32],
        0.9,
        fh_keys,
    );
    Ok(())
}

/// SEDD: one analytic step and the final denoiser, with and without the nucleus.
pub async fn sedd(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    let cfg = model.cfg.clone();
    let (v, mask) = (cfg.vocab_size, cfg.mask_id() as usize);
    let p = "sedd_case.";
    for step in ["step", "denoise"] {
        if !tf.has(&format!("{step}.x_in")) {
            continue;
        }
        let denoise = step == "denoise";
        let key = |n: &str| format!("{step}.{n}");
        let x_in = ids(&tf.i64(&key("x_in"))?.data);
        let n = x_in.len();
        let t = tf.f64_scalar(&key("t"))?;
        let sigma_t = schedule::sigma_from_p(t);
        let dsigma = if denoise {
            sigma_t
        } else {
            let dt = tf.f64_scalar(&key("dt"))?;
            let sigma_s = schedule::sigma_from_p(t - dt);
            report.compare(
                &format!("{p}step.sigma_s"),
                &[sigma_s],
                &tf.f64("step.sigma_s")?.data,
                Tolerance::Relative(1e-7),
            );
            let ds = sigma_t - sigma_s;
            report.compare(
                &format!("{p}step.dsigma"),
                &[ds],
                &tf.f64("step.dsigma")?.data,
                Tolerance::Relative(1e-6),
            );
            ds
        };
        let u = tf.f64(&key("uniform"))?.data;
        let e: Vec<f64> = u.iter().map(|&u| official_exponential(u)).collect();
        let log_score = tf.f64(&key("log_score"))?.data;
        for (top_p, suffix) in [(0.99, ""), (1.0, "_p1")] {
            let (mut score, mut stag, mut probs, mut tokens) = (vec![], vec![], vec![], vec![]);
            for i in 0..n {
                let (s, st, pr) = sedd_position(
                    &log_score[i * v..(i + 1) * v],
                    x_in[i] as usize,
                    mask,
                    dsigma,
                    top_p,
                    denoise,
                );
                tokens.push(race(&pr, &e[i * v..(i + 1) * v]) as u32);
                score.extend(s);
                stag.extend(st);
                probs.extend(pr);
            }
            let out_name = format!("{step}{suffix}.x_out");
            if !tf.has(&out_name) {
                continue;
            }
            let want = tf.i64(&out_name)?.data;
            if suffix.is_empty() {
                report.compare(
                    &format!("{p}{}", key("score")),
                    &score,
                    &tf.f64(&key("score"))?.data,
                    Tolerance::MaxNormalised(5e-5),
                );
                if tf.has(&key("stag_score")) {
                    report.compare(
                        &format!("{p}{}", key("stag_score")),
                        &stag,
                        &tf.f64(&key("stag_score"))?.data,
                        Tolerance::MaxNormalised(5e-5),
                    );
                }
                report.compare(
                    &format!("{p}{}", key("probs")),
                    &probs,
                    &tf.f64(&key("probs"))?.data,
                    Tolerance::MaxNormalised(5e-5),
                );
            }
            report.compare_ids(&format!("{p}{out_name} (f64)"), &tokens, &want);

            // The same step through the model and the GPU sample kernel, with the recorded draws.
            let mode = if denoise {
                SampleMode::SeddDenoise
            } else {
                SampleMode::SeddStep
            };
            let shape = CallShape {
                batch: 1,
                rows: n,
                cache_len: cfg.model_length,
                action: CallAction::Sample {
                    head_rows: n,
                    mode,
                    verify: true,
                },
            };
            let draws: Vec<f32> = e.iter().map(|&e| e as f32).collect();
            let picked: Vec<u32> = (0..n as u32).collect();
            let streams = vec![0u32; n];
            let sigma = [sigma_t];
            let ds = [dsigma];
            let c = CallInputs {
                sigma: &sigma,
                top_p,
                dsigma: &ds,
                draws: Some(&draws),
                ..call(&x_in, 0, &picked, &streams)
            };
            let out = model.call(&shape, &c).await?;
            let want32: Vec<u32> = want.iter().map(|&x| x as u32).collect();
            let sedd_keys = |i: usize, p_: f64| -> Vec<f64> {
                let pr = sedd_position(
                    &log_score[i * v..(i + 1) * v],
                    x_in[i] as usize,
                    mask,
                    dsigma,
                    if top_p < 1.0 { p_ } else { 1.0 },
                    denoise,
                )
                .2;
                pr.iter()
                    .zip(&e[i * v..(i + 1) * v])
                    .map(|(q, e)| q / e)
                    .collect()
            };
            compare_tokens(
                report,
                &format!("{p}{out_name} (gpu)"),
                &out.tokens,
                &want32,
                top_p,
                sedd_keys,
            );
        }
    }
    Ok(())
}

/// AR: prefix logits through the KV cache one token at a time, and the sampler run teacher-forced
/// with its recorded Gumbel draws (argmax(log p + g) is the race with E = e^{−g}).
pub async fn ar(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    let cfg = model.cfg.clone();
    let (v, mask) = (cfg.vocab_size, cfg.mask_id());
    let p = "ar_case.";
    let shape = |b| CallShape {
        batch: b,
        rows: 1,
        cache_len: cfg.model_length,
        action: CallAction::Sample {
            head_rows: 1,
            mode: SampleMode::Ar,
            verify: true,
        },
    };

    let x = tf.i64_rank("x", 2)?;
    let (b, l) = (x.shape[0], x.shape[1]);
    let x = ids(&x.data);
    let mut prefixes: Vec<usize> = tf
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("prefix")?.split_once('.')?.0.parse().ok())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let longest = prefixes.last().copied().unwrap_or(0);
    let mut cached_logits = vec![Vec::new(); b];
    let (picked, streams, ones) = (vec![0u32; b], vec![0u32; b], vec![1f32; b * v]);
    for i in 0..longest {
        let tokens: Vec<u32> = (0..b).map(|s| x[s * l + i]).collect();
        let out = model
            .call(
                &shape(b),
                &CallInputs {
                    draws: Some(&ones),
                    ..call(&tokens, i, &picked, &streams)
                },
            )
            .await?;
        for (s, row) in out.logits.unwrap().chunks(v).enumerate() {
            cached_logits[s].extend_from_slice(row);
        }
    }
    for k in prefixes {
        let ours: Vec<f32> = cached_logits
            .iter()
            .flat_map(|c| c[..k * v].to_vec())
            .collect();
        report.compare_f32(
            &format!("{p}prefix{k}.logits (kv cache)"),
            &ours,
            &tf.f64(&format!("prefix{k}.logits"))?.data,
            ACTIVATIONS,
        );
    }

    if !tf.has("sampler.x_out") {
        return Ok(());
    }
    let x_out = tf.i64_rank("sampler.x_out", 2)?;
    let (bs, ls) = (x_out.shape[0], x_out.shape[1]);
    let x_out = ids(&x_out.data);
    let gumbel = tf.f64("sampler.gumbel")?.data;
    let lp_ref = tf.f64("sampler.log_probs_last")?.data;
    let (mut lp_ours, mut lp_want, mut pn_ours, mut cpu_tokens, mut gpu_tokens, mut want_tokens) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (picked, streams) = (vec![0u32; bs], vec![0u32; bs]);
    for i in 0..ls - 1 {
        let tokens: Vec<u32> = (0..bs).map(|s| x_out[s * ls + i]).collect();
        let g = &gumbel[i * bs * v..(i + 1) * bs * v];
        let draws: Vec<f32> = g.iter().map(|&g| (-g).exp() as f32).collect();
        let out = model
            .call(
                &shape(bs),
                &CallInputs {
                    top_p: 0.9,
                    draws: Some(&draws),
                    ..call(&tokens, i, &picked, &streams)
                },
            )
            .await?;
        gpu_tokens.extend(&out.tokens);
        for (s, row) in out.logits.unwrap().chunks(v).enumerate() {
            let lp = cpu_ref::ar_log_probs(row, mask);
            let off = (i * bs + s) * v;
            for j in (0..v).filter(|&j| j as u32 != mask) {
                lp_ours.push(lp[j]);
                lp_want.push(lp_ref[off + j]);
            }
            // Official arithmetic on the official log-probs: nucleus of exp, then argmax(log p + g).
            let pn = nucleus(
                &lp_ref[off..off + v]
                    .iter()
                    .map(|l| l.exp())
                    .collect::<Vec<_>>(),
                0.9,
            );
            let keys: Vec<f64> = pn
                .iter()
                .zip(&g[s * v..(s + 1) * v])
                .map(|(p, g)| p.ln() + g)
                .collect();
            cpu_tokens.push(
                keys.iter()
                    .enumerate()
                    .fold(
                        (f64::NEG_INFINITY, 0),
                        |m, (j, &k)| if k > m.0 { (k, j) } else { m },
                    )
                    .1 as u32,
            );
            pn_ours.extend(pn);
            want_tokens.push(x_out[s * ls + i + 1] as i64);
        }
    }
    report.compare(
        &format!("{p}sampler.log_probs_last (kv cache)"),
        &lp_ours,
        &lp_want,
        ACTIVATIONS,
    );
    report.compare(
        &format!("{p}sampler.probs_nucleus"),
        &pn_ours,
        &tf.f64("sampler.probs_nucleus")?.data,
        F64_PROBS,
    );
    report.compare_ids(
        &format!("{p}sampler.x_out (f64)"),
        &cpu_tokens,
        &want_tokens,
    );
    let want32: Vec<u32> = want_tokens.iter().map(|&x| x as u32).collect();
    // argmax(log p + g) is the race with E = e^{−g}: keys p·e^{g}.
    let ar_keys = |row: usize, top_p: f64| -> Vec<f64> {
        let pn = nucleus(
            &lp_ref[row * v..(row + 1) * v]
                .iter()
                .map(|l| l.exp())
                .collect::<Vec<_>>(),
            top_p,
        );
        pn.iter()
            .zip(&gumbel[row * v..(row + 1) * v])
            .map(|(p, g)| p * g.exp())
            .collect()
    };
    compare_tokens(
        report,
        &format!("{p}sampler.x_out (gpu)"),
        &gpu_tokens,
        &want32,
        0.9,
        ar_keys,
    );
    Ok(())
}
