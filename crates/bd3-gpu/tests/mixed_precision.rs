//! Mixed precision: the emulated twin of the tensor-core product (matmul_coop_emulated.wgsl: the same
//! staging, tiles, f16 rounding and epilogue as matmul_coop.wgsl, with plain loops; it runs on
//! lavapipe) and, on an adapter with cooperative matrices, matmul_coop.wgsl itself, against a plain
//! CPU loop, for the three strided layouts of the forward and backward passes, every epilogue, the row
//! mapping with dropout and aux, and split K, at sizes that are multiples of neither 16 nor the
//! 64 × 64 block; the choice of kernel by precision; dynamic loss scaling on the GPU.
//!
//! Tolerance tiers (max |got − want| ≤ rel · max |want|): against the loop on the same f16-rounded
//! inputs summed in f64, 2e-5 (only the f32 sums differ); against the loop on the original f32 inputs,
//! 6e-4 (f16 has an 11-bit significand: each input is off by up to 2⁻¹¹ relative; measured here
//! 2.4e-4 to 3.1e-4 across the layouts, the ≈ 3e-4 tier of f16 inputs with f32 sums). The f32
//! kernels keep their own 1e-4 (tests/kernels.rs); nothing is loosened.

mod common;
use bd3_gpu::ops::matmul::{self, Epilogue, Matmul, Precision};
use bd3_gpu::ops::Kernels;
use bd3_gpu::program::Kernel;
use bd3_gpu::shaders::CoopTiles;
use bd3_gpu::{ContextOptions, GpuContext};
use common::*;

/// The mixed products to test: the emulated twin everywhere, and the tensor-core kernel itself where
/// the adapter has cooperative matrices (scripts/bench-gpu.sh runs these tests on such a GPU).
fn mixed_variants(ctx: &GpuContext) -> Vec<Kernels> {
    let mut v = vec![mixed_kernels(ctx)];
    if ctx.cooperative_matrix.is_some() {
        let mut k = kernels(ctx, 16);
        pollster::block_on(k.set_precision(ctx, Precision::Mixed)).unwrap();
        v.push(k);
    } else {
        eprintln!(
            "{}: no cooperative matrices, only the emulated twin runs",
            ctx.adapter_summary()
        );
    }
    v
}

/// Against the loop on the f16-rounded inputs.
const ROUNDED_TOL: f64 = 2e-5;
/// Against the loop on the original f32 inputs (the mixed-precision tier).
const MIXED_TOL: f64 = 6e-4;

fn f16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

/// The kernels with mixed precision through the emulated twin.
fn mixed_kernels(ctx: &GpuContext) -> Kernels {
    let mut k = kernels(ctx, 16);
    pollster::block_on(k.set_emulated_mixed_precision(ctx)).expect("lavapipe has shader-f16");
    k
}

/// The tile configurations `k` has mixed products for (128 × 128 where the adapter's workgroup
/// memory holds them).
fn tile_options(k: &Kernels) -> Vec<CoopTiles> {
    let mixed = k.mixed.as_ref().unwrap();
    let mut v = vec![CoopTiles::SMALL];
    if mixed.large.is_some() {
        v.push(CoopTiles::LARGE);
    }
    v
}

/// The kernel of `k`'s mixed products with `tiles`.
fn kernel_of(k: &Kernels, tiles: CoopTiles) -> &Kernel {
    let mixed = k.mixed.as_ref().unwrap();
    match tiles {
        CoopTiles::SMALL => &mixed.small,
        _ => mixed.large.as_ref().unwrap(),
    }
}

#[allow(clippy::too_many_arguments)]
/// Run `mm` onto `base`, with bias and gate as given: with `tiles`, that kernel of the mixed products
/// (`matmul::record_block`); without, through `matmul::record`, which picks the product. Returns the
/// output and the kernel that ran.
fn run(
    ctx: &GpuContext,
    k: &Kernels,
    tiles: Option<CoopTiles>,
    mm: &Matmul,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    gate: Option<&[f32]>,
    base: &[f32],
) -> (Vec<f32>, &'static str) {
    let (a_b, b_b, out) = (upload(ctx, a), upload(ctx, b), upload(ctx, base));
    let bias_b = bias.map(|x| upload(ctx, x));
    let gate_b = gate.map(|x| upload(ctx, x));
    let mut kernel = "";
    run_recorded(ctx, |pb| {
        let bind = matmul::Bindings {
            a: &a_b,
            b: &b_b,
            bias: bias_b.as_ref(),
            gate: gate_b.as_ref(),
            out: &out,
            aux: None,
        };
        match tiles {
            Some(t) => {
                let p = mm.params(bias.is_some(), false);
                matmul::record_block(pb, k, "mixed", kernel_of(k, t), t, &p, 1, bind)
            }
            None => matmul::record(pb, k, "mixed", mm, bind),
        }
        kernel = pb.planned()[0].kernel;
    });
    (read(ctx, &out, base.len()), kernel)
}

