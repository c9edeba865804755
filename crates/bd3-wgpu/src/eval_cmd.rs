//! `bd3-wgpu eval`: NELBO → perplexity of a checkpoint on a text corpus with the official estimator
//! (t ~ U[1e-3, 1], one stratified sample per sequence and block; BD3LM leaves token 0 out).

use crate::model_source::ModelSource;
use crate::nelbo::evaluate;
use crate::progress::Progress;
use crate::train_cmd::VALID_EVERY;
use anyhow::{bail, Context, Result};
use bd3_gpu::{ContextOptions, GpuContext, GpuModel};
use bd3_model::data::{chunk_corpus, read_corpus};
use bd3_model::objective::Clip;
use bd3_model::tokenizer::TextTokenizer;
use std::path::PathBuf;
use std::sync::Arc;

/// More passes than this only narrows the standard error below any use (each pass is a full evaluation).
const MAX_PASSES: usize = 10_000;

/// Which documents are scored (the same split as `train`: every 20th document held out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// Every document
    All,
    /// The held-out documents `train` validates on
    Valid,
    /// The documents `train` trains on
    Train,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A model folder or an official checkpoint by name (OWNER/NAME, from the Hugging Face hub)
    #[arg(long, value_name = "DIR|OWNER/NAME")]
    model: String,
    /// A text file or a folder of them
    #[arg(long)]
    data: PathBuf,
    /// Sequences per model call
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Which documents are scored
    #[arg(long, value_enum, default_value_t = Split::All)]
    split: Split,
    /// Seed of the diffusion times
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The model kind, for a checkpoint without config.json whose tensors cannot tell (MDLM, SEDD)
    #[arg(long, value_enum)]
    kind: Option<crate::KindArg>,
    /// Independent passes (each draws its own t per block); more than one gives a standard error
    #[arg(long, default_value_t = 1)]
    passes: usize,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let EvalArgs {
        model,
        data,
        batch,
        split,
        seed,
        passes,
        kind,
    } = a;
    if batch == 0 || passes == 0 {
        bail!("--batch and --passes must be at least 1");
    }
    if passes > MAX_PASSES {
        bail!("--passes {passes} is more than {MAX_PASSES}");
    }
    let source = ModelSource::resolve(Some(&model))?;
    let (cfg, ckpt) = source.load(kind.map(Into::into))?;
    cfg.check_batch(batch, crate::nelbo::loss_shape(&cfg, 1).seq)
        .context("--batch")?;
    let tok = TextTokenizer::from_file(source.require_tokenizer()?)?;
    tok.check_fits(&cfg)?;
    let docs = read_corpus(&data)?;
    // The same document split as `train` (every 20th document held out).
    let chunks = match split {
        Split::All => chunk_corpus(&docs, &tok, tok.eos_id(), cfg.model_length, 0)?.train,
        Split::Valid => {
            chunk_corpus(&docs, &tok, tok.eos_id(), cfg.model_length, VALID_EVERY)?.valid
        }
        Split::Train => {
            chunk_corpus(&docs, &tok, tok.eos_id(), cfg.model_length, VALID_EVERY)?.train
        }
    };
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::default(),
    ))?);
    let mut model = pollster::block_on(GpuModel::load(ctx.clone(), cfg.clone(), &ckpt))?;
    drop(ckpt);
    // Each pass draws its own t per block; the first is the estimate `train` validates with.
    let total = chunks.len() * passes;
    let progress = Progress::new(total as u64, "chunks", true);
    let mut per_pass = Vec::with_capacity(passes);
    let mut count = 0;
    for pass in 0..passes {
        let (sum, n, _) = pollster::block_on(evaluate(
            &mut model,
            &chunks,
            batch,
            Clip::NELBO,
            (seed + pass as u64) ^ 0x5eed,
            false,
            |done, _| {
                let done = pass * chunks.len() + done;
                progress.update(
                    done as u64,
                    total as u64,
                    &format!("pass {} of {passes}", pass + 1),
                );
            },
        ))?;
        per_pass.push(sum / n as f64);
        count = n;
    }
    progress.finish();
    let nelbo = per_pass.iter().sum::<f64>() / passes as f64;
    print!(
        "nelbo {nelbo:.6} ppl {:.3} tokens {count} chunks {}",
        nelbo.exp(),
        chunks.len()
    );
    if passes > 1 {
        // Standard error of the mean over passes (the passes are independent draws of t).
        let var = per_pass.iter().map(|x| (x - nelbo).powi(2)).sum::<f64>() / (passes - 1) as f64;
        print!(
            " passes {passes} stderr {:.6}",
            (var / passes as f64).sqrt()
        );
    }
    println!();
    Ok(())
}
