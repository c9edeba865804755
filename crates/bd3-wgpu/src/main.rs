//! `bd3-wgpu`: Block Diffusion language models (BD3-LM, Arriola et al., ICLR 2025) on wgpu.
//!
//! One subcommand per job (`bd3-wgpu --help` lists them, `bd3-wgpu COMMAND --help` documents every
//! option). Every failure is one line on stderr and exit code 2; a `verify` that ran but found a
//! mismatch exits 1.

mod bench;
mod checkpoint_io;
mod eval_cmd;
mod export_cmd;
mod gen_ppl_cmd;
mod model_source;
mod nelbo;
mod plot;
mod progress;
mod sample;
mod sample_out;
mod serve;
mod tokenizer_cmd;
mod train_cmd;
mod verify_cmd;

use bd3_gpu::{ContextOptions, GpuContext};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bd3-wgpu",
    version,
    about = "Block Diffusion language models (BD3-LM) on wgpu: sample, train, evaluate, serve the demo page",
    long_about = None,
    max_term_width = 110
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a model folder or an official checkpoint by name
    Sample(sample::SampleArgs),
    /// Train a model on a text corpus (from scratch, from a checkpoint, or resumed)
    Train(train_cmd::TrainArgs),
    /// NELBO and perplexity of a checkpoint on a text corpus
    Eval(eval_cmd::EvalArgs),
    /// Rewrite a model folder with F16 (or F32) weights
    Export(export_cmd::ExportArgs),
    /// Generative perplexity and entropy of samples (`sample --out`) under an AR checkpoint
    GenPpl(gen_ppl_cmd::GenPplArgs),
    /// Draw Gen PPL and entropy against NFE (scripts/quality-speed.sh's table) as an SVG
    Plot(plot::PlotArgs),
    /// Serve the demo page (and a model folder) on 127.0.0.1
    Serve(serve::ServeArgs),
    /// Compare against fixtures made by the official PyTorch code
    Verify(verify_cmd::VerifyArgs),
    /// Throughput benchmarks, or dispatch plans without a GPU (--plan)
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Make a tokenizer.json (a BPE for a corpus, or GPT-2's)
    #[command(subcommand)]
    Tokenizer(tokenizer_cmd::TokenizerCommand),
    /// Print the GPU adapter that would be used and its limits
    Info,
}

/// The command tree as parsed: the derived one, with the sampling defaults in its help and negative
/// numbers taken as values (so `--batch -1` is reported as an invalid batch, not an unknown flag).
fn cli_command() -> clap::Command {
    fn negatives(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        let mut cmd = cmd.allow_negative_numbers(true);
        for name in names {
            cmd = cmd.mut_subcommand(name, negatives);
        }
        cmd
    }
    let mut command = Cli::command();
    sample::document_defaults(&mut command);
    negatives(command)
}

/// A reader that closes the pipe early (`bd3-wgpu info | head -1`) ends the command quietly, as it
/// ends other Unix tools: Rust ignores SIGPIPE, so the next `println!` would panic on EPIPE instead.
/// Not for `serve`, where a client that hangs up must not end the server.
fn pipe_ends_output() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists, to restore the default action of
    // one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let command = cli_command();
    let matches = match command.try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    if !matches!(cli.command, Command::Serve(_)) {
        pipe_ends_output();
    }
    let result = match cli.command {
        Command::Sample(a) => sample::run(a).map(|_| ExitCode::SUCCESS),
        Command::Train(a) => {
            let given = matches
                .subcommand_matches("train")
                .expect("the train subcommand matched");
            train_cmd::run(a, given).map(|_| ExitCode::SUCCESS)
        }
        Command::Eval(a) => eval_cmd::run(a).map(|_| ExitCode::SUCCESS),
        Command::Export(a) => export_cmd::run(a).map(|_| ExitCode::SUCCESS),
        Command::GenPpl(a) => gen_ppl_cmd::run(&a)
            .map(|_| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Plot(a) => plot::run(&a).map(|_| ExitCode::SUCCESS).map_err(Into::into),
        Command::Serve(a) => serve::run(a).map(|_| ExitCode::SUCCESS),
        Command::Verify(a) => verify_cmd::run(a),
        Command::Bench(b) => bench::run(b).map(|_| ExitCode::SUCCESS),
        Command::Tokenizer(t) => tokenizer_cmd::run(t).map(|_| ExitCode::SUCCESS),
        Command::Info => info().map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// `--help` and `--version` print in full and succeed; a usage error becomes one line naming the
/// problem, with a pointer to the help (clap's own report spans several lines).
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    // The report up to its usage block, joined: "the following required arguments were not
    // provided: --model <DIR|OWNER/NAME>", "invalid value 'f8' for '--dtype <DTYPE>' …".
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let what = parts.join(" ");
    let what = what.trim_start_matches("error: ");
    eprintln!("error: {what} (see `bd3-wgpu --help`, or `bd3-wgpu COMMAND --help`)");
    ExitCode::from(2)
}

/// The error and its causes on one line, leaving out a cause whose text the line already holds
/// (library errors name their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.replace('\n', " ")
}