#[test]
fn mixed_product_matches_the_cpu_loop_in_every_layout() {
    let ctx = context();
    for k in mixed_variants(&ctx) {
        let mut rng = Rng(14);
        // (rows, in, out): one block and a ragged edge; several blocks, several K slabs and a K that is
        // not a multiple of the 16-wide tile step.
        for (m, d_in, d_out) in [(70usize, 37usize, 45usize), (131, 83, 77)] {
            let ld = d_in + 3; // activations wider than the product, as inside a fused buffer
            let x = rng.vec(m * ld + 5, 1.0);
            let w = rng.vec(d_out * d_in, 1.0);
            let dy = rng.vec(m * (d_out + 2), 1.0);
            let forward = Matmul {
                a_offset: 5,
                a_row_stride: ld as u32,
                ..Matmul::plain(m as u32, d_out as u32, d_in as u32)
            };
            let input_grad =
                Matmul::input_grad(m as u32, d_out as u32, d_in as u32, (d_out + 2) as u32);
            let weight_grad = Matmul {
                b_offset: 5,
                ..Matmul::weight_grad(
                    m as u32,
                    d_out as u32,
                    d_in as u32,
                    (d_out + 2) as u32,
                    ld as u32,
                )
            };
            for (what, mm, a, b) in [
                ("forward y = x·Wᵀ", forward, &x, &w),
                ("input gradient dy·W", input_grad, &dy, &w),
                ("weight gradient dW += dyᵀ·x", weight_grad, &dy, &x),
            ] {
                let (rows, cols) = (mm.m as usize, mm.n as usize);
                let base = rng.vec(rows * cols, 1.0);
                for tiles in tile_options(&k) {
                    let (got, kernel) = run(&ctx, &k, Some(tiles), &mm, a, b, None, None, &base);
                    assert_eq!(kernel, kernel_of(&k, tiles).name);
                    let accumulate = mm.epilogue == Epilogue::Residual;
                    let expect = |p: Vec<f64>| -> Vec<f32> {
                        p.iter()
                            .zip(&base)
                            .map(|(&v, &b0)| {
                                if accumulate {
                                    (b0 as f64 + v) as f32
                                } else {
                                    v as f32
                                }
                            })
                            .collect()
                    };
                    let rounded = expect(product(&mm, &f16_round(a), &f16_round(b)));
                    let exact = expect(product(&mm, a, b));
                    let what = format!("{what} {m}×{d_in}→{d_out} {tiles:?}");
                    assert_close(
                        &format!("{what} vs f16-rounded inputs"),
                        &got,
                        &rounded,
                        ROUNDED_TOL,
                    );
                    assert_close(&format!("{what} vs f32 inputs"), &got, &exact, MIXED_TOL);
                    // The inputs really were rounded: the f32 reference is measurably off (else this
                    // would be an f32 kernel passing a loose test).
                    let err = got
                        .iter()
                        .zip(&exact)
                        .map(|(&g, &e)| (g as f64 - e as f64).abs())
                        .fold(0.0, f64::max);
                    let max_ref = exact.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
                    eprintln!(
                        "{what}: max error vs f32 inputs {:.2e} of max |want|",
                        err / max_ref
                    );
                    assert!(err > 1e-6, "{what}: no f16 rounding visible ({err:.2e})");
                }
            }
        }
    }
}

#[test]
fn mixed_product_applies_every_epilogue() {
    use bd3_model::cpu_ref;
    let ctx = context();
    for k in mixed_variants(&ctx) {
        let mut rng = Rng(15);
        let (m, n, kk) = (70, 45, 37);
        let a = rng.vec(m * kk, 1.0);
        let w = rng.vec(n * kk, 1.0);
        let bias = rng.vec(n, 0.5);
        let rows_per_seq = 35;
        let gate = rng.vec(2 * n, 1.0);
        let base = rng.vec(m * n, 1.0);
        let ones = vec![1.0; 2 * n];
        let cases = epilogue_cases(&gate, &ones, rows_per_seq);
        let (a16, w16) = (f16_round(&a), f16_round(&w));
        for (epi, cpu_epi) in cases {
            let mm = Matmul {
                epilogue: epi,
                rows_per_seq: rows_per_seq as u32,
                gate_stride: n as u32,
                ..Matmul::plain(m as u32, n as u32, kk as u32)
            };
            for tiles in tile_options(&k) {
                let (got, _) = run(
                    &ctx,
                    &k,
                    Some(tiles),
                    &mm,
                    &a,
                    &w,
                    Some(&bias),
                    Some(&gate),
                    &base,
                );
                let dims = cpu_ref::Dims { m, n, k: kk };
                let mut rounded = base.clone();
                cpu_ref::matmul_bt(&a16, &w16, Some(&bias), dims, cpu_epi, &mut rounded);
                let mut exact = base.clone();
                cpu_ref::matmul_bt(&a, &w, Some(&bias), dims, cpu_epi, &mut exact);
                assert_close(
                    &format!("{epi:?} {tiles:?} vs f16-rounded inputs"),
                    &got,
                    &rounded,
                    ROUNDED_TOL,
                );
                assert_close(
                    &format!("{epi:?} {tiles:?} vs f32 inputs"),
                    &got,
                    &exact,
                    MIXED_TOL,
                );
            }
        }
    }
}

