//! The matrix-vector kernels (`shaders/gemv.wgsl`, `shaders/gemv_subgroup.wgsl`) against plain CPU
//! loops (`bd3_model::cpu_ref`, f64) on random non-zero inputs at awkward sizes: every reduction
//! (subgroups, workgroup memory), both views (vec4 where aligned, scalar), 1, 2, 4 and 8 columns per
//! workgroup (each its own compiled kernel), the LayerNorm prologue with and without modulation, row index and chunk offset, the
//! prologue that gathers embedding rows by token id (f32 and f16 tables) and keeps them, and f16
//! weights.

mod common;
use bd3_gpu::ops::gemv::{
    self, columns_per_group, Gemv, GemvKernels, Norm, Reduction, RowSource, WeightFormat,
};
use bd3_gpu::ops::layernorm::{LayerNorm, Modulation};
use bd3_gpu::ops::matmul::{Dropout, Epilogue, Matmul, OutRows};
use bd3_gpu::ops::{self, Kernels};
use bd3_gpu::{Buf, ContextOptions, GpuContext};
use bd3_model::cpu_ref;
use common::*;
use std::sync::Arc;

/// Compute units the contexts are described with: 132 gives these small N one column per
/// workgroup, 8 two, 5 four, 2 eight (see `columns_per_group`).
const UNITS: [u32; 4] = [132, 8, 5, 2];

fn context_units(units: u32) -> Arc<GpuContext> {
    context_with(ContextOptions {
        compute_units: Some(units),
        ..Default::default()
    })
}

/// Both reductions; lavapipe (the test adapter) has subgroups, so both really run.
fn reductions(ctx: &GpuContext) -> [Reduction; 2] {
    assert!(
        ctx.features.contains(wgpu::Features::SUBGROUP),
        "the test adapter must have subgroups so the subgroup kernel is tested (lavapipe has)"
    );
    [Reduction::Workgroup, Reduction::Subgroup]
}

fn gemv_kernels(ctx: &GpuContext, r: Reduction, w: WeightFormat) -> GemvKernels {
    pollster::block_on(GemvKernels::new(ctx, r, w)).unwrap()
}

/// The views a product can use: vec4 only where aligned, scalar always.
fn views(g: &Gemv) -> Vec<bool> {
    if g.vec4_aligned() {
        vec![true, false]
    } else {
        vec![false]
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &GpuContext,
    k: &Kernels,
    gk: &GemvKernels,
    vec4: bool,
    g: &Gemv,
    b: gemv::Bindings,
) -> &'static str {
    let mut kernel = "";
    run_recorded(ctx, |pb| {
        gemv::record_views(pb, k, gk, vec4, "gemv", g, b).unwrap();
        kernel = pb.planned()[0].kernel;
    });
    kernel
}

