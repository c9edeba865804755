//! `bd3-wgpu train`: train a model on a text corpus, from scratch (official initialisation) or from a
//! checkpoint (`--init`), with periodic validation, atomic checkpoints, resume and the clip search.

use crate::checkpoint_io::{model_bytes, read_state, state_bytes, write_model_dir};
use crate::model_source::ModelSource;
use crate::nelbo::{evaluate, loss_shape};
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use bd3_gpu::train::{copy_weights, write_tensors};
use bd3_gpu::train_loop::{train_shape, train_step, validation_seed, StepSettings};
use bd3_gpu::{ContextOptions, GpuContext, GpuModel, OptimConfig, Trainer, Weights};
use bd3_model::data::{chunk_corpus, read_corpus, split_chunks};
use bd3_model::init::{official_init, to_safetensors};
use bd3_model::objective::Clip;
use bd3_model::tokenizer::TextTokenizer;
use bd3_model::{Checkpoint, ModelConfig, ModelKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const STATE_FILE: &str = "train_state.safetensors";
/// Micro-batches per step: beyond this the step count, not the accumulation, should grow.
const MAX_GRAD_ACCUM: usize = 1 << 16;
/// Every 20th document is held out for validation (`train`, `eval` and the page share the split).
pub use bd3_model::data::VALID_EVERY;

/// Model sizes by name or as D,H,N (hidden, heads, blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSize(pub usize, pub usize, pub usize);

fn parse_size(s: &str) -> std::result::Result<ModelSize, String> {
    match s {
        "tiny" => Ok(ModelSize(64, 4, 2)),
        "small" => Ok(ModelSize(768, 12, 12)),
        spec => {
            let v: Vec<usize> = spec
                .split(',')
                .map(|x| x.trim().parse())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| format!("`{spec}`: expected tiny, small or D,H,N"))?;
            match v[..] {
                [d, h, n] if d > 0 && h > 0 && n > 0 => Ok(ModelSize(d, h, n)),
                _ => Err(format!("`{spec}`: expected three positive numbers D,H,N")),
            }
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The corpus: a text file or a folder of them (documents separated by EOS; every 20th held out)
    #[arg(long)]
    data: Option<PathBuf>,
    /// The folder the checkpoint (config.json, model.safetensors, tokenizer.json) and the training
    /// state are written to
    #[arg(long)]
    out: PathBuf,
    /// A tokenizer.json to use [default: --init's, else a byte-level BPE trained on the corpus]
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Start from this checkpoint: a folder or an official checkpoint by name (OWNER/NAME)
    #[arg(long, value_name = "DIR|OWNER/NAME", conflicts_with = "resume")]
    init: Option<String>,
    /// Continue the run saved in --out (settings given again must match it)
    #[arg(long)]
    resume: bool,
    /// Allow replacing a checkpoint in --out without --resume
    #[arg(long)]
    overwrite: bool,
    /// Model kind (an MDLM --init may be fine-tuned as bd3lm at a smaller --block-size)
    #[arg(long, value_enum, default_value_t = crate::KindArg::Bd3lm)]
    kind: crate::KindArg,
    /// Model size: tiny (64,4,2), small (768,12,12, the official) or D,H,N
    #[arg(long, default_value = "tiny", value_parser = parse_size)]
    size: ModelSize,
    /// Block size L' (BD3LM)
    #[arg(long, default_value_t = 4)]
    block_size: usize,
    /// Context length L in tokens
    #[arg(long, default_value_t = 128)]
    length: usize,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (AdamW)
    #[arg(long, default_value_t = 3e-4, allow_hyphen_values = true)]
    lr: f64,
    /// Linear warm-up steps
    #[arg(long, default_value_t = 2500)]
    warmup: u64,
    /// Optimizer steps in total (0 saves the initial weights)
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Lower end of the training window of t
    #[arg(long, default_value_t = Clip::NELBO.min)]
    clip_min: f64,
    /// Upper end of the training window of t
    #[arg(long, default_value_t = Clip::NELBO.max)]
    clip_max: f64,
    /// Search the clip window with the least-variance NELBO at validation (BD3LM)
    #[arg(long)]
    clip_search: bool,
    /// EMA decay of the saved weights (0 turns the EMA off)
    #[arg(long, default_value_t = 0.9999)]
    ema: f64,
    /// Dropout probability
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Seed of the initialisation, data order, masks and dropout
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Validate every N steps (0: never)
    #[arg(long, default_value_t = 100)]
    val_every: u64,
    /// Validation batches (0: the whole held-out split)
    #[arg(long, default_value_t = 0)]
    val_batches: usize,
    /// Save every N steps
    #[arg(long, default_value_t = 100)]
    save_every: u64,
    /// Print a step line every N steps
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Vocabulary of a tokenizer trained on the corpus
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Stop (and save) after this many seconds of this invocation
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,
    /// Also write every step's loss as a JSON line {"step": N, "loss": X} to FILE
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Arithmetic of the products: f32 (the reference) or mixed (f16 operands on tensor cores, f32
    /// sums, master weights and AdamW state, dynamic loss scaling; needs cooperative matrices).
    /// Not part of the saved run: a resumed run may change it
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
}

/// Settings of a run; stored in the training state so `--resume` continues the same run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Run {
    data: PathBuf,
    #[serde(with = "kind_name")]
    kind: ModelKind,
    size: ModelSize,
    block_size: usize,
    length: usize,
    batch: usize,
    grad_accum: usize,
    lr: f64,
    warmup: u64,
    steps: u64,
    #[serde(with = "clip_pair")]
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

/// The kind as its config name ("bd3lm"), as earlier states stored it.
mod kind_name {
    use bd3_model::ModelKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &ModelKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ModelKind, D::Error> {
        let name = String::deserialize(d)?;
        ModelKind::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown model kind `{name}`")))
    }
}

/// The clip window as `[min, max]`, as earlier states stored it.
mod clip_pair {
    use bd3_model::objective::Clip;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Clip, s: S) -> Result<S::Ok, S::Error> {
        [c.min, c.max].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Clip, D::Error> {
        let [min, max] = <[f64; 2]>::deserialize(d)?;
        Ok(Clip { min, max })
    }

    use serde::Serialize;
}

impl Run {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("run settings serialise")
    }
}

/// The run settings a user can give, by their argument ids (= the keys of `Run`'s JSON), with the
/// clip ends mapped to their index in `clip`.
const RUN_SETTINGS: [&str; 20] = [
    "data",
    "kind",
    "size",
    "block_size",
    "length",
    "batch",
    "grad_accum",
    "lr",
    "warmup",
    "clip_min",
    "clip_max",
    "clip_search",
    "ema",
    "dropout",
    "seed",
    "val_every",
    "val_batches",
    "save_every",
    "log_every",
    "vocab_size",
];

pub fn run(a: TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    let given_on_line =
        |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    // The run settings given on this command line: on --resume each must agree with the saved run.
    let given: Vec<&str> = RUN_SETTINGS
        .iter()
        .copied()
        .filter(|id| given_on_line(id))
        .collect();
    let kind_given = given_on_line("kind");
    let steps_given = given_on_line("steps");
    let steps_arg = a.steps;
    let TrainArgs {
        data,
        out,
        tokenizer: tokenizer_path,
        init,
        resume,
        overwrite,
        time_limit,
        metrics,
        precision,
        ..
    } = a;
    let mut run = Run {
        data: data.clone().unwrap_or_default(),
        kind: a.kind.into(),
        size: a.size,
        block_size: a.block_size,
        length: a.length,
        batch: a.batch,
        grad_accum: a.grad_accum,
        lr: a.lr,
        warmup: a.warmup,
        steps: a.steps,
        clip: Clip {
            min: a.clip_min,
            max: a.clip_max,
        },
        clip_search: a.clip_search,
        ema: a.ema,
        dropout: a.dropout,
        seed: a.seed,
        val_every: a.val_every,
        val_batches: a.val_batches,
        save_every: a.save_every,
        log_every: a.log_every,
        vocab_size: a.vocab_size,
    };
    if let Some(t) = time_limit {
        if !(t.is_finite() && t > 0.0) {
            bail!("--time-limit must be a positive number of seconds");
        }
    }
    let init = match init {
        Some(arg) => Some(ModelSource::resolve(Some(&arg))?),
        None => None,
    };
    if let Some(src) = &init {
        if same_path(&src.dir, &out) && !overwrite {
            bail!("--init and --out are the same folder ({}): the checkpoint would be overwritten; pass --overwrite to allow it", out.display());
        }
    }
    if !resume && !overwrite {
        if let Some(f) = ["model.safetensors", STATE_FILE]
            .iter()
            .map(|f| out.join(f))
            .find(|p| p.exists())
        {
            bail!("{} already holds a checkpoint ({}): pass --resume to continue it or --overwrite to replace it", out.display(), f.display());
        }
    }
    let state = if resume {
        let state = read_state(&out.join(STATE_FILE))?;
        let saved_json = state
            .meta
            .get("run")
            .with_context(|| format!("{}: no run settings in the training state", state.path))?;
        let saved: Run = serde_json::from_str(saved_json)
            .with_context(|| format!("{}: the run settings cannot be read", state.path))?;
        // Settings given again must be those of the saved run; anything else would be silently ignored.
        let (mine, theirs) = (run.to_json(), saved.to_json());
        for id in &given {
            let flag = format!("--{}", id.replace('_', "-"));
            let (key, differs) = match *id {
                "data" => ("data", !same_path(&run.data, &saved.data)),
                // --clip-min and --clip-max each compare their own end of the window.
                "clip_min" | "clip_max" => {
                    let i = usize::from(*id == "clip_max");
                    ("clip", mine["clip"][i] != theirs["clip"][i])
                }
                key => (key, mine[key] != theirs[key]),
            };
            if differs {
                bail!("{flag} contradicts the run saved in {} ({key} = {}); drop it to resume, or train into a new --out", out.display(), theirs[key]);
            }
        }
        run = saved;
        let step: u64 = match state.meta.get("step") {
            Some(s) => s
                .parse()
                .with_context(|| format!("{}: step `{s}` is not a number", state.path))?,
            None => bail!("{}: no step in the training state", state.path),
        };
        if let Some(c) = state.meta.get("clip") {
            match serde_json::from_str::<Vec<f64>>(c).ok().as_deref() {
                Some(&[min, max]) => run.clip = Clip { min, max },
                _ => bail!("{}: clip `{c}` is not [min, max]", state.path),
            }
        }
        Some((step, state))
    } else {
        if data.is_none() {
            bail!("train needs --data PATH (or --resume)");
        }
        None
    };
    if steps_given {
        run.steps = steps_arg;
    }
    if run.batch == 0 || run.grad_accum == 0 || run.length < 2 {
        bail!("--batch and --grad-accum must be at least 1 and --length at least 2");
    }
    if run.grad_accum > MAX_GRAD_ACCUM {
        bail!(
            "--grad-accum {} is more than {MAX_GRAD_ACCUM}",
            run.grad_accum
        );
    }
    if run.log_every == 0 || run.save_every == 0 {
        bail!(
            "--log-every and --save-every must be at least 1 (--val-every 0 turns validation off)"
        );
    }
    if !(run.lr.is_finite() && run.lr > 0.0) {
        bail!("--lr must be a finite positive number, not {}", run.lr);
    }
    if !(0.0..1.0).contains(&run.ema) {
        bail!(
            "--ema must be in [0, 1) (0 turns the EMA off), not {}",
            run.ema
        );
    }
    if !(run.clip.min > 0.0 && run.clip.min <= run.clip.max && run.clip.max <= 1.0) {
        bail!(
            "the clip window [{}, {}] must satisfy 0 < min ≤ max ≤ 1",
            run.clip.min,
            run.clip.max
        );
    }
    if !(0.0..1.0).contains(&run.dropout) {
        bail!("--dropout must be in [0, 1)");
    }
    if init.is_none() && state.is_none() {
        // A model from scratch: its size and batch are checked before the corpus is read or anything
        // is allocated (the vocabulary is only known later; the bound with --vocab-size comes first).
        let cfg = train_config(&run, run.vocab_size.max(3))?;
        cfg.check_batch(run.batch, loss_shape(&cfg, 1).seq)
            .context("--batch")?;
    }

    // The GPU first: a run it cannot do fails before the corpus is read and tokenized.
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::default(),
    ))?);
    if precision == crate::PrecisionArg::Mixed {
        bd3_gpu::ops::matmul::check_mixed_precision(&ctx)?;
    }

    // Corpus and tokenizer.
    let docs = read_corpus(&run.data)?;
    let init_tokenizer = init.as_ref().and_then(|src| src.tokenizer.clone());
    let tok = if let Some((_, st)) = &state {
        let path = tokenizer_path
            .clone()
            .unwrap_or_else(|| out.join("tokenizer.json"));
        let tok = TextTokenizer::from_file(&path)?;
        // The run was trained with the tokenizer whose fingerprint it saved (older states: its size).
        let fingerprint = fnv1a(tok.to_json()?.as_bytes()).to_string();
        let vocab = st
            .groups
            .get("weights")
            .and_then(|g| g.get("vocab_embed.embedding"))
            .map(|e| e.len() / run.size.0.max(1));
        if st.meta.get("tokenizer").is_some_and(|f| *f != fingerprint)
            || vocab.is_some_and(|v| v != tok.vocab_size() + 1)
        {
            bail!(
                "{}: tokenizer does not match the checkpoint in {}",
                path.display(),
                out.display()
            );
        }
        tok
    } else if let Some(p) = tokenizer_path.as_ref().or(init_tokenizer.as_ref()) {
        // An --init checkpoint brings its own tokenizer unless another is named.
        TextTokenizer::from_file(p)?
    } else {
        eprintln!(
            "training a {}-token byte-level BPE on {} documents",
            run.vocab_size,
            docs.len()
        );
        TextTokenizer::train_bpe(&docs, run.vocab_size)?
    };
    let eos = tok.eos_id();

    // The model: from a checkpoint, from a resumed state, or the official initialisation.
    let (cfg, init_tensors) = match (&init, &state) {
        (Some(src), None) => {
            let dir = &src.dir;
            let (mut cfg, ckpt) = src.load(None)?;
            // The paper's two-stage recipe: an MDLM-style model (full attention, L' = L) fine-tuned
            // as BD3-LM at a smaller block size. The two share every tensor.
            if kind_given && run.kind == ModelKind::Bd3lm && cfg.kind == ModelKind::Mdlm {
                cfg.kind = ModelKind::Bd3lm;
                cfg.block_size = cfg.model_length;
            } else if kind_given && run.kind != cfg.kind {
                bail!(
                    "--init {} is a {} model; it cannot be trained as {}",
                    dir.display(),
                    cfg.kind.name(),
                    run.kind.name()
                );
            }
            if cfg.kind == ModelKind::Bd3lm && run.block_size != cfg.block_size {
                if cfg.model_length % run.block_size != 0 {
                    bail!(
                        "--block-size {} does not divide the model length {}",
                        run.block_size,
                        cfg.model_length
                    );
                }
                cfg.block_size = run.block_size;
            }
            run.kind = cfg.kind;
            run.length = cfg.model_length;
            run.size = ModelSize(cfg.hidden_dim, cfg.n_heads, cfg.n_blocks);
            (cfg, Some(ckpt))
        }
        _ => (train_config(&run, tok.vocab_size() + 1)?, None),
    };
    tok.check_fits(&cfg)?;
    cfg.check_batch(run.batch, loss_shape(&cfg, 1).seq)
        .context("--batch")?;
    if cfg.kind != ModelKind::Bd3lm && run.clip_search {
        bail!("--clip-search applies to BD3LM (block diffusion) models");
    }
    // A run that never validates may train on a corpus too small to hold out a validation chunk
    // (the page's fine-tuning on a short text); it then skips the validation at step 0 as well.
    let chunks = if run.val_every == 0 && !run.clip_search {
        split_chunks(&docs, &tok, eos, cfg.model_length, VALID_EVERY)?
    } else {
        chunk_corpus(&docs, &tok, eos, cfg.model_length, VALID_EVERY)?
    };
    eprintln!(
        "{} training chunks and {} validation chunks of {} tokens",
        chunks.train.len(),
        chunks.valid.len(),
        cfg.model_length
    );

    let ckpt = match init_tensors {
        Some(c) => c,
        None => {
            let t = official_init(&cfg, run.seed);
            Checkpoint::from_bytes(to_safetensors(&cfg, &t, None), "initial weights", &cfg)?
        }
    };
    let mut model = pollster::block_on(GpuModel::load(ctx.clone(), cfg.clone(), &ckpt))?;
    drop(ckpt);
    let optim = OptimConfig {
        lr: run.lr,
        ema_decay: run.ema,
        ..Default::default()
    };
    let mut trainer = pollster::block_on(Trainer::new(&model, optim))?;
    crate::apply_precision(&mut model, Some(&mut trainer), precision)?;
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

    let shape = train_shape(&cfg, run.batch, run.dropout);
    let settings = StepSettings {
        seed: run.seed,
        batch: run.batch,
        grad_accum: run.grad_accum,
        lr: run.lr,
        warmup: run.warmup,
    };
    // Validation covers the whole held-out split unless --val-batches caps it.
    let n_valid = if run.val_batches == 0 {
        chunks.valid.len()
    } else {
        run.val_batches
            .saturating_mul(run.batch)
            .min(chunks.valid.len())
    };
    let valid: Vec<Vec<u32>> = chunks.valid[..n_valid].to_vec();
    let tokens_per_step = run.batch * run.grad_accum * cfg.model_length;
    let started = Instant::now();
    let progress = Progress::new(run.steps, "steps", false);
    let mut metrics = match &metrics {
        Some(path) => Some(MetricsLog::open(path, state.is_some())?),
        None => None,
    };
    let validate =
        |model: &mut GpuModel, trainer: &Trainer, step: u64, clip: &mut Clip| -> Result<f64> {
            // Validation and the clip search use the EMA weights, as the official validation does.
            with_ema(&ctx, model, trainer, &backup, |model| {
                let (sum, count, _) = pollster::block_on(evaluate(
                    model,
                    &valid,
                    run.batch,
                    Clip::NELBO,
                    validation_seed(run.seed),
                    false,
                    |_, _| {},
                ))?;
                let nelbo = sum / count as f64;
                progress.println(&format!(
                    "val step {step} nelbo {nelbo:.6} ppl {:.3}",
                    nelbo.exp()
                ));
                if run.clip_search {
                    *clip = clip_search(model, &valid, run.batch, run.seed)?;
                }
                Ok(nelbo)
            })
        };
    let mut clip = run.clip;
    if start_step == 0 && !valid.is_empty() {
        let nelbo = validate(&mut model, &trainer, 0, &mut clip)?;
        if let Some(m) = metrics.as_mut() {
            m.write(&serde_json::json!({"step": 0, "val_nelbo": nelbo}))?;
        }
    }
    if start_step >= run.steps {
        if state.is_none() {
            // --steps 0: the initial weights (official initialisation or --init) as a complete checkpoint.
            save(
                &ctx, &out, &cfg, &model, &trainer, &run, clip, start_step, &tok_json,
            )?;
            eprintln!(
                "done: no training steps; the initial weights saved as step {start_step} in {}",
                out.display()
            );
        } else {
            eprintln!(
                "the training state is already at step {start_step} (--steps {}): nothing to do",
                run.steps
            );
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
        anyhow::anyhow!("step {step}: the {what} is {value} (not finite); training stopped, {kept} (try a lower --lr)")
    };
    for step in start_step..run.steps {
        // The step itself is shared with the page's fine-tuning (bd3_gpu::train_loop).
        let report = pollster::block_on(train_step(
            &model,
            &mut trainer,
            &shape,
            &chunks.train,
            &settings,
            clip,
            step,
        ))?;
        let (loss, lr) = (report.loss, report.lr);
        let done = step + 1;
        if !loss.is_finite() {
            return Err(non_finite("training loss", loss, done, last_saved));
        }
        if report.skipped {
            progress.println(&format!(
                "step {done}: the gradients overflowed at loss scale {}; step skipped, scale halved",
                report.loss_scale.unwrap_or(1.0)
            ));
        }
        // A non-finite gradient has just turned the weights into NaN: stop before anything is saved
        // (with loss scaling it only skipped the step).
        if let Some(norm) = report.grad_norm {
            if !norm.is_finite() && !report.skipped {
                return Err(non_finite("gradient norm", norm, done, last_saved));
            }
        }
        if let Some(m) = metrics.as_mut() {
            m.write(&serde_json::json!({"step": done, "loss": loss, "lr": lr}))?;
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = (done - start_step) as f64 * tokens_per_step as f64 / secs;
        progress.update(done, run.steps, &format!("loss {loss:.4}  {rate:.0} tok/s"));
        if done % run.log_every == 0 || done == run.steps {
            let eta = (run.steps - done) as f64 * tokens_per_step as f64 / rate;
            progress.println(&format!(
                "step {done} loss {loss:.6} lr {lr:.3e} {rate:.0} tok/s eta {eta:.0}s"
            ));
        }
        let out_of_time =
            done < run.steps && time_limit.is_some_and(|t| started.elapsed().as_secs_f64() >= t);
        if run.val_every > 0 && (done % run.val_every == 0 || done == run.steps || out_of_time) {
            let nelbo = validate(&mut model, &trainer, done, &mut clip)?;
            if let Some(m) = metrics.as_mut() {
                m.write(&serde_json::json!({"step": done, "val_nelbo": nelbo}))?;
            }
        }
        if out_of_time {
            save(
                &ctx, &out, &cfg, &model, &trainer, &run, clip, done, &tok_json,
            )?;
            progress.finish();
            eprintln!(
                "time limit reached: checkpoint saved at step {done} of {} in {}",
                run.steps,
                out.display()
            );
            println!("stopped at step {done} (time limit)");
            return Ok(());
        }
        let stop = interrupted.load(Ordering::SeqCst);
        if done % run.save_every == 0 || done == run.steps || stop {
            save(
                &ctx, &out, &cfg, &model, &trainer, &run, clip, done, &tok_json,
            )?;
            last_saved = Some(done);
        }
        if stop {
            progress.finish();
            eprintln!(
                "interrupted: checkpoint saved at step {done} in {}",
                out.display()
            );
            return Ok(());
        }
    }
    progress.finish();
    eprintln!("done: {} in {}", run.steps, out.display());
    Ok(())
}

/// `--metrics FILE`: one JSON line per step (`{"step", "loss", "lr"}`) and per validation
/// (`{"step", "val_nelbo"}`), flushed as written so a run can be followed or compared while it goes.
struct MetricsLog {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl MetricsLog {
    /// A new file, or the existing one continued when the run is resumed.
    fn open(path: &Path, append: bool) -> Result<MetricsLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("{}: cannot open the metrics file", path.display()))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
        })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: writing the metrics failed", self.path.display()))
    }
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
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The config of a model trained from scratch.
fn train_config(run: &Run, vocab_size: usize) -> Result<ModelConfig> {
    let ModelSize(d, h, n) = run.size;
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
    Ok(ModelConfig::from_json_bytes(
        json.to_string().as_bytes(),
        "training settings",
        None,
    )?)
}

