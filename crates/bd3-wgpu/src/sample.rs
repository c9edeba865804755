//! `bd3-wgpu sample`: generate text (or token ids, for a model folder without `tokenizer.json`).

use crate::model_source::ModelSource;
use crate::sample_out::write_sample_line;
use anyhow::{bail, Context, Result};
use bd3_gpu::weights::WeightChoice;
use bd3_gpu::{
    defaults, generate, ContextOptions, GpuContext, GpuModel, SampleEvent, SampleOptions, Sampler,
};
use bd3_model::tokenizer::TextTokenizer;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// How the weights are stored on the GPU, as a command-line value (`bd3_gpu::weights::WeightChoice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    /// f32, the reference (what `verify` checks)
    F32,
    /// f16 matrices, f32 arithmetic: half the bytes per model call (needs shader-f16)
    F16,
    /// f16 where the adapter has shader-f16, else f32
    Auto,
}

impl From<WeightsArg> for WeightChoice {
    fn from(w: WeightsArg) -> WeightChoice {
        match w {
            WeightsArg::F32 => WeightChoice::F32,
            WeightsArg::F16 => WeightChoice::F16,
            WeightsArg::Auto => WeightChoice::Auto,
        }
    }
}

impl WeightsArg {
    /// The command-line value of the library's default.
    pub fn default_choice() -> WeightsArg {
        match WeightChoice::default() {
            WeightChoice::F32 => WeightsArg::F32,
            WeightChoice::F16 => WeightsArg::F16,
            WeightChoice::Auto => WeightsArg::Auto,
        }
    }
}

/// Load `ckpt` for sampling with its matrices stored as `weights` asks, saying on stderr which
/// format is in use (and why, when `auto` fell back to f32).
pub fn load_for_sampling(
    ctx: &Arc<GpuContext>,
    cfg: &bd3_model::ModelConfig,
    ckpt: &bd3_model::Checkpoint,
    weights: WeightsArg,
) -> Result<GpuModel> {
    let (format, why) = WeightChoice::from(weights)
        .resolve(ctx)
        .context("--weights")?;
    eprintln!(
        "weights: {format}{}",
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    );
    Ok(pollster::block_on(GpuModel::load_as(
        ctx.clone(),
        cfg.clone(),
        ckpt,
        format,
    ))?)
}

/// The samplers as command-line values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerArg {
    /// One masked position per model call, chosen uniformly (the official default)
    FirstHitting,
    /// T steps per block from t = 1 to 0 (--steps)
    Ddpm,
    /// Per call, draw every masked position of the block and reveal the --tokens-per-call most
    /// probable draws (parallel decoding, beyond the paper)
    Confidence,
    /// Per call, reveal every draw whose probability is at least --confidence-threshold (at least one)
    ConfidenceThreshold,
}

