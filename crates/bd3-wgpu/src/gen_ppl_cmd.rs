//! `bd3-wgpu gen-ppl --scorer DIR FILE`: the generative perplexity and unigram entropy of samples
//! (a `sample --out` file) under an autoregressive checkpoint, as the paper reports sample quality
//! (Arriola et al., ICLR 2025, arXiv 2503.09573, Suppl. C.5; official code kuleshov-group/bd3lms
//! `diffusion.py` `compute_generative_perplexity` → `metrics.py` `record_generative_perplexity`).
//!
//! What follows the official evaluation: per-sample NLL of every token after the first under the
//! scorer, long samples through a sliding window of the scorer's context with stride context/2,
//! EOS targets left out, Gen PPL = the mean over samples of exp(mean NLL) (the official scripts
//! score batches of one sample and average, `scripts/log_sample_stats.py`), entropy = the mean over
//! samples of each sample's unigram entropy in nats.
//!
//! Where it differs: the scorer is an AR checkpoint of this project (by default one trained on the
//! same corpus and tokenizer as the sampled model, `models/fortunes-ar`), not GPT-2 Large, so the
//! sampled ids are scored as they are, without the decode → re-encode round trip, which is the
//! official pipeline's only option; a sample file whose tokenizer is not the scorer's is refused
//! unless `--retokenize` asks for that round trip (the text re-encoded with the scorer's tokenizer,
//! BOS prepended since our text omits it where the official decoded text starts with
//! `<|endoftext|>`, and truncated to the sample's own token count as the official tokenizer call
//! truncates to the model length). Samples are not rejected or regenerated for low entropy here;
//! that is the sampler's `--entropy-check`.

use crate::sample_out::read_sample_file;
use bd3_gpu::{
    score_sequences, unigram_entropy, ContextOptions, GpuContext, GpuModel, ScoreOptions,
};
use bd3_model::tokenizer::TextTokenizer;
use bd3_model::{Error, ModelKind, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Windows per scorer forward unless `--batch` says otherwise.
pub const DEFAULT_BATCH: usize = 8;

/// The arguments of `gen-ppl`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenPplArgs {
    /// The AR checkpoint folder (config.json, model.safetensors, tokenizer.json)
    #[arg(long, value_name = "DIR")]
    pub scorer: PathBuf,
    /// A JSON-lines sample file written by `sample --out`
    #[arg(value_name = "FILE")]
    pub samples: PathBuf,
    /// Re-encode each sample's text with the scorer's tokenizer instead of refusing a sample file
    /// written with another tokenizer
    #[arg(long)]
    pub retokenize: bool,
    /// Windows per scorer forward
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
}

/// The statistics `gen-ppl` prints.
#[derive(Clone, Debug, PartialEq)]
pub struct GenPplReport {
    /// Samples in the file.
    pub samples: usize,
    /// Samples without a token to score (left out of the Gen PPL mean, not of the entropy mean).
    pub unscored: usize,
    /// Tokens scored over all samples.
    pub tokens: usize,
    /// Mean over scored samples of exp(mean NLL), and its standard error.
    pub gen_ppl: f64,
    pub gen_ppl_se: f64,
    /// exp(Σ NLL / Σ tokens) over all samples (the official token-pooled `gen_ppl.compute()`).
    pub pooled_ppl: f64,
    /// Mean over samples of the unigram entropy (nats), and its standard error.
    pub entropy: f64,
    pub entropy_se: f64,
    /// Mean NFE and mean model calls (cache commits included) recorded in the sample file.
    pub nfe: f64,
    pub calls: f64,
}

/// Mean and standard error of the mean (NaN for fewer than two values).
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (
        mean,
        if xs.len() < 2 {
            f64::NAN
        } else {
            (var / n).sqrt()
        },
    )
}

