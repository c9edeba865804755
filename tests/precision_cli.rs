//! `--precision mixed` (tensor cores through cooperative matrices) on an adapter without them — the
//! software adapter the tests run on — is a one-line error and a non-zero exit, never a panic, for
//! `train` and `bench forward|train` (where the adapter has them, a mixed training step runs instead);
//! `info` reports the capability; and the plan of a mixed training step for an adapter described
//! with them (`--features coop`) runs its products on the cooperative kernel, while the f32 plan is
//! unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// bd3_gpu::ops::matmul::EMULATION_ENV: mixed precision through the emulated twin (tests only).
const EMULATION_ENV: &str = "BD3_EMULATE_TENSOR_CORES";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bd3-precision-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small fortune-style corpus in `dir` (documents separated by `%` lines).
fn corpus(dir: &Path) -> PathBuf {
    let words = [
        "the", "sky", "is", "green", "today", "and", "every", "cat", "knows", "why", "a", "fool",
        "writes", "poems", "at", "night", "when", "nobody", "reads", "them",
    ];
    let text: String = (0..400)
        .map(|i: usize| {
            let doc: Vec<&str> = (0..12)
                .map(|j| words[(i * 7 + j * j * 3 + j) % words.len()])
                .collect();
            format!("{}.\n%\n", doc.join(" "))
        })
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
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
    if cooperative_matrices() != "none" || std::env::var_os(EMULATION_ENV).is_some() {
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
    let data = corpus(&dir);
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
        &["mixed precision", "cooperative matrices", "--precision f32"],
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

#[test]
fn mixed_training_through_the_emulated_twin_validates_like_f32() {
    // `train --precision mixed` end to end (tensor-core products, loss scaling, checkpoints) with the
    // emulated twin standing in for the tensor cores, against f32 from the same seed: the final
    // validation NELBO within 1 %, and the checkpoint in the same format.
    let dir = scratch("emulated");
    let data = corpus(&dir);
    let run = |precision: &str| -> (f64, Output) {
        let out = dir.join(precision);
        let o = bin()
            .env(EMULATION_ENV, "1")
            .args(["train", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--vocab-size", "300", "--size", "32,2,2", "--length", "32"])
            .args(["--block-size", "4", "--batch", "4", "--steps", "30"])
            .args([
                "--warmup",
                "3",
                "--lr",
                "3e-3",
                "--ema",
                "0.9",
                "--val-every",
                "30",
            ])
            .args(["--log-every", "10", "--precision", precision])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{precision}: {stderr}");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let nelbo = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("val step 30 nelbo "))
            .map(|r| r.split_whitespace().next().unwrap().parse::<f64>().unwrap())
            .next_back()
            .unwrap_or_else(|| panic!("{precision}: no validation at step 30: {stdout}{stderr}"));
        (nelbo, o)
    };
    let ((f32_nelbo, _), (mixed_nelbo, mixed)) = (run("f32"), run("mixed"));
    eprintln!("validation NELBO after 30 steps: f32 {f32_nelbo}, mixed (emulated) {mixed_nelbo}");
    assert!(
        (mixed_nelbo / f32_nelbo - 1.0).abs() < 0.01,
        "validation NELBO: f32 {f32_nelbo}, mixed {mixed_nelbo}"
    );
    assert_ne!(
        f32_nelbo, mixed_nelbo,
        "the mixed run must not be the f32 run"
    );
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(
        !stderr.contains("skipped"),
        "no overflow expected: {stderr}"
    );
    // The same files, and the same tensors in them.
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_state.safetensors",
    ] {
        let (a, b) = (dir.join("f32").join(f), dir.join("mixed").join(f));
        assert!(a.is_file() && b.is_file(), "{f}");
        if f == "config.json" {
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        }
    }
    let header = |p: PathBuf| -> Vec<(String, Vec<usize>)> {
        let bytes = std::fs::read(p).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut v: Vec<(String, Vec<usize>)> = meta
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape.clone()))
            .collect();
        v.sort();
        v
    };
    for f in ["model.safetensors", "train_state.safetensors"] {
        assert_eq!(
            header(dir.join("f32").join(f)),
            header(dir.join("mixed").join(f)),
            "{f}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