#[test]
fn emulated_mixed_product_maps_rows_with_dropout_and_aux_like_the_f32_kernel() {
    // The epilogue is matmul.wgsl's (the same keep() and row mapping): on inputs already rounded to
    // f16 the f32 kernel computes the same products, so the two agree to f32 sums.
    let ctx = context();
    let k = mixed_kernels(&ctx);
    let f32k = kernels(&ctx, 16);
    let mut rng = Rng(16);
    let (n_seq, rows_per_seq, n, kk) = (3usize, 23usize, 50usize, 41usize);
    let m = n_seq * rows_per_seq;
    let a = f16_round(&rng.vec(m * kk, 1.0));
    let w = f16_round(&rng.vec(n * kk, 1.0));
    let cache_rows = rows_per_seq + 3;
    let mm = Matmul {
        epilogue: Epilogue::Residual,
        out_rows: matmul::OutRows {
            rows_per_seq: rows_per_seq as u32,
            seq_stride: cache_rows as u32,
            row_offset: 2,
        },
        dropout: Some(matmul::Dropout {
            p: 0.25,
            seed: 77,
            salt: 3,
        }),
        ..Matmul::plain(m as u32, n as u32, kk as u32)
    };
    let cache0 = rng.vec(n_seq * cache_rows * n, 1.0);
    let (a_b, w_b) = (upload(&ctx, &a), upload(&ctx, &w));
    let go = |kernels: &Kernels| {
        let (out, aux) = (
            upload(&ctx, &cache0),
            upload(&ctx, &vec![0.0; cache0.len()]),
        );
        run_recorded(&ctx, |pb| {
            matmul::record(
                pb,
                kernels,
                "mapped",
                &mm,
                matmul::Bindings {
                    a: &a_b,
                    b: &w_b,
                    bias: None,
                    gate: None,
                    out: &out,
                    aux: Some(&aux),
                },
            )
        });
        (
            read(&ctx, &out, cache0.len()),
            read(&ctx, &aux, cache0.len()),
        )
    };
    let ((out_m, aux_m), (out_f, aux_f)) = (go(&k), go(&f32k));
    assert_close("mapped rows, dropout", &out_m, &out_f, ROUNDED_TOL);
    assert_close("aux", &aux_m, &aux_f, ROUNDED_TOL);
    let dropped = aux_m.iter().filter(|&&x| x == 0.0).count();
    assert!(dropped > 0, "dropout dropped nothing");
}

#[test]
fn mixed_product_splits_k_like_the_f32_path() {
    // As tests/split_k.rs: 64 units want 128 workgroups and a 45 × 70 weight gradient has 2 blocks,
    // so K = 2600 is cut into slices summed by col_sum.wgsl; the slices run the mixed product.
    let ctx = context_with(ContextOptions {
        compute_units: Some(64),
        ..Default::default()
    });
    for k in mixed_variants(&ctx) {
        let tk = train_kernels(&ctx, 16);
        let mut rng = Rng(17);
        let (rows, cols, m) = (45usize, 70usize, 2600usize);
        let (ld_dy, ld_x) = (rows + 3, cols + 5);
        let dy = rng.vec(m * ld_dy, 1.0);
        let x = rng.vec(m * ld_x, 1.0);
        let dw0 = rng.vec(rows * cols, 1.0);
        let mm = Matmul::weight_grad(
            m as u32,
            rows as u32,
            cols as u32,
            ld_dy as u32,
            ld_x as u32,
        );
        assert!(mm.k_slices(64) > 1, "the test must exercise the split path");
        let scratch = upload(&ctx, &vec![0.0; mm.split_scratch_floats(64)]);
        let (dy_b, x_b, out) = (upload(&ctx, &dy), upload(&ctx, &x), upload(&ctx, &dw0));
        let mut kernels_used = Vec::new();
        run_recorded(&ctx, |pb| {
            matmul::record_accumulating(
                pb,
                &k,
                &tk,
                "weight grad",
                &mm,
                matmul::AccumulateIo {
                    a: &dy_b,
                    b: &x_b,
                    out: &out,
                    scratch: &scratch,
                },
            );
            kernels_used = pb.planned().iter().map(|d| d.kernel).collect();
        });
        assert_eq!(
            kernels_used,
            [k.mixed.as_ref().unwrap().small.name, "col_sum"]
        );
        let got = read(&ctx, &out, rows * cols);
        let with_base = |p: Vec<f64>| -> Vec<f32> {
            p.iter()
                .zip(&dw0)
                .map(|(&v, &b)| (b as f64 + v) as f32)
                .collect()
        };
        let rounded = with_base(product(&mm, &f16_round(&dy), &f16_round(&x)));
        let exact = with_base(product(&mm, &dy, &x));
        assert_close(
            "split-K weight gradient vs f16-rounded",
            &got,
            &rounded,
            ROUNDED_TOL,
        );
        assert_close("split-K weight gradient vs f32", &got, &exact, MIXED_TOL);
    }
}

