//! Issue #10 on the command line: bad arguments, hostile files, contradicting resumes, non-finite
//! values and refused overwrites each end in one error line and a non-zero exit — never a panic,
//! a hang, an abort on a huge allocation, or a silently wrong result.

use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
}

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-a"
    ))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bd3-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the tiny-a model files (no sub-folders, no case files unless asked).
fn model_copy(name: &str, with_cases: bool) -> PathBuf {
    let d = scratch(name);
    for e in std::fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        let f = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_file() && (with_cases || f == "config.json" || f == "model.safetensors") {
            std::fs::copy(&p, d.join(&f)).unwrap();
        }
    }
    d
}

/// A generated corpus: 400 short documents of varied words (no external files needed).
fn corpus() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch("corpus");
        let words = [
            "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from",
            "home", "today", "while", "it", "rained",
        ];
        let mut text = String::new();
        let mut x = 12345u64;
        for _ in 0..400 {
            for _ in 0..24 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(words[(x >> 33) as usize % words.len()]);
                text.push(' ');
            }
            text.push_str("\n%\n");
        }
        std::fs::write(d.join("corpus.txt"), text).unwrap();
        d
    })
}

/// A tiny BD3-LM training run into `out`.
fn train(out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--data"])
        .arg(corpus())
        .arg("--out")
        .arg(out)
        .args([
            "--vocab-size",
            "300",
            "--size",
            "32,2,1",
            "--length",
            "16",
            "--block-size",
            "4",
            "--batch",
            "2",
            "--warmup",
            "0",
            "--ema",
            "0.9",
            "--log-every",
            "1",
            "--val-every",
            "0",
            "--val-batches",
            "1",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The command failed with one `error:` line containing every needle, and did not panic.
fn assert_refused(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "must fail: {}", text(o));
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    for n in needles {
        assert!(errors[0].contains(n), "`{n}` not in: {err}");
    }
}

/// Run `c` with a deadline: a hang is a failure, not a stuck test.
fn output_within(mut c: Command, secs: u64) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            panic!("still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Rewrite a safetensors file's tensors through `edit` (name, dtype, shape, bytes), keeping metadata.
fn rewrite(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut t: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut t);
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, meta.metadata().clone()).unwrap(),
    )
    .unwrap();
}

#[test]
fn numbers_parse_as_their_type_and_huge_values_are_refused_before_allocating() {
    let out = scratch("args");
    let m = model_copy("args-model", false);
    let data = corpus().to_str().unwrap().to_string();
    let o = out.join("o");
    let o = o.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--batch", "2.7"],
            "invalid value '2.7' for '--batch <BATCH>'",
        ),
        (
            vec!["--batch", "1e30"],
            "invalid value '1e30' for '--batch <BATCH>'",
        ),
        (vec!["--batch", "-1"], "--batch"),
        (vec!["--steps", "1.5"], "--steps"),
        (
            vec!["--size", "100000,1000,1"],
            "more than the supported maximum",
        ),
        (
            vec!["--size", "32768,256,1024"],
            "parameters, more than the supported maximum",
        ),
        (vec!["--length", "1099511627776"], "`model_length`"),
        (
            vec!["--batch", "4611686018427387904"],
            "batch size 4611686018427387904 is too large",
        ),
        (
            vec!["--log-every", "0"],
            "--log-every and --save-every must be at least 1",
        ),
        (
            vec!["--save-every", "0"],
            "--log-every and --save-every must be at least 1",
        ),
        (vec!["--lr", "0"], "--lr must be a finite positive number"),
        (
            vec!["--lr", "-1e-3"],
            "--lr must be a finite positive number",
        ),
        (vec!["--lr", "NaN"], "--lr must be a finite positive number"),
        (vec!["--lr", "inf"], "--lr must be a finite positive number"),
        (vec!["--ema", "1"], "--ema"),
        (
            vec!["--grad-accum", "4611686018427387904"],
            "--grad-accum 4611686018427387904 is more than",
        ),
        (vec!["--time-limit", "inf"], "--time-limit"),
    ] {
        let t0 = Instant::now();
        let r = bin()
            .args(["train", "--data", &data, "--out", o])
            .args(&args)
            .output()
            .unwrap();
        assert_refused(&r, &[needle]);
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }
    assert!(
        !out.join("o").exists(),
        "nothing written for refused arguments"
    );
    let model = m.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["sample", "--model", model, "--batch", "4611686018427387904"],
            "batch size 4611686018427387904 is too large",
        ),
        (
            vec!["sample", "--model", model, "--batch", "2.7"],
            "invalid value '2.7' for '--batch <BATCH>'",
        ),
        (
            vec![
                "sample",
                "--model",
                model,
                "--length",
                "18446744073709551615",
            ],
            "--length",
        ),
        (
            vec![
                "eval",
                "--model",
                model,
                "--data",
                &data,
                "--passes",
                "18446744073709551615",
            ],
            "--passes",
        ),
        (
            vec![
                "eval",
                "--model",
                model,
                "--data",
                &data,
                "--batch",
                "4611686018427387904",
            ],
            "batch size 4611686018427387904 is too large",
        ),
        (
            vec!["bench", "forward", "--size", "tiny", "--batch", "2.5"],
            "--batch",
        ),
        (
            vec![
                "tokenizer",
                "train",
                "--data",
                &data,
                "--vocab-size",
                "18446744073709551615",
                "--out",
                o,
            ],
            "more than the supported maximum",
        ),
        (
            vec![
                "bench",
                "forward",
                "--size",
                "tiny",
                "--batch",
                "1,4611686018427387904",
            ],
            "batch size 4611686018427387904 is too large",
        ),
        (
            vec!["bench", "train", "--size", "100000,1000,1,50000,1024"],
            "more than the supported maximum",
        ),
        (
            vec![
                "bench",
                "sample",
                "--size",
                "tiny",
                "--batch",
                "4611686018427387904",
            ],
            "batch size 4611686018427387904 is too large",
        ),
    ] {
        assert_refused(&bin().args(&args).output().unwrap(), &[needle]);
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&m);
}

