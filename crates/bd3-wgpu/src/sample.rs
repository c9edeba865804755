//! `bd3-wgpu sample`: generate text (or token ids, for a model folder without `tokenizer.json`).

use bd3_gpu::{generate, ContextOptions, GpuContext, GpuModel, SampleEvent, SampleOptions, Sampler};
use bd3_model::tokenizer::TextTokenizer;
use bd3_model::{Error, ModelKind, Result};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub const USAGE: &str = "sample [--model DIR (default: the bundled model)] [--prompt TEXT | --prompt-ids 1,2,3] [--length N] [--top-p P]
         [--sampler first-hitting|ddpm|confidence|confidence-threshold] [--tokens-per-call K]
         [--confidence-threshold P] [--steps N] [--seed N] [--batch N] [--var-length] [--entropy-check]
         [--trace FILE] [--kind bd3lm|mdlm|sedd|ar] [--block-size N]";

struct Args {
    model: Option<PathBuf>,
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    length: Option<usize>,
    top_p: Option<f64>,
    sampler: String,
    tokens_per_call: Option<usize>,
    confidence_threshold: Option<f64>,
    steps: Option<usize>,
    seed: u64,
    batch: usize,
    var_length: bool,
    entropy_check: bool,
    trace: Option<PathBuf>,
    kind: Option<ModelKind>,
    block_size: Option<usize>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        model: None, prompt: None, prompt_ids: None, length: None, top_p: None, sampler: "first-hitting".into(), tokens_per_call: None, confidence_threshold: None, steps: None,
        seed: bd3_gpu::defaults::SEED, batch: bd3_gpu::defaults::BATCH, var_length: false, entropy_check: false, trace: None, kind: None, block_size: None,
    };
    let mut it = args.iter();
    let value = |it: &mut std::slice::Iter<String>, flag: &str| it.next().cloned().ok_or_else(|| Error::Invalid(format!("{flag} needs a value")));
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--model" => a.model = Some(PathBuf::from(value(&mut it, flag)?)),
            "--prompt" => a.prompt = Some(value(&mut it, flag)?),
            "--prompt-ids" => {
                let v = value(&mut it, flag)?;
                a.prompt_ids = Some(v.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse()).collect::<std::result::Result<_, _>>().map_err(|_| Error::Invalid(format!("--prompt-ids `{v}`: expected comma-separated token ids")))?);
            }
            "--length" => a.length = Some(crate::parse_num(it.next(), flag)?),
            "--top-p" => a.top_p = Some(crate::parse_num(it.next(), flag)?),
            "--sampler" => a.sampler = value(&mut it, flag)?,
            "--tokens-per-call" => a.tokens_per_call = Some(crate::parse_num(it.next(), flag)?),
            "--confidence-threshold" => a.confidence_threshold = Some(crate::parse_num(it.next(), flag)?),
            "--steps" => a.steps = Some(crate::parse_num(it.next(), flag)?),
            "--seed" => a.seed = crate::parse_num(it.next(), flag)?,
            "--batch" => a.batch = crate::parse_num(it.next(), flag)?,
            "--var-length" => a.var_length = true,
            "--entropy-check" => a.entropy_check = true,
            "--trace" => a.trace = Some(PathBuf::from(value(&mut it, flag)?)),
            "--kind" => {
                let v = value(&mut it, flag)?;
                a.kind = Some(ModelKind::parse(&v).ok_or_else(|| Error::Invalid(format!("unknown model kind `{v}` (expected bd3lm, mdlm, sedd or ar)")))?);
            }
            "--block-size" => a.block_size = Some(crate::parse_num(it.next(), flag)?),
            other => return Err(Error::Invalid(format!("unknown option `{other}`; usage: bd3-wgpu {USAGE}"))),
        }
    }
    Ok(a)
}

pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let sampler = Sampler::from_name(&a.sampler, a.tokens_per_call, a.confidence_threshold)?;
    let dir = match a.model.clone() {
        Some(d) => d,
        None => crate::bundled_model()?,
    };
    let (cfg, ckpt) = bd3_model::load_model_dir(&dir, a.kind)?;
    // The sequences and every step's buffers scale with batch × length: refuse what cannot be allocated.
    let length = a.length.unwrap_or(cfg.model_length);
    if length > bd3_model::config::MAX_MODEL_LENGTH {
        return Err(Error::Invalid(format!("--length {length} is more than {}", bd3_model::config::MAX_MODEL_LENGTH)));
    }
    cfg.check_batch(a.batch, length.max(cfg.model_length), "--batch")?;
    if let Some(bs) = a.block_size {
        if bs != cfg.block_size {
            return Err(Error::Invalid(format!("{} was trained with block size {}, not {bs}", dir.display(), cfg.block_size)));
        }
    }
    if a.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(Error::Invalid("--top-p must be in (0, 1]".into()));
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        let t = TextTokenizer::from_file(&tok_path)?;
        t.check_fits(&cfg)?;
        Some(t)
    } else {
        None
    };
    let prompt = match (&a.prompt, &a.prompt_ids, &tokenizer) {
        (Some(_), Some(_), _) => return Err(Error::Invalid("give --prompt or --prompt-ids, not both".into())),
        (Some(text), None, Some(t)) => t.encode(text)?,
        (Some(_), None, None) => return Err(Error::Invalid(format!("{} has no tokenizer.json: give the prompt as --prompt-ids", dir.display()))),
        (None, Some(ids), _) => ids.clone(),
        (None, None, _) => Vec::new(),
    };
    let defaults = SampleOptions::defaults_for(&cfg);
    let opts = SampleOptions {
        batch: a.batch,
        length: a.length.unwrap_or(defaults.length),
        prompt,
        top_p: a.top_p.unwrap_or(defaults.top_p),
        sampler,
        steps: a.steps.unwrap_or(defaults.steps),
        seed: a.seed,
        var_length: a.var_length,
        entropy_check: a.entropy_check,
        stop: None,
    };
    let ctx = Arc::new(pollster::block_on(GpuContext::new(ContextOptions::default()))?);
    let mut model = pollster::block_on(GpuModel::load(ctx.clone(), cfg.clone(), &ckpt))?;
    drop(ckpt);
    let mut trace = match &a.trace {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| Error::Io { path: p.display().to_string(), message: e.to_string() })?)),
        None => None,
    };

    // Stream sequence 0 as blocks are committed (batch 1 only; larger batches print at the end).
    let stream = a.batch == 1;
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let render = |ids: &[u32]| -> String {
        match &tokenizer {
            // Text without the leading BOS.
            Some(t) => t.decode(ids.get(1..).unwrap_or(&[])).unwrap_or_else(|e| format!("<{e}>")),
            None => ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ") + " ",
        }
    };
    let mut trace_err = None;
    let started = Instant::now();
    let result = {
        let mut on_event = |e: SampleEvent| {
            if let Some(w) = trace.as_mut() {
                let line = match &e {
                    SampleEvent::Revealed { block, call, revealed } => format!(
                        "{{\"event\":\"revealed\",\"block\":{block},\"call\":{call},\"revealed\":[{}]}}",
                        revealed.iter().map(|(s, p, t)| format!("[{s},{p},{t}]")).collect::<Vec<_>>().join(",")
                    ),
                    SampleEvent::Committed { block, end, .. } => format!("{{\"event\":\"committed\",\"block\":{block},\"end\":{end}}}"),
                };
                if let Err(err) = writeln!(w, "{line}") {
                    trace_err.get_or_insert(err.to_string());
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
    if let Some(e) = trace_err {
        return Err(Error::Io { path: a.trace.unwrap().display().to_string(), message: e });
    }
    if let Some(mut w) = trace {
        w.flush().map_err(|e| Error::Io { path: "trace".into(), message: e.to_string() })?;
    }
    let secs = started.elapsed().as_secs_f64();
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
    let generated: usize = result.sequences.iter().map(|s| s.len().saturating_sub(1 + opts.prompt.len())).sum();
    eprintln!(
        "{} sequence(s), {} tokens generated, {} NFEs ({} model calls), {:.1} tokens/s, seed {}, on {}",
        result.sequences.len(), generated, result.nfe, result.calls, generated as f64 / secs, opts.seed, ctx.adapter_summary()
    );
    Ok(())
}
