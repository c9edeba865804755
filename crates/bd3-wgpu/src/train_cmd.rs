//! `bd3-wgpu train`: train a model on a text corpus, from scratch (official initialisation) or from a
//! checkpoint (`--init`), with periodic validation, atomic checkpoints, resume and the clip search.

use crate::checkpoint_io::{model_bytes, read_state, state_bytes, write_model_dir};
use crate::nelbo::{evaluate, input_of, loss_shape};
use bd3_gpu::train::{copy_weights, write_tensors};
use bd3_gpu::{ContextOptions, GpuContext, GpuModel, OptimConfig, TrainBatch, TrainShape, Trainer, Weights};
use bd3_model::data::{chunk_corpus, read_corpus};
use bd3_model::init::{official_init, to_safetensors, SplitMix};
use bd3_model::objective::{build_batch, Clip};
use bd3_model::tokenizer::TextTokenizer;
use bd3_model::{Checkpoint, Error, ModelConfig, ModelKind, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const USAGE: &str = "train --data PATH --out DIR [--tokenizer FILE | --vocab-size N] [--init DIR | --resume]
        [--kind bd3lm|mdlm|sedd|ar] [--size tiny|small|D,H,N] [--block-size N] [--length L] [--batch B]
        [--grad-accum N] [--lr 3e-4] [--warmup 2500] [--steps N] [--clip-min 1e-3] [--clip-max 1]
        [--clip-search] [--ema 0.9999] [--dropout 0.1] [--seed 1] [--val-every N] [--val-batches N (0: all)]
        [--save-every N] [--log-every N] [--time-limit SECONDS] [--overwrite]
        (--steps 0 saves the initial weights; --overwrite allows replacing a checkpoint in --out without --resume)";

const STATE_FILE: &str = "train_state.safetensors";
/// Micro-batches per step: beyond this the step count, not the accumulation, should grow.
const MAX_GRAD_ACCUM: usize = 1 << 16;
/// Every 20th document is held out for validation.
const VALID_EVERY: usize = 20;

/// Settings of a run; stored in the training state so `--resume` continues the same run.
#[derive(Clone, Debug)]
struct Run {
    data: PathBuf,
    kind: ModelKind,
    size: (usize, usize, usize),
    block_size: usize,
    length: usize,
    batch: usize,
    grad_accum: usize,
    lr: f64,
    warmup: u64,
    steps: u64,
    clip: Clip,
    clip_search: bool,
    ema: f64,
    dropout: f64,
    seed: u64,
    val_every: u64,
    val_batches: usize,
    save_every: u64,
    log_every: u64,
    vocab_size: usize,
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "data": self.data.display().to_string(), "kind": self.kind.name(), "size": [self.size.0, self.size.1, self.size.2],
            "block_size": self.block_size, "length": self.length, "batch": self.batch, "grad_accum": self.grad_accum, "lr": self.lr,
            "warmup": self.warmup, "steps": self.steps, "clip": [self.clip.min, self.clip.max], "clip_search": self.clip_search,
            "ema": self.ema, "dropout": self.dropout, "seed": self.seed, "val_every": self.val_every, "val_batches": self.val_batches,
            "save_every": self.save_every, "log_every": self.log_every, "vocab_size": self.vocab_size,
        })
    }

    fn from_json(v: &Value) -> Option<Run> {
        let u = |k: &str| v.get(k)?.as_u64();
        let f = |k: &str| v.get(k)?.as_f64();
        let size = v.get("size")?.as_array().filter(|a| a.len() == 3)?;
        let clip = v.get("clip")?.as_array().filter(|a| a.len() == 2)?;
        Some(Run {
            data: PathBuf::from(v.get("data")?.as_str()?),
            kind: ModelKind::parse(v.get("kind")?.as_str()?)?,
            size: (size[0].as_u64()? as usize, size[1].as_u64()? as usize, size[2].as_u64()? as usize),
            block_size: u("block_size")? as usize,
            length: u("length")? as usize,
            batch: u("batch")? as usize,
            grad_accum: u("grad_accum")? as usize,
            lr: f("lr")?,
            warmup: u("warmup")?,
            steps: u("steps")?,
            clip: Clip { min: clip[0].as_f64()?, max: clip[1].as_f64()? },
            clip_search: v.get("clip_search")?.as_bool()?,
            ema: f("ema")?,
            dropout: f("dropout")?,
            seed: u("seed")?,
            val_every: u("val_every")?,
            val_batches: u("val_batches")? as usize,
            save_every: u("save_every")?,
            log_every: u("log_every")?,
            vocab_size: u("vocab_size")? as usize,
        })
    }
}

