//! The model as a whole against the official PyTorch code: `bd3-wgpu verify` on the fixtures copied
//! from `golden/tiny-a` (with its `sedd/` and `ar/` folders), run through the real binary.

use std::process::Command;

fn fixtures() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-a").to_string()
}

fn verify(extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .arg("verify")
        .args(extra)
        .arg(fixtures())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.success(), format!("{stdout}{stderr}"))
}

fn assert_all_pass(ok: bool, text: &str) {
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("passed,"))
        .unwrap_or("");
    assert!(
        ok && last.ends_with(" 0 failed") && !text.contains("FAIL"),
        "{text}"
    );
    let passed: usize = last.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 80, "too few checks ran ({passed}):\n{text}");
    for folder in [
        "ar/ar_case.logits",
        "sedd/sedd_case.logits",
        "train_case.logits",
        "mask_cases.bs16.loss",
    ] {
        assert!(text.contains(folder), "missing check {folder}:\n{text}");
    }
}

#[test]
fn verify_passes_every_forward_case_of_tiny_a() {
    let (ok, text) = verify(&[]);
    assert_all_pass(ok, &text);
}

#[test]
fn verify_passes_with_weights_split_across_bindings() {
    // 4 KiB "bindings": the 128 × 64 embedding and head go in 8 parts, logits in chunks of 8 rows.
    let (ok, text) = verify(&["--split-threshold", "4096"]);
    assert_all_pass(ok, &text);
}

#[test]
fn verify_passes_with_work_sized_for_a_gpu() {
    // lavapipe sizes work for its threads; 132 units take the splits and column counts of an H200.
    let (ok, text) = verify(&["--units", "132"]);
    assert_all_pass(ok, &text);
}

#[test]
fn verify_passes_with_large_tiles() {
    // One unit wants two workgroups, which the fixture model's weight gradients (192 and 256
    // output rows, 64 columns) reach with 128 × 128 tiles: the training checks run matmul_large.wgsl.
    let (ok, text) = verify(&["--units", "1"]);
    assert_all_pass(ok, &text);
}