/// Run `f` with the EMA weights in place of the trained ones (when there is an EMA).
fn with_ema<T>(
    ctx: &GpuContext,
    model: &mut GpuModel,
    trainer: &Trainer,
    backup: &Weights,
    f: impl FnOnce(&mut GpuModel) -> Result<T>,
) -> Result<T> {
    let Some(ema) = &trainer.ema else {
        return f(model);
    };
    copy_weights(ctx, &model.weights, backup);
    copy_weights(ctx, ema, &model.weights);
    let r = f(model);
    copy_weights(ctx, backup, &model.weights);
    r
}

/// The data-driven noise schedule (official `diffusion.py:_clipped_schedule_search`, paper §3.3): among the candidate windows, the one whose per-block
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
                candidates.push(Clip {
                    min: i.max(1e-3),
                    max: (i + w).max(1e-3),
                });
                i += 0.05;
            }
        }
    }
    let mut best = (f64::INFINITY, Clip::NELBO);
    for c in candidates {
        let (_, _, per_batch) = pollster::block_on(evaluate(
            model,
            valid,
            batch,
            c,
            seed ^ 0xc11b,
            true,
            |_, _| {},
        ))?;
        let mut score = 0.0;
        for tl in per_batch {
            let blocks: Vec<f64> = tl
                .chunks(bs)
                .map(|b| b.iter().map(|&x| x as f64).sum::<f64>() / bs as f64)
                .collect();
            let mean = blocks.iter().sum::<f64>() / blocks.len() as f64;
            score += blocks.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
                / (blocks.len().max(2) - 1) as f64;
        }
        if score < best.0 {
            best = (score, c);
        }
    }
    println!(
        "clip search: [{:.3}, {:.3}] (variance {:.4})",
        best.1.min, best.1.max, best.0
    );
    Ok(best.1)
}

