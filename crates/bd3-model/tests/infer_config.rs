//! Model folders without `config.json` (the official no-EOS baselines ship only `model.safetensors`):
//! the config inferred from the tensors must equal the one the checkpoint was written with.

use bd3_model::checkpoint::{expected_tensors, HeaderEntry};
use bd3_model::config::defaults;
use bd3_model::infer::{infer_config, InferredFrom};
use bd3_model::init::{random_weights, to_safetensors};
use bd3_model::{load_model_dir, ModelConfig, ModelKind};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bd3-infer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-a")
        .join(rel)
}

fn config(json: &str) -> ModelConfig {
    ModelConfig::from_json_bytes(json.as_bytes(), "config.json", None).unwrap()
}

/// Small models of each kind whose context length is the documented default, so every field can
/// be inferred. Head width 16 (not the default 64): `n_heads` must come from `rotary_emb.inv_freq`.
fn models() -> Vec<(ModelConfig, Option<ModelKind>)> {
    let l = defaults::MODEL_LENGTH;
    vec![
        (
            config(&format!(
                r#"{{"model_type":"mdlm","cond_dim":24,"hidden_dim":64,"model_length":{l},"n_blocks":3,"n_heads":4,"vocab_size":131}}"#
            )),
            Some(ModelKind::Mdlm),
        ),
        (
            config(&format!(
                r#"{{"model_type":"mdlm","parameterization":"sedd","cond_dim":40,"hidden_dim":96,"model_length":{l},"n_blocks":2,"n_heads":3,"vocab_size":77}}"#
            )),
            Some(ModelKind::Sedd),
        ),
        // The weights alone say AR: no adaLN layers. No kind given.
        (
            config(&format!(
                r#"{{"model_type":"bd3lm","causal":true,"adaln":false,"hidden_dim":48,"model_length":{l},"n_blocks":5,"n_heads":2,"vocab_size":50}}"#
            )),
            None,
        ),
    ]
}

fn write_model(dir: &Path, cfg: &ModelConfig, seed: u64) {
    std::fs::write(
        dir.join("model.safetensors"),
        to_safetensors(cfg, &random_weights(cfg, seed, 0.05), None),
    )
    .unwrap();
}

