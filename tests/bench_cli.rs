//! The benchmarks' structural counts, asserted: once warm, a forward and a sampling step are each one
//! submission that creates no buffer, bind group or pipeline, and reads back only what is needed
//! (4 bytes of loss; one u32 token per sequence per sampling call).

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value after `key` in `line`, as printed by the bench ("submits 1.00, buffers created 0, …").
fn field(line: &str, key: &str) -> f64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("`{key}` missing in {line}"))
        + key.len()..];
    rest.trim_start()
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn sampling_calls_allocate_nothing_and_a_block_is_one_submit() {
    // 32 tokens in blocks of 8: 31 sampling calls (BOS is given) and 3 commits.
    for batch in ["1", "2"] {
        for (submit, submits) in [("call", 1.0), ("block", (4.0 + 3.0) / 34.0)] {
            let text = bench(&[
                "sample",
                "--size",
                "32,2,2,96,32",
                "--block-size",
                "8",
                "--length",
                "32",
                "--batch",
                batch,
                "--submit",
                submit,
            ]);
            let line = text
                .lines()
                .find(|l| l.starts_with("per model call:"))
                .unwrap_or_else(|| panic!("{text}"));
            // One submission per call, or one per block and one per commit.
            assert!(
                (field(line, "submits") - submits).abs() < 0.006,
                "--submit {submit}: {line}"
            );
            assert_eq!(field(line, "buffers created"), 0.0, "{line}");
            assert_eq!(field(line, "bind groups created"), 0.0, "{line}");
            assert_eq!(field(line, "pipelines created"), 0.0, "{line}");
            // 31 sampling calls read one u32 per sequence; 3 commits read nothing.
            let b: f64 = batch.parse().unwrap();
            let expected = 31.0 * 4.0 * b / 34.0;
            assert!(
                (field(line, "bytes read back") - expected).abs() < 0.06,
                "{line}"
            );
        }
    }
}

#[test]
fn a_warm_forward_is_one_submit_that_reads_back_four_bytes() {
    let text = bench(&[
        "forward", "--size", "tiny", "--batch", "1,3", "--iters", "2",
    ]);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // batch, ms/forward, tokens/s, submits, buffers, binds, read back, "B", GEMM
        assert_eq!(&cols[3..6], &["1", "0", "0"], "{row}");
        assert_eq!(cols[6], "4", "{row}");
    }
}