/// Score a sample file; everything `run` prints.
pub fn evaluate(args: &GenPplArgs) -> Result<GenPplReport> {
    if args.batch == 0 {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    let tok_path = args.scorer.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::File {
            path: args.scorer.to_path_buf(),
            message: "the scorer folder has no tokenizer.json".into(),
        });
    }
    let tok = TextTokenizer::from_file(&tok_path)?;
    let fingerprint = tok.fingerprint()?;
    let lines = read_sample_file(&args.samples)?;
    if !args.retokenize {
        if let Some((i, l)) = lines
            .iter()
            .enumerate()
            .find(|(_, l)| l.tokenizer != fingerprint)
        {
            let theirs = if l.tokenizer.is_empty() {
                "an unrecorded tokenizer".to_string()
            } else {
                format!("tokenizer {}", l.tokenizer)
            };
            return Err(Error::Invalid(format!(
                "{} (sample {}) was written with {theirs}, but the scorer {} uses tokenizer {fingerprint}: its ids would be read as other tokens; pass --retokenize to re-encode the text with the scorer's tokenizer",
                args.samples.display(),
                i + 1,
                args.scorer.display()
            )));
        }
    }
    let eos = tok.eos_id();
    let seqs: Vec<Vec<u32>> = if args.retokenize {
        lines
            .iter()
            .map(|l| {
                let mut ids = vec![eos];
                ids.extend(tok.encode(&l.text)?);
                if !l.tokens.is_empty() {
                    ids.truncate(l.tokens.len());
                }
                Ok(ids)
            })
            .collect::<Result<_>>()?
    } else {
        lines.iter().map(|l| l.tokens.clone()).collect()
    };

    let bd3_model::ModelDir {
        config: cfg,
        checkpoint: ckpt,
        ..
    } = bd3_model::load_model_dir(&args.scorer, None)?;
    if cfg.kind != ModelKind::Ar {
        return Err(Error::Invalid(format!(
            "{}: the scorer must be an autoregressive (ar) model, not {}",
            args.scorer.display(),
            cfg.kind.name()
        )));
    }
    tok.check_fits(&cfg)?;
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::default(),
    ))?);
    let mut model = pollster::block_on(GpuModel::load(ctx, cfg, &ckpt))?;
    drop(ckpt);
    let scores = pollster::block_on(score_sequences(
        &mut model,
        &seqs,
        &ScoreOptions {
            batch: args.batch,
            exclude: Some(eos),
        },
    ))?;

    let ppls: Vec<f64> = scores.iter().filter_map(|s| s.perplexity()).collect();
    if ppls.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no sample has a token to score (each needs a non-EOS token after its first)",
            args.samples.display()
        )));
    }
    let (gen_ppl, gen_ppl_se) = mean_se(&ppls);
    let entropies: Vec<f64> = seqs.iter().map(|s| unigram_entropy(s)).collect();
    let (entropy, entropy_se) = mean_se(&entropies);
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    let nll: f64 = scores.iter().map(|s| s.nll_sum).sum();
    Ok(GenPplReport {
        samples: lines.len(),
        unscored: scores.len() - ppls.len(),
        tokens,
        gen_ppl,
        gen_ppl_se,
        pooled_ppl: (nll / tokens as f64).exp(),
        entropy,
        entropy_se,
        nfe: lines.iter().map(|l| l.nfe as f64).sum::<f64>() / lines.len() as f64,
        calls: lines.iter().map(|l| l.calls as f64).sum::<f64>() / lines.len() as f64,
    })
}