#[test]
fn mixed_precision_needs_cooperative_matrices_and_f32_is_untouched() {
    let ctx = context();
    let mut k = kernels(&ctx, 16);
    let mixed = pollster::block_on(k.set_precision(&ctx, Precision::Mixed));
    if ctx.cooperative_matrix.is_some() {
        // With tensor cores mixed precision takes the cooperative kernel.
        mixed.unwrap();
        assert_eq!(k.mixed.as_ref().unwrap().small.name, "matmul_coop");
    } else {
        // Without them (lavapipe) asking for mixed precision is an error naming them.
        let err = mixed
            .expect_err("mixed precision without cooperative matrices must fail")
            .to_string();
        assert!(err.contains("cooperative matrices"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(k.mixed.is_none());
    }
    // f32 leaves every product on the f32 kernels.
    pollster::block_on(k.set_precision(&ctx, Precision::F32)).unwrap();
    let (a, w) = (vec![1.0; 20 * 8], vec![1.0; 9 * 8]);
    let (_, kernel) = run(
        &ctx,
        &k,
        None,
        &Matmul::plain(20, 9, 8),
        &a,
        &w,
        None,
        None,
        &[0.0; 180],
    );
    assert_eq!(kernel, "matmul");
}

#[test]
fn planned_mixed_training_step_runs_every_gemm_on_tensor_cores() {
    use bd3_gpu::plan::AdapterDesc;
    use bd3_gpu::{GpuModel, OptimConfig, Trainer};
    use std::sync::Arc;
    let json = r#"{"model_type":"bd3lm","block_size":4,"cond_dim":24,"hidden_dim":40,"model_length":20,"n_blocks":2,"n_heads":2,"vocab_size":70}"#;
    let cfg = bd3_model::ModelConfig::from_json_bytes(json.as_bytes(), "mixed plan", None).unwrap();
    // Batch 8: 320 rows of x_t ⊕ x_0, so on one unit the block products take 128 × 128 tiles.
    let shape = bd3_gpu::train_loop::train_shape(&cfg, 8, 0.1);
    let coop = ["matmul_coop", "matmul_coop_large"];
    for units in [1, 132] {
        let adapter = AdapterDesc::native(units, false, false).with_cooperative_matrix();
        let plan = |precision: Precision| {
            let ctx = Arc::new(GpuContext::planning(&adapter, ContextOptions::default()));
            let mut model = pollster::block_on(GpuModel::allocate(ctx, cfg.clone())).unwrap();
            pollster::block_on(model.set_precision(precision)).unwrap();
            let mut trainer =
                pollster::block_on(Trainer::new(&model, OptimConfig::default())).unwrap();
            trainer.plan_step(&model, &shape).unwrap()
        };
        let (f32_plan, mixed_plan) = (plan(Precision::F32), plan(Precision::Mixed));
        let gemm = [
            "matmul",
            "matmul_narrow",
            "matmul_large",
            "matmul_large_unaligned",
            "matmul_large_k16",
            "matmul_large_k16_unaligned",
            "gemv",
            "gemv_scalar",
            "gemv_subgroup",
            "gemv_subgroup_scalar",
        ];
        let count = |p: &[bd3_gpu::PlannedDispatch], kernels: &[&str]| -> (usize, u64) {
            let d: Vec<_> = p.iter().filter(|d| kernels.contains(&d.kernel)).collect();
            (d.len(), d.iter().map(|d| d.flops).sum())
        };
        assert_eq!(count(&f32_plan, &coop).0, 0);
        assert_eq!(
            count(&mixed_plan, &gemm).0,
            0,
            "an f32 GEMM left in mixed precision"
        );
        // The same products with the same arithmetic, each now on a cooperative kernel (128
        // threads: 4 subgroups of 32).
        assert_eq!(
            count(&mixed_plan, &coop),
            count(&f32_plan, &gemm),
            "{units} units"
        );
        assert!(mixed_plan
            .iter()
            .filter(|d| coop.contains(&d.kernel))
            .all(|d| d.threads == 128));
        let large = count(&mixed_plan, &["matmul_coop_large"]).0;
        assert_eq!(
            large > 0,
            units == 1,
            "{units} units: {large} products on 128 × 128 tiles"
        );
    }
}

/// A small BD3LM with the official initialisation (seed 3) on `ctx`.
fn small_model(ctx: &std::sync::Arc<GpuContext>) -> bd3_gpu::GpuModel {
    let json = r#"{"model_type":"bd3lm","block_size":4,"cond_dim":24,"hidden_dim":40,"model_length":16,"n_blocks":2,"n_heads":2,"vocab_size":70}"#;
    let cfg = bd3_model::ModelConfig::from_json_bytes(json.as_bytes(), "mixed test", None).unwrap();
    let init = bd3_model::init::official_init(&cfg, 3);
    let ckpt = bd3_model::Checkpoint::from_bytes(
        bd3_model::init::to_safetensors(&cfg, &init, None),
        "initial weights",
        &cfg,
    )
    .unwrap();
    pollster::block_on(bd3_gpu::GpuModel::load(ctx.clone(), cfg, &ckpt)).unwrap()
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn read_all(ctx: &GpuContext, w: &bd3_gpu::Weights) -> Tensors {
    pollster::block_on(bd3_gpu::train::read_tensors(ctx, w)).unwrap()
}

fn write_all(ctx: &GpuContext, w: &bd3_gpu::Weights, values: &Tensors, scale: f32) {
    let map = values
        .iter()
        .map(|(n, _, v)| (n.clone(), v.iter().map(|x| x * scale).collect()))
        .collect();
    bd3_gpu::train::write_tensors(ctx, w, &map).unwrap();
}

fn flat(t: &Tensors) -> Vec<f32> {
    t.iter().flat_map(|(_, _, v)| v.iter().copied()).collect()
}

#[test]
fn loss_scaling_skips_an_overflowed_step_on_the_gpu_and_unscales_a_good_one() {
    use bd3_gpu::loss_scale::{LossScaler, StepOutcome};
    use bd3_gpu::{OptimConfig, Trainer};
    let ctx = context();
    let (plain_model, scaled_model) = (small_model(&ctx), small_model(&ctx));
    let optim = OptimConfig::default(); // clip 1.0, EMA on
    let mut plain = pollster::block_on(Trainer::new(&plain_model, optim)).unwrap();
    let mut scaled = pollster::block_on(Trainer::new(&scaled_model, optim)).unwrap();
    scaled.set_loss_scaling(Some(LossScaler::new(1024.0, 2000)));
    let w0 = read_all(&ctx, &scaled_model.weights);
    // Gradients of norm ≫ 1, so clipping acts: a scale left in them would change the clip.
    let mut rng = Rng(18);
    let grads: Tensors = w0
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), rng.vec(v.len(), 0.5)))
        .collect();

    // An overflowed step: one gradient is inf (what f16 staging makes of a too-large scaled value).
    let mut overflowed = grads.clone();
    overflowed[1].2[3] = f32::INFINITY;
    write_all(&ctx, scaled.gradients(), &overflowed, 1024.0);
    scaled.optimizer_step(&scaled_model, optim.lr).unwrap();
    let norm = pollster::block_on(scaled.last_grad_norm(&ctx))
        .unwrap()
        .unwrap();
    assert!(!norm.is_finite(), "norm {norm}");
    assert_eq!(scaled.update_loss_scale(norm), Some(StepOutcome::Skipped));
    assert_eq!(
        scaled.loss_scaler().unwrap().scale(),
        512.0,
        "the scale halves"
    );
    assert_eq!(scaled.step, 0, "the skipped step is not counted");
    // Weights, moments and EMA untouched (bit for bit), gradients cleared for the next step.
    assert_eq!(flat(&read_all(&ctx, &scaled_model.weights)), flat(&w0));
    assert!(flat(&read_all(&ctx, &scaled.m)).iter().all(|&x| x == 0.0));
    assert!(flat(&read_all(&ctx, &scaled.v)).iter().all(|&x| x == 0.0));
    assert_eq!(
        flat(&read_all(&ctx, scaled.ema.as_ref().unwrap())),
        flat(&w0)
    );
    assert!(flat(&read_all(&ctx, scaled.gradients()))
        .iter()
        .all(|&x| x == 0.0));

    // A good step at the halved scale equals the unscaled f32 step: unscaled before clipping.
    write_all(&ctx, plain.gradients(), &grads, 1.0);
    write_all(&ctx, scaled.gradients(), &grads, 512.0);
    plain.optimizer_step(&plain_model, optim.lr).unwrap();
    scaled.optimizer_step(&scaled_model, optim.lr).unwrap();
    let plain_norm = pollster::block_on(plain.last_grad_norm(&ctx))
        .unwrap()
        .unwrap();
    let scaled_norm = pollster::block_on(scaled.last_grad_norm(&ctx))
        .unwrap()
        .unwrap();
    assert!(plain_norm > 10.0, "clipping must act ({plain_norm})");
    assert!(
        (scaled_norm / plain_norm - 1.0).abs() < 1e-5,
        "unscaled norm {scaled_norm} vs {plain_norm}"
    );
    assert_eq!(
        scaled.update_loss_scale(scaled_norm),
        Some(StepOutcome::Applied)
    );
    assert_eq!(
        plain.update_loss_scale(plain_norm),
        None,
        "f32 has no scaler"
    );
    assert_eq!(scaled.step, 1);
    let (wp, ws) = (
        flat(&read_all(&ctx, &plain_model.weights)),
        flat(&read_all(&ctx, &scaled_model.weights)),
    );
    assert_ne!(ws, flat(&w0), "the good step changed the weights");
    assert_close("weights after a loss-scaled step", &ws, &wp, 1e-6);
    assert_close(
        "EMA after a loss-scaled step",
        &flat(&read_all(&ctx, scaled.ema.as_ref().unwrap())),
        &flat(&read_all(&ctx, plain.ema.as_ref().unwrap())),
        1e-6,
    );
}

