//! `--model OWNER/NAME` end to end: the binary downloads an official-layout checkpoint from a hub
//! (a loopback mock with the real hub's `resolve/main/` layout and headers), into the Hugging Face
//! cache layout, then samples from it exactly as from the local folder. Covers a fresh download, a
//! cached rerun with the server stopped (and offline), an interrupted download resumed, and a
//! checkpoint without config.json (config inferred from the tensors).

#[path = "support/mock_hub.rs"]
mod mock_hub;

use mock_hub::MockHub;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BUNDLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/fortunes-bd3lm");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bd3-hub-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A hub root holding `acme/fortunes` (the bundled model as published) and `acme/no-config`: the
/// same backbone as an MDLM checkpoint ships it, without config.json and without BD3LM's clip
/// buffers (as the official no-EOS baselines ship), plus the tokenizer.
fn hub_root(dir: &Path) -> PathBuf {
    let root = dir.join("hub-root");
    let (full, bare) = (root.join("acme/fortunes"), root.join("acme/no-config"));
    std::fs::create_dir_all(&full).unwrap();
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(Path::new(BUNDLED).join(f), full.join(f)).unwrap();
    }
    std::fs::copy(
        Path::new(BUNDLED).join("tokenizer.json"),
        bare.join("tokenizer.json"),
    )
    .unwrap();
    let bytes = std::fs::read(Path::new(BUNDLED).join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("sampling_eps"))
        .collect();
    assert!(
        kept.len() + 2 == st.len(),
        "the bundled model has its clip buffers"
    );
    std::fs::write(
        bare.join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    root
}

fn sample(model: &str, hub: Option<&str>, home: &Path, offline: bool, extra: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bd3-wgpu"));
    c.args(["sample", "--model", model, "--length", "10", "--seed", "5"])
        .args(extra);
    c.env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    // An endpoint nobody listens on when the test means "no server".
    c.env("HF_ENDPOINT", hub.unwrap_or("http://127.0.0.1:9"));
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn official_checkpoints_by_name_download_cache_resume_and_infer() {
    let dir = scratch("by-name");
    let home = dir.join("hf-home");
    let mut server = MockHub::start(&hub_root(&dir));
    let url = server.url();

    // The same tokens as from the local folder.
    let local = sample(BUNDLED, None, &home, false, &[]);
    assert!(local.status.success(), "{}", text(&local));

    // An interrupted download leaves no file where a complete one belongs, and fails in one line.
    let size = std::fs::metadata(Path::new(BUNDLED).join("model.safetensors"))
        .unwrap()
        .len() as usize;
    server.cut_next_body("model.safetensors", size / 3);
    let cut = sample("acme/fortunes", Some(&url), &home, false, &[]);
    let err = String::from_utf8_lossy(&cut.stderr).to_string();
    assert!(
        !cut.status.success() && err.lines().filter(|l| l.starts_with("error")).count() == 1,
        "{}",
        text(&cut)
    );
    let cache = home.join("hub/models--acme--fortunes");
    let blobs: Vec<String> = std::fs::read_dir(cache.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        blobs.iter().any(|b| b.ends_with(".incomplete")),
        "{blobs:?}"
    );
    let partial_weights = std::fs::read_dir(cache.join("snapshots"))
        .is_ok_and(|mut d| d.any(|s| s.unwrap().path().join("model.safetensors").exists()));
    assert!(
        !partial_weights,
        "a snapshot entry for weights that were not complete"
    );

    // The rerun resumes with a Range request and samples exactly as the local folder does.
    let fresh = sample("acme/fortunes", Some(&url), &home, false, &[]);
    assert!(fresh.status.success(), "{}", text(&fresh));
    assert_eq!(
        fresh.stdout, local.stdout,
        "hub download and local folder differ"
    );
    assert!(
        server.requests().iter().any(|r| r
            .range
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-")),
        "no resumed request"
    );
    let snapshot = std::fs::read_dir(cache.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(snapshot.join(f)).unwrap(),
            std::fs::read(Path::new(BUNDLED).join(f)).unwrap(),
            "{f}"
        );
        assert!(
            std::fs::symlink_metadata(snapshot.join(f))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{f} is not a link into blobs/"
        );
    }
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/main"))
            .unwrap()
            .trim(),
        MockHub::commit("acme/fortunes")
    );

    // A checkpoint without config.json: the config is inferred and said; the tensors cannot tell
    // MDLM from SEDD, so without the kind it is refused, naming what is missing.
    let refused = sample("acme/no-config", Some(&url), &home, false, &[]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success()
            && err.contains("kind")
            && err
                .trim_end()
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("error")),
        "{}",
        text(&refused)
    );
    let inferred = sample(
        "acme/no-config",
        Some(&url),
        &home,
        false,
        &["--kind", "mdlm"],
    );
    assert!(inferred.status.success(), "{}", text(&inferred));
    assert!(
        String::from_utf8_lossy(&inferred.stderr).contains("config.json absent: inferred"),
        "{}",
        text(&inferred)
    );

    // The server goes away: the cache serves, online (falling back) and offline.
    let gets = server.count("GET", "/");
    server.stop();
    for offline in [false, true] {
        let cached = sample("acme/fortunes", None, &home, offline, &[]);
        assert!(
            cached.status.success(),
            "offline={offline}: {}",
            text(&cached)
        );
        assert_eq!(cached.stdout, local.stdout);
    }
    assert_eq!(
        server.count("GET", "/"),
        gets,
        "nothing is fetched once cached"
    );
    // Never downloaded and offline: one clear line.
    let missing = sample("acme/never", None, &home, true, &[]);
    let err = String::from_utf8_lossy(&missing.stderr).to_string();
    assert!(
        !missing.status.success()
            && err.contains("acme/never")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