/// `gen-ppl`: score, then print the standard errors and the pooled perplexity on one line and, as
/// the last line, `gen_ppl X  entropy Y  samples N  tokens T`.
pub fn run(args: &GenPplArgs) -> Result<()> {
    let r = evaluate(args)?;
    if r.unscored > 0 {
        eprintln!(
            "{} of {} samples had no token to score and are left out of the Gen PPL mean",
            r.unscored, r.samples
        );
    }
    println!(
        "gen_ppl_se {:.3}  entropy_se {:.4}  pooled_ppl {:.3}  nfe {:.1}  calls {:.1}",
        r.gen_ppl_se, r.entropy_se, r.pooled_ppl, r.nfe, r.calls
    );
    println!(
        "gen_ppl {:.3}  entropy {:.4}  samples {}  tokens {}",
        r.gen_ppl, r.entropy, r.samples, r.tokens
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample_out::write_sample_line;
    use bd3_model::tensor_file::TensorFile;
    use std::path::Path;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bd3-genppl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn repo(p: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(p)
    }

    /// A word-level tokenizer of the fixture AR model's 127 text tokens: `t0`..`t125` and
    /// `<|endoftext|>` = 126 (its BOS/EOS), words separated by spaces.
    fn fixture_tokenizer_json() -> String {
        let vocab: Vec<String> = (0..126)
            .map(|i| format!("\"t{i}\":{i}"))
            .chain(["\"<|endoftext|>\":126".to_string()])
            .collect();
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{{"id":126,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],"normalizer":null,"pre_tokenizer":{{"type":"WhitespaceSplit"}},"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<|endoftext|>"}}}}"#,
            vocab.join(",")
        )
    }

    fn write_samples(path: &Path, seqs: &[Vec<u32>], fingerprint: &str) {
        let mut buf = Vec::new();
        for s in seqs {
            let text: Vec<String> = s[1..].iter().map(|t| format!("t{t}")).collect();
            write_sample_line(&mut buf, s, &text.join(" "), 15, 16, fingerprint).unwrap();
        }
        std::fs::write(path, buf).unwrap();
    }

    #[test]
    fn a_wrong_tokenizer_pair_is_refused() {
        let dir = scratch("refuse");
        std::fs::copy(
            repo("models/fortunes-bd3lm/tokenizer.json"),
            dir.join("tokenizer.json"),
        )
        .unwrap();
        let samples = dir.join("s.jsonl");
        for fp in ["12345", ""] {
            write_samples(&samples, &[vec![4095, 1, 2, 3]], fp);
            let args = GenPplArgs {
                scorer: dir.clone(),
                samples: samples.clone(),
                retokenize: false,
                batch: DEFAULT_BATCH,
            };
            let e = evaluate(&args).unwrap_err().to_string();
            assert!(e.contains("--retokenize") && !e.contains('\n'), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The fixture AR model as a scorer, against per-sample perplexities computed here from the
    /// official code's float64 logits; re-tokenising text that encodes to the same ids changes nothing.
    #[test]
    fn gen_ppl_of_the_fixture_matches_the_reference_logits() {
        let fixture = repo("tests/fixtures/tiny-a/ar");
        let dir = scratch("fixture");
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("tokenizer.json"), fixture_tokenizer_json()).unwrap();
        let tok = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        assert_eq!((tok.vocab_size(), tok.eos_id()), (127, 126));

        let tf = TensorFile::open(&fixture.join("ar_case.safetensors")).unwrap();
        let x = tf.i64_rank("x", 2).unwrap();
        let logits = tf.f64_rank("logits_f64", 3).unwrap();
        let (l, v) = (x.shape[1], logits.shape[2]);
        let seqs: Vec<Vec<u32>> = x
            .data
            .chunks(l)
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect();
        // Reference: mean NLL per sample (mask logit −1e6, EOS targets left out), then the mean of exp.
        let mut ppls = Vec::new();
        let (mut nll_all, mut count_all) = (0.0, 0usize);
        for (s, seq) in seqs.iter().enumerate() {
            let (mut nll, mut count) = (0.0, 0usize);
            for j in 0..l - 1 {
                if seq[j + 1] == 126 {
                    continue;
                }
                let row = &logits.data[(s * (l - 1) + j) * v..][..v];
                let adj = |c: usize| if c == v - 1 { -1e6 } else { row[c] };
                let m = (0..v).map(adj).fold(f64::NEG_INFINITY, f64::max);
                nll += m + (0..v).map(|c| (adj(c) - m).exp()).sum::<f64>().ln()
                    - row[seq[j + 1] as usize];
                count += 1;
            }
            ppls.push((nll / count as f64).exp());
            nll_all += nll;
            count_all += count;
        }
        let want = ppls.iter().sum::<f64>() / ppls.len() as f64;

        let samples = dir.join("s.jsonl");
        write_samples(&samples, &seqs, &tok.fingerprint().unwrap());
        let mut args = GenPplArgs {
            scorer: dir.clone(),
            samples,
            retokenize: false,
            batch: 1,
        };
        let r = evaluate(&args).unwrap();
        assert_eq!((r.samples, r.unscored, r.tokens), (2, 0, count_all));
        assert!(
            (r.gen_ppl / want - 1.0).abs() < 1e-4,
            "gen_ppl {} vs reference {want}",
            r.gen_ppl
        );
        assert!((r.pooled_ppl / (nll_all / count_all as f64).exp() - 1.0).abs() < 1e-4);
        assert_eq!((r.nfe, r.calls), (15.0, 16.0));
        args.retokenize = true;
        let re = evaluate(&args).unwrap();
        assert!(
            (re.gen_ppl - r.gen_ppl).abs() < 1e-9
                && re.tokens == r.tokens
                && (re.entropy - r.entropy).abs() < 1e-12
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