#[test]
fn mixed_training_on_the_emulated_twin_follows_f32_training() {
    // Six steps of the real training step (forward, backward, loss scaling, AdamW) with every GEMM on
    // the emulated mixed product, against the same steps in f32 from the same seed: the losses agree
    // to 1e-3 relative (measured ~2e-6: the official initialisation zeroes the output layer, so the
    // first steps move little).
    use bd3_gpu::loss_scale::LossScaler;
    use bd3_gpu::train_loop::{train_shape, train_step, StepSettings};
    use bd3_gpu::{OptimConfig, Trainer};
    let ctx = context();
    let mut rng = Rng(19);
    let train: Vec<Vec<u32>> = (0..12)
        .map(|_| (0..16).map(|_| rng.below(68)).collect())
        .collect();
    let settings = StepSettings {
        seed: 5,
        batch: 2,
        grad_accum: 1,
        lr: 3e-3,
        warmup: 0,
    };
    let losses = |mixed: bool| -> Vec<(f64, bool)> {
        let mut model = small_model(&ctx);
        if mixed {
            pollster::block_on(model.kernels.set_emulated_mixed_precision(&ctx)).unwrap();
        }
        let mut trainer = pollster::block_on(Trainer::new(&model, OptimConfig::default())).unwrap();
        if mixed {
            trainer.set_loss_scaling(Some(LossScaler::default()));
        }
        let shape = train_shape(&model.cfg, settings.batch, 0.1);
        (0..6)
            .map(|step| {
                let r = pollster::block_on(train_step(
                    &model,
                    &mut trainer,
                    &shape,
                    &train,
                    &settings,
                    bd3_model::objective::Clip::NELBO,
                    step,
                ))
                .unwrap();
                assert_eq!(r.loss_scale.is_some(), mixed);
                (r.loss, r.skipped)
            })
            .collect()
    };
    let (f32_run, mixed_run) = (losses(false), losses(true));
    eprintln!("f32 {f32_run:?}\nmixed {mixed_run:?}");
    assert!(
        mixed_run.iter().all(|&(_, skipped)| !skipped),
        "no overflow at these sizes"
    );
    for (step, ((a, _), (b, _))) in f32_run.iter().zip(&mixed_run).enumerate() {
        assert!(a.is_finite() && b.is_finite());
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "step {step}: f32 loss {a}, mixed {b}"
        );
    }
    assert!(
        f32_run
            .iter()
            .zip(&mixed_run)
            .any(|((a, _), (b, _))| a != b),
        "the mixed run must not be the f32 run"
    );
}

#[test]
fn an_operand_beyond_the_f16_range_overflows_to_a_non_finite_product() {
    // Loss scaling relies on this: a scaled gradient too large for f16 becomes inf while staged, the
    // product and then the global norm are not finite, and the step is skipped. A kernel that
    // saturated instead would train on silently wrong gradients.
    let ctx = context();
    let k = mixed_kernels(&ctx);
    let (m, n, kk) = (20usize, 9usize, 8usize);
    let mut a = vec![0.5f32; m * kk];
    a[3 * kk + 2] = 1e6; // row 3; f16's largest finite value is 65504
    let w = vec![0.25f32; n * kk];
    let (got, _) = run(
        &ctx,
        &k,
        None,
        &Matmul::plain(m as u32, n as u32, kk as u32),
        &a,
        &w,
        None,
        None,
        &vec![0.0; m * n],
    );
    for i in 0..m {
        for j in 0..n {
            let v = got[i * n + j];
            if i == 3 {
                assert!(!v.is_finite(), "row 3 must overflow, got {v}");
            } else {
                assert_eq!(v, 0.5 * 0.25 * kk as f32, "row {i}");
            }
        }
    }
}