#[test]
fn gemv_every_epilogue_reduction_view_and_column_count() {
    for units in UNITS {
        let ctx = context_units(units);
        let k = kernels(&ctx, 16);
        let mut rng = Rng(21 + units as u64);
        let n = 45;
        let cols = columns_per_group(n as u32, units);
        assert_eq!(
            cols,
            [1, 2, 4, 8][UNITS.iter().position(|&u| u == units).unwrap()]
        );
        for reduction in reductions(&ctx) {
            let gk = gemv_kernels(&ctx, reduction, WeightFormat::F32);
            // K = 260: a multiple of 4 but not of the 64 threads or the 256 of a step; 301: scalar only.
            for kk in [260usize, 301] {
                let w = rng.vec(n * kk, 1.0);
                let bias = rng.vec(n, 0.5);
                for m in [1usize, 3, 7, 16] {
                    let a = rng.vec(m * kk, 1.0);
                    let rows_per_seq = m.div_ceil(2);
                    let n_seq = m.div_ceil(rows_per_seq);
                    let gate = rng.vec(n_seq * n, 1.0);
                    let ones = vec![1.0; n_seq * n];
                    let base = rng.vec(m * n, 1.0);
                    let cases = epilogue_cases(&gate, &ones, rows_per_seq);
                    let (a_b, w_b, bias_b, gate_b) = (
                        upload(&ctx, &a),
                        upload(&ctx, &w),
                        upload(&ctx, &bias),
                        upload(&ctx, &gate),
                    );
                    for (epi, cpu_epi) in cases {
                        let mut want = base.clone();
                        let dims = cpu_ref::Dims { m, n, k: kk };
                        cpu_ref::matmul_bt(&a, &w, Some(&bias), dims, cpu_epi, &mut want);
                        let g = Gemv::plain(Matmul {
                            epilogue: epi,
                            rows_per_seq: rows_per_seq as u32,
                            gate_stride: n as u32,
                            ..Matmul::plain(m as u32, n as u32, kk as u32)
                        });
                        for vec4 in views(&g) {
                            let out = upload(&ctx, &base);
                            let b = gemv::Bindings {
                                a: &a_b,
                                b: &w_b,
                                bias: Some(&bias_b),
                                gate: Some(&gate_b),
                                out: &out,
                                aux: None,
                                ln_w: None,
                                row_index: None,
                            };
                            let kernel = run(&ctx, &k, &gk, vec4, &g, b);
                            assert_close(
                                &format!("{kernel} {epi:?} m={m} k={kk} cols={cols}"),
                                &read(&ctx, &out, m * n),
                                &want,
                                1e-5,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The CPU side of a LayerNorm prologue: the mapped input rows (sequence s = g / map_rows,
/// input row s·in_rows + offset + (g % map_rows or row_index[g])), normalised and modulated.
#[allow(clippy::too_many_arguments)]
fn normalised_rows(
    x: &[f32],
    dim: usize,
    ln_w: &[f32],
    modv: Option<(&[f32], Modulation)>,
    rows: std::ops::Range<usize>,
    (in_rows, map_rows, offset): (usize, usize, usize),
    row_index: Option<&[u32]>,
) -> Vec<f32> {
    let mut out = Vec::new();
    for g in rows {
        let s = g / map_rows;
        let i = row_index.map_or(g % map_rows, |ri| ri[g] as usize);
        let row = s * in_rows + offset + i;
        let shift_scale: Option<Vec<f32>> = modv.map(|(m, md)| {
            let base = s * md.stride as usize;
            let shift = &m[base + md.shift as usize..base + md.shift as usize + dim];
            let scale = &m[base + md.scale as usize..base + md.scale as usize + dim];
            [shift, scale].concat()
        });
        out.extend(cpu_ref::layernorm_modulate(
            &x[row * dim..(row + 1) * dim],
            dim,
            ln_w,
            shift_scale.as_deref(),
            1,
        ));
    }
    out
}

/// gelu(x·wᵀ + bias) of `m` normalised rows and `n` columns: what the prologue tests expect.
fn gelu_product(x: &[f32], w: &[f32], bias: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    let k = x.len() / m;
    cpu_ref::matmul_bt(
        x,
        w,
        Some(bias),
        cpu_ref::Dims { m, n, k },
        cpu_ref::Epilogue::Gelu,
        &mut out,
    );
    out
}

#[test]
fn gemv_layernorm_prologue_with_modulation_row_index_and_chunks() {
    for units in [132, 2] {
        let ctx = context_units(units);
        let k = kernels(&ctx, 16);
        let mut rng = Rng(40 + units as u64);
        let n = 37;
        for reduction in reductions(&ctx) {
            let gk = gemv_kernels(&ctx, reduction, WeightFormat::F32);
            // 300: two steps of K (vec4); 200 and 131: one step, where kernels of ≤ 2 columns keep
            // the rows in registers (vec4 and scalar views).
            for dim in [300usize, 200, 131] {
                // Two sequences of 9 input rows; rows mapped from row 1 of each, 8 per sequence (16 in all).
                let (n_seq, in_rows, map_rows, offset) = (2usize, 9usize, 8usize, 1usize);
                let x: Vec<f32> = rng
                    .vec(n_seq * in_rows * dim, 2.0)
                    .iter()
                    .map(|v| v + 0.7)
                    .collect();
                let ln_w = rng.vec(dim, 1.0);
                let md = Modulation {
                    shift: (3 * dim) as u32,
                    scale: (4 * dim) as u32,
                    stride: (6 * dim) as u32,
                };
                let modv = rng.vec(n_seq * 6 * dim, 0.5);
                let w = rng.vec(n * dim, 1.0);
                let bias = rng.vec(n, 0.5);
                let row_index: Vec<u32> = (0..n_seq * map_rows)
                    .map(|_| rng.below((in_rows - offset) as u32))
                    .collect();
                let (x_b, lnw_b, mod_b, w_b, bias_b, ri_b) = (
                    upload(&ctx, &x),
                    upload(&ctx, &ln_w),
                    upload(&ctx, &modv),
                    upload(&ctx, &w),
                    upload(&ctx, &bias),
                    upload_u32(&ctx, &row_index),
                );
                // (rows of this product, first mapped row): a whole call, chunks of the head.
                for (m, first_row) in [(16usize, 0usize), (1, 0), (3, 6), (7, 9)] {
                    for modulated in [false, true] {
                        for indexed in [false, true] {
                            let ln = LayerNorm {
                                n_rows: (n_seq * map_rows) as u32,
                                dim: dim as u32,
                                in_rows_per_seq: in_rows as u32,
                                out_rows_per_seq: map_rows as u32,
                                in_row_offset: offset as u32,
                                modulation: modulated.then_some(md),
                            };
                            let normed = normalised_rows(
                                &x,
                                dim,
                                &ln_w,
                                modulated.then_some((&modv[..], md)),
                                first_row..first_row + m,
                                (in_rows, map_rows, offset),
                                indexed.then_some(&row_index[..]),
                            );
                            let want = gelu_product(&normed, &w, &bias, m, n);
                            let g = Gemv {
                                mm: Matmul {
                                    epilogue: Epilogue::Gelu,
                                    a_row_stride: dim as u32,
                                    ..Matmul::plain(m as u32, n as u32, dim as u32)
                                },
                                norm: Some(Norm {
                                    ln,
                                    first_row: first_row as u32,
                                    source: RowSource::Activations,
                                }),
                            };
                            for vec4 in views(&g) {
                                let out = upload(&ctx, &vec![0.0; m * n]);
                                let b = gemv::Bindings {
                                    a: &x_b,
                                    b: &w_b,
                                    bias: Some(&bias_b),
                                    gate: modulated.then_some(&mod_b),
                                    out: &out,
                                    aux: None,
                                    ln_w: Some(&lnw_b),
                                    row_index: indexed.then_some(&ri_b),
                                };
                                let kernel = run(&ctx, &k, &gk, vec4, &g, b);
                                assert_close(
                                    &format!(
                                        "{kernel} LN prologue dim={dim} m={m} from {first_row} \
                                         modulated={modulated} indexed={indexed} units={units}"
                                    ),
                                    &read(&ctx, &out, m * n),
                                    &want,
                                    1e-5,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// f16 values as stored (whole 4-byte words: an odd count gets one padding half) and their f32 values.
fn f16_buffer(ctx: &GpuContext, v: &[f32]) -> (Buf, Vec<f32>) {
    let halves: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let rounded = halves.iter().map(|h| h.to_f32()).collect();
    let mut bits: Vec<u16> = halves.iter().map(|h| h.to_bits()).collect();
    bits.resize(bits.len().div_ceil(2) * 2, 0);
    let b = ctx
        .storage_init("f16 values", bytemuck::cast_slice(&bits))
        .unwrap();
    (b, rounded)
}

/// The embedding prologue (the first block of a sampling call): rows of the table picked by token
/// id (repeats included), normalised with modulation per sequence, times the weight; the first
/// workgroup keeps the picked rows, unnormalised and exact, in aux, and writes nothing past them.
/// f32 tables with f32 weights, and f16 tables with f16 weights (the reference rounds both).
#[test]
fn gemv_embedding_prologue_gathers_normalises_and_keeps_the_rows() {
    // 132, 8, 5 and 2 units: 1, 2, 4 and 8 columns per workgroup for these 37 columns.
    let cases: [(u32, u32, &[usize]); 4] = [
        (132, 1, &[300, 200, 131]),
        (8, 2, &[300]),
        (5, 4, &[131]),
        (2, 8, &[300, 200, 131]),
    ];
    for (units, cols, dims) in cases {
        let ctx = context_units(units);
        let k = kernels(&ctx, 16);
        let mut rng = Rng(90 + units as u64);
        let (n, vocab) = (37usize, 23usize);
        assert_eq!(columns_per_group(n as u32, units), cols);
        for reduction in reductions(&ctx) {
            for format in [WeightFormat::F32, WeightFormat::F16] {
                let gk =
                    pollster::block_on(GemvKernels::with_input(&ctx, reduction, format, format))
                        .unwrap();
                // 300: two steps of K (vec4); 200 and 131: one step, rows kept in registers by the
                // kernels of ≤ 2 columns.
                for &dim in dims {
                    let table: Vec<f32> =
                        rng.vec(vocab * dim, 2.0).iter().map(|v| v + 0.3).collect();
                    let w = rng.vec(n * dim, 1.0);
                    let ((table_b, table_r), (w_b, w_r)) = match format {
                        WeightFormat::F32 => (
                            (upload(&ctx, &table), table.clone()),
                            (upload(&ctx, &w), w.clone()),
                        ),
                        WeightFormat::F16 => (f16_buffer(&ctx, &table), f16_buffer(&ctx, &w)),
                    };
                    let ln_w = rng.vec(dim, 1.0);
                    let bias = rng.vec(n, 0.5);
                    let md = Modulation {
                        shift: 0,
                        scale: dim as u32,
                        stride: (6 * dim) as u32,
                    };
                    let (lnw_b, bias_b) = (upload(&ctx, &ln_w), upload(&ctx, &bias));
                    for m in [1usize, 5, 16] {
                        // Two sequences where there are rows for two (modulation rows per sequence).
                        let rows_per_seq = m.div_ceil(2);
                        let n_seq = m.div_ceil(rows_per_seq);
                        let modv = rng.vec(n_seq * 6 * dim, 0.5);
                        let mut ids: Vec<u32> = (0..m).map(|_| rng.below(vocab as u32)).collect();
                        if m > 2 {
                            ids[2] = ids[0];
                        }
                        let normed = normalised_rows(
                            &table_r,
                            dim,
                            &ln_w,
                            Some((&modv[..], md)),
                            0..m,
                            (0, rows_per_seq, 0),
                            Some(&ids),
                        );
                        let want = gelu_product(&normed, &w_r, &bias, m, n);
                        let want_rows: Vec<f32> = ids
                            .iter()
                            .flat_map(|&i| table_r[i as usize * dim..][..dim].to_vec())
                            .collect();
                        // The LayerNorm maps rows as a block's would (in-row fields are ignored).
                        let ln = LayerNorm {
                            in_rows_per_seq: 99,
                            in_row_offset: 5,
                            ..LayerNorm::rows(n_seq, rows_per_seq, dim, Some(md))
                        };
                        let g = Gemv {
                            mm: Matmul {
                                epilogue: Epilogue::Gelu,
                                a_row_stride: dim as u32,
                                b_format: format,
                                ..Matmul::plain(m as u32, n as u32, dim as u32)
                            },
                            norm: Some(Norm {
                                ln,
                                first_row: 0,
                                source: RowSource::Embedding { table: format },
                            }),
                        };
                        let (mod_b, ids_b) = (upload(&ctx, &modv), upload_u32(&ctx, &ids));
                        for vec4 in views(&g) {
                            let out = upload(&ctx, &vec![0.0; m * n]);
                            let sentinel = -7.5f32;
                            let kept = upload(&ctx, &vec![sentinel; (m + 1) * dim]);
                            let b = gemv::Bindings {
                                a: &table_b,
                                b: &w_b,
                                bias: Some(&bias_b),
                                gate: Some(&mod_b),
                                out: &out,
                                aux: Some(&kept),
                                ln_w: Some(&lnw_b),
                                row_index: Some(&ids_b),
                            };
                            let kernel = run(&ctx, &k, &gk, vec4, &g, b);
                            let what = format!(
                                "{kernel} embedding prologue {format:?} dim={dim} m={m} units={units}"
                            );
                            assert_close(&what, &read(&ctx, &out, m * n), &want, 1e-5);
                            let kept_v = read(&ctx, &kept, (m + 1) * dim);
                            assert_eq!(&kept_v[..m * dim], &want_rows[..], "{what}: kept rows");
                            assert!(
                                kept_v[m * dim..].iter().all(|&v| v == sentinel),
                                "{what}: wrote past the rows"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// f16 weights: the product of the f16-rounded weights with f32 inputs, accumulated in f32; the
/// tolerance is the f32 one (1e-5 of the largest output), since the reference uses the same rounded
/// weights. The f32 weights' product differs by far more, so the test sees which weights were read.
#[test]
fn gemv_f16_weights_against_the_rounded_weights() {
    for units in [132, 2] {
        let ctx = context_units(units);
        assert!(
            ctx.features.contains(wgpu::Features::SHADER_F16),
            "the test adapter must have shader-f16 (lavapipe has)"
        );
        let k = kernels(&ctx, 16);
        let mut rng = Rng(60 + units as u64);
        let n = 45;
        for reduction in reductions(&ctx) {
            let gk = gemv_kernels(&ctx, reduction, WeightFormat::F16);
            for kk in [260usize, 301] {
                let w = rng.vec(n * kk, 1.0);
                let halves: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
                let rounded: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
                let mut bits: Vec<u16> = halves.iter().map(|h| h.to_bits()).collect();
                // Buffers are written in whole 4-byte words: an odd count gets one padding half.
                bits.resize(bits.len().div_ceil(2) * 2, 0);
                let w_b = ctx
                    .storage_init("f16 weights", bytemuck::cast_slice(&bits))
                    .unwrap();
                let bias = rng.vec(n, 0.5);
                for m in [1usize, 3, 7, 16] {
                    let a = rng.vec(m * kk, 1.0);
                    let dims = cpu_ref::Dims { m, n, k: kk };
                    let mut want = vec![0.0; m * n];
                    cpu_ref::matmul_bt(
                        &a,
                        &rounded,
                        Some(&bias),
                        dims,
                        cpu_ref::Epilogue::Store,
                        &mut want,
                    );
                    let mut want_f32 = vec![0.0; m * n];
                    cpu_ref::matmul_bt(
                        &a,
                        &w,
                        Some(&bias),
                        dims,
                        cpu_ref::Epilogue::Store,
                        &mut want_f32,
                    );
                    let max = want.iter().fold(0f32, |x, &v| x.max(v.abs()));
                    let rounding = want
                        .iter()
                        .zip(&want_f32)
                        .fold(0f32, |x, (a, b)| x.max((a - b).abs()));
                    assert!(
                        rounding > 1e-4 * max,
                        "f16 rounding is visible at this size"
                    );
                    let (a_b, bias_b) = (upload(&ctx, &a), upload(&ctx, &bias));
                    let g = Gemv::plain(Matmul {
                        b_format: WeightFormat::F16,
                        ..Matmul::plain(m as u32, n as u32, kk as u32)
                    });
                    for vec4 in views(&g) {
                        let out = upload(&ctx, &vec![0.0; m * n]);
                        let b = gemv::Bindings {
                            a: &a_b,
                            b: &w_b,
                            bias: Some(&bias_b),
                            gate: None,
                            out: &out,
                            aux: None,
                            ln_w: None,
                            row_index: None,
                        };
                        let kernel = run(&ctx, &k, &gk, vec4, &g, b);
                        assert!(
                            kernel.starts_with("gemv") && kernel.ends_with("_f16"),
                            "{kernel}"
                        );
                        assert_close(
                            &format!("{kernel} m={m} k={kk} units={units}"),
                            &read(&ctx, &out, m * n),
                            &want,
                            1e-5,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gemv_rows_into_a_cache_with_dropout_and_aux_match_the_tiled_kernel() {
    // Rows placed into a cache of rows_per_seq + 3 rows per sequence from row 2, with aux and
    // dropout on a residual: the kept values equal the tiled kernel's (the same keep() and epilogue).
    let ctx = context_units(2);
    let k = kernels(&ctx, 16);
    let mut rng = Rng(14);
    let (n, kk) = (45, 301);
    let w = rng.vec(n * kk, 1.0);
    let w_b = upload(&ctx, &w);
    for reduction in reductions(&ctx) {
        let gk = gemv_kernels(&ctx, reduction, WeightFormat::F32);
        for m in [1usize, 5, 16] {
            let a = rng.vec(m * kk, 1.0);
            let a_b = upload(&ctx, &a);
            let rows_per_seq = m.div_ceil(2);
            let n_seq = m.div_ceil(rows_per_seq);
            let cache_rows = rows_per_seq + 3;
            let mapped = Matmul {
                epilogue: Epilogue::Residual,
                out_rows: OutRows {
                    rows_per_seq: rows_per_seq as u32,
                    seq_stride: cache_rows as u32,
                    row_offset: 2,
                },
                dropout: Some(Dropout {
                    p: 0.25,
                    seed: 77,
                    salt: 3,
                }),
                ..Matmul::plain(m as u32, n as u32, kk as u32)
            };
            let cache0 = rng.vec(n_seq * cache_rows * n, 1.0);
            let run_one = |use_gemv: bool| {
                let (out, aux) = (
                    upload(&ctx, &cache0),
                    upload(&ctx, &vec![0.0; cache0.len()]),
                );
                run_recorded(&ctx, |pb| {
                    if use_gemv {
                        let b = gemv::Bindings {
                            a: &a_b,
                            b: &w_b,
                            bias: None,
                            gate: None,
                            out: &out,
                            aux: Some(&aux),
                            ln_w: None,
                            row_index: None,
                        };
                        gemv::record_with(pb, &k, &gk, "gemv", &Gemv::plain(mapped), b).unwrap();
                    } else {
                        let b = ops::matmul::Bindings {
                            a: &a_b,
                            b: &w_b,
                            bias: None,
                            gate: None,
                            out: &out,
                            aux: Some(&aux),
                        };
                        let p = mapped.params(false, true);
                        ops::matmul::record_variant(
                            pb,
                            &k,
                            "matmul",
                            &k.matmul.narrow,
                            ops::matmul::Tile::Rows16,
                            &p,
                            b,
                        )
                    }
                });
                (
                    read(&ctx, &out, cache0.len()),
                    read(&ctx, &aux, cache0.len()),
                )
            };
            let ((out_v, aux_v), (out_t, aux_t)) = (run_one(true), run_one(false));
            let what = format!("{reduction:?} m={m}");
            assert_close(&format!("mapped rows {what}"), &out_v, &out_t, 1e-5);
            assert_close(&format!("dropout aux {what}"), &aux_v, &aux_t, 1e-5);
            // Among the written values, dropout zeroed some and kept others.
            let written: Vec<f32> = (0..m)
                .flat_map(|i| {
                    let row = (i / rows_per_seq) * cache_rows + 2 + i % rows_per_seq;
                    aux_v[row * n..(row + 1) * n].to_vec()
                })
                .collect();
            let dropped = written.iter().filter(|&&x| x == 0.0).count();
            assert!(
                dropped > 0 && dropped < written.len(),
                "dropout dropped {dropped} of {}",
                written.len()
            );
        }
    }
}

#[test]
fn few_rows_take_the_gemv_and_bad_products_are_refused() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let buf = |n: usize| upload(&ctx, &vec![1.0; n]);
    let (a, w, out) = (buf(16 * 9), buf(5 * 9), buf(17 * 5));
    // matmul::record sends ≤ 16 rows contiguous in k to the device's gemv.
    for (m, gemv_expected) in [(16u32, true), (17, false)] {
        let mut kernel = "";
        run_recorded(&ctx, |pb| {
            let b = ops::matmul::Bindings {
                a: &a,
                b: &w,
                bias: None,
                gate: None,
                out: &out,
                aux: None,
            };
            ops::matmul::record(pb, &k, "mm", &Matmul::plain(m, 5, 9), b);
            kernel = pb.planned()[0].kernel;
        });
        let want = if ctx.features.contains(wgpu::Features::SUBGROUP) {
            "gemv_subgroup_scalar"
        } else {
            "gemv_scalar"
        };
        assert_eq!(kernel == want, gemv_expected, "m = {m}: {kernel}");
    }
    let bindings = |out: &'static Buf| gemv::Bindings {
        a: out,
        b: out,
        bias: None,
        gate: None,
        out,
        aux: None,
        ln_w: None,
        row_index: None,
    };
    let leaked: &'static Buf = Box::leak(Box::new(buf(64)));
    let mut pb = bd3_gpu::program::ProgramBuilder::new(&ctx);
    let refuse = |pb: &mut bd3_gpu::program::ProgramBuilder, vec4: bool, g: Gemv| {
        gemv::record_views(pb, &k, &k.matmul.gemv, vec4, "bad", &g, bindings(leaked))
            .unwrap_err()
            .to_string()
    };
    let e = refuse(&mut pb, false, Gemv::plain(Matmul::plain(17, 4, 4)));
    assert!(e.contains("1..=16 rows"), "{e}");
    let e = refuse(&mut pb, true, Gemv::plain(Matmul::plain(2, 4, 6)));
    assert!(e.contains("multiples of 4"), "{e}");
    let norm = Norm {
        ln: LayerNorm::rows(1, 2, 4, None),
        first_row: 0,
        source: RowSource::Activations,
    };
    let e = refuse(
        &mut pb,
        false,
        Gemv {
            mm: Matmul::plain(2, 4, 4),
            norm: Some(norm),
        },
    );
    assert!(e.contains("needs K = 4 and its weight"), "{e}");
    // An embedding prologue without the token ids or a place for the rows.
    let embedded = Gemv {
        mm: Matmul::plain(2, 4, 4),
        norm: Some(Norm {
            source: RowSource::Embedding {
                table: WeightFormat::F32,
            },
            ..norm
        }),
    };
    let with_ln_w = || gemv::Bindings {
        ln_w: Some(leaked),
        ..bindings(leaked)
    };
    let e = gemv::record_views(
        &mut pb,
        &k,
        &k.matmul.gemv,
        false,
        "bad",
        &embedded,
        with_ln_w(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs the token ids"), "{e}");
    // The ids alone: nowhere to keep the rows.
    let ids_only = gemv::Bindings {
        row_index: Some(leaked),
        ..with_ln_w()
    };
    let e = gemv::record_views(
        &mut pb,
        &k,
        &k.matmul.gemv,
        false,
        "bad",
        &embedded,
        ids_only,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the residual rows (aux)"), "{e}");
    // f16 table rows need the f16 model's kernels.
    let f16_table = Gemv {
        mm: Matmul {
            b_format: WeightFormat::F16,
            ..Matmul::plain(2, 4, 4)
        },
        norm: Some(Norm {
            source: RowSource::Embedding {
                table: WeightFormat::F16,
            },
            ..norm
        }),
    };
    let f16_kernels = gemv_kernels(&ctx, Reduction::Workgroup, WeightFormat::F16);
    let e = gemv::record_views(
        &mut pb,
        &k,
        &f16_kernels,
        false,
        "bad",
        &f16_table,
        with_ln_w(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("f16 inputs, but kernels for f16 weights and f32 inputs"),
        "{e}"
    );
    assert_eq!(pb.planned().len(), 0, "nothing was recorded");
}

#[test]
fn columns_per_group_keep_two_workgroups_per_unit() {
    // The 170M model's layers on an H200's 132 units: attn_out and mlp.2 (768), attn_qkv (2304),
    // mlp.0 (3072), the head (50 258), the adaLN projection (4608) and the final adaLN (1536).
    for (n, cols) in [
        (768, 2),
        (2304, 8),
        (3072, 8),
        (50_258, 8),
        (4608, 8),
        (1536, 4),
        (128, 1),
    ] {
        assert_eq!(columns_per_group(n, 132), cols, "n = {n}");
        assert!(cols == 1 || n.div_ceil(cols) >= 264);
    }
}
