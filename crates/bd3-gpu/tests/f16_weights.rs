//! Weights stored as f16 (`WeightFormat::F16`, `sample --weights f16`): the f16 twins of the
//! embedding gather and of every product variant against plain CPU loops on the same f16-rounded
//! weights (so only f32 accumulation order separates them: the f32 tier), and end to end on the
//! fixture model: f16 weights draw the f32 tokens wherever the f32 race margin exceeds what the f16
//! rounding of the logits could change.
//!
//! These tests need `shader-f16`, which lavapipe (CI) has; on an adapter without it they fail with a
//! message saying so rather than pass without checking anything.

mod common;
use bd3_gpu::model_call::{CallAction, CallInputs, CallShape};
use bd3_gpu::ops::matmul::{Epilogue, Matmul};
use bd3_gpu::ops::sample::SampleMode;
use bd3_gpu::ops::{self, Kernels};
use bd3_gpu::weights::{f16_words, WeightFormat};
use bd3_gpu::{GpuContext, GpuModel};
use bd3_model::cpu_ref;
use common::*;

fn f16_context() -> std::sync::Arc<GpuContext> {
    let ctx = context();
    assert!(
        ctx.features.contains(wgpu::Features::SHADER_F16),
        "these tests need an adapter with shader-f16 (lavapipe has it); {} lacks it",
        ctx.info.name
    );
    ctx
}

fn f16_kernels(ctx: &GpuContext) -> Kernels {
    pollster::block_on(Kernels::for_weights(ctx, 16, WeightFormat::F16)).unwrap()
}

/// `x` rounded to f16 and back, as the GPU holds it.
fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

#[test]
fn f16_embedding_gathers_the_rounded_table_from_every_part() {
    let ctx = f16_context();
    let k = f16_kernels(&ctx);
    let mut rng = Rng(31);
    // An odd width: rows start in the middle of a packed word.
    let (v, d, n) = (41, 19, 29);
    let table = rng.vec(v * d, 1.0);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(v as u32)).collect();
    let out = upload(&ctx, &vec![0.0; n * d]);
    let ids_buf = upload_u32(&ctx, &ids);
    for (start, rows) in [(0usize, 23usize), (23, 18)] {
        let part = upload_u32(&ctx, &f16_words(&table[start * d..(start + rows) * d]));
        let p = ops::embedding::Params {
            n_rows: n as u32,
            dim: d as u32,
            row_start: start as u32,
            part_rows: rows as u32,
        };
        run_recorded(&ctx, |pb| {
            ops::embedding::record(
                pb,
                &k,
                p,
                (v, WeightFormat::F16),
                ops::embedding::Bindings {
                    ids: &ids_buf,
                    table: &part,
                    out: &out,
                },
            )
            .unwrap()
        });
    }
    // Rounding is exact both ways, so the gather must be too.
    assert_close(
        "embedding f16",
        &read(&ctx, &out, n * d),
        &cpu_ref::embedding(&ids, &rounded(&table), d),
        0.0,
    );
}

#[test]
fn f16_products_match_the_cpu_loop_on_rounded_weights_in_every_variant() {
    let ctx = f16_context();
    let k = f16_kernels(&ctx);
    let mut rng = Rng(32);
    // (m, n, k): few rows (the matrix-vector kernel), and wider inputs (16- and 64-row tiles), at
    // sizes that are not multiples of any tile, with odd K so weight rows straddle packed words.
    for (m, n, kk) in [
        (1, 37, 29),
        (7, 45, 67),
        (16, 13, 130),
        (23, 70, 33),
        (97, 19, 75),
    ] {
        let a = rng.vec(m * kk, 1.0);
        let w = rng.vec(n * kk, 0.5);
        let bias = rng.vec(n, 0.5);
        let base = rng.vec(m * n, 1.0);
        let gate = rng.vec(n, 1.0);
        for (epi, cpu_epi) in [
            (Epilogue::Store, cpu_ref::Epilogue::Store),
            (Epilogue::Gelu, cpu_ref::Epilogue::Gelu),
            (
                Epilogue::GatedResidual,
                cpu_ref::Epilogue::GatedResidual {
                    gate: &gate,
                    rows_per_seq: m,
                },
            ),
        ] {
            let mut want = base.clone();
            cpu_ref::matmul_bt(
                &a,
                &rounded(&w),
                Some(&bias),
                cpu_ref::Dims { m, n, k: kk },
                cpu_epi,
                &mut want,
            );
            let mm = Matmul {
                epilogue: epi,
                rows_per_seq: m as u32,
                gate_stride: n as u32,
                b_format: WeightFormat::F16,
                ..Matmul::plain(m as u32, n as u32, kk as u32)
            };
            let out = upload(&ctx, &base);
            let (a_buf, w_buf, bias_buf, gate_buf) = (
                upload(&ctx, &a),
                upload_u32(&ctx, &f16_words(&w)),
                upload(&ctx, &bias),
                upload(&ctx, &gate),
            );
            let b = ops::matmul::Bindings {
                a: &a_buf,
                b: &w_buf,
                bias: Some(&bias_buf),
                gate: Some(&gate_buf),
                out: &out,
                aux: None,
            };
            let mut kernels_used = Vec::new();
            run_recorded(&ctx, |pb| {
                ops::matmul::record(pb, &k, "matmul", &mm, b);
                kernels_used = pb.planned().iter().map(|d| d.kernel.to_string()).collect();
            });
            assert!(
                kernels_used.iter().all(|n| n.ends_with("_f16")),
                "m={m}: the f16 twins ran ({kernels_used:?})"
            );
            assert_close(
                &format!("f16 {epi:?} m={m} n={n} k={kk} ({kernels_used:?})"),
                &read(&ctx, &out, m * n),
                &want,
                1e-5,
            );
        }
    }
}