#[test]
fn the_plan_picks_128_blocks_only_where_they_fill_the_gpu() {
    // One compute unit wants 2 workgroups: a 131 × 200 product has 2 × 2 blocks of 128 (large
    // tiles), a 70 × 45 one only 1 (64 × 64 tiles); 132 units take the small tiles for both.
    for units in [1, 132] {
        let ctx = context_with(ContextOptions {
            compute_units: Some(units),
            ..Default::default()
        });
        let k = mixed_kernels(&ctx);
        if k.mixed.as_ref().unwrap().large.is_none() {
            eprintln!(
                "{}: workgroup memory too small for 128 × 128 blocks",
                ctx.adapter_summary()
            );
        }
        let mut rng = Rng(20);
        for (m, n, kk) in [(131usize, 200usize, 45usize), (70, 45, 37)] {
            let (a, w) = (rng.vec(m * kk, 1.0), rng.vec(n * kk, 1.0));
            let mm = Matmul::plain(m as u32, n as u32, kk as u32);
            let (got, kernel) = run(&ctx, &k, None, &mm, &a, &w, None, None, &vec![0.0; m * n]);
            let large = units == 1 && m == 131 && k.mixed.as_ref().unwrap().large.is_some();
            let want_tiles = if large {
                CoopTiles::LARGE
            } else {
                CoopTiles::SMALL
            };
            assert_eq!(
                kernel,
                kernel_of(&k, want_tiles).name,
                "{m}×{n} on {units} units"
            );
            let want: Vec<f32> = product(&mm, &f16_round(&a), &f16_round(&w))
                .iter()
                .map(|&v| v as f32)
                .collect();
            assert_close(
                &format!("{m}×{n} on {units} units"),
                &got,
                &want,
                ROUNDED_TOL,
            );
        }
    }
}

/// The tensor-core attention forward against the plain CPU loop (f64 softmax over the original f32
/// inputs): queries, keys and values rounded to f16 as they are staged, probabilities rounded to f16
/// for P·V, sums in f32. Tier: 1e-3 of max |want| (f16 has an 11-bit significand, on both products;
/// measured below).
const ATTENTION_MIXED_TOL: f64 = 1e-3;

/// One self-attention case through `attention::record` with mixed precision on (the emulated twin
/// here, the tensor-core kernel where the adapter has cooperative matrices), with the log-sum-exp,
/// which must match the f32 kernel's (the backward kernels recompute the scores from it).
#[allow(clippy::too_many_arguments)]
fn coop_attention_case(
    head_dim: usize,
    mask: bd3_model::AttentionMask,
    batch: usize,
    seq: usize,
    n_heads: usize,
    pos_period: usize,
    q_rows: Option<(usize, usize)>,
    seed: u64,
) {
    use bd3_gpu::ops::attention::{self, Attention};
    use bd3_model::cpu_ref;
    let ctx = context();
    let f32k = kernels(&ctx, head_dim);
    let mut variants = vec![{
        let mut k = kernels(&ctx, head_dim);
        pollster::block_on(k.set_emulated_mixed_precision(&ctx)).unwrap();
        k
    }];
    if ctx.cooperative_matrix.is_some() {
        let mut k = kernels(&ctx, head_dim);
        pollster::block_on(k.set_precision(&ctx, Precision::Mixed)).unwrap();
        variants.push(k);
    }
    let mut rng = Rng(seed);
    let d = n_heads * head_dim;
    let qkv = rng.vec(batch * seq * 3 * d, 1.5);
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|j| (1.0 / 10000f64.powf(2.0 * j as f64 / head_dim as f64)) as f32)
        .collect();
    let (cos, sin) = bd3_model::tables::rotary_tables(&inv_freq, pos_period.min(seq));
    let mut a = Attention::self_attention(
        batch as u32,
        seq as u32,
        n_heads as u32,
        head_dim as u32,
        mask,
        pos_period as u32,
    );
    // KV-cache style: n_q queries from row row0 of each sequence (logical indices the same).
    let (row0, n_q) = q_rows.unwrap_or((0, seq));
    a.n_q = n_q as u32;
    a.q_row_offset = row0 as u32;
    a.q_index_offset = row0 as u32;
    let all = cpu_ref::attention(
        &qkv,
        cpu_ref::AttentionShape {
            batch,
            seq,
            n_heads,
            mask,
            pos_period,
        },
        &cos,
        &sin,
    );
    let want: Vec<f32> = (0..batch)
        .flat_map(|b| all[(b * seq + row0) * d..(b * seq + row0 + n_q) * d].to_vec())
        .collect();
    let (qkv_buf, cos_buf, sin_buf) = (upload(&ctx, &qkv), upload(&ctx, &cos), upload(&ctx, &sin));
    let lse_len = 2 * batch * n_heads * n_q;
    let run = |k: &Kernels| {
        let out = upload(&ctx, &vec![0.0; want.len()]);
        let lse = upload(&ctx, &vec![0.0; lse_len]);
        let mut kernel = "";
        run_recorded(&ctx, |pb| {
            let b = attention::Bindings {
                qrows: &qkv_buf,
                kvrows: &qkv_buf,
                rope_cos: &cos_buf,
                rope_sin: &sin_buf,
                out: &out,
                lse_delta: Some(&lse),
                partials: None,
            };
            attention::record(pb, k, &a, b);
            kernel = pb.planned()[0].kernel;
        });
        (
            read(&ctx, &out, want.len()),
            read(&ctx, &lse, lse_len),
            kernel,
        )
    };
    let (_, lse_f32, f32_kernel) = run(&f32k);
    assert_eq!(f32_kernel, "attention");
    for k in &variants {
        let coop = k.mixed.as_ref().unwrap().attention.as_ref().expect(
            "the adapter's workgroup memory holds the tensor-core attention at this head dim",
        );
        let (got, lse, kernel) = run(k);
        let what = format!("{kernel} {mask:?} dh={head_dim} {n_q} of {seq} from {row0}");
        assert_eq!(kernel, coop.forward.name);
        assert_close(&what, &got, &want, ATTENTION_MIXED_TOL);
        let max_ref = want.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w as f64).abs())
            .fold(0.0, f64::max);
        eprintln!("{what}: max error {:.2e} of max |want|", err / max_ref);
        // The inputs really were rounded (else an f32 pass would be passing a loose test).
        assert!(err > 1e-6 * max_ref, "{what}: no f16 rounding visible");
        for (i, (g, w)) in lse.iter().zip(&lse_f32).enumerate().step_by(2) {
            assert!(
                (g - w).abs() <= 2e-3 * (1.0 + w.abs()),
                "{what}: log-sum-exp {i}: {g} vs the f32 kernel's {w}"
            );
        }
    }
}