fn parse_size(s: &str) -> Result<(usize, usize, usize)> {
    match s {
        "tiny" => Ok((64, 4, 2)),
        "small" => Ok((768, 12, 12)),
        spec => {
            let v: Vec<usize> = spec.split(',').map(|x| x.trim().parse()).collect::<std::result::Result<_, _>>().map_err(|_| Error::Invalid(format!("--size `{spec}`: expected tiny, small or D,H,N")))?;
            if v.len() != 3 || v.contains(&0) {
                return Err(Error::Invalid(format!("--size `{spec}`: expected three positive numbers D,H,N")));
            }
            Ok((v[0], v[1], v[2]))
        }
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut run = Run {
        data: PathBuf::new(), kind: ModelKind::Bd3lm, size: (64, 4, 2), block_size: 4, length: 128, batch: 8, grad_accum: 1, lr: 3e-4,
        warmup: 2500, steps: 1000, clip: Clip::NELBO, clip_search: false, ema: 0.9999, dropout: 0.1, seed: 1, val_every: 100,
        val_batches: 0, save_every: 100, log_every: 10, vocab_size: 4096,
    };
    let (mut out, mut tokenizer_path, mut init, mut resume, mut data, mut steps_override) = (None, None, None, false, None, None);
    // Wall-clock budget of this invocation (not part of the saved run): stop like Ctrl-C once it is spent.
    let mut time_limit: Option<f64> = None;
    let mut kind_given = false;
    let mut overwrite = false;
    // The run settings given on this command line, as the keys of `Run::to_json`: on --resume each
    // must agree with the saved run.
    let mut given: Vec<(&str, &str)> = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let f = flag.as_str();
        let key = match f {
            "--kind" => "kind", "--size" => "size", "--block-size" => "block_size", "--length" => "length", "--batch" => "batch",
            "--grad-accum" => "grad_accum", "--lr" => "lr", "--warmup" => "warmup", "--clip-min" | "--clip-max" => "clip",
            "--clip-search" => "clip_search", "--ema" => "ema", "--dropout" => "dropout", "--seed" => "seed", "--val-every" => "val_every",
            "--val-batches" => "val_batches", "--save-every" => "save_every", "--log-every" => "log_every", "--vocab-size" => "vocab_size",
            "--data" => "data",
            _ => "",
        };
        if !key.is_empty() {
            given.push((key, f));
        }
        match f {
            "--data" => data = Some(PathBuf::from(it.next().ok_or_else(|| Error::Invalid("--data needs a value".into()))?)),
            "--out" => out = Some(PathBuf::from(it.next().ok_or_else(|| Error::Invalid("--out needs a value".into()))?)),
            "--tokenizer" => tokenizer_path = Some(PathBuf::from(it.next().ok_or_else(|| Error::Invalid("--tokenizer needs a value".into()))?)),
            "--init" => init = Some(PathBuf::from(it.next().ok_or_else(|| Error::Invalid("--init needs a value".into()))?)),
            "--resume" => resume = true,
            "--overwrite" => overwrite = true,
            "--help" | "-h" => {
                println!("usage: bd3-wgpu {USAGE}");
                return Ok(());
            }
            "--kind" => {
                let v = it.next().ok_or_else(|| Error::Invalid("--kind needs a value".into()))?;
                run.kind = ModelKind::parse(v).ok_or_else(|| Error::Invalid(format!("unknown model kind `{v}`")))?;
                kind_given = true;
            }
            "--size" => run.size = parse_size(it.next().ok_or_else(|| Error::Invalid("--size needs a value".into()))?)?,
            "--block-size" => run.block_size = crate::parse_num(it.next(), f)?,
            "--length" => run.length = crate::parse_num(it.next(), f)?,
            "--batch" => run.batch = crate::parse_num(it.next(), f)?,
            "--grad-accum" => run.grad_accum = crate::parse_num(it.next(), f)?,
            "--lr" => run.lr = crate::parse_num(it.next(), f)?,
            "--warmup" => run.warmup = crate::parse_num(it.next(), f)?,
            "--steps" => steps_override = Some(crate::parse_num::<u64>(it.next(), f)?),
            "--clip-min" => run.clip.min = crate::parse_num(it.next(), f)?,
            "--clip-max" => run.clip.max = crate::parse_num(it.next(), f)?,
            "--clip-search" => run.clip_search = true,
            "--ema" => run.ema = crate::parse_num(it.next(), f)?,
            "--dropout" => run.dropout = crate::parse_num(it.next(), f)?,
            "--seed" => run.seed = crate::parse_num(it.next(), f)?,
            "--val-every" => run.val_every = crate::parse_num(it.next(), f)?,
            "--val-batches" => run.val_batches = crate::parse_num(it.next(), f)?,
            "--save-every" => run.save_every = crate::parse_num(it.next(), f)?,
            "--log-every" => run.log_every = crate::parse_num(it.next(), f)?,
            "--vocab-size" => run.vocab_size = crate::parse_num(it.next(), f)?,
            "--time-limit" => {
                let t: f64 = crate::parse_num(it.next(), f)?;
                if !(t.is_finite() && t > 0.0) {
                    return Err(Error::Invalid("--time-limit must be a positive number of seconds".into()));
                }
                time_limit = Some(t);
            }
            other => return Err(Error::Invalid(format!("unknown option `{other}`; usage: bd3-wgpu {USAGE}"))),
        }
    }
    let out = out.ok_or_else(|| Error::Invalid(format!("train needs --out DIR; usage: bd3-wgpu {USAGE}")))?;
    if resume && init.is_some() {
        return Err(Error::Invalid("--resume continues the run saved in --out; it cannot take --init".into()));
    }
    if let Some(dir) = &init {
        if same_path(dir, &out) && !overwrite {
            return Err(Error::Invalid(format!("--init and --out are the same folder ({}): the checkpoint would be overwritten; pass --overwrite to allow it", out.display())));
        }
    }
    if !resume && !overwrite {
        if let Some(f) = ["model.safetensors", STATE_FILE].iter().map(|f| out.join(f)).find(|p| p.exists()) {
            return Err(Error::Invalid(format!("{} already holds a checkpoint ({}): pass --resume to continue it or --overwrite to replace it", out.display(), f.display())));
        }
    }
    let state = if resume {
        let state = read_state(&out.join(STATE_FILE))?;
        let saved = state.meta.get("run").and_then(|s| serde_json::from_str(s).ok()).and_then(|v: Value| Run::from_json(&v));
        let saved = saved.ok_or_else(|| Error::Invalid(format!("{}: no run settings in the training state", state.path)))?;
        // Settings given again must be those of the saved run; anything else would be silently ignored.
        let (mine, theirs) = (run.to_json(), saved.to_json());
        for (key, flag) in &given {
            let differs = if *key == "data" {
                let d = data.as_ref().expect("--data was given");
                !same_path(d, &saved.data)
            } else if *key == "clip" {
                // --clip-min and --clip-max each compare their own end of the window.
                let i = usize::from(*flag == "--clip-max");
                mine[key][i] != theirs[key][i]
            } else {
                mine[key] != theirs[key]
            };
            if differs {
                return Err(Error::Invalid(format!("{flag} contradicts the run saved in {} ({key} = {}); drop it to resume, or train into a new --out", out.display(), theirs[key])));
            }
        }
        run = saved;
        let step: u64 = match state.meta.get("step") {
            Some(s) => s.parse().map_err(|_| Error::Invalid(format!("{}: step `{s}` is not a number", state.path)))?,
            None => return Err(Error::Invalid(format!("{}: no step in the training state", state.path))),
        };
        if let Some(c) = state.meta.get("clip") {
            match serde_json::from_str::<Vec<f64>>(c).ok().as_deref() {
                Some(&[min, max]) => run.clip = Clip { min, max },
                _ => return Err(Error::Invalid(format!("{}: clip `{c}` is not [min, max]", state.path))),
            }
        }
        Some((step, state))
    } else {
        run.data = data.ok_or_else(|| Error::Invalid(format!("train needs --data PATH; usage: bd3-wgpu {USAGE}")))?;
        None
    };
    if let Some(s) = steps_override {
        run.steps = s;
    }
    if run.batch == 0 || run.grad_accum == 0 || run.length < 2 {
        return Err(Error::Invalid("--batch and --grad-accum must be at least 1 and --length at least 2".into()));
    }
    if run.grad_accum > MAX_GRAD_ACCUM {
        return Err(Error::Invalid(format!("--grad-accum {} is more than {MAX_GRAD_ACCUM}", run.grad_accum)));
    }
    if run.log_every == 0 || run.save_every == 0 {
        return Err(Error::Invalid("--log-every and --save-every must be at least 1 (--val-every 0 turns validation off)".into()));
    }
    if !(run.lr.is_finite() && run.lr > 0.0) {
        return Err(Error::Invalid(format!("--lr must be a finite positive number, not {}", run.lr)));
    }
    if !(0.0..1.0).contains(&run.ema) {
        return Err(Error::Invalid(format!("--ema must be in [0, 1) (0 turns the EMA off), not {}", run.ema)));
    }
    if !(run.clip.min > 0.0 && run.clip.min <= run.clip.max && run.clip.max <= 1.0) {
        return Err(Error::Invalid(format!("the clip window [{}, {}] must satisfy 0 < min ≤ max ≤ 1", run.clip.min, run.clip.max)));
    }
    if !(0.0..1.0).contains(&run.dropout) {
        return Err(Error::Invalid("--dropout must be in [0, 1)".into()));
    }
    if init.is_none() && state.is_none() {
        // A model from scratch: its size and batch are checked before the corpus is read or anything
        // is allocated (the vocabulary is only known later; the bound with --vocab-size comes first).
        let cfg = train_config(&run, run.vocab_size.max(3))?;
        cfg.check_batch(run.batch, loss_shape(&cfg, 1).seq)?;
    }

    // Corpus and tokenizer.
    let docs = read_corpus(&run.data)?;
    let init_tokenizer = init.as_ref().map(|d| d.join("tokenizer.json")).filter(|p| p.is_file());
    let tok = if let Some((_, st)) = &state {
        let path = tokenizer_path.clone().unwrap_or_else(|| out.join("tokenizer.json"));
        let tok = TextTokenizer::from_file(&path)?;
        // The run was trained with the tokenizer whose fingerprint it saved (older states: its size).
        let fingerprint = fnv1a(tok.to_json()?.as_bytes()).to_string();
        let vocab = st.groups.get("weights").and_then(|g| g.get("vocab_embed.embedding")).map(|e| e.len() / run.size.0.max(1));
        if st.meta.get("tokenizer").is_some_and(|f| *f != fingerprint) || vocab.is_some_and(|v| v != tok.vocab_size() + 1) {
            return Err(Error::Config { path: path.display().to_string(), message: format!("tokenizer does not match the checkpoint in {}", out.display()) });
        }
        tok
    } else if let Some(p) = tokenizer_path.as_ref().or(init_tokenizer.as_ref()) {
        // An --init checkpoint brings its own tokenizer unless another is named.
        TextTokenizer::from_file(p)?
    } else {
        eprintln!("training a {}-token byte-level BPE on {} documents", run.vocab_size, docs.len());
        TextTokenizer::train_bpe(&docs, run.vocab_size)?
    };
    let eos = tok.eos_id();

    // The model: from a checkpoint, from a resumed state, or the official initialisation.
    let (cfg, init_tensors) = match (&init, &state) {
        (Some(dir), None) => {
            let bd3_model::ModelDir { config: mut cfg, checkpoint: ckpt, .. } = bd3_model::load_model_dir(dir, None)?;
            // The paper's two-stage recipe: an MDLM-style model (full attention, L' = L) fine-tuned
            // as BD3-LM at a smaller block size. The two share every tensor.
            if kind_given && run.kind == ModelKind::Bd3lm && cfg.kind == ModelKind::Mdlm {
                cfg.kind = ModelKind::Bd3lm;
                cfg.block_size = cfg.model_length;
            } else if kind_given && run.kind != cfg.kind {
                return Err(Error::Invalid(format!("--init {} is a {} model; it cannot be trained as {}", dir.display(), cfg.kind.name(), run.kind.name())));
            }
            if cfg.kind == ModelKind::Bd3lm && run.block_size != cfg.block_size {
                if cfg.model_length % run.block_size != 0 {
                    return Err(Error::Invalid(format!("--block-size {} does not divide the model length {}", run.block_size, cfg.model_length)));
                }
                cfg.block_size = run.block_size;
            }
            run.kind = cfg.kind;
            run.length = cfg.model_length;
            run.size = (cfg.hidden_dim, cfg.n_heads, cfg.n_blocks);
            (cfg, Some(ckpt))
        }
        _ => (train_config(&run, tok.vocab_size() + 1)?, None),
    };
    tok.check_fits(&cfg)?;
    cfg.check_batch(run.batch, loss_shape(&cfg, 1).seq)?;
    if cfg.kind != ModelKind::Bd3lm && run.clip_search {
        return Err(Error::Invalid("--clip-search applies to BD3LM (block diffusion) models".into()));
    }
    let chunks = chunk_corpus(&docs, &tok, eos, cfg.model_length, VALID_EVERY)?;
    eprintln!("{} training chunks and {} validation chunks of {} tokens", chunks.train.len(), chunks.valid.len(), cfg.model_length);

    let ctx = Arc::new(pollster::block_on(GpuContext::new(ContextOptions::default()))?);
    let ckpt = match init_tensors {
        Some(c) => c,
        None => {
            let t = official_init(&cfg, run.seed);
            Checkpoint::from_bytes(to_safetensors(&cfg, &t, None), "initial weights", &cfg)?
        }
    };
    let mut model = pollster::block_on(GpuModel::load(ctx.clone(), cfg.clone(), &ckpt))?;
    drop(ckpt);
    let optim = OptimConfig { lr: run.lr, ema_decay: run.ema, ..Default::default() };
    let mut trainer = pollster::block_on(Trainer::new(&model, optim))?;
    let mut start_step = 0;
    if let Some((step, st)) = &state {
        write_tensors(&ctx, &model.weights, st.group("weights", &model.weights)?)?;
        write_tensors(&ctx, &trainer.m, st.group("adam_m", &trainer.m)?)?;
        write_tensors(&ctx, &trainer.v, st.group("adam_v", &trainer.v)?)?;
        if let Some(e) = &trainer.ema {
            write_tensors(&ctx, e, st.group("ema", e)?)?;
        }
        trainer.step = *step;
        start_step = *step;
        eprintln!("resuming at step {step}");
    }
    let backup = Weights::zeros_like(&ctx, "weights backup", &model.weights)?;
    let tok_json = tok.to_json()?;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let shape = TrainShape { forward: loss_shape(&cfg, run.batch), dropout_milli: (run.dropout * 1000.0).round() as u32 };
    // Validation covers the whole held-out split unless --val-batches caps it.
    let n_valid = if run.val_batches == 0 { chunks.valid.len() } else { run.val_batches.saturating_mul(run.batch).min(chunks.valid.len()) };
    let valid: Vec<Vec<u32>> = chunks.valid[..n_valid].to_vec();
    let tokens_per_step = run.batch * run.grad_accum * cfg.model_length;
    let started = Instant::now();
    let validate = |model: &mut GpuModel, trainer: &Trainer, step: u64, clip: &mut Clip| -> Result<()> {
        // Validation and the clip search use the EMA weights, as the official validation does.
        with_ema(&ctx, model, trainer, &backup, |model| {
            let (sum, count, _) = pollster::block_on(evaluate(model, &valid, run.batch, Clip::NELBO, run.seed ^ 0x5eed, false, |_, _| {}))?;
            let nelbo = sum / count as f64;
            println!("val step {step} nelbo {nelbo:.6} ppl {:.3}", nelbo.exp());
            if run.clip_search {
                *clip = clip_search(model, &valid, run.batch, run.seed)?;
            }
            Ok(())
        })
    };
    let mut clip = run.clip;
    if start_step == 0 {
        validate(&mut model, &trainer, 0, &mut clip)?;
    }
    if start_step >= run.steps {
        if state.is_none() {
            // --steps 0: the initial weights (official initialisation or --init) as a complete checkpoint.
            save(&ctx, &out, &cfg, &model, &trainer, &run, clip, start_step, &tok_json)?;
            eprintln!("done: no training steps; the initial weights saved as step {start_step} in {}", out.display());
        } else {
            eprintln!("the training state is already at step {start_step} (--steps {}): nothing to do", run.steps);
        }
        return Ok(());
    }
    // What a failure leaves on disk: the last saved step, or whatever the folder held before.
    let mut last_saved: Option<u64> = state.as_ref().map(|(s, _)| *s);
    let non_finite = |what: &str, value: f64, step: u64, last_saved: Option<u64>| {
        let kept = match last_saved {
            Some(s) => format!("the checkpoint of step {s} in {} is kept", out.display()),
            None => "no checkpoint was saved".to_string(),
        };
        Error::Invalid(format!("step {step}: the {what} is {value} (not finite); training stopped, {kept} (try a lower --lr)"))
    };
    for step in start_step..run.steps {
        // Learning rate: linear warm-up from 0, then constant (get_constant_schedule_with_warmup).
        let lr = run.lr * if run.warmup == 0 { 1.0 } else { (step as f64 / run.warmup as f64).min(1.0) };
        let mut loss = 0.0;
        for micro in 0..run.grad_accum {
            let mut rng = SplitMix(run.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.wrapping_mul(1024).wrapping_add(micro as u64));
            let x0: Vec<Vec<u32>> = (0..run.batch).map(|_| chunks.train[(rng.next_u64() % chunks.train.len() as u64) as usize].clone()).collect();
            let lb = build_batch(&cfg, &x0, clip, &mut rng, false);
            let grad_scale = 1.0 / (lb.denominator * run.grad_accum) as f32;
            let seed = (rng.next_u64() >> 32) as u32;
            let out = pollster::block_on(trainer.forward_backward(&model, &shape, &TrainBatch { input: input_of(&lb), seed, grad_scale }))?;
            loss += out.loss_sum / lb.denominator as f64 / run.grad_accum as f64;
        }
        let done = step + 1;
        if !loss.is_finite() {
            return Err(non_finite("training loss", loss, done, last_saved));
        }
        trainer.optimizer_step(&model, lr)?;
        // A non-finite gradient has just turned the weights into NaN: stop before anything is saved.
        if let Some(norm) = pollster::block_on(trainer.last_grad_norm(&ctx))? {
            if !norm.is_finite() {
                return Err(non_finite("gradient norm", norm, done, last_saved));
            }
        }
        if done % run.log_every == 0 || done == run.steps {
            let secs = started.elapsed().as_secs_f64();
            let rate = (done - start_step) as f64 * tokens_per_step as f64 / secs;
            let eta = (run.steps - done) as f64 * tokens_per_step as f64 / rate;
            println!("step {done} loss {loss:.6} lr {lr:.3e} {rate:.0} tok/s eta {eta:.0}s");
        }
        let out_of_time = done < run.steps && time_limit.is_some_and(|t| started.elapsed().as_secs_f64() >= t);
        if run.val_every > 0 && (done % run.val_every == 0 || done == run.steps || out_of_time) {
            validate(&mut model, &trainer, done, &mut clip)?;
        }
        if out_of_time {
            save(&ctx, &out, &cfg, &model, &trainer, &run, clip, done, &tok_json)?;
            eprintln!("time limit reached: checkpoint saved at step {done} of {} in {}", run.steps, out.display());
            println!("stopped at step {done} (time limit)");
            return Ok(());
        }
        let stop = interrupted.load(Ordering::SeqCst);
        if done % run.save_every == 0 || done == run.steps || stop {
            save(&ctx, &out, &cfg, &model, &trainer, &run, clip, done, &tok_json)?;
            last_saved = Some(done);
        }
        if stop {
            eprintln!("interrupted: checkpoint saved at step {done} in {}", out.display());
            return Ok(());
        }
    }
    eprintln!("done: {} in {}", run.steps, out.display());
    Ok(())
}