/// The fixture model (BD3LM, block 4, length 16, vocabulary 128) with its weights stored as `format`.
fn fixture_model(ctx: std::sync::Arc<GpuContext>, format: WeightFormat) -> GpuModel {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-a");
    let bd3_model::ModelDir {
        config: cfg,
        checkpoint: ckpt,
        ..
    } = bd3_model::load_model_dir(&dir, None).unwrap();
    pollster::block_on(GpuModel::load_as(ctx, cfg, &ckpt, format)).unwrap()
}

fn inputs<'a>(
    tokens: &'a [u32],
    cache_idx: usize,
    picked: &'a [u32],
    streams: &'a [u32],
    draws: Option<&'a [f32]>,
) -> CallInputs<'a> {
    CallInputs {
        tokens,
        cache_idx,
        sigma: &[],
        picked,
        top_p: TOP_P,
        mask_prob: 0.0,
        dsigma: &[],
        seed: 1,
        call: 0,
        streams,
        draws,
        reveal: None,
    }
}

const TOP_P: f64 = 0.9;

/// Whether f16 logits (each within `delta` of the f32 ones) must give the f32 draw of this row: the
/// f32 race winner is safely inside the nucleus and beats every token that could be in the f16
/// nucleus by more than the 4δ the f16 rounding can move two race keys (log p shifts by ≤ 2δ).
/// Returns (the f32 winner, whether the margin is clear).
fn race_with_margin(logits: &[f32], mask: usize, draws: &[f32], delta: f64) -> (usize, bool) {
    let a: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let m = (0..a.len())
        .filter(|&v| v != mask)
        .map(|v| a[v])
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = (0..a.len())
        .filter(|&v| v != mask)
        .map(|v| (a[v] - m).exp())
        .sum();
    let p = |v: usize| if v == mask { 0.0 } else { (a[v] - m).exp() / z };
    let mut order: Vec<usize> = (0..a.len()).filter(|&v| v != mask).collect();
    order.sort_by(|&x, &y| p(y).total_cmp(&p(x)).then(x.cmp(&y)));
    // cumsum including each token, in descending order; kept: cumsum ≤ top_p, at least one.
    let mut cum = Vec::with_capacity(order.len());
    let mut s = 0.0;
    for &v in &order {
        s += p(v);
        cum.push(s);
    }
    let kept = cum.iter().take_while(|&&c| c <= TOP_P).count().max(1);
    let p_last = p(order[kept - 1]);
    let key = |v: usize| p(v).ln() - (draws[v] as f64).ln();
    let winner = *order[..kept]
        .iter()
        .max_by(|&&x, &&y| key(x).total_cmp(&key(y)))
        .unwrap();
    let slack = 4.0 * delta;
    // Tokens that f16 rounding could bring into the nucleus.
    let could_compete = |i: usize| {
        let v = order[i];
        i < kept || cum[i] <= TOP_P + slack || p(v) >= p_last * (-slack).exp()
    };
    let rank = order.iter().position(|&v| v == winner).unwrap();
    let safely_kept =
        rank == 0 && p(order[0]) > p(order[1]) * slack.exp() || cum[rank] <= TOP_P - slack;
    let margin = (0..order.len())
        .filter(|&i| order[i] != winner && could_compete(i))
        .map(|i| key(winner) - key(order[i]))
        .fold(f64::INFINITY, f64::min);
    (winner, safely_kept && margin > slack)
}

