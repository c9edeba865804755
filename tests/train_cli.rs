//! `bd3-wgpu train` and `eval` on a real corpus (Debian's fortunes-min, installed by scripts/test.sh):
//! the validation loss falls, a resumed run repeats the uninterrupted one, checkpoints load strictly,
//! eval agrees with train's validation, a SIGKILL never leaves a broken checkpoint, bad data is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The three files of Debian's fortunes-min (the full `fortunes` package adds more to the same folder,
/// so the tests copy exactly these into a folder of their own).
const CORPUS_FILES: [&str; 3] = [
    "/usr/share/games/fortunes/fortunes",
    "/usr/share/games/fortunes/literature",
    "/usr/share/games/fortunes/riddles",
];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bd3-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn corpus() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bd3-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in CORPUS_FILES {
            assert!(
                Path::new(f).is_file(),
                "{f} missing: scripts/test.sh installs Debian's fortunes-min"
            );
            std::fs::copy(f, dir.join(Path::new(f).file_name().unwrap())).unwrap();
        }
        dir.display().to_string()
    })
}

/// A tiny BD3-LM run: 2 blocks of width 32, L = 32, L' = 4.
fn train(out: &Path, extra: &[&str]) -> Output {
    let mut c = bin();
    c.args(["train", "--data", corpus(), "--out"])
        .arg(out)
        .args([
            "--vocab-size",
            "400",
            "--size",
            "32,2,2",
            "--length",
            "32",
            "--block-size",
            "4",
            "--batch",
            "4",
            "--warmup",
            "3",
            "--lr",
            "3e-3",
            "--ema",
            "0.9",
            "--log-every",
            "1",
        ]);
    c.args(extra).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// (step, value) of lines "step N loss X …" or "val step N nelbo X …".
fn series(o: &Output, prefix: &str) -> Vec<(u64, f64)> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].parse().unwrap(), w[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn validation_loss_falls_and_eval_agrees_with_it() {
    let out = scratch("falls");
    let o = train(
        &out,
        &["--steps", "40", "--val-every", "40", "--save-every", "40"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let val = series(&o, "val step ");
    assert_eq!(val.len(), 2, "{}", text(&o));
    let (first, last) = (val[0].1, val[1].1);
    assert!(
        last < first - 0.3,
        "validation NELBO {first} → {last} did not fall clearly"
    );

    // The folder loads strictly (config.json + model.safetensors + tokenizer.json) and samples text.
    let s = bin()
        .args(["sample", "--model"])
        .arg(&out)
        .args(["--length", "32", "--prompt", "The"])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", text(&s));
    // eval on the same held-out split reproduces the last validation NELBO.
    let e = bin()
        .args(["eval", "--model"])
        .arg(&out)
        .args(["--data", corpus(), "--split", "valid", "--batch", "4"])
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", text(&e));
    let line = String::from_utf8_lossy(&e.stdout).to_string();
    let nelbo: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((nelbo - last).abs() < 1e-4, "eval {nelbo} vs train {last}");
    // More passes: the first is that same estimate, the others draw new t; the mean comes with its
    // standard error, which is positive because the draws differ.
    let e = bin()
        .args(["eval", "--model"])
        .arg(&out)
        .args([
            "--data",
            corpus(),
            "--split",
            "valid",
            "--batch",
            "4",
            "--passes",
            "3",
        ])
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", text(&e));
    let w: Vec<String> = String::from_utf8_lossy(&e.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        (w[8].as_str(), w[9].as_str(), w[10].as_str()),
        ("passes", "3", "stderr"),
        "{w:?}"
    );
    let (mean, stderr): (f64, f64) = (w[1].parse().unwrap(), w[11].parse().unwrap());
    assert!(
        stderr > 0.0 && (mean - last).abs() < 5.0 * stderr + 0.5,
        "{w:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resuming_gives_the_losses_of_an_uninterrupted_run() {
    let (a, b) = (scratch("whole"), scratch("split"));
    let args = ["--val-every", "0", "--save-every", "3"];
    let whole = train(&a, &[&args[..], &["--steps", "12"]].concat());
    assert!(whole.status.success(), "{}", text(&whole));
    let first = train(&b, &[&args[..], &["--steps", "4"]].concat());
    assert!(first.status.success(), "{}", text(&first));
    let rest = bin()
        .args(["train", "--resume", "--out"])
        .arg(&b)
        .args(["--steps", "12"])
        .output()
        .unwrap();
    assert!(rest.status.success(), "{}", text(&rest));
    let mut split = series(&first, "step ");
    split.extend(series(&rest, "step "));
    assert_eq!(series(&whole, "step "), split);

    // Killed with SIGKILL mid-run (checkpoints every step), then resumed: the same losses again.
    let c = scratch("sigkill");
    let mut child = bin();
    child
        .args(["train", "--data", corpus(), "--out"])
        .arg(&c)
        .args([
            "--vocab-size",
            "400",
            "--size",
            "32,2,2",
            "--length",
            "32",
            "--block-size",
            "4",
            "--batch",
            "4",
            "--warmup",
            "3",
            "--lr",
            "3e-3",
            "--ema",
            "0.9",
            "--log-every",
            "1",
            "--val-every",
            "0",
            "--save-every",
            "1",
            "--steps",
            "1000",
        ]);
    let mut child = child
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = c.join("train_state.safetensors");
    let t0 = std::time::Instant::now();
    while !state.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = bin()
        .args(["train", "--resume", "--out"])
        .arg(&c)
        .args(["--steps", "12"])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    let from: u64 = String::from_utf8_lossy(&resumed.stderr)
        .split("resuming at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let tail: Vec<(u64, f64)> = series(&whole, "step ")
        .into_iter()
        .filter(|(s, _)| *s > from)
        .collect();
    assert!(
        !tail.is_empty(),
        "the killed run got to step {from}, past the comparison"
    );
    assert_eq!(series(&resumed, "step "), tail, "resumed at step {from}");
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_killed_run_leaves_a_loadable_checkpoint() {
    let out = scratch("killed");
    let o = train(
        &out,
        &["--steps", "2", "--val-every", "0", "--save-every", "1"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Kill runs that save every step at different moments; whatever was on disk must still load.
    for delay_ms in [150u64, 400, 700, 1100] {
        let mut c = bin();
        c.args(["train", "--resume", "--out"])
            .arg(&out)
            .args(["--steps", "1000"]);
        let mut child = c
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let s = bin()
            .args(["sample", "--model"])
            .arg(&out)
            .args(["--length", "8"])
            .output()
            .unwrap();
        assert!(
            s.status.success(),
            "after a kill at {delay_ms} ms: {}",
            text(&s)
        );
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "train_state.safetensors",
        ] {
            assert!(
                leftovers.iter().any(|x| x == f),
                "{f} missing after a kill: {leftovers:?}"
            );
        }
    }
    // And the training state still resumes.
    let r = bin()
        .args(["train", "--resume", "--out"])
        .arg(&out)
        .args(["--steps", "3"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_data_is_refused_in_one_line() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let binary = dir.join("binary.txt");
    std::fs::write(&binary, [b'o', b'k', 0xff, 0xfe, b'\n']).unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "just a few words").unwrap();
    let tiny_tok = dir.join("tok.json");
    let t = bin()
        .args([
            "tokenizer",
            "train",
            "--data",
            corpus(),
            "--vocab-size",
            "300",
            "--out",
        ])
        .arg(&tiny_tok)
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", text(&t));
    let out = dir.join("out");
    for (data, extra, needle) in [
        (empty.to_str().unwrap(), vec![], "the corpus has no text"),
        (binary.to_str().unwrap(), vec![], "not UTF-8 text"),
        (
            short.to_str().unwrap(),
            vec!["--tokenizer", tiny_tok.to_str().unwrap()],
            "fewer than one chunk",
        ),
        (
            corpus(),
            vec![
                "--init",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-a"),
                "--tokenizer",
                tiny_tok.to_str().unwrap(),
            ],
            "the tokenizer has 300 tokens, but the model expects 127",
        ),
    ] {
        let o = bin()
            .args(["train", "--data", data, "--out"])
            .arg(&out)
            .args(["--length", "32"])
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{data}: should fail");
        assert!(err.contains(needle), "`{needle}` not in {err}");
        assert_eq!(
            err.trim_end()
                .lines()
                .filter(|l| l.starts_with("error"))
                .count(),
            1,
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_time_limit_ends_the_run_with_validation_and_a_checkpoint() {
    let out = scratch("time-limit");
    let o = train(
        &out,
        &[
            "--steps",
            "100000",
            "--val-every",
            "100000",
            "--time-limit",
            "0.01",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The limit is spent by the first step: the run stops there, validates and saves.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("stopped at step 1 (time limit)"),
        "{}",
        text(&o)
    );
    assert_eq!(
        series(&o, "val step").last().map(|v| v.0),
        Some(1),
        "{}",
        text(&o)
    );
    let s = bin()
        .args(["sample", "--model"])
        .arg(&out)
        .args(["--length", "8"])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", text(&s));
    for bad in ["0", "-3", "soon"] {
        let o = train(&out, &["--time-limit", bad]);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--time-limit"),
            "{bad}: {}",
            text(&o)
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// One plain document (the page's pasted text): no document is held out, so a validating run is
/// refused in words, and `--val-every 0` trains on it without any validation (as the page runs it).
#[test]
fn a_corpus_without_a_validation_chunk_trains_only_without_validation() {
    let dir = scratch("one-doc");
    std::fs::create_dir_all(&dir).unwrap();
    let plain: String = std::fs::read_to_string(CORPUS_FILES[2])
        .unwrap()
        .lines()
        .filter(|l| *l != "%")
        .collect::<Vec<_>>()
        .join("\n");
    let data = dir.join("text.txt");
    std::fs::write(&data, plain).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut c = bin();
        c.args(["train", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(dir.join(out));
        c.args([
            "--vocab-size",
            "300",
            "--size",
            "32,2,2",
            "--length",
            "32",
            "--batch",
            "2",
            "--steps",
            "2",
            "--log-every",
            "1",
        ])
        .args(extra);
        c.output().unwrap()
    };
    let o = run("validating", &[]);
    assert!(
        !o.status.success()
            && text(&o).contains("too small to hold out a validation chunk of 32 tokens"),
        "{}",
        text(&o)
    );
    let metrics = dir.join("metrics.jsonl");
    let o = run(
        "plain",
        &["--val-every", "0", "--metrics", metrics.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let steps: Vec<&str> = lines.lines().filter(|l| l.contains("\"loss\"")).collect();
    assert_eq!(steps.len(), 2, "{lines}");
    assert!(!lines.contains("val_nelbo"), "{lines}");
    assert!(dir.join("plain/model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