#[cfg(unix)]
#[test]
fn special_files_are_refused_and_symlinked_folders_read() {
    let d = scratch("special");
    let fifo = d.join("fifo.txt");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for sub in [
        vec![
            "train",
            "--vocab-size",
            "300",
            "--out",
            d.join("o").to_str().unwrap(),
        ],
        vec![
            "tokenizer",
            "train",
            "--vocab-size",
            "300",
            "--out",
            d.join("t.json").to_str().unwrap(),
        ],
    ] {
        let mut c = bin();
        c.args(&sub).arg("--data").arg(&fifo);
        assert_refused(
            &output_within(c, 60),
            &["fifo.txt", "not a regular file or folder"],
        );
        let mut c = bin();
        c.args(&sub).args(["--data", "/dev/zero"]);
        assert_refused(
            &output_within(c, 60),
            &["/dev/zero", "not a regular file or folder"],
        );
    }
    // A corpus folder reached through a symlink is read like the folder itself.
    std::os::unix::fs::symlink(corpus(), d.join("link")).unwrap();
    let t = bin()
        .args(["tokenizer", "train", "--vocab-size", "300", "--data"])
        .arg(d.join("link"))
        .arg("--out")
        .arg(d.join("t.json"))
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", text(&t));
    assert!(
        String::from_utf8_lossy(&t.stdout).contains("from 400 documents"),
        "{}",
        text(&t)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn non_finite_weights_are_refused_by_sample_and_export() {
    for (tensor, value) in [
        ("backbone.blocks.0.norm1.weight", f32::NAN),
        ("backbone.vocab_embed.embedding", f32::INFINITY),
        ("backbone.output_layer.linear.bias", f32::NEG_INFINITY),
    ] {
        let m = model_copy("nan", false);
        rewrite(&m.join("model.safetensors"), |t| {
            let e = t.iter_mut().find(|e| e.0 == tensor).unwrap();
            assert_eq!(e.1, safetensors::Dtype::F32);
            e.3[4..8].copy_from_slice(&value.to_le_bytes());
        });
        let s = bin()
            .args(["sample", "--model"])
            .arg(&m)
            .args(["--length", "8"])
            .output()
            .unwrap();
        assert_refused(&s, &[tensor, "non-finite"]);
        let out = m.join("exported");
        let e = bin()
            .args(["export", "--model"])
            .arg(&m)
            .arg("--out")
            .arg(&out)
            .args(["--dtype", "f32"])
            .output()
            .unwrap();
        assert_refused(&e, &[tensor, "non-finite"]);
        assert!(!out.join("model.safetensors").exists());
        let _ = std::fs::remove_dir_all(&m);
    }
}

#[test]
fn verify_refuses_empty_and_malformed_fixture_folders() {
    let run = |d: &Path| bin().arg("verify").arg(d).output().unwrap();
    let empty = scratch("verify-empty");
    assert_refused(&run(&empty), &["no fixture cases"]);
    let config_only = model_copy("verify-config", false);
    assert_refused(
        &run(&config_only),
        &["no fixture cases found beside config.json"],
    );
    let no_config = model_copy("verify-noconfig", true);
    std::fs::remove_file(no_config.join("config.json")).unwrap();
    assert_refused(&run(&no_config), &["config.json", "missing"]);
    // A case tensor with the wrong rank: named, not an index panic.
    let bad = model_copy("verify-rank", true);
    std::fs::remove_file(bad.join("mask_cases.safetensors")).unwrap();
    rewrite(&bad.join("train_case.safetensors"), |t| {
        let e = t.iter_mut().find(|e| e.0 == "x0").unwrap();
        e.2 = vec![e.2.iter().product()];
    });
    assert_refused(&run(&bad), &["train_case.safetensors", "x0", "shape [32]"]);
    // An index stored in the fixture that points outside its tensors.
    let index = model_copy("verify-index", false);
    std::fs::copy(
        fixture().join("sample_case.safetensors"),
        index.join("sample_case.safetensors"),
    )
    .unwrap();
    rewrite(&index.join("sample_case.safetensors"), |t| {
        let e = t.iter_mut().find(|e| e.0 == "block_index").unwrap();
        e.3 = 99i64.to_le_bytes()[..e.3.len()].to_vec();
    });
    assert_refused(&run(&index), &["block_index 99", "malformed fixture"]);
    for d in [empty, config_only, no_config, bad, index] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn steps_zero_writes_the_initial_checkpoint_and_overwrites_need_consent() {
    let d = scratch("steps0");
    let out = d.join("run");
    let o = train(&out, &["--steps", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_state.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let s = bin()
        .args(["sample", "--model"])
        .arg(&out)
        .args(["--length", "8"])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", text(&s));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();

    // Training into an existing checkpoint without --resume, or from a folder into itself: refused.
    assert_refused(
        &train(&out, &["--steps", "1"]),
        &["already holds a checkpoint", "--overwrite"],
    );
    assert_refused(
        &train(&out, &["--steps", "1", "--init", out.to_str().unwrap()]),
        &["--init and --out are the same folder"],
    );
    assert_refused(
        &bin()
            .args(["train", "--resume", "--init"])
            .arg(&out)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap(),
        &["'--resume' cannot be used with '--init"],
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before,
        "refusals leave the checkpoint alone"
    );
    // With consent it is replaced.
    let o = train(&out, &["--steps", "1", "--overwrite", "--seed", "7"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn resume_checks_the_state_the_flags_and_the_tokenizer() {
    let d = scratch("resume");
    let out = d.join("run");
    let o = train(&out, &["--steps", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let resume = |extra: &[&str]| {
        bin()
            .args(["train", "--resume", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };

    // Flags that contradict the saved run are named; repeating a saved value is fine.
    for (args, flag) in [
        (vec!["--lr", "0.1"], "--lr"),
        (vec!["--size", "64,4,2"], "--size"),
        (vec!["--kind", "mdlm"], "--kind"),
        (vec!["--block-size", "8"], "--block-size"),
        (vec!["--length", "32"], "--length"),
        (vec!["--batch", "3"], "--batch"),
        (vec!["--data", "/tmp"], "--data"),
        (vec!["--clip-max", "0.5"], "--clip-max"),
        (vec!["--seed", "2"], "--seed"),
    ] {
        assert_refused(
            &resume(&[&args[..], &["--steps", "2"]].concat()),
            &[flag, "contradicts the run saved"],
        );
    }
    let same = resume(&[
        "--steps",
        "2",
        "--batch",
        "2",
        "--clip-max",
        "1",
        "--data",
        corpus().to_str().unwrap(),
    ]);
    assert!(same.status.success(), "{}", text(&same));

    // Stale temporaries of a killed save are cleaned up by the next one.
    let stale = out.join(".train_state.safetensors.tmp-4294967295-0123456789abcdef");
    std::fs::write(&stale, b"partial").unwrap();
    let r = resume(&["--steps", "3"]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(!stale.exists(), "stale temporary left behind");

    // A different tokenizer (other vocabulary, then same size but other merges) is named as such.
    let state = out.join("train_state.safetensors");
    let keep_state = std::fs::read(&state).unwrap();
    let keep_tok = std::fs::read(out.join("tokenizer.json")).unwrap();
    let t = bin()
        .args(["tokenizer", "train", "--data"])
        .arg(corpus())
        .args(["--vocab-size", "310", "--out"])
        .arg(d.join("other.json"))
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", text(&t));
    std::fs::copy(d.join("other.json"), out.join("tokenizer.json")).unwrap();
    assert_refused(
        &resume(&["--steps", "4"]),
        &["tokenizer does not match the checkpoint"],
    );
    let mut other: serde_json::Value = serde_json::from_slice(&keep_tok).unwrap();
    other["model"]["merges"].as_array_mut().unwrap().swap(0, 1);
    std::fs::write(
        out.join("tokenizer.json"),
        serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    assert_refused(
        &resume(&["--steps", "4"]),
        &["tokenizer does not match the checkpoint"],
    );
    std::fs::write(out.join("tokenizer.json"), &keep_tok).unwrap();

    // A damaged training state: clear errors naming the tensor, never an index panic or fresh values.
    type Edit = Box<dyn Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)>;
    let cases: Vec<(Edit, &[&str])> = vec![
        (
            Box::new(|t| {
                let e = t
                    .iter_mut()
                    .find(|e| e.0 == "adam_m.blocks.0.norm1.weight")
                    .unwrap();
                e.2 = vec![4];
                e.3.truncate(16);
            }),
            &["adam_m.blocks.0.norm1.weight", "4 values, expected 32"],
        ),
        (
            Box::new(|t| t.retain(|e| e.0 != "weights.output_layer.linear.bias")),
            &["weights.output_layer.linear.bias", "missing"],
        ),
        (
            Box::new(|t| t.retain(|e| !e.0.starts_with("ema."))),
            &["no `ema` tensors"],
        ),
        (
            Box::new(|t| {
                let e = t
                    .iter_mut()
                    .find(|e| e.0 == "adam_v.vocab_embed.embedding")
                    .unwrap();
                e.1 = safetensors::Dtype::I32;
            }),
            &["adam_v.vocab_embed.embedding", "expected F32"],
        ),
        (
            Box::new(|t| {
                let e = t
                    .iter_mut()
                    .find(|e| e.0 == "weights.blocks.0.mlp.0.bias")
                    .unwrap();
                e.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            &["weights.blocks.0.mlp.0.bias", "non-finite"],
        ),
        (
            Box::new(|t| {
                let e = t[0].clone();
                t.push((format!("{}x", e.0), e.1, e.2, e.3));
            }),
            &["unexpected tensor"],
        ),
    ];
    for (edit, needles) in cases {
        std::fs::write(&state, &keep_state).unwrap();
        rewrite(&state, |t| edit(t));
        assert_refused(&resume(&["--steps", "4"]), needles);
    }
    std::fs::write(&state, &keep_state[..keep_state.len() - 10]).unwrap();
    assert_refused(
        &resume(&["--steps", "4"]),
        &["train_state.safetensors", "truncated"],
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let d = scratch("nonfinite");
    let out = d.join("run");
    // A learning rate of 1e30 turns the weights into ~1e30 after one step: the next forward overflows.
    let o = train(
        &out,
        &["--steps", "20", "--save-every", "1", "--lr", "1e30"],
    );
    assert_refused(&o, &["(not finite); training stopped", "is kept"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let step: u64 = err
        .split("step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!((2..20).contains(&step), "{err}");
    // The kept checkpoint is that of the step before, and it still loads strictly.
    let bytes = std::fs::read(out.join("train_state.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap()["step"],
        (step - 1).to_string()
    );
    assert!(
        err.contains(&format!("the checkpoint of step {} in", step - 1)),
        "{err}"
    );
    let s = bin()
        .args(["sample", "--model"])
        .arg(&out)
        .args(["--length", "8"])
        .output()
        .unwrap();
    assert!(
        s.status.success() || String::from_utf8_lossy(&s.stderr).contains("non-finite"),
        "{}",
        text(&s)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn weights_that_overflow_the_forward_stop_at_the_first_loss() {
    let d = scratch("overflow");
    let (init, out) = (d.join("init"), d.join("run"));
    let o = train(&init, &["--steps", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    // Finite weights (so they load) whose forward overflows f32: the first loss is not finite.
    rewrite(&init.join("model.safetensors"), |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "backbone.vocab_embed.embedding")
            .unwrap();
        for (i, c) in e.3.chunks_exact_mut(4).enumerate() {
            c.copy_from_slice(&(if i % 2 == 0 { 3e38f32 } else { -3e38 }).to_le_bytes());
        }
    });
    let o = bin()
        .args(["train", "--data"])
        .arg(corpus())
        .arg("--init")
        .arg(&init)
        .arg("--out")
        .arg(&out)
        .args([
            "--batch",
            "2",
            "--val-every",
            "0",
            "--steps",
            "3",
            "--save-every",
            "1",
        ])
        .output()
        .unwrap();
    assert_refused(
        &o,
        &[
            "step 1: the training loss is",
            "not finite",
            "no checkpoint was saved",
        ],
    );
    assert!(
        !out.join("model.safetensors").exists() && !out.join("train_state.safetensors").exists()
    );
    let _ = std::fs::remove_dir_all(&d);
}