impl SamplerArg {
    fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .expect("every sampler has a name")
            .get_name()
            .to_string()
    }
}

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A model folder (config.json, model.safetensors, tokenizer.json), or an official checkpoint by
    /// name, e.g. kuleshov-group/bd3lm-owt-block_size4 (downloaded into the Hugging Face cache)
    /// [default: the bundled model]
    #[arg(long, value_name = "DIR|OWNER/NAME")]
    model: Option<String>,
    /// Text the samples continue (needs the model's tokenizer)
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens per sequence, BOS and prompt included [default: the model's length]
    #[arg(long)]
    length: Option<usize>,
    /// Nucleus mass: tokens with cumulative probability up to P are kept
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
    /// How masked positions are revealed
    #[arg(long, value_enum, default_value_t = SamplerArg::FirstHitting)]
    sampler: SamplerArg,
    /// Positions revealed per model call (--sampler confidence)
    #[arg(long, value_name = "K")]
    tokens_per_call: Option<usize>,
    /// Probability a draw needs to be revealed (--sampler confidence-threshold)
    #[arg(long, value_name = "P")]
    confidence_threshold: Option<f64>,
    /// Steps per block (ddpm) or in total (SEDD's analytic sampler)
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of every random draw (one seed gives the same tokens on the same adapter)
    #[arg(long, default_value_t = defaults::SEED)]
    seed: u64,
    /// Sequences generated together
    #[arg(long, default_value_t = defaults::BATCH)]
    batch: usize,
    /// Stop each sequence at its first generated end-of-text token
    #[arg(long)]
    var_length: bool,
    /// The official low-entropy check: regenerate (fixed length) or end (--var-length) a sample
    /// whose last 256 tokens have an entropy below 4 nats
    #[arg(long)]
    entropy_check: bool,
    /// Write every reveal and block commit as JSON lines to FILE
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Write each sequence as a JSON line {tokens, text, nfe, calls, tokenizer} to FILE (the input
    /// of `gen-ppl`); nfe counts the model calls that revealed tokens in that sequence
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Treat the checkpoint as this kind (for folders whose config.json does not say)
    #[arg(long, value_enum)]
    kind: Option<crate::KindArg>,
    /// Refuse to run unless the model was trained with this block size
    #[arg(long)]
    block_size: Option<usize>,
    /// How the weight matrices are stored on the GPU
    #[arg(long, value_enum, default_value_t = WeightsArg::default_choice())]
    weights: WeightsArg,
}

/// Put the sampling defaults, defined once in `bd3_gpu::defaults` (and per model in
/// `SampleOptions::defaults_for`), into the help text.
pub fn document_defaults(cli: &mut clap::Command) {
    let with_default = |default: String| {
        move |a: clap::Arg| {
            let help = format!(
                "{} [default: {default}]",
                a.get_help().map(|h| h.to_string()).unwrap_or_default()
            );
            a.help(help)
        }
    };
    let top_p = format!("{} ({} for SEDD)", defaults::TOP_P, defaults::SEDD_TOP_P);
    let steps = format!("the block size ({} for SEDD)", defaults::SEDD_STEPS);
    let patch = move |c: clap::Command| {
        c.mut_arg("top_p", with_default(top_p))
            .mut_arg("steps", with_default(steps))
            .mut_arg(
                "tokens_per_call",
                with_default(defaults::TOKENS_PER_CALL.to_string()),
            )
            .mut_arg(
                "confidence_threshold",
                with_default(defaults::CONFIDENCE_THRESHOLD.to_string()),
            )
    };
    *cli = std::mem::take(cli).mut_subcommand("sample", patch);
}

pub fn run(a: SampleArgs) -> Result<()> {
    let source = ModelSource::resolve(a.model.as_deref())?;
    let dir = source.dir.clone();
    let (cfg, ckpt) = source.load(a.kind.map(Into::into))?;
    // The sequences and every step's buffers scale with batch × length: refuse what cannot be allocated.
    let length = a.length.unwrap_or(cfg.model_length);
    if length > bd3_model::config::MAX_MODEL_LENGTH {
        bail!(
            "--length {length} is more than {}",
            bd3_model::config::MAX_MODEL_LENGTH
        );
    }
    cfg.check_batch(a.batch, length.max(cfg.model_length))
        .context("--batch")?;
    if let Some(bs) = a.block_size {
        if bs != cfg.block_size {
            bail!(
                "{} was trained with block size {}, not {bs}",
                dir.display(),
                cfg.block_size
            );
        }
    }
    let model_defaults = SampleOptions::defaults_for(&cfg);
    let top_p = a.top_p.unwrap_or(model_defaults.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], not {top_p}");
    }
    let tokenizer = match &source.tokenizer {
        Some(path) => {
            let t = TextTokenizer::from_file(path)?;
            t.check_fits(&cfg)?;
            Some(t)
        }
        None => None,
    };
    let prompt = match (&a.prompt, &a.prompt_ids, &tokenizer) {
        (Some(text), _, Some(t)) => t.encode(text)?,
        (Some(_), _, None) => bail!(
            "{} has no tokenizer.json: give the prompt as --prompt-ids",
            dir.display()
        ),
        (None, Some(ids), _) => ids.clone(),
        (None, None, _) => Vec::new(),
    };
    let sampler = Sampler::from_name(&a.sampler.name(), a.tokens_per_call, a.confidence_threshold)?;
    let opts = SampleOptions {
        batch: a.batch,
        length,
        prompt,
        top_p,
        sampler,
        steps: a.steps.unwrap_or(model_defaults.steps),
        seed: a.seed,
        var_length: a.var_length,
        entropy_check: a.entropy_check,
        ..model_defaults
    };
    // Refuse a bad request before the adapter opens and the weights upload (and before the
    // weight-format line), so it is one line on stderr.
    opts.check(&cfg)?;
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::default(),
    ))?);
    let mut model = load_for_sampling(&ctx, &cfg, &ckpt, a.weights)?;
    drop(ckpt);
    let mut trace = match &a.trace {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("{}: cannot create the trace", p.display()))?,
        )),
        None => None,
    };

    // Stream sequence 0 as blocks are committed (batch 1 only; larger batches print at the end).
    let stream = a.batch == 1;
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let render = |ids: &[u32]| -> String {
        match &tokenizer {
            // Text without the leading BOS.
            Some(t) => t
                .decode(ids.get(1..).unwrap_or(&[]))
                .unwrap_or_else(|e| format!("<{e}>")),
            None => {
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
                    + " "
            }
        }
    };
    let mut trace_err = None;
    // Per sequence, the model calls that changed it: the official NFE, independent of the batch.
    let mut nfe_per_sequence = vec![0u64; a.batch];
    let started = Instant::now();
    let result = {
        let mut on_event = |e: SampleEvent| {
            if let SampleEvent::Revealed { revealed, .. } = &e {
                let mut changed: Vec<usize> = revealed.iter().map(|r| r.0).collect();
                changed.sort_unstable();
                changed.dedup();
                for s in changed {
                    if let Some(n) = nfe_per_sequence.get_mut(s) {
                        *n += 1;
                    }
                }
            }
            if let Some(w) = trace.as_mut() {
                let line = match &e {
                    SampleEvent::Revealed { block, call, revealed } => format!(
                        "{{\"event\":\"revealed\",\"block\":{block},\"call\":{call},\"revealed\":[{}]}}",
                        revealed.iter().map(|(s, p, t)| format!("[{s},{p},{t}]")).collect::<Vec<_>>().join(",")
                    ),
                    SampleEvent::Committed { block, end, .. } => format!("{{\"event\":\"committed\",\"block\":{block},\"end\":{end}}}"),
                };
                if let Err(err) = writeln!(w, "{line}") {
                    trace_err.get_or_insert(err);
                }
            }
            if let (true, SampleEvent::Committed { sequences, .. }) = (stream, &e) {
                let text = render(&sequences[0]);
                if text.len() > printed && text.is_char_boundary(printed) {
                    let _ = write!(stdout, "{}", &text[printed..]);
                    let _ = stdout.flush();
                    printed = text.len();
                }
            }
        };
        pollster::block_on(generate(&mut model, &opts, &mut on_event))?
    };
    if let (Some(e), Some(path)) = (trace_err, &a.trace) {
        bail!("{}: writing the trace failed: {e}", path.display());
    }
    if let (Some(mut w), Some(path)) = (trace, &a.trace) {
        w.flush()
            .with_context(|| format!("{}: writing the trace failed", path.display()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(path) = &a.out {
        let fingerprint = tokenizer
            .as_ref()
            .map(|t| t.fingerprint())
            .transpose()?
            .unwrap_or_default();
        let mut lines = Vec::new();
        for (s, tokens) in result.sequences.iter().enumerate() {
            let nfe = nfe_per_sequence
                .get(s)
                .copied()
                .filter(|&n| n > 0)
                .unwrap_or(result.nfe as u64);
            write_sample_line(
                &mut lines,
                tokens,
                &render(tokens),
                nfe,
                result.calls as u64,
                &fingerprint,
            )?;
        }
        bd3_model::write_atomically(path, &lines)?;
    }
    if stream {
        let text = render(&result.sequences[0]);
        if text.len() >= printed && text.is_char_boundary(printed) {
            print!("{}", &text[printed..]);
        }
        println!();
    } else {
        for (i, s) in result.sequences.iter().enumerate() {
            println!("--- sample {i} ---");
            println!("{}", render(s));
        }
    }
    let generated: usize = result
        .sequences
        .iter()
        .map(|s| s.len().saturating_sub(1 + opts.prompt.len()))
        .sum();
    eprintln!(
        "{} sequence(s), {} tokens generated, {} NFEs ({} model calls), {:.1} tokens/s, seed {}, {} weights, on {}",
        result.sequences.len(), generated, result.nfe, result.calls, generated as f64 / secs, opts.seed, model.weights.format(), ctx.adapter_summary()
    );
    Ok(())
}
