//! `bd3-wgpu eval`: NELBO → perplexity of a checkpoint on a text corpus with the official estimator
//! (t ~ U[1e-3, 1], one stratified sample per sequence and block; BD3LM leaves token 0 out).

use crate::nelbo::evaluate;
use bd3_gpu::{ContextOptions, GpuContext, GpuModel};
use bd3_model::data::{chunk_corpus, read_corpus};
use bd3_model::objective::Clip;
use bd3_model::tokenizer::TextTokenizer;
use bd3_model::{Error, Result};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// More passes than this only narrows the standard error below any use (each pass is a full evaluation).
const MAX_PASSES: usize = 10_000;

pub const USAGE: &str = "eval --model DIR --data PATH [--batch 8] [--split all|valid|train] [--seed 1] [--passes 1]";

pub fn run(args: &[String]) -> Result<()> {
    let (mut model_dir, mut data, mut batch, mut split, mut seed, mut passes) = (None, None, 8usize, "all".to_string(), 1u64, 1usize);
    let mut it = args.iter();
    while let Some(f) = it.next() {
        match f.as_str() {
            "--model" => model_dir = it.next().map(PathBuf::from),
            "--data" => data = it.next().map(PathBuf::from),
            "--batch" => batch = crate::parse_num(it.next(), f)?,
            "--seed" => seed = crate::parse_num(it.next(), f)?,
            "--passes" => passes = crate::parse_num(it.next(), f)?,
            "--split" => split = it.next().cloned().unwrap_or_default(),
            other => return Err(Error::Invalid(format!("unknown option `{other}`; usage: bd3-wgpu {USAGE}"))),
        }
    }
    let dir = model_dir.ok_or_else(|| Error::Invalid(format!("eval needs --model DIR; usage: bd3-wgpu {USAGE}")))?;
    let data = data.ok_or_else(|| Error::Invalid(format!("eval needs --data PATH; usage: bd3-wgpu {USAGE}")))?;
    if batch == 0 || passes == 0 {
        return Err(Error::Invalid("--batch and --passes must be at least 1".into()));
    }
    if passes > MAX_PASSES {
        return Err(Error::Invalid(format!("--passes {passes} is more than {MAX_PASSES}")));
    }
    let bd3_model::ModelDir { config: cfg, checkpoint: ckpt, .. } = bd3_model::load_model_dir(&dir, None)?;
    cfg.check_batch(batch, crate::nelbo::loss_shape(&cfg, 1).seq)?;
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    tok.check_fits(&cfg)?;
    let docs = read_corpus(&data)?;
    // The same document split as `train` (every 20th document held out).
    let chunks = match split.as_str() {
        "all" => chunk_corpus(&docs, &tok, tok.eos_id(), cfg.model_length, 0)?.train,
        "valid" => chunk_corpus(&docs, &tok, tok.eos_id(), cfg.model_length, 20)?.valid,
        "train" => chunk_corpus(&docs, &tok, tok.eos_id(), cfg.model_length, 20)?.train,
        other => return Err(Error::Invalid(format!("--split `{other}`: expected all, valid or train"))),
    };
    let ctx = Arc::new(pollster::block_on(GpuContext::new(ContextOptions::default()))?);
    let mut model = pollster::block_on(GpuModel::load(ctx.clone(), cfg.clone(), &ckpt))?;
    drop(ckpt);
    // Each pass draws its own t per block; the first is the estimate `train` validates with.
    let started = std::time::Instant::now();
    let total = chunks.len() * passes;
    let mut per_pass = Vec::with_capacity(passes);
    let mut count = 0;
    for pass in 0..passes {
        let (sum, n, _) = pollster::block_on(evaluate(&mut model, &chunks, batch, Clip::NELBO, (seed + pass as u64) ^ 0x5eed, false, |done, _| {
            let done = pass * chunks.len() + done;
            let secs = started.elapsed().as_secs_f64();
            eprint!("\reval {done}/{total} chunks, {:.0} s left   ", secs / done as f64 * (total - done) as f64);
            let _ = std::io::stderr().flush();
        }))?;
        per_pass.push(sum / n as f64);
        count = n;
    }
    eprintln!();
    let nelbo = per_pass.iter().sum::<f64>() / passes as f64;
    print!("nelbo {nelbo:.6} ppl {:.3} tokens {count} chunks {}", nelbo.exp(), chunks.len());
    if passes > 1 {
        // Standard error of the mean over passes (the passes are independent draws of t).
        let var = per_pass.iter().map(|x| (x - nelbo).powi(2)).sum::<f64>() / (passes - 1) as f64;
        print!(" passes {passes} stderr {:.6}", (var / passes as f64).sqrt());
    }
    println!();
    Ok(())
}