/// Whether two paths name the same file or folder (compared resolved when both exist).
fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// FNV-1a of the tokenizer's JSON: saved with the training state so a resume notices a swapped tokenizer.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The config of a model trained from scratch.
fn train_config(run: &Run, vocab_size: usize) -> Result<ModelConfig> {
    let (d, h, n) = run.size;
    let block_size = match run.kind {
        ModelKind::Bd3lm => run.block_size,
        ModelKind::Ar => 1,
        _ => run.length,
    };
    let json = json!({
        "model_type": if matches!(run.kind, ModelKind::Mdlm | ModelKind::Sedd) { "mdlm" } else { "bd3lm" },
        "parameterization": match run.kind { ModelKind::Sedd => "sedd", ModelKind::Ar => "ar", _ => "subs" },
        "causal": run.kind == ModelKind::Ar, "adaln": run.kind != ModelKind::Ar,
        "block_size": block_size, "cond_dim": 128usize.min(d), "hidden_dim": d, "n_heads": h, "n_blocks": n,
        "model_length": run.length, "vocab_size": vocab_size, "dropout": run.dropout,
        "sampling_eps_min": run.clip.min, "sampling_eps_max": run.clip.max,
    });
    ModelConfig::from_json_bytes(json.to_string().as_bytes(), "training settings", None)
}