#[allow(clippy::too_many_arguments)]
fn save(
    ctx: &GpuContext,
    out: &Path,
    cfg: &ModelConfig,
    model: &GpuModel,
    trainer: &Trainer,
    run: &Run,
    clip: Clip,
    step: u64,
    tok_json: &str,
) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the folder", out.display()))?;
    let mut meta = HashMap::new();
    meta.insert("run".to_string(), run.to_json().to_string());
    meta.insert("step".to_string(), step.to_string());
    meta.insert("clip".to_string(), json!([clip.min, clip.max]).to_string());
    meta.insert(
        "tokenizer".to_string(),
        fnv1a(tok_json.as_bytes()).to_string(),
    );
    let mut groups: Vec<(&str, &Weights)> = vec![
        ("weights", &model.weights),
        ("adam_m", &trainer.m),
        ("adam_v", &trainer.v),
    ];
    if let Some(e) = &trainer.ema {
        groups.push(("ema", e));
    }
    let state = pollster::block_on(state_bytes(ctx, &groups, meta))?;
    // The resume state first, then the user-facing folder (EMA weights, as the official export).
    bd3_model::write_atomically(&out.join(STATE_FILE), &state)?;
    let weights = trainer.ema.as_ref().unwrap_or(&model.weights);
    let saved_cfg = ModelConfig {
        sampling_eps_min: clip.min,
        sampling_eps_max: clip.max,
        ..cfg.clone()
    };
    let bytes = pollster::block_on(model_bytes(ctx, &saved_cfg, weights, (clip.min, clip.max)))?;
    Ok(write_model_dir(out, &saved_cfg, &bytes, tok_json)?)
}
