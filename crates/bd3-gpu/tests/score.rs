//! Generative-perplexity scoring (`bd3_gpu::score`) on the fixture AR model, against NLLs computed
//! here from the official code's float64 logits (tests/fixtures/tiny-a/ar, `ar_case.logits_f64`).

mod common;
use bd3_gpu::{score_sequences, GpuModel, SampleScore, ScoreOptions};
use bd3_model::tensor_file::TensorFile;
use std::path::PathBuf;

struct Reference {
    /// [B, L] token sequences, x[:, 0] = BOS.
    x: Vec<Vec<u32>>,
    /// Per sequence, per target position p = 1..L: −log p(x[p] | x[..p]) in f64.
    nll: Vec<Vec<f64>>,
}

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-a/ar"
    ))
}

/// The NLL of each next token from the f64 logits, the mask column set to −1e6 as the official
/// `Diffusion.forward` does (so it drops out of the normaliser).
fn reference(mask_id: usize) -> Reference {
    let tf = TensorFile::open(&fixture().join("ar_case.safetensors")).unwrap();
    let x = tf.i64_rank("x", 2).unwrap();
    let (b, l) = (x.shape[0], x.shape[1]);
    let logits = tf.f64_rank("logits_f64", 3).unwrap();
    let v = logits.shape[2];
    assert_eq!(logits.shape[..2], [b, l - 1]);
    let x: Vec<Vec<u32>> = x
        .data
        .chunks(l)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let nll = (0..b)
        .map(|s| {
            (0..l - 1)
                .map(|j| {
                    let row = &logits.data[(s * (l - 1) + j) * v..][..v];
                    let adj = |c: usize| if c == mask_id { -1e6 } else { row[c] };
                    let m = (0..v).map(adj).fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + (0..v).map(|c| (adj(c) - m).exp()).sum::<f64>().ln();
                    lse - row[x[s][j + 1] as usize]
                })
                .collect()
        })
        .collect();
    Reference { x, nll }
}

fn load() -> GpuModel {
    let bd3_model::ModelDir {
        config: cfg,
        checkpoint: ckpt,
        ..
    } = bd3_model::load_model_dir(&fixture(), None).unwrap();
    pollster::block_on(GpuModel::load(common::context(), cfg, &ckpt)).unwrap()
}

/// The expected score of x[s][..len] with targets equal to `exclude` left out.
fn expected(r: &Reference, s: usize, len: usize, exclude: Option<u32>) -> SampleScore {
    let mut e = SampleScore::default();
    for p in 1..len {
        if exclude != Some(r.x[s][p]) {
            e.nll_sum += r.nll[s][p - 1];
            e.tokens += 1;
        }
    }
    e
}

fn assert_scores(got: &[SampleScore], want: &[SampleScore]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "sample {i}: token count");
        // f32 forward against the f64 reference: 1e-5 relative per token (the fixture's own
        // tolerance for token losses), summed.
        let tol = 1e-5 * w.tokens as f64 * (w.nll_sum / w.tokens.max(1) as f64).abs().max(1.0);
        assert!(
            (g.nll_sum - w.nll_sum).abs() <= tol,
            "sample {i}: NLL {} vs reference {} (tol {tol})",
            g.nll_sum,
            w.nll_sum
        );
        if let (Some(gp), Some(wp)) = (g.perplexity(), w.perplexity()) {
            assert!(
                (gp / wp - 1.0).abs() < 1e-4,
                "sample {i}: perplexity {gp} vs {wp}"
            );
        }
    }
}

#[test]
fn scores_match_the_reference_logits() {
    let mut model = load();
    let r = reference(model.cfg.mask_id() as usize);
    let l = r.x[0].len();
    assert_eq!(
        l, model.cfg.model_length,
        "one window covers a fixture sequence"
    );

    // Both full sequences in one batch, nothing excluded.
    let got = pollster::block_on(score_sequences(
        &mut model,
        &r.x,
        &ScoreOptions {
            batch: 2,
            exclude: None,
        },
    ))
    .unwrap();
    assert_scores(&got, &[expected(&r, 0, l, None), expected(&r, 1, l, None)]);

    // Different lengths in one batch (the short row is padded; a causal model's prefix logits are
    // the full forward's first rows), a token excluded as a target (as EOS is), and batches of one.
    let exclude = r.x[0][5];
    let seqs = vec![
        r.x[0].clone(),
        r.x[1][..11].to_vec(),
        r.x[0][..2].to_vec(),
        r.x[1][..1].to_vec(),
    ];
    let want = [
        expected(&r, 0, l, Some(exclude)),
        expected(&r, 1, 11, Some(exclude)),
        expected(&r, 0, 2, Some(exclude)),
        SampleScore::default(),
    ];
    assert!(want[0].tokens < l - 1, "the excluded id occurs as a target");
    for batch in [1, 3, 8] {
        let got = pollster::block_on(score_sequences(
            &mut model,
            &seqs,
            &ScoreOptions {
                batch,
                exclude: Some(exclude),
            },
        ))
        .unwrap();
        assert_scores(&got, &want);
    }
}

#[test]
fn long_samples_score_every_token_once_and_bad_ids_are_refused() {
    let mut model = load();
    let r = reference(model.cfg.mask_id() as usize);
    let l = r.x[0].len();
    // 3L − 2 tokens: several sliding windows. The first window is exactly x[0], so its targets
    // carry the reference NLLs; later windows have no reference, only their count is known.
    let long: Vec<u32> = [r.x[0].clone(), r.x[1].clone(), r.x[0][..l - 2].to_vec()].concat();
    let got = pollster::block_on(score_sequences(
        &mut model,
        std::slice::from_ref(&long),
        &ScoreOptions {
            batch: 4,
            exclude: None,
        },
    ))
    .unwrap();
    assert_eq!(got[0].tokens, long.len() - 1);
    let first_window = expected(&r, 0, l, None).nll_sum;
    assert!(
        got[0].nll_sum > first_window,
        "later windows add positive NLL"
    );

    let mask = model.cfg.mask_id();
    for bad in [mask, mask + 1] {
        let err = pollster::block_on(score_sequences(
            &mut model,
            &[vec![1, bad, 2]],
            &ScoreOptions {
                batch: 1,
                exclude: None,
            },
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("token id {bad}")), "{err}");
    }
}