/// Run `f` with the EMA weights in place of the trained ones (when there is an EMA).
fn with_ema<T>(ctx: &GpuContext, model: &mut GpuModel, trainer: &Trainer, backup: &Weights, f: impl FnOnce(&mut GpuModel) -> Result<T>) -> Result<T> {
    let Some(ema) = &trainer.ema else { return f(model) };
    copy_weights(ctx, &model.weights, backup);
    copy_weights(ctx, ema, &model.weights);
    let r = f(model);
    copy_weights(ctx, backup, &model.weights);
    r
}

/// The data-driven noise schedule (spec §3.6): among the candidate windows, the one whose per-block
/// NELBO on the validation batches has the smallest variance.
fn clip_search(model: &mut GpuModel, valid: &[Vec<u32>], batch: usize, seed: u64) -> Result<Clip> {
    let cfg = model.cfg.clone();
    let bs = cfg.block_size;
    let mut candidates = vec![Clip::NELBO];
    if bs == 1 {
        candidates.push(Clip { min: 1.0, max: 1.0 });
    } else {
        for w in [0.5, 0.6, 0.7, 0.8, 0.9] {
            let mut i: f64 = 0.0;
            while i <= 1.0 - w + 1e-9 {
                candidates.push(Clip { min: i.max(1e-3), max: (i + w).max(1e-3) });
                i += 0.05;
            }
        }
    }
    let mut best = (f64::INFINITY, Clip::NELBO);
    for c in candidates {
        let (_, _, per_batch) = pollster::block_on(evaluate(model, valid, batch, c, seed ^ 0xc11b, true, |_, _| {}))?;
        let mut score = 0.0;
        for tl in per_batch {
            let blocks: Vec<f64> = tl.chunks(bs).map(|b| b.iter().map(|&x| x as f64).sum::<f64>() / bs as f64).collect();
            let mean = blocks.iter().sum::<f64>() / blocks.len() as f64;
            score += blocks.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (blocks.len().max(2) - 1) as f64;
        }
        if score < best.0 {
            best = (score, c);
        }
    }
    println!("clip search: [{:.3}, {:.3}] (variance {:.4})", best.1.min, best.1.max, best.0);
    Ok(best.1)
}

