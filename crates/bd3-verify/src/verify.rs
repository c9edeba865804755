//! `bd3-wgpu verify DIR`: every case of a fixture folder in the `golden/tiny-a` format, compared with
//! the reference tensors the official PyTorch code produced. Shapes come from the files, never from
//! constants: any folder of that format works. Sub-folders with their own `config.json` (`sedd/`,
//! `ar/`) are fixture folders too and are verified after the parent.

use crate::report::{Report, Tolerance};
use crate::FixtureSource;
use bd3_gpu::{ForwardInput, ForwardShape, GpuContext, GpuModel, Objective};
use bd3_model::schedule::{self, SAMPLING_EPS};
use bd3_model::tensor_file::TensorFile;
use bd3_model::{AttentionMask, Checkpoint, Error, ModelConfig, ModelKind, Result};
use std::sync::Arc;

/// Logits, hidden states, log-probs: |a−b| ≤ 1e-4·max|ref| (fixture README §4).
const ACTIVATIONS: Tolerance = Tolerance::MaxNormalised(1e-4);
/// Loss and per-token losses: relative 1e-5.
const LOSS: Tolerance = Tolerance::Relative(1e-5);
const TOKEN_LOSS: Tolerance = Tolerance::MaxNormalised(1e-5);
/// Schedule arithmetic done in f64 on both sides.
const F64_EXACTISH: Tolerance = Tolerance::Relative(1e-7);

const CASE_FILES: [&str; 6] = [
    "train_case",
    "mask_cases",
    "sample_case",
    "sedd_case",
    "ar_case",
    "adamw_case",
];

