//! `bd3-wgpu verify DIR…`: every fixture case in each folder (the `tests/fixtures/tiny-a` format,
//! made by the official PyTorch code in float64), one `name max_err tolerance ok|FAIL` line per check
//! and `N passed, M failed` last.

use anyhow::{bail, Result};
use bd3_gpu::{ContextOptions, GpuContext};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Fixture folders (golden/tiny-a format)
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Split weights and logits as if a binding held at most this many bytes (tests the
    /// large-tensor path on small fixtures)
    #[arg(long, value_name = "BYTES")]
    split_threshold: Option<u64>,
    /// Size work (split K, row chunks, columns per workgroup) for an adapter with this many compute
    /// units [default: 132 (an H200) for a GPU, the machine's threads for a CPU adapter]; on a
    /// software adapter `--units 132` checks the paths a GPU takes
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    units: Option<u32>,
}

/// Exit 0 when every check passed, 1 when one failed (errors before any check: 2, from `main`).
pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let opts = ContextOptions {
        split_threshold: a.split_threshold,
        compute_units: a.units,
        ..ContextOptions::default()
    };
    let ctx = Arc::new(pollster::block_on(GpuContext::new(opts))?);
    let mut stdout = std::io::stdout();
    let mut report = bd3_verify::Report::new(&mut stdout);
    report.note(&format!("adapter: {}", ctx.adapter_summary()));
    for dir in &a.dirs {
        if !dir.is_dir() {
            bail!("{}: not a fixture folder", dir.display());
        }
        // The case code indexes fixture tensors by the shapes the files declare; the loaders check
        // ranks and sizes, and a fixture malformed in a way they miss is still an error, not a panic.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pollster::block_on(bd3_verify::verify_dir(
                &ctx,
                &bd3_verify::DirFixture(dir.clone()),
                &mut report,
            ))
        }));
        std::panic::set_hook(default_hook);
        match checked {
            Ok(r) => r?,
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                bail!("{}: malformed fixture ({why})", dir.display());
            }
        }
    }
    let (passed, failed) = (report.passed, report.failed);
    if passed + failed == 0 {
        let dirs: Vec<String> = a.dirs.iter().map(|d| d.display().to_string()).collect();
        bail!("no checks ran in {}", dirs.join(", "));
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
