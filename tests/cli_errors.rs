//! Bad input gets a clear one-line error and a non-zero exit code, never a panic.

use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-a"
    ))
}

/// A fresh copy of the tiny-a files (without sub-folders) in a temporary folder.
fn scratch_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bd3-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Rewrite model.safetensors through `edit`, which gets (name, dtype, shape, bytes) tuples.
fn rewrite_weights(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

fn run_verify(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .arg("verify")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn assert_one_line_error(dir: &Path, needles: &[&str]) {
    let (code, stderr) = run_verify(dir);
    assert_ne!(code, 0, "must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn renamed_tensor_is_named() {
    let dir = scratch_copy("renamed");
    rewrite_weights(&dir, |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "backbone.blocks.1.norm2.weight")
            .unwrap();
        e.0 = "backbone.blocks.1.norm_2.weight".into();
    });
    assert_one_line_error(
        &dir,
        &[
            "model.safetensors",
            "backbone.blocks.1.norm_2.weight",
            "unexpected",
        ],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch_copy("missing");
    rewrite_weights(&dir, |t| {
        t.retain(|e| e.0 != "backbone.output_layer.linear.bias")
    });
    assert_one_line_error(&dir, &["backbone.output_layer.linear.bias", "missing"]);
}

#[test]
fn wrong_shape_is_named() {
    let dir = scratch_copy("shape");
    rewrite_weights(&dir, |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "backbone.blocks.0.attn_qkv.weight")
            .unwrap();
        e.2 = vec![64, 192];
    });
    assert_one_line_error(
        &dir,
        &[
            "backbone.blocks.0.attn_qkv.weight",
            "shape [64, 192], expected [192, 64]",
        ],
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = scratch_copy("dtype");
    rewrite_weights(&dir, |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "backbone.blocks.0.norm1.weight")
            .unwrap();
        e.1 = safetensors::Dtype::I32;
    });
    assert_one_line_error(
        &dir,
        &["backbone.blocks.0.norm1.weight", "unsupported dtype"],
    );
}

#[test]
fn truncated_checkpoint_is_reported() {
    let dir = scratch_copy("truncated");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &dir,
        &["model.safetensors", "not a readable safetensors file"],
    );
}

#[test]
fn malformed_and_unknown_configs_are_reported() {
    let dir = scratch_copy("badjson");
    std::fs::write(
        dir.join("config.json"),
        "{\"model_type\": \"bd3lm\", \"vocab_size\": ",
    )
    .unwrap();
    assert_one_line_error(&dir, &["config.json", "not valid JSON"]);
    let dir = scratch_copy("unknown");
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "gpt2", "vocab_size": 128}"#,
    )
    .unwrap();
    assert_one_line_error(&dir, &["config.json", "unknown `model_type` \"gpt2\""]);
}

#[test]
fn missing_folder_and_unknown_command() {
    assert_one_line_error(Path::new("/nonexistent/bd3"), &["/nonexistent/bd3"]);
    let out = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand 'frobnicate'") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn export_to_f16_keeps_the_weights_within_half_precision() {
    let src = scratch_copy("export-src");
    let out = std::env::temp_dir().join(format!("bd3-cli-{}-export-out", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
            .arg("export")
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(src.join("config.json")).unwrap(),
        std::fs::read(out.join("config.json")).unwrap()
    );
    let (a, b) = (
        std::fs::read(src.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("model.safetensors")).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let mut halves = 0;
    for (name, va) in a.tensors() {
        let vb = b
            .tensor(&name)
            .unwrap_or_else(|_| panic!("{name} missing after export"));
        assert_eq!(va.shape(), vb.shape(), "{name}");
        let want = bd3_model::checkpoint::to_f32(va.dtype(), va.data());
        let got = bd3_model::checkpoint::to_f32(vb.dtype(), vb.data());
        if va.shape().len() >= 2 {
            assert_eq!(vb.dtype(), safetensors::Dtype::F16, "{name}");
            halves += 1;
        } else {
            assert_eq!(vb.dtype(), va.dtype(), "{name}: vectors keep their dtype");
        }
        for (x, y) in want.iter().zip(&got) {
            // Round to nearest: within half a unit in the last place of an 11-bit significand.
            assert!(
                (x - y).abs() <= x.abs() * 2f32.powi(-11) + 3e-8,
                "{name}: {x} became {y}"
            );
        }
    }
    assert!(halves >= 10, "only {halves} matrices were converted");
    let s = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .args(["sample", "--model"])
        .arg(&out)
        .args(["--length", "8"])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));

    // Bad requests: one line each, non-zero exit.
    for (args, needle) in [
        (
            vec![
                "--model",
                src.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--dtype",
                "f8",
            ],
            "invalid value 'f8' for '--dtype <DTYPE>'",
        ),
        (
            vec![
                "--model",
                src.to_str().unwrap(),
                "--out",
                src.to_str().unwrap(),
            ],
            "must differ",
        ),
        (
            vec!["--out", out.to_str().unwrap()],
            "required arguments were not provided: --model",
        ),
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            !o.status.success() && err.contains(needle) && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // A weight F16 cannot hold is refused, naming the tensor.
    rewrite_weights(&src, |t| {
        let (_, _, _, bytes) = t
            .iter_mut()
            .find(|(n, ..)| n.ends_with("attn_out.weight"))
            .unwrap();
        bytes[..4].copy_from_slice(&1.0e6f32.to_le_bytes());
    });
    let o = run(&[
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("attn_out.weight") && err.contains("F16 cannot store"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn every_command_answers_help_and_version() {
    let commands: [&[&str]; 13] = [
        &[],
        &["sample"],
        &["train"],
        &["eval"],
        &["export"],
        &["serve"],
        &["verify"],
        &["bench", "forward"],
        &["bench", "sample"],
        &["bench", "train"],
        &["tokenizer", "train"],
        &["tokenizer", "gpt2"],
        &["info"],
    ];
    for cmd in commands {
        let out = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
            .args(cmd)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains("Usage: bd3-wgpu"),
            "{cmd:?} --help: {help}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("bd3-wgpu "));
}

#[test]
fn a_reader_that_stops_early_ends_the_command_without_a_panic() {
    // `bd3-wgpu verify … | head -1`: the pipe closes after the first line while the command still
    // prints; like any Unix tool it ends (SIGPIPE) instead of panicking on the failed write.
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .arg("verify")
        .arg(fixture_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("adapter"), "{first}");
    // The reader (and the pipe) is gone now.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !out.status.success(),
        "verify cannot have finished its output"
    );
}