pub async fn verify_dir(
    ctx: &Arc<GpuContext>,
    dir: &dyn FixtureSource,
    report: &mut Report<'_>,
) -> Result<()> {
    let files: Vec<(&str, TensorFile)> = CASE_FILES
        .iter()
        .filter_map(|c| dir.read(&format!("{c}.safetensors")).map(|b| (*c, b)))
        .map(|(c, b)| {
            Ok((
                c,
                TensorFile::from_bytes(b, &format!("{}/{c}.safetensors", dir.name()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let subdirs = dir.subfolders();
    let config = dir.read("config.json");
    if files.is_empty() && subdirs.is_empty() && config.is_none() {
        return Err(Error::Invalid(format!(
            "{}: no fixture cases found (expected one of {})",
            dir.name(),
            CASE_FILES.join(", ")
        )));
    }
    // A folder checks something or is an error: cases need the model they were made with, and a model
    // alone (without sub-folders) would report "0 passed, 0 failed".
    if config.is_none() && !files.is_empty() {
        return Err(Error::File {
            path: format!("{}/config.json", dir.name()).into(),
            message: format!(
                "missing (the folder has fixture cases: {})",
                files.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    if config.is_some() && files.is_empty() && subdirs.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no fixture cases found beside config.json (expected one of {})",
            dir.name(),
            CASE_FILES.map(|c| format!("{c}.safetensors")).join(", ")
        )));
    }
    if let Some(config) = config {
        // The model is loaded (strictly) before any case runs, so a broken checkpoint fails first.
        let cfg =
            ModelConfig::from_json_bytes(&config, &format!("{}/config.json", dir.name()), None)?;
        let weights_name = format!("{}/model.safetensors", dir.name());
        let bytes = dir.read("model.safetensors").ok_or_else(|| Error::File {
            path: weights_name.clone().into(),
            message: "missing".into(),
        })?;
        let ckpt = Checkpoint::from_bytes(bytes, &weights_name, &cfg)?;
        let mut model = GpuModel::load(ctx.clone(), cfg.clone(), &ckpt).await?;
        report.note(&format!(
            "{}: {} model, vocab {}, hidden {}, {} heads, {} blocks, L = {}",
            dir.name(),
            cfg.kind.name(),
            cfg.vocab_size,
            cfg.hidden_dim,
            cfg.n_heads,
            cfg.n_blocks,
            cfg.model_length
        ));
        for (case, tf) in &files {
            match *case {
                "train_case" => train_case(&mut model, tf, report).await?,
                "mask_cases" => mask_cases(&mut model, tf, report).await?,
                "sample_case" => sample_case(&mut model, tf, report).await?,
                "sedd_case" => sedd_case(&mut model, tf, report).await?,
                "ar_case" => ar_case(&mut model, tf, report).await?,
                "adamw_case" => {
                    let grads = files
                        .iter()
                        .find(|(c, _)| *c == "train_case")
                        .map(|(_, t)| t)
                        .ok_or_else(|| {
                            Error::Invalid(
                                "adamw_case needs train_case.safetensors (its gradients)".into(),
                            )
                        })?;
                    crate::verify_train::adamw(&mut model, &ckpt, grads, tf, report).await?
                }
                _ => unreachable!(),
            }
        }
    }
    let outer = report_prefix(report);
    for sub in subdirs {
        let name = sub.name();
        let short = name.rsplit('/').next().unwrap_or(&name).to_string();
        report.set_prefix(&format!("{outer}{short}/"));
        Box::pin(verify_dir(ctx, sub.as_ref(), report)).await?;
    }
    report.set_prefix(&outer);
    Ok(())
}

fn report_prefix(report: &Report<'_>) -> String {
    report.prefix.clone()
}

fn ids(a: &[i64]) -> Vec<u32> {
    a.iter().map(|&x| x as u32).collect()
}

/// Repeat each block's t over its tokens: [B, nb] → [B, nb·bs].
fn per_token(t_block: &[f64], block_size: usize) -> Vec<f64> {
    t_block
        .iter()
        .flat_map(|&t| std::iter::repeat_n(t, block_size))
        .collect()
}

/// Check our mask predicate against a stored [n, n] mask.
fn check_mask(report: &mut Report<'_>, name: &str, mask: AttentionMask, stored: &[i64]) {
    let n = (stored.len() as f64).sqrt() as usize;
    let ours: Vec<f64> = (0..n * n)
        .map(|i| mask.allows(i / n, i % n) as i64 as f64)
        .collect();
    let theirs: Vec<f64> = stored.iter().map(|&x| x as f64).collect();
    report.compare(name, &ours, &theirs, Tolerance::Exact);
}

/// Compare SUBS/AR log-probabilities: rows whose input is the mask (or every row, for AR) to 1e-4·max
/// without the mask column; carried-over rows exactly; the mask column (≈ −1e6) to 0.5 absolute,
/// where the f32 spacing is 0.06.
/// What the compared log-probabilities were computed from: the input row ids, the vocabulary, the
/// mask id, and whether the head is AR (every row scored).
struct LogProbRows<'a> {
    input_ids: &'a [u32],
    vocab: usize,
    mask_id: u32,
    ar: bool,
}

fn compare_log_probs(
    report: &mut Report<'_>,
    name: &str,
    got: &[f32],
    want: &[f64],
    rows: LogProbRows<'_>,
) {
    let LogProbRows {
        input_ids,
        vocab,
        mask_id,
        ar,
    } = rows;
    let (
        mut scored_got,
        mut scored_want,
        mut carried_got,
        mut carried_want,
        mut col_got,
        mut col_want,
    ) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (r, &x_t) in input_ids.iter().enumerate() {
        let row = r * vocab..(r + 1) * vocab;
        if ar || x_t == mask_id {
            for v in 0..vocab {
                let (g, w) = (got[row.start + v] as f64, want[row.start + v]);
                if v as u32 == mask_id {
                    col_got.push(g);
                    col_want.push(w);
                } else {
                    scored_got.push(g);
                    scored_want.push(w);
                }
            }
        } else {
            carried_got.extend(got[row.clone()].iter().map(|&x| x as f64));
            carried_want.extend_from_slice(&want[row]);
        }
    }
    report.compare(name, &scored_got, &scored_want, ACTIVATIONS);
    if !carried_got.is_empty() {
        report.compare(
            &format!("{name}.carry_over"),
            &carried_got,
            &carried_want,
            Tolerance::Absolute(0.0),
        );
    }
    if !col_got.is_empty() {
        report.compare(
            &format!("{name}.mask_column"),
            &col_got,
            &col_want,
            Tolerance::Absolute(0.5),
        );
    }
}

/// One BD3LM training-objective case: t from the stored uniforms, x_t from the stored draws, the
/// vectorised x_t ⊕ x_0 forward with the block-diffusion mask, SUBS loss.
struct Bd3lmCase<'a> {
    /// Prefix of the tensor names in the file ("" for train_case, "bs4." for mask_cases).
    prefix: &'a str,
    /// Prefix of the printed check names.
    label: &'a str,
    block_size: usize,
    hidden: bool,
}

async fn bd3lm_objective(
    model: &mut GpuModel,
    tf: &TensorFile,
    report: &mut Report<'_>,
    c: Bd3lmCase<'_>,
) -> Result<()> {
    let cfg = model.cfg.clone();
    let key = |n: &str| format!("{}{n}", c.prefix);
    let shown = |n: &str| format!("{}{n}", c.label);
    let shared = |n: &str| {
        if tf.has(&key(n)) {
            key(n)
        } else {
            n.to_string()
        }
    };
    let x0 = tf.i64_rank(&shared("x0"), 2)?;
    let (b, l) = (x0.shape[0], x0.shape[1]);
    let bs = c.block_size;
    if l % bs != 0 {
        return Err(Error::Invalid(format!(
            "{}: length {l} is not a multiple of block size {bs}",
            key("x0")
        )));
    }
    let nb = l / bs;
    let u = tf.f64(&key("t_uniform"))?;
    let t_block = schedule::sample_t(&u.data, b, nb, SAMPLING_EPS, 1.0, true);
    let t = per_token(&t_block, bs);
    report.compare(&shown("t"), &t, &tf.f64(&key("t"))?.data, F64_EXACTISH);
    let mask_u = tf.f64(&shared("mask_uniform"))?;
    let x0_ids = ids(&x0.data);
    let xt = schedule::mask_tokens(&x0_ids, &mask_u.data, &t_block, l, bs, cfg.mask_id());
    report.compare_ids(&shown("xt"), &xt, &tf.i64(&key("xt"))?.data);
    let mask = AttentionMask::BlockDiff {
        half_len: l,
        block_size: bs,
    };
    if tf.has(&key("attn_mask")) {
        check_mask(
            report,
            &shown("attn_mask"),
            mask,
            &tf.i64(&key("attn_mask"))?.data,
        );
    }

    let mut tokens = Vec::with_capacity(2 * b * l);
    for s in 0..b {
        tokens.extend_from_slice(&xt[s * l..(s + 1) * l]);
        tokens.extend_from_slice(&x0_ids[s * l..(s + 1) * l]);
    }
    let weights: Vec<f32> = t
        .iter()
        .map(|&t| schedule::subs_weight(t, SAMPLING_EPS) as f32)
        .collect();
    let shape = ForwardShape {
        capture: true,
        ..ForwardShape::bd3lm_train(b, l, bs)
    };
    let input = ForwardInput {
        tokens: &tokens,
        sigma: &vec![0.0; b],
        input_ids: &xt,
        targets: &x0_ids,
        weights: &weights,
        sedd_t: &[],
    };
    let out = model.forward(&shape, &input).await?;
    let cap = out.capture.unwrap();
    if c.hidden {
        if let (Some(cond), true) = (&cap.cond, tf.has(&key("cond"))) {
            report.compare_f32(
                &shown("cond"),
                cond,
                &tf.f64(&key("cond"))?.data,
                ACTIVATIONS,
            );
        }
        compare_hidden(report, tf, c.prefix, c.label, &cap.hidden)?;
    }
    report.compare_f32(
        &shown("logits"),
        &cap.logits,
        &tf.f64(&key("logits"))?.data,
        ACTIVATIONS,
    );
    if tf.has(&key("log_probs")) {
        compare_log_probs(
            report,
            &shown("log_probs"),
            &cap.log_probs,
            &tf.f64(&key("log_probs"))?.data,
            LogProbRows {
                input_ids: &xt,
                vocab: cfg.vocab_size,
                mask_id: cfg.mask_id(),
                ar: false,
            },
        );
    }
    report.compare_f32(
        &shown("token_loss"),
        &cap.token_loss,
        &tf.f64(&key("token_loss"))?.data,
        TOKEN_LOSS,
    );
    let denominator = if tf.has(&shared("attention_mask")) {
        tf.i64(&shared("attention_mask"))?.data.iter().sum::<i64>() as f64
    } else {
        (b * l) as f64
    };
    report.compare(
        &shown("loss"),
        &[out.loss_sum / denominator],
        &tf.f64(&key("loss"))?.data,
        LOSS,
    );
    if c.hidden {
        crate::verify_train::gradients(model, shape, input, tf, report, c.label).await?;
    }
    Ok(())
}

fn compare_hidden(
    report: &mut Report<'_>,
    tf: &TensorFile,
    prefix: &str,
    label: &str,
    hidden: &[Vec<f32>],
) -> Result<()> {
    for (i, h) in hidden.iter().enumerate() {
        let name = if i == 0 {
            "hidden.embed".to_string()
        } else {
            format!("hidden.block{}", i - 1)
        };
        let key = format!("{prefix}{name}");
        if tf.has(&key) {
            report.compare_f32(
                &format!("{label}{name}"),
                h,
                &tf.f64(&key)?.data,
                ACTIVATIONS,
            );
        }
    }
    Ok(())
}

async fn train_case(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    require_kind(model, ModelKind::Bd3lm, "train_case")?;
    let bs = model.cfg.block_size;
    bd3lm_objective(
        model,
        tf,
        report,
        Bd3lmCase {
            prefix: "",
            label: "train_case.",
            block_size: bs,
            hidden: true,
        },
    )
    .await
}

async fn mask_cases(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    require_kind(model, ModelKind::Bd3lm, "mask_cases")?;
    let mut sizes: Vec<usize> = tf
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("bs")?.split_once('.')?.0.parse().ok())
        .collect();
    sizes.sort();
    sizes.dedup();
    for bs in sizes {
        let prefix = format!("bs{bs}.");
        let label = format!("mask_cases.bs{bs}.");
        bd3lm_objective(
            model,
            tf,
            report,
            Bd3lmCase {
                prefix: &prefix,
                label: &label,
                block_size: bs,
                hidden: false,
            },
        )
        .await?;
    }
    Ok(())
}

/// The non-cached sampling forward: block-causal over the window, logits of the last block.
async fn sample_case(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    require_kind(model, ModelKind::Bd3lm, "sample_case")?;
    let cfg = model.cfg.clone();
    let x = tf.i64_rank("x_accum", 2)?;
    let (b, s) = (x.shape[0], x.shape[1]);
    let bs = cfg.block_size;
    if s < bs || s > 2 * cfg.model_length {
        return Err(Error::Invalid(format!("sample_case: malformed fixture: x_accum of length {s} for block size {bs} and model length {}", cfg.model_length)));
    }
    let tokens = ids(&x.data);
    let last: Vec<u32> = (0..b)
        .flat_map(|i| tokens[i * s + s - bs..(i + 1) * s].to_vec())
        .collect();
    let shape = ForwardShape {
        batch: b,
        seq: s,
        mask: AttentionMask::BlockCausal { block_size: bs },
        pos_period: s,
        head_rows: bs,
        head_row_offset: s - bs,
        objective: Objective::Subs,
        capture: true,
        per_token: false,
    };
    let zeros = vec![0f32; b * bs];
    let input = ForwardInput {
        tokens: &tokens,
        sigma: &vec![0.0; b],
        input_ids: &last,
        targets: &last,
        weights: &zeros,
        sedd_t: &[],
    };
    let cap = model.forward(&shape, &input).await?.capture.unwrap();
    report.compare_f32(
        "sample_case.full.logits",
        &cap.logits,
        &tf.f64("full.logits")?.data,
        ACTIVATIONS,
    );
    compare_log_probs(
        report,
        "sample_case.full.log_probs",
        &cap.log_probs,
        &tf.f64("full.log_probs")?.data,
        LogProbRows {
            input_ids: &last,
            vocab: cfg.vocab_size,
            mask_id: cfg.mask_id(),
            ar: false,
        },
    );
    crate::verify_sampler::bd3lm(model, tf, report).await
}

async fn sedd_case(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    require_kind(model, ModelKind::Sedd, "sedd_case")?;
    let cfg = model.cfg.clone();
    let p = "sedd_case.";
    let x0 = tf.i64_rank("x0", 2)?;
    let (b, l) = (x0.shape[0], x0.shape[1]);
    let u = tf.f64("t_uniform")?;
    let t = schedule::sample_t(&u.data, b, 1, SAMPLING_EPS, 1.0, true);
    report.compare(&format!("{p}t"), &t, &tf.f64("t")?.data, F64_EXACTISH);
    report.compare(
        &format!("{p}sigma_max"),
        &[schedule::sigma_max()],
        &tf.f64("sigma_max")?.data,
        Tolerance::Absolute(0.0),
    );
    let sigma: Vec<f64> = t.iter().map(|&t| schedule::sigma_from_p(t)).collect();
    report.compare(
        &format!("{p}sigma"),
        &sigma,
        &tf.f64("sigma")?.data,
        F64_EXACTISH,
    );
    let dsigma: Vec<f64> = t.iter().map(|&t| schedule::sedd_dsigma(t)).collect();
    report.compare(
        &format!("{p}dsigma"),
        &dsigma,
        &tf.f64("dsigma")?.data,
        Tolerance::Relative(1e-6),
    );
    let esl: Vec<f64> = sigma.iter().map(|&s| schedule::esigm1_log(s)).collect();
    report.compare(
        &format!("{p}esigm1_log"),
        &esl,
        &tf.f64("esigm1_log")?.data,
        Tolerance::Relative(1e-6),
    );
    if tf.has("cap.t") {
        let ct = tf.f64("cap.t")?.data;
        let cs: Vec<f64> = ct.iter().map(|&t| schedule::sigma_from_p(t)).collect();
        let cd: Vec<f64> = ct.iter().map(|&t| schedule::sedd_dsigma(t)).collect();
        report.compare(
            &format!("{p}cap.sigma"),
            &cs,
            &tf.f64("cap.sigma")?.data,
            F64_EXACTISH,
        );
        report.compare(
            &format!("{p}cap.dsigma"),
            &cd,
            &tf.f64("cap.dsigma")?.data,
            Tolerance::Relative(1e-6),
        );
    }
    let feats: Vec<f64> = sigma
        .iter()
        .flat_map(|&s| bd3_model::tables::timestep_features(s))
        .map(f64::from)
        .collect();
    report.compare(
        &format!("{p}sigma_features"),
        &feats,
        &tf.f64("sigma_features")?.data,
        Tolerance::Absolute(1e-6),
    );
    let x0_ids = ids(&x0.data);
    let xt = schedule::mask_tokens(
        &x0_ids,
        &tf.f64("mask_uniform")?.data,
        &t,
        l,
        l,
        cfg.mask_id(),
    );
    report.compare_ids(&format!("{p}xt"), &xt, &tf.i64("xt")?.data);

    let shape = ForwardShape {
        capture: true,
        ..ForwardShape::plain(b, l, AttentionMask::Full, Objective::Sedd)
    };
    let ones = vec![1f32; b * l];
    let input = ForwardInput {
        tokens: &xt,
        sigma: &sigma,
        input_ids: &xt,
        targets: &x0_ids,
        weights: &ones,
        sedd_t: &t,
    };
    let out = model.forward(&shape, &input).await?;
    let cap = out.capture.unwrap();
    report.compare_f32(
        &format!("{p}cond"),
        cap.cond.as_ref().unwrap(),
        &tf.f64("cond")?.data,
        ACTIVATIONS,
    );
    compare_hidden(report, tf, "", p, &cap.hidden)?;
    report.compare_f32(
        &format!("{p}logits"),
        &cap.logits,
        &tf.f64("logits")?.data,
        ACTIVATIONS,
    );
    report.compare_f32(
        &format!("{p}log_score"),
        &cap.log_probs,
        &tf.f64("log_score")?.data,
        ACTIVATIONS,
    );
    report.compare_f32(
        &format!("{p}entropy"),
        cap.entropy.as_ref().unwrap(),
        &tf.f64("entropy")?.data,
        ACTIVATIONS,
    );
    report.compare_f32(
        &format!("{p}token_loss"),
        &cap.token_loss,
        &tf.f64("token_loss")?.data,
        ACTIVATIONS,
    );
    report.compare(
        &format!("{p}loss"),
        &[out.loss_sum / (b * l) as f64],
        &tf.f64("loss")?.data,
        LOSS,
    );
    crate::verify_train::gradients(model, shape, input, tf, report, p).await?;

    // The sampler's forwards at a given t: logits and log-score of one sequence.
    for step in ["step", "denoise"] {
        if !tf.has(&format!("{step}.x_in")) {
            continue;
        }
        let x_in = ids(&tf.i64(&format!("{step}.x_in"))?.data);
        let t_step = tf.f64_scalar(&format!("{step}.t"))?;
        let sigma_step = schedule::sigma_from_p(t_step);
        let sigma_name = if step == "step" {
            "step.sigma_t"
        } else {
            "denoise.sigma"
        };
        report.compare(
            &format!("{p}{sigma_name}"),
            &[sigma_step],
            &tf.f64(sigma_name)?.data,
            Tolerance::Relative(1e-6),
        );
        let n = x_in.len();
        let shape = ForwardShape {
            capture: true,
            ..ForwardShape::plain(1, n, AttentionMask::Full, Objective::Sedd)
        };
        let ones = vec![1f32; n];
        let input = ForwardInput {
            tokens: &x_in,
            sigma: &[sigma_step],
            input_ids: &x_in,
            targets: &x_in,
            weights: &ones,
            sedd_t: &[t_step],
        };
        let cap = model.forward(&shape, &input).await?.capture.unwrap();
        report.compare_f32(
            &format!("{p}{step}.logits"),
            &cap.logits,
            &tf.f64(&format!("{step}.logits"))?.data,
            ACTIVATIONS,
        );
        report.compare_f32(
            &format!("{p}{step}.log_score"),
            &cap.log_probs,
            &tf.f64(&format!("{step}.log_score"))?.data,
            ACTIVATIONS,
        );
    }
    crate::verify_sampler::sedd(model, tf, report).await
}

async fn ar_case(model: &mut GpuModel, tf: &TensorFile, report: &mut Report<'_>) -> Result<()> {
    require_kind(model, ModelKind::Ar, "ar_case")?;
    let cfg = model.cfg.clone();
    let p = "ar_case.";
    let x = tf.i64_rank("x", 2)?;
    let (b, l) = (x.shape[0], x.shape[1]);
    let x = ids(&x.data);
    let inputs: Vec<u32> = (0..b)
        .flat_map(|i| x[i * l..(i + 1) * l - 1].to_vec())
        .collect();
    let targets: Vec<u32> = (0..b)
        .flat_map(|i| x[i * l + 1..(i + 1) * l].to_vec())
        .collect();
    report.compare_ids(
        &format!("{p}input_ids"),
        &inputs,
        &tf.i64("input_ids")?.data,
    );
    report.compare_ids(&format!("{p}targets"), &targets, &tf.i64("targets")?.data);
    let n = l - 1;
    let shape = ForwardShape {
        capture: true,
        ..ForwardShape::plain(b, n, AttentionMask::Causal, Objective::Ar)
    };
    let ones = vec![1f32; b * n];
    let input = ForwardInput {
        tokens: &inputs,
        sigma: &[],
        input_ids: &inputs,
        targets: &targets,
        weights: &ones,
        sedd_t: &[],
    };
    let out = model.forward(&shape, &input).await?;
    let cap = out.capture.unwrap();
    compare_hidden(report, tf, "", p, &cap.hidden)?;
    report.compare_f32(
        &format!("{p}logits"),
        &cap.logits,
        &tf.f64("logits")?.data,
        ACTIVATIONS,
    );
    compare_log_probs(
        report,
        &format!("{p}log_probs"),
        &cap.log_probs,
        &tf.f64("log_probs")?.data,
        LogProbRows {
            input_ids: &inputs,
            vocab: cfg.vocab_size,
            mask_id: cfg.mask_id(),
            ar: true,
        },
    );
    report.compare_f32(
        &format!("{p}token_loss"),
        &cap.token_loss,
        &tf.f64("token_loss")?.data,
        TOKEN_LOSS,
    );
    report.compare(
        &format!("{p}loss"),
        &[out.loss_sum / (b * n) as f64],
        &tf.f64("loss")?.data,
        LOSS,
    );
    crate::verify_train::gradients(model, shape, input, tf, report, p).await?;

    // Prefix forwards (what a KV-cache implementation must reproduce).
    let mut prefixes: Vec<usize> = tf
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("prefix")?.split_once('.')?.0.parse().ok())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    for k in prefixes {
        let ids_k = ids(&tf.i64(&format!("prefix{k}.input_ids"))?.data);
        let shape = ForwardShape {
            capture: true,
            ..ForwardShape::plain(b, k, AttentionMask::Causal, Objective::Ar)
        };
        let ones = vec![1f32; b * k];
        let input = ForwardInput {
            tokens: &ids_k,
            sigma: &[],
            input_ids: &ids_k,
            targets: &ids_k,
            weights: &ones,
            sedd_t: &[],
        };
        let cap = model.forward(&shape, &input).await?.capture.unwrap();
        report.compare_f32(
            &format!("{p}prefix{k}.logits"),
            &cap.logits,
            &tf.f64(&format!("prefix{k}.logits"))?.data,
            ACTIVATIONS,
        );
    }
    crate::verify_sampler::ar(model, tf, report).await
}

fn require_kind(model: &GpuModel, kind: ModelKind, case: &str) -> Result<()> {
    if model.cfg.kind != kind {
        return Err(Error::Invalid(format!(
            "{case} needs a {} model, but config.json describes a {} model",
            kind.name(),
            model.cfg.kind.name()
        )));
    }
    Ok(())
}
