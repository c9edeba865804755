//! `--precision mixed` (tensor cores through cooperative matrices) on an adapter without them — the
//! software adapter the tests run on — is a one-line error and a non-zero exit, never a panic, for
//! `train` and `bench forward|train` (where the adapter has them, a mixed training step runs instead);
//! `info` reports the capability; and the plan of a mixed training step for an adapter described
//! with them (`--features coop`) runs its products on the cooperative kernel, while the f32 plan is
//! unchanged.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bd3-precision-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_one_line_error(what: &str, o: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: one line expected: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{what}: `{n}` not in: {stderr}");
    }
}

/// The capability as `info` reports it (`none` on the software adapter the tests run on).
fn cooperative_matrices() -> String {
    let o = bin().arg("info").output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("cooperative matrices: "))
        .unwrap_or_else(|| panic!("no capability line in: {stdout}"))
        .to_string()
}

#[test]
fn info_reports_the_cooperative_matrix_capability() {
    let c = cooperative_matrices();
    assert!(
        c == "none" || c.starts_with("16×16×16 f16→f32 (subgroups of "),
        "{c}"
    );
}

#[test]
fn mixed_precision_without_cooperative_matrices_is_a_one_line_error() {
    if cooperative_matrices() != "none" {
        // A GPU with tensor cores: mixed precision runs instead.
        let o = bin()
            .args(["bench", "train", "--size", "64,4,2,128,32", "--batch", "2"])
            .args(["--iters", "1", "--precision", "mixed"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    let dir = scratch("train");
    let data = dir.join("corpus.txt");
    let text: String = (0..200)
        .map(|i| format!("fortune number {i} says the sky is {} today\n%\n", i % 7))
        .collect();
    std::fs::write(&data, text).unwrap();
    let o = bin()
        .args(["train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.join("run"))
        .args([
            "--vocab-size",
            "300",
            "--size",
            "32,2,1",
            "--length",
            "32",
            "--batch",
            "2",
            "--steps",
            "1",
            "--precision",
            "mixed",
        ])
        .output()
        .unwrap();
    assert_one_line_error(
        "train --precision mixed",
        &o,
        &[
            "--precision mixed",
            "cooperative matrices",
            "--precision f32",
        ],
    );
    assert!(
        !dir.join("run").join("model.safetensors").exists(),
        "nothing is trained or saved"
    );
    for cmd in ["forward", "train"] {
        let o = bin()
            .args(["bench", cmd, "--size", "32,2,1,70,16", "--batch", "1"])
            .args(["--iters", "1", "--precision", "mixed"])
            .output()
            .unwrap();
        assert_one_line_error(
            &format!("bench {cmd} --precision mixed"),
            &o,
            &["mixed precision", "cooperative matrices"],
        );
    }
    // Planned for an adapter without them, too.
    let o = bin()
        .args(["bench", "train", "--size", "32,2,1,70,16", "--batch", "1"])
        .args(["--plan", "--precision", "mixed"])
        .output()
        .unwrap();
    assert_one_line_error(
        "bench train --plan --precision mixed",
        &o,
        &["cooperative matrices"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn planned_mixed_training_runs_the_products_on_the_cooperative_kernel() {
    let plan = |extra: &[&str]| -> String {
        let o = bin()
            .args(["bench", "train", "--size", "64,4,2,128,32", "--batch", "2"])
            .args(["--plan", "--features", "coop"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    // The dispatch lines: label, workgroups, threads, FLOPs, bytes (the kernel is not printed, so
    // the products are recognised by their 128 threads: 4 subgroups of 32).
    let gemm_flops = |text: &str, threads: &str| -> u64 {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[2] == threads && f[3].parse::<u64>().is_ok())
                    .then(|| f[3].parse::<u64>().unwrap())
            })
            .sum()
    };
    let (f32_plan, mixed_plan) = (plan(&[]), plan(&["--precision", "mixed"]));
    assert!(f32_plan.contains("plan: ") && mixed_plan.contains("plan: "));
    assert_eq!(
        gemm_flops(&f32_plan, "128"),
        0,
        "no 128-thread kernel in f32"
    );
    assert!(gemm_flops(&mixed_plan, "128") > 0, "{mixed_plan}");
    // Same total arithmetic: the products moved kernels, nothing was added or dropped.
    let total = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("plan: "))
            .and_then(|l| l.split(", ").nth(1).map(str::to_owned))
            .unwrap()
    };
    assert_eq!(total(&f32_plan), total(&mixed_plan));
}