#[test]
fn tensor_core_attention_matches_the_cpu_loop_for_every_mask() {
    use bd3_model::AttentionMask;
    // Lengths that are no multiple of the 64-query or 32-key tiles: partial tiles, skipped tiles,
    // tiles inside the mask and boundary tiles masked element-wise; x_t ⊕ x_0 with a block size that
    // does not divide the tiles.
    coop_attention_case(64, AttentionMask::Full, 2, 45, 3, 45, None, 70);
    coop_attention_case(64, AttentionMask::Causal, 1, 101, 2, 101, None, 71);
    coop_attention_case(
        64,
        AttentionMask::BlockCausal { block_size: 4 },
        2,
        45,
        2,
        45,
        None,
        72,
    );
    coop_attention_case(
        64,
        AttentionMask::BlockDiff {
            half_len: 37,
            block_size: 5,
        },
        2,
        74,
        2,
        37,
        None,
        73,
    );
    coop_attention_case(
        32,
        AttentionMask::BlockDiff {
            half_len: 40,
            block_size: 16,
        },
        1,
        80,
        3,
        40,
        None,
        74,
    );
    // Queries at an offset of the rows (several query tiles, a partial last key tile), head dim 16.
    coop_attention_case(16, AttentionMask::Full, 1, 133, 2, 133, Some((30, 70)), 75);
}

#[test]
fn planned_mixed_training_runs_attention_on_tensor_cores_where_the_head_dim_allows() {
    // Head dim 32 (a multiple of the 16-wide tile): every attention kernel of a mixed training step
    // takes its tensor-core twin (2 subgroups of 32; 32 queries a workgroup for the forward and the
    // query gradient, 16 keys for the key/value gradient); head dim 20 keeps the f32 kernels.
    use bd3_gpu::plan::AdapterDesc;
    use bd3_gpu::{GpuModel, OptimConfig, Trainer};
    use std::sync::Arc;
    for (hidden, coop) in [(64, true), (40, false)] {
        let json = format!(
            r#"{{"model_type":"bd3lm","block_size":4,"cond_dim":24,"hidden_dim":{hidden},"model_length":20,"n_blocks":2,"n_heads":2,"vocab_size":70}}"#
        );
        let cfg = bd3_model::ModelConfig::from_json_bytes(json.as_bytes(), "mixed attention", None)
            .unwrap();
        let shape = bd3_gpu::train_loop::train_shape(&cfg, 3, 0.1);
        let adapter = AdapterDesc::native(132, true, true).with_cooperative_matrix();
        let ctx = Arc::new(GpuContext::planning(&adapter, ContextOptions::default()));
        let mut model = pollster::block_on(GpuModel::allocate(ctx, cfg.clone())).unwrap();
        pollster::block_on(model.set_precision(Precision::Mixed)).unwrap();
        let mut trainer = pollster::block_on(Trainer::new(&model, OptimConfig::default())).unwrap();
        let plan = trainer.plan_step(&model, &shape).unwrap();
        // 2L = 40 rows per sequence, 2 heads, batch 3.
        for (label, kernel, groups) in [
            ("attention", "attention_coop", [2, 2, 3]),
            ("attention_dq", "attention_dq_coop", [2, 2, 3]),
            ("attention_dkv", "attention_dkv_coop", [3, 2, 3]),
        ] {
            let runs: Vec<_> = plan.iter().filter(|d| d.label == label).collect();
            assert_eq!(runs.len(), cfg.n_blocks, "hidden {hidden}: {label}");
            for d in runs {
                if coop {
                    assert_eq!((d.kernel, d.threads, d.groups), (kernel, 64, groups));
                } else {
                    assert_eq!(d.kernel, label);
                }
            }
        }
    }
}

/// The attention backward of mixed precision (forward, query gradient and key/value gradient on
/// tensor cores: the emulated twins here, the kernels themselves where the adapter has cooperative
/// matrices) against the plain CPU loop's gradient of the f32 attention. Tier: 1.5e-3 of max |want|
/// (f16 operands in every product, dS rounded to f16 before dS·K' and dSᵀ·Q'; measured below).
const ATTENTION_BACKWARD_MIXED_TOL: f64 = 1.5e-3;