fn info() -> anyhow::Result<()> {
    let ctx = pollster::block_on(GpuContext::new(ContextOptions::default()))?;
    println!("adapter: {}", ctx.adapter_summary());
    println!(
        "max storage binding: {} MiB, max buffer: {} MiB, workgroup memory: {} KiB",
        ctx.limits.max_storage_buffer_binding_size >> 20,
        ctx.limits.max_buffer_size >> 20,
        ctx.limits.max_compute_workgroup_storage_size >> 10
    );
    println!("optional features in use: {:?}", ctx.features);
    let why = if ctx.info.device_type == wgpu::DeviceType::Cpu {
        "a software adapter: one per thread of this machine"
    } else {
        "wgpu does not report them; an H200's assumed"
    };
    println!(
        "compute units work is sized for: {} ({why})",
        ctx.compute_units
    );
    println!(
        "cooperative matrices: {}",
        bd3_gpu::CooperativeMatrix::describe(ctx.cooperative_matrix)
    );
    let checks = if ctx.shader_checks() {
        "on (BD3_SHADER_CHECKS is set)"
    } else {
        "off (kernels check their own bounds; BD3_SHADER_CHECKS=1 turns them on)"
    };
    println!("wgpu shader bounds checks: {checks}");
    Ok(())
}

/// The arithmetic of the products (`train`, `bench forward|train`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// f32 throughout: the reference
    F32,
    /// f16 operands on tensor cores with f32 sums, f32 master weights and AdamW state, dynamic
    /// loss scaling; needs cooperative matrices (`bd3-wgpu info`)
    Mixed,
}

impl From<PrecisionArg> for bd3_gpu::ops::matmul::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => bd3_gpu::ops::matmul::Precision::F32,
            PrecisionArg::Mixed => bd3_gpu::ops::matmul::Precision::Mixed,
        }
    }
}

/// Put `model` (and its `trainer`, if any) in `precision`: mixed sets the tensor-core products and
/// dynamic loss scaling, or fails in one line on an adapter without cooperative matrices.
pub fn apply_precision(
    model: &mut bd3_gpu::GpuModel,
    trainer: Option<&mut bd3_gpu::Trainer>,
    precision: PrecisionArg,
) -> bd3_model::Result<()> {
    pollster::block_on(model.set_precision(precision.into()))?;
    if let Some(t) = trainer {
        t.set_loss_scaling(
            (precision == PrecisionArg::Mixed).then(bd3_gpu::loss_scale::LossScaler::default),
        );
    }
    Ok(())
}

/// The model kinds as command-line values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    /// Block diffusion (the paper's model)
    Bd3lm,
    /// Masked diffusion (one block of the full length)
    Mdlm,
    /// Score-entropy discrete diffusion
    Sedd,
    /// Autoregressive
    Ar,
}

impl From<KindArg> for bd3_model::ModelKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Bd3lm => bd3_model::ModelKind::Bd3lm,
            KindArg::Mdlm => bd3_model::ModelKind::Mdlm,
            KindArg::Sedd => bd3_model::ModelKind::Sedd,
            KindArg::Ar => bd3_model::ModelKind::Ar,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every option of every command is documented, and clap's own consistency
    /// checks (ids, conflicts, defaults that parse) hold.
    #[test]
    fn every_command_and_option_has_help() {
        let cli = cli_command();
        cli.clone().debug_assert();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let here = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !path.is_empty() {
                missing.push(format!("{here}: no about text"));
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{here} --{}: no help text", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&cli, "", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
    }

    #[test]
    fn an_error_and_its_causes_make_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io)
            .context("model.safetensors: No such file")
            .context("loading the model");
        assert_eq!(
            one_line(&e),
            "loading the model: model.safetensors: No such file"
        );
    }
}