#[test]
fn f16_weights_draw_the_f32_tokens_wherever_the_margin_exceeds_f16_rounding() {
    let ctx = f16_context();
    let mut m32 = fixture_model(ctx.clone(), WeightFormat::F32);
    let mut m16 = fixture_model(ctx.clone(), WeightFormat::F16);
    assert_eq!(m16.weights.format(), WeightFormat::F16);
    let cfg = m32.cfg.clone();
    let (bs, len, v, mask) = (
        cfg.block_size,
        cfg.model_length,
        cfg.vocab_size,
        cfg.mask_id() as usize,
    );
    let batch = 2;
    let mut rng = Rng(77);
    let (mut rows, mut clear, mut worst_delta) = (0, 0, 0f64);
    for trial in 0..6 {
        let clean: Vec<u32> = (0..batch * len).map(|_| rng.below(mask as u32)).collect();
        for bi in 0..len / bs {
            // The block with some positions masked (at least one per sequence).
            let block: Vec<u32> = (0..batch)
                .flat_map(|s| (0..bs).map(move |j| (s, j)))
                .map(|(s, j)| {
                    let t = clean[s * len + bi * bs + j];
                    if j == trial % bs || rng.uniform() < 0.5 {
                        mask as u32
                    } else {
                        t
                    }
                })
                .collect();
            let picked: Vec<u32> = (0..batch).flat_map(|_| 0..bs as u32).collect();
            let streams = vec![0u32; batch * bs];
            let draws: Vec<f32> = (0..batch * bs * v)
                .map(|_| -(1.0 - rng.uniform()).ln() as f32)
                .collect();
            let sample = CallShape {
                batch,
                rows: bs,
                cache_len: len,
                action: CallAction::Sample {
                    head_rows: bs,
                    mode: SampleMode::FirstHitting,
                    verify: true,
                },
            };
            let mut outs = Vec::new();
            for model in [&mut m32, &mut m16] {
                let out = pollster::block_on(model.call(
                    &sample,
                    &inputs(&block, bi * bs, &picked, &streams, Some(&draws)),
                ))
                .unwrap();
                // Then commit the clean block, so the next block attends to it.
                let commit = CallShape {
                    action: CallAction::Commit,
                    ..sample
                };
                let clean_block: Vec<u32> = (0..batch)
                    .flat_map(|s| clean[s * len + bi * bs..s * len + (bi + 1) * bs].to_vec())
                    .collect();
                pollster::block_on(
                    model.call(&commit, &inputs(&clean_block, bi * bs, &[], &[], None)),
                )
                .unwrap();
                outs.push(out);
            }
            let (l32, l16) = (
                outs[0].logits.as_ref().unwrap(),
                outs[1].logits.as_ref().unwrap(),
            );
            for r in 0..batch * bs {
                if block[r] != mask as u32 {
                    continue;
                }
                let (row32, row16) = (&l32[r * v..(r + 1) * v], &l16[r * v..(r + 1) * v]);
                let delta = row32
                    .iter()
                    .zip(row16)
                    .map(|(&a, &b)| (a as f64 - b as f64).abs())
                    .fold(0.0, f64::max);
                let scale = row32.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
                // f16 rounding (relative 2^-11 per weight), accumulated over two blocks: well
                // under a percent of the logits' scale, and not zero (the f16 path really ran).
                assert!(
                    delta > 0.0 && delta < 1e-2 * scale,
                    "trial {trial} block {bi} row {r}: f16 logits differ by {delta:.3e} (scale {scale:.3})"
                );
                worst_delta = worst_delta.max(delta / scale);
                let draws_row = &draws[r * v..(r + 1) * v];
                let (winner, is_clear) = race_with_margin(row32, mask, draws_row, delta);
                rows += 1;
                // The f32 path draws the f64 race winner whenever it is clear (its own margin).
                if is_clear {
                    clear += 1;
                    assert_eq!(
                        outs[0].tokens[r] as usize, winner,
                        "trial {trial} block {bi} row {r}: f32 draw"
                    );
                    assert_eq!(
                        outs[1].tokens[r], outs[0].tokens[r],
                        "trial {trial} block {bi} row {r}: f16 weights changed a draw whose margin exceeds the rounding (δ = {delta:.3e})"
                    );
                }
            }
        }
    }
    // The comparison must have bitten: most rows have a clear margin.
    assert!(
        clear * 10 >= rows * 8,
        "only {clear} of {rows} rows had a clear margin"
    );
    eprintln!(
        "{clear} of {rows} rows clear; worst f16 logit deviation {worst_delta:.2e} of the scale"
    );
}