fn coop_attention_backward_case(
    head_dim: usize,
    mask: bd3_model::AttentionMask,
    batch: usize,
    seq: usize,
    n_heads: usize,
    seed: u64,
) {
    use bd3_gpu::ops::attention::{self, Attention};
    use bd3_model::cpu_ref;
    let ctx = context();
    let tk = train_kernels(&ctx, head_dim);
    let mut variants = vec![{
        let mut k = kernels(&ctx, head_dim);
        pollster::block_on(k.set_emulated_mixed_precision(&ctx)).unwrap();
        k
    }];
    if ctx.cooperative_matrix.is_some() {
        let mut k = kernels(&ctx, head_dim);
        pollster::block_on(k.set_precision(&ctx, Precision::Mixed)).unwrap();
        variants.push(k);
    }
    let mut rng = Rng(seed);
    let d = n_heads * head_dim;
    let qkv = rng.vec(batch * seq * 3 * d, 1.2);
    let d_o = rng.vec(batch * seq * d, 1.0);
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|j| (1.0 / 10000f64.powf(2.0 * j as f64 / head_dim as f64)) as f32)
        .collect();
    let (cos, sin) = bd3_model::tables::rotary_tables(&inv, seq);
    let a = Attention::self_attention(
        batch as u32,
        seq as u32,
        n_heads as u32,
        head_dim as u32,
        mask,
        seq as u32,
    );
    let want = cpu_ref::attention_backward(&qkv, &d_o, batch, seq, n_heads, mask, &cos, &sin, seq);
    let (qkv_b, cos_b, sin_b, do_b) = (
        upload(&ctx, &qkv),
        upload(&ctx, &cos),
        upload(&ctx, &sin),
        upload(&ctx, &d_o),
    );
    for k in &variants {
        let o = upload(&ctx, &vec![0.0; batch * seq * d]);
        let lse = upload(&ctx, &vec![0.0; 2 * batch * n_heads * seq]);
        let dqkv = upload(&ctx, &vec![0.0; batch * seq * 3 * d]);
        let mut kernels_run = Vec::new();
        run_recorded(&ctx, |pb| {
            let (rope_cos, rope_sin) = (&cos_b, &sin_b);
            attention::record(
                pb,
                k,
                &a,
                attention::Bindings {
                    qrows: &qkv_b,
                    kvrows: &qkv_b,
                    rope_cos,
                    rope_sin,
                    out: &o,
                    lse_delta: Some(&lse),
                    partials: None,
                },
            );
            attention::record_query_grad(
                pb,
                k,
                &tk,
                &a,
                attention::QueryGradBindings {
                    qkv: &qkv_b,
                    rope_cos,
                    rope_sin,
                    o: &o,
                    d_o: &do_b,
                    lse_delta: &lse,
                    dqkv: &dqkv,
                },
            );
            attention::record_key_value_grad(
                pb,
                k,
                &tk,
                &a,
                attention::KeyValueGradBindings {
                    qkv: &qkv_b,
                    rope_cos,
                    rope_sin,
                    d_o: &do_b,
                    lse_delta: &lse,
                    dqkv: &dqkv,
                },
            );
            kernels_run = pb.planned().iter().map(|p| p.kernel).collect();
        });
        let coop = k.mixed.as_ref().unwrap().attention.as_ref().expect(
            "the adapter's workgroup memory holds the tensor-core attention at this head dim",
        );
        assert_eq!(
            kernels_run,
            [
                coop.forward.name,
                coop.query_grad.name,
                coop.key_value_grad.name
            ]
        );
        let got = read(&ctx, &dqkv, want.len());
        let what = format!("{} {mask:?} dh={head_dim} seq {seq}", coop.query_grad.name);
        // dq, dk and dv (the thirds of each row) against their own scales.
        for (part, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let pick = |x: &[f32]| -> Vec<f32> {
                x.chunks(3 * d)
                    .flat_map(|row| row[part * d..(part + 1) * d].to_vec())
                    .collect()
            };
            let (g, w) = (pick(&got), pick(&want));
            let max_ref = w.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
            let err = g
                .iter()
                .zip(&w)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "{what} {name}: max error {:.2e} of max |want|",
                err / max_ref
            );
            assert!(
                err > 1e-6 * max_ref,
                "{what} {name}: no f16 rounding visible"
            );
            assert_close(
                &format!("{what} {name}"),
                &g,
                &w,
                ATTENTION_BACKWARD_MIXED_TOL,
            );
        }
    }
}

#[test]
fn tensor_core_attention_backward_matches_the_cpu_loop_for_every_mask() {
    use bd3_model::AttentionMask;
    // Lengths that are no multiple of the 32-query and 16/32-key tiles; block sizes that do (16) and
    // do not (5) line up with them.
    coop_attention_backward_case(64, AttentionMask::Full, 2, 45, 2, 80);
    coop_attention_backward_case(64, AttentionMask::Causal, 1, 77, 2, 81);
    coop_attention_backward_case(
        64,
        AttentionMask::BlockCausal { block_size: 4 },
        1,
        45,
        3,
        82,
    );
    coop_attention_backward_case(
        64,
        AttentionMask::BlockDiff {
            half_len: 37,
            block_size: 5,
        },
        2,
        74,
        2,
        83,
    );
    coop_attention_backward_case(
        32,
        AttentionMask::BlockDiff {
            half_len: 40,
            block_size: 16,
        },
        1,
        80,
        2,
        84,
    );
    coop_attention_backward_case(16, AttentionMask::Causal, 1, 50, 3, 85);
}