#[test]
fn configs_of_each_kind_are_inferred_exactly() {
    for (i, (cfg, kind)) in models().into_iter().enumerate() {
        let dir = scratch(&format!("kind{i}"));
        write_model(&dir, &cfg, 7 + i as u64);
        std::fs::write(dir.join("config.json"), cfg.to_json()).unwrap();
        let with_config = load_model_dir(&dir, None).unwrap();
        assert!(with_config.inferred.is_empty() && with_config.inferred_summary().is_none());

        std::fs::remove_file(dir.join("config.json")).unwrap();
        let inferred = load_model_dir(&dir, kind)
            .unwrap_or_else(|e| panic!("{}: {}", cfg.kind.name(), e.report()));
        assert_eq!(inferred.config, cfg, "{}", cfg.kind.name());
        for name in [
            "vocab_embed.embedding",
            "blocks.0.attn_qkv.weight",
            "output_layer.linear.bias",
        ] {
            assert_eq!(
                inferred.checkpoint.tensor_f32(name).unwrap(),
                with_config.checkpoint.tensor_f32(name).unwrap(),
                "{name}"
            );
        }

        let field = |f: &str| {
            inferred
                .inferred
                .iter()
                .find(|x| x.field == f)
                .unwrap_or_else(|| panic!("{f} not listed"))
        };
        assert_eq!(
            (field("hidden_dim").value.as_str(), field("hidden_dim").from),
            (cfg.hidden_dim.to_string().as_str(), InferredFrom::Tensors)
        );
        assert_eq!(
            (field("n_heads").value.as_str(), field("n_heads").from),
            (cfg.n_heads.to_string().as_str(), InferredFrom::Tensors)
        );
        assert_eq!(field("n_blocks").value, cfg.n_blocks.to_string());
        assert_eq!(field("vocab_size").value, cfg.vocab_size.to_string());
        assert_eq!(
            (
                field("model_length").value.as_str(),
                field("model_length").from
            ),
            ("1024", InferredFrom::Default)
        );
        assert_eq!(field("kind").value, cfg.kind.name());
        assert_eq!(
            field("kind").from,
            if kind.is_some() {
                InferredFrom::Caller
            } else {
                InferredFrom::Tensors
            }
        );
        if cfg.kind.has_adaln() {
            assert_eq!(field("cond_dim").value, cfg.cond_dim.to_string());
        }
        let line = inferred.inferred_summary().unwrap();
        assert!(
            line.starts_with("config.json absent: inferred ") && !line.contains('\n'),
            "{line}"
        );
        assert!(
            line.contains(&format!("hidden_dim {}", cfg.hidden_dim))
                && line.contains("model_length 1024"),
            "{line}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The Python-written fixtures (official layout, `backbone.` prefix): everything but the context
/// length, which the weights do not hold, matches their config.json.
#[test]
fn official_layout_fixtures_are_inferred() {
    for (sub, kind) in [("sedd", Some(ModelKind::Sedd)), ("ar", None)] {
        let original = ModelConfig::load(&fixture(&format!("{sub}/config.json")), None).unwrap();
        let dir = scratch(&format!("fixture-{sub}"));
        std::fs::copy(
            fixture(&format!("{sub}/model.safetensors")),
            dir.join("model.safetensors"),
        )
        .unwrap();
        let got = load_model_dir(&dir, kind)
            .unwrap_or_else(|e| panic!("{sub}: {}", e.report()))
            .config;
        let mut want = original.clone();
        want.model_length = defaults::MODEL_LENGTH;
        if want.kind == ModelKind::Ar {
            // Fields nothing of an AR model reads: the fixture states them, the weights cannot.
            (want.cond_dim, want.sampling_eps_min, want.sampling_eps_max) =
                (0, defaults::SAMPLING_EPS_MIN, defaults::SAMPLING_EPS_MAX);
        } else {
            want.block_size = defaults::MODEL_LENGTH;
        }
        assert_eq!(got, want, "{sub}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn error_of(dir: &Path, kind: Option<ModelKind>) -> String {
    let e = match load_model_dir(dir, kind) {
        Ok(_) => panic!("{} loaded with kind {kind:?}", dir.display()),
        Err(e) => e.report(),
    };
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn what_the_tensors_cannot_tell_is_refused_in_one_line() {
    let ms = models();
    let dir = scratch("refusals");
    // MDLM and SEDD weights are the same: the kind must be given.
    write_model(&dir, &ms[0].0, 1);
    let e = error_of(&dir, None);
    assert!(
        e.contains("`kind`") && e.contains("model.safetensors"),
        "{e}"
    );
    let e = error_of(&dir, Some(ModelKind::Ar));
    assert!(e.contains("adaLN"), "{e}");
    // AR weights given another kind.
    write_model(&dir, &ms[2].0, 1);
    assert!(error_of(&dir, Some(ModelKind::Mdlm)).contains("AR model"));
    // A BD3LM checkpoint (its sampling_eps buffers) without config.json: the block size is unknown.
    let bd3lm = config(
        r#"{"model_type":"bd3lm","block_size":4,"cond_dim":16,"hidden_dim":32,"model_length":1024,"n_blocks":1,"n_heads":2,"vocab_size":20}"#,
    );
    std::fs::write(
        dir.join("model.safetensors"),
        to_safetensors(
            &bd3lm,
            &random_weights(&bd3lm, 3, 0.05),
            Some((0.001, 0.999)),
        ),
    )
    .unwrap();
    assert!(error_of(&dir, None).contains("needs its config.json"));
    assert!(error_of(&dir, Some(ModelKind::Bd3lm)).contains("needs its config.json"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn folders_without_config_or_official_layout_are_clear_errors() {
    let dir = scratch("empty");
    let e = error_of(&dir, Some(ModelKind::Mdlm));
    assert!(
        e.contains("not a model folder") && e.contains("no config.json"),
        "{e}"
    );

    // A safetensors file that is not a DiT in the official layout.
    let data = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize([("encoder.weight", view)], None).unwrap(),
    )
    .unwrap();
    let e = error_of(&dir, Some(ModelKind::Mdlm));
    assert!(
        e.contains("not in the official layout") && e.contains("vocab_embed.embedding"),
        "{e}"
    );

    // Not a safetensors file at all.
    std::fs::write(dir.join("model.safetensors"), b"<html>not found</html>").unwrap();
    assert!(error_of(&dir, None).contains("not a readable safetensors file"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without `rotary_emb.inv_freq` the head width falls back to the documented 64 (12 heads at 768);
/// the strict loader then refuses the file for the missing tensor, so this is checked on the header.
#[test]
fn head_count_defaults_to_width_64_heads() {
    let cfg = config(
        r#"{"model_type":"mdlm","cond_dim":8,"hidden_dim":768,"model_length":1024,"n_blocks":1,"n_heads":12,"vocab_size":10}"#,
    );
    let entries: Vec<HeaderEntry> = expected_tensors(&cfg)
        .into_iter()
        .filter(|(n, _)| n != "rotary_emb.inv_freq")
        .map(|(n, s)| (format!("backbone.{n}"), "F32".to_string(), s, (0, 0)))
        .collect();
    let (got, inferred) = infer_config(&entries, "m.safetensors", Some(ModelKind::Mdlm)).unwrap();
    assert_eq!(got, cfg);
    let heads = inferred.iter().find(|f| f.field == "n_heads").unwrap();
    assert_eq!(
        (heads.value.as_str(), heads.from),
        ("12 (hidden / 64)", InferredFrom::Default)
    );
}