#[allow(clippy::too_many_arguments)]
fn save(ctx: &GpuContext, out: &Path, cfg: &ModelConfig, model: &GpuModel, trainer: &Trainer, run: &Run, clip: Clip, step: u64, tok_json: &str) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
    let mut meta = HashMap::new();
    meta.insert("run".to_string(), run.to_json().to_string());
    meta.insert("step".to_string(), step.to_string());
    meta.insert("clip".to_string(), json!([clip.min, clip.max]).to_string());
    meta.insert("tokenizer".to_string(), fnv1a(tok_json.as_bytes()).to_string());
    let mut groups: Vec<(&str, &Weights)> = vec![("weights", &model.weights), ("adam_m", &trainer.m), ("adam_v", &trainer.v)];
    if let Some(e) = &trainer.ema {
        groups.push(("ema", e));
    }
    let state = pollster::block_on(state_bytes(ctx, &groups, meta))?;
    // The resume state first, then the user-facing folder (EMA weights, as the official export).
    bd3_model::write_atomically(&out.join(STATE_FILE), &state)?;
    let weights = trainer.ema.as_ref().unwrap_or(&model.weights);
    let saved_cfg = ModelConfig { sampling_eps_min: clip.min, sampling_eps_max: clip.max, ..cfg.clone() };
    let bytes = pollster::block_on(model_bytes(ctx, &saved_cfg, weights, (clip.min, clip.max)))?;
    write_model_dir(out, &saved_cfg, &bytes, tok_json)
}
