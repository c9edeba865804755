//! The backward and optimizer kernels against plain CPU loops (`bd3_model::cpu_ref`), on random
//! non-zero inputs at sizes that are not multiples of the tiles. (The whole backward pass is also
//! checked against the official PyTorch gradients by `verify`.)

mod common;
use bd3_gpu::ops::attention::Attention;
use bd3_gpu::ops::col_sum::Columns;
use bd3_gpu::ops::elementwise::Elementwise;
use bd3_gpu::ops::layernorm::{LayerNorm, Modulation};
use bd3_gpu::ops::matmul::{Dropout, Epilogue, Matmul};
use bd3_gpu::ops::{self, adamw::AdamW, gate_backward::GateBackward};
use bd3_model::{cpu_ref, AttentionMask};
use common::*;

fn attention_backward_case(
    head_dim: usize,
    mask: AttentionMask,
    batch: usize,
    seq: usize,
    n_heads: usize,
    pos_period: usize,
    seed: u64,
) {
    attention_backward_within(None, head_dim, mask, batch, seq, n_heads, pos_period, seed);
}

/// `budget`: the attention kernels specialised for that much workgroup memory (None: the device's choice).
#[allow(clippy::too_many_arguments)]
fn attention_backward_within(
    budget: Option<usize>,
    head_dim: usize,
    mask: AttentionMask,
    batch: usize,
    seq: usize,
    n_heads: usize,
    pos_period: usize,
    seed: u64,
) {
    let ctx = context();
    let (k, tk) = match budget {
        Some(b) => attention_kernels(&ctx, head_dim, b),
        None => (kernels(&ctx, head_dim), train_kernels(&ctx, head_dim)),
    };
    let mut rng = Rng(seed);
    let d = n_heads * head_dim;
    let qkv = rng.vec(batch * seq * 3 * d, 1.2);
    let d_o = rng.vec(batch * seq * d, 1.0);
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|j| (1.0 / 10000f64.powf(2.0 * j as f64 / head_dim as f64)) as f32)
        .collect();
    let (cos, sin) = bd3_model::tables::rotary_tables(&inv, pos_period.min(seq));
    let a = Attention::self_attention(
        batch as u32,
        seq as u32,
        n_heads as u32,
        head_dim as u32,
        mask,
        pos_period as u32,
    );
    let (qkv_b, cos_b, sin_b, do_b) = (
        upload(&ctx, &qkv),
        upload(&ctx, &cos),
        upload(&ctx, &sin),
        upload(&ctx, &d_o),
    );
    let o = upload(&ctx, &vec![0.0; batch * seq * d]);
    let lse = upload(&ctx, &vec![0.0; 2 * batch * n_heads * seq]);
    let dqkv = upload(&ctx, &vec![0.0; batch * seq * 3 * d]);
    run_recorded(&ctx, |pb| {
        let (rope_cos, rope_sin) = (&cos_b, &sin_b);
        ops::attention::record(
            pb,
            &k,
            &a,
            ops::attention::Bindings {
                qrows: &qkv_b,
                kvrows: &qkv_b,
                rope_cos,
                rope_sin,
                out: &o,
                lse_delta: Some(&lse),
                partials: None,
            },
        );
        ops::attention::record_query_grad(
            pb,
            &k,
            &tk,
            &a,
            ops::attention::QueryGradBindings {
                qkv: &qkv_b,
                rope_cos,
                rope_sin,
                o: &o,
                d_o: &do_b,
                lse_delta: &lse,
                dqkv: &dqkv,
            },
        );
        ops::attention::record_key_value_grad(
            pb,
            &k,
            &tk,
            &a,
            ops::attention::KeyValueGradBindings {
                qkv: &qkv_b,
                rope_cos,
                rope_sin,
                d_o: &do_b,
                lse_delta: &lse,
                dqkv: &dqkv,
            },
        );
    });
    let want = cpu_ref::attention_backward(
        &qkv, &d_o, batch, seq, n_heads, mask, &cos, &sin, pos_period,
    );
    assert_close(
        &format!("attention backward {mask:?} dh={head_dim} budget {budget:?}"),
        &read(&ctx, &dqkv, want.len()),
        &want,
        1e-4,
    );
}

/// dq (the q third of dqkv) and dk, dv (the other two) for every mask at the small model's head dim,
/// batch 2, 3 heads, lengths that are no multiple of any tile; block size 16 lines up with the tiles
/// (whole tiles skipped or fully visible), block size 5 does not.
fn attention_backward_every_mask_at_head_dim_64(budget: usize) {
    let b = Some(budget);
    attention_backward_within(b, 64, AttentionMask::Full, 2, 45, 3, 45, 50);
    attention_backward_within(b, 64, AttentionMask::Causal, 2, 101, 3, 101, 51);
    attention_backward_within(
        b,
        64,
        AttentionMask::BlockCausal { block_size: 4 },
        2,
        45,
        3,
        45,
        52,
    );
    attention_backward_within(
        b,
        64,
        AttentionMask::BlockDiff {
            half_len: 37,
            block_size: 5,
        },
        2,
        74,
        3,
        37,
        53,
    );
    attention_backward_within(
        b,
        64,
        AttentionMask::BlockDiff {
            half_len: 40,
            block_size: 16,
        },
        2,
        80,
        3,
        40,
        54,
    );
}

#[test]
fn attention_backward_every_mask_browser_tiles() {
    attention_backward_every_mask_at_head_dim_64(BROWSER_BUDGET);
}

#[test]
fn attention_backward_every_mask_native_tiles() {
    attention_backward_every_mask_at_head_dim_64(NATIVE_BUDGET);
}

#[test]
fn attention_backward_large_and_odd_head_dims() {
    // 128: the smallest tiles (8 × 8 in 16 KiB); 22: columns that do not fill the 8 lanes.
    for budget in [BROWSER_BUDGET, NATIVE_BUDGET] {
        attention_backward_within(
            Some(budget),
            128,
            AttentionMask::BlockDiff {
                half_len: 19,
                block_size: 4,
            },
            2,
            38,
            2,
            19,
            55,
        );
        attention_backward_within(Some(budget), 22, AttentionMask::Causal, 2, 67, 2, 67, 56);
    }
}

#[test]
fn attention_backward_for_every_mask() {
    attention_backward_case(6, AttentionMask::Full, 2, 21, 3, 21, 31);
    attention_backward_case(16, AttentionMask::Causal, 1, 70, 2, 70, 32);
    attention_backward_case(
        8,
        AttentionMask::BlockCausal { block_size: 3 },
        2,
        22,
        2,
        22,
        33,
    );
    attention_backward_case(
        10,
        AttentionMask::BlockDiff {
            half_len: 35,
            block_size: 5,
        },
        2,
        70,
        2,
        35,
        34,
    );
    attention_backward_case(
        16,
        AttentionMask::BlockDiff {
            half_len: 12,
            block_size: 1,
        },
        1,
        24,
        1,
        12,
        35,
    );
}

#[test]
fn layernorm_backward_and_parameter_gradients() {
    let ctx = context();
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    // 7 rows per sequence: one chunk (dshift/dscale straight into dmod); 301: chunks of 32 rows, the
    // last one partial (per-chunk partials and col_sum passes), with shift and scale adjacent (one
    // per-sequence pass) and apart (two).
    for (rows_per_seq, (shift, scale), seed) in
        [(7, (3, 4), 36), (301, (3, 4), 39), (301, (4, 1), 40)]
    {
        layernorm_backward_case(&ctx, &k, &tk, (2, rows_per_seq, 300), (shift, scale), seed);
    }
}

fn layernorm_backward_case(
    ctx: &bd3_gpu::GpuContext,
    k: &ops::Kernels,
    tk: &ops::TrainKernels,
    (n_seq, rows_per_seq, dim): (usize, usize, usize),
    (shift, scale): (usize, usize),
    seed: u64,
) {
    let mut rng = Rng(seed);
    let rows = n_seq * rows_per_seq;
    let x: Vec<f32> = rng.vec(rows * dim, 2.0).iter().map(|v| v + 0.3).collect();
    let w = rng.vec(dim, 1.0);
    let dy = rng.vec(rows * dim, 1.0);
    let modv = rng.vec(n_seq * 6 * dim, 0.5);
    for modulated in [true, false] {
        let ln = LayerNorm::rows(
            n_seq,
            rows_per_seq,
            dim,
            modulated.then_some(Modulation {
                shift: (shift * dim) as u32,
                scale: (scale * dim) as u32,
                stride: (6 * dim) as u32,
            }),
        );
        let dx0 = rng.vec(rows * dim, 0.5); // dx accumulates onto what is there
        let dw0 = rng.vec(dim, 0.5);
        let (dx, stats, dw, dmod) = (
            upload(ctx, &dx0),
            upload(ctx, &vec![0.0; 2 * rows]),
            upload(ctx, &dw0),
            upload(ctx, &vec![0.0; n_seq * 6 * dim]),
        );
        let (xb, wb, mb, dyb) = (
            upload(ctx, &x),
            upload(ctx, &w),
            upload(ctx, &modv),
            upload(ctx, &dy),
        );
        // The input gradient, then the parameter gradients through row-chunk partials (what the training
        // program records). The modulation is bound in both cases: unmodulated must ignore it.
        let units = ctx.compute_units;
        let (_, chunks) = ops::layernorm_param_grads::chunks(&ln, units);
        assert_eq!(
            chunks > 1,
            rows_per_seq > 64,
            "the case exercises the path it means to"
        );
        let dw_part = upload(
            ctx,
            &rng.vec(ops::layernorm_param_grads::dw_part_floats(&ln, units), 1.0),
        );
        let dmod_part = upload(
            ctx,
            &rng.vec(
                ops::layernorm_param_grads::dmod_part_floats(&ln, units).max(1),
                1.0,
            ),
        );
        let scratch = upload(
            ctx,
            &rng.vec(
                ops::col_sum::scratch_floats(n_seq * chunks, dim, units),
                1.0,
            ),
        );
        run_recorded(ctx, |pb| {
            ops::layernorm_backward::record(
                pb,
                k,
                tk,
                &ln,
                ops::layernorm_backward::Bindings {
                    x: &xb,
                    w: &wb,
                    modv: Some(&mb),
                    dy: &dyb,
                    dx: &dx,
                    stats: &stats,
                },
            )
            .unwrap();
            let pg = ops::layernorm_param_grads::Bindings {
                x: &xb,
                stats: &stats,
                dy: &dyb,
                w: &wb,
                modv: Some(&mb),
                dw_part: &dw_part,
                dmod: Some(&dmod),
                dmod_part: Some(&dmod_part),
            };
            ops::layernorm_param_grads::record(pb, k, tk, &ln, pg, &dw, &scratch);
        });
        let pick = |v: &[f32]| -> Vec<f32> {
            (0..n_seq)
                .flat_map(|s| {
                    [shift, scale]
                        .map(|c| v[(s * 6 + c) * dim..(s * 6 + c + 1) * dim].to_vec())
                        .concat()
                })
                .collect()
        };
        let shift_scale = pick(&modv);
        let (want_dx, want_dw, want_dmod) = cpu_ref::layernorm_modulate_backward(
            &x,
            dim,
            &w,
            modulated.then_some(&shift_scale[..]),
            rows_per_seq,
            &dy,
        );
        let add = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<f32>>();
        assert_close(
            "layernorm dx",
            &read(ctx, &dx, rows * dim),
            &add(&dx0, &want_dx),
            1e-5,
        );
        assert_close(
            "layernorm dw",
            &read(ctx, &dw, dim),
            &add(&dw0, &want_dw),
            1e-4,
        );
        if modulated {
            let got = read(ctx, &dmod, n_seq * 6 * dim);
            assert_close("layernorm dshift/dscale", &pick(&got), &want_dmod, 1e-4);
        }
    }
}

#[test]
fn dropout_mask_is_shared_by_forward_and_gate_backward() {
    let ctx = context();
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    let mut rng = Rng(37);
    // 33 rows per sequence: two chunks per sequence (dgate through partials and a col_sum pass).
    let (n_seq, rows_per_seq, d, kk) = (2, 33, 70, 19);
    let m = n_seq * rows_per_seq;
    let (a, w, gate) = (
        rng.vec(m * kk, 1.0),
        rng.vec(d * kk, 1.0),
        rng.vec(n_seq * 6 * d, 1.0),
    );
    let dropout = 0.3f32;
    let mm = Matmul {
        epilogue: Epilogue::GatedResidual,
        rows_per_seq: rows_per_seq as u32,
        gate_stride: (6 * d) as u32,
        gate_offset: (2 * d) as u32,
        dropout: Some(Dropout {
            p: dropout,
            seed: 1234,
            salt: 5,
        }),
        ..Matmul::plain(m as u32, d as u32, kk as u32)
    };
    let (out, aux) = (
        upload(&ctx, &vec![0.0; m * d]),
        upload(&ctx, &vec![0.0; m * d]),
    );
    let (gate_b, a_b, w_b) = (upload(&ctx, &gate), upload(&ctx, &a), upload(&ctx, &w));
    run_recorded(&ctx, |pb| {
        ops::matmul::record(
            pb,
            &k,
            "matmul",
            &mm,
            ops::matmul::Bindings {
                a: &a_b,
                b: &w_b,
                bias: None,
                gate: Some(&gate_b),
                out: &out,
                aux: Some(&aux),
            },
        )
    });
    let y = read(&ctx, &aux, m * d);
    let mut plain = vec![0.0; m * d];
    cpu_ref::matmul_bt(
        &a,
        &w,
        None,
        cpu_ref::Dims { m, n: d, k: kk },
        cpu_ref::Epilogue::Store,
        &mut plain,
    );
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.7).abs() < 0.04, "kept fraction {kept}");
    for (yi, pi) in y.iter().zip(&plain) {
        assert!(
            *yi == 0.0 || (yi - pi / (1.0 - dropout)).abs() <= 1e-4 * (1.0 + pi.abs()),
            "{yi} vs {pi}"
        );
    }
    let dx = rng.vec(m * d, 1.0);
    let (dv, dmod) = (
        upload(&ctx, &vec![0.0; m * d]),
        upload(&ctx, &vec![0.0; n_seq * 6 * d]),
    );
    let g = GateBackward {
        n_seq: n_seq as u32,
        rows_per_seq: rows_per_seq as u32,
        dim: d as u32,
        gate: Some(((6 * d) as u32, (2 * d) as u32)),
        dropout,
        seed: 1234,
        salt: 5,
    };
    let dx_b = upload(&ctx, &dx);
    assert!(
        ops::gate_backward::chunks(&g, ctx.compute_units).1 > 1,
        "the rows are chunked"
    );
    let part = upload(
        &ctx,
        &rng.vec(
            ops::gate_backward::scratch_floats(&g, ctx.compute_units),
            1.0,
        ),
    );
    run_recorded(&ctx, |pb| {
        ops::gate_backward::record(
            pb,
            &k,
            &tk,
            &g,
            ops::gate_backward::Bindings {
                dx: &dx_b,
                y: &aux,
                gate: Some(&gate_b),
                dv: &dv,
                dmod: Some(&dmod),
                dgate_part: Some(&part),
            },
        )
    });
    let (mut want_dv, mut want_dg) = (vec![0.0; m * d], vec![0.0; n_seq * d]);
    for r in 0..m {
        let s = r / rows_per_seq;
        for j in 0..d {
            let g = gate[s * 6 * d + 2 * d + j];
            want_dv[r * d + j] = if y[r * d + j] != 0.0 {
                g * dx[r * d + j] / (1.0 - dropout)
            } else {
                0.0
            };
            want_dg[s * d + j] += dx[r * d + j] * y[r * d + j];
        }
    }
    assert_close("dropout-aware dv", &read(&ctx, &dv, m * d), &want_dv, 1e-5);
    let got = read(&ctx, &dmod, n_seq * 6 * d);
    let got_dg: Vec<f32> = (0..n_seq)
        .flat_map(|s| got[s * 6 * d + 2 * d..s * 6 * d + 3 * d].to_vec())
        .collect();
    assert_close("dgate", &got_dg, &want_dg, 1e-4);
}

/// gate_backward without dropout: one chunk per sequence (dgate straight into dmod), many chunks of a
/// long sequence with the last one partial, and no gate at all (adaLN off: dv only).
#[test]
fn gate_backward_in_row_chunks() {
    let ctx = context();
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    let mut rng = Rng(41);
    for (n_seq, rows_per_seq, d, gated) in
        [(3, 21, 259, true), (2, 517, 70, true), (2, 150, 33, false)]
    {
        let m = n_seq * rows_per_seq;
        let (dx, y, gate) = (
            rng.vec(m * d, 1.0),
            rng.vec(m * d, 1.0),
            rng.vec(n_seq * 6 * d, 1.0),
        );
        let dmod0 = rng.vec(n_seq * 6 * d, 0.5);
        let g = GateBackward {
            n_seq: n_seq as u32,
            rows_per_seq: rows_per_seq as u32,
            dim: d as u32,
            gate: gated.then_some(((6 * d) as u32, (5 * d) as u32)),
            dropout: 0.0,
            seed: 7,
            salt: 1,
        };
        let chunks = ops::gate_backward::chunks(&g, ctx.compute_units).1;
        assert_eq!(
            chunks > 1,
            rows_per_seq > 64,
            "the case exercises the path it means to"
        );
        let (dx_b, y_b, gate_b) = (upload(&ctx, &dx), upload(&ctx, &y), upload(&ctx, &gate));
        let (dv, dmod) = (upload(&ctx, &vec![0.0; m * d]), upload(&ctx, &dmod0));
        let part = upload(
            &ctx,
            &rng.vec(
                ops::gate_backward::scratch_floats(&g, ctx.compute_units).max(1),
                1.0,
            ),
        );
        let b = ops::gate_backward::Bindings {
            dx: &dx_b,
            y: &y_b,
            gate: gated.then_some(&gate_b),
            dv: &dv,
            dmod: gated.then_some(&dmod),
            dgate_part: Some(&part),
        };
        run_recorded(&ctx, |pb| ops::gate_backward::record(pb, &k, &tk, &g, b));
        let (mut want_dv, mut want_dmod) = (vec![0.0; m * d], dmod0.clone());
        for r in 0..m {
            let s = r / rows_per_seq;
            for j in 0..d {
                let gj = if gated {
                    gate[s * 6 * d + 5 * d + j]
                } else {
                    1.0
                };
                want_dv[r * d + j] = gj * dx[r * d + j];
                want_dmod[s * 6 * d + 5 * d + j] += dx[r * d + j] * y[r * d + j];
            }
        }
        assert_close(
            &format!("gate_backward dv ({rows_per_seq} rows)"),
            &read(&ctx, &dv, m * d),
            &want_dv,
            1e-6,
        );
        if gated {
            assert_close(
                &format!("gate_backward dmod ({rows_per_seq} rows)"),
                &read(&ctx, &dmod, n_seq * 6 * d),
                &want_dmod,
                1e-5,
            );
        }
    }
}

/// The squared global norm over many parts of awkward sizes: more parts than one dispatch reads, parts
/// cut into several slices, empty slices of a part's last workgroup.
#[test]
fn gradient_norm_over_many_parts() {
    let ctx = context();
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    let mut rng = Rng(42);
    let sizes = [
        1usize, 5, 1000, 70_001, 3, 300_007, 257, 1025, 9, 123_457, 2,
    ];
    let data: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 1.5)).collect();
    let bufs: Vec<_> = data.iter().map(|v| upload(&ctx, v)).collect();
    let parts: Vec<(&bd3_gpu::program::Buf, usize)> = bufs.iter().zip(sizes).collect();
    let partials = upload(
        &ctx,
        &rng.vec(ops::grad_norm::partials_len(&sizes, ctx.compute_units), 1.0),
    );
    let out = upload(&ctx, &[5.0, 123.0]);
    run_recorded(&ctx, |pb| {
        ops::grad_norm::record(pb, &k, &tk, &parts, &partials, &out, 1).unwrap();
        let p = pb.planned();
        assert_eq!(
            p.iter().filter(|d| d.label == "grad_norm").count(),
            sizes.len().div_ceil(ops::grad_norm::PER_DISPATCH)
        );
        assert!(
            p.iter()
                .any(|d| d.label == "grad_norm" && d.workgroups() > sizes.len() as u64),
            "parts are cut into slices"
        );
    });
    let want: f64 = data.iter().flatten().map(|&x| (x as f64).powi(2)).sum();
    assert_close(
        "squared gradient norm",
        &read(&ctx, &out, 2),
        &[5.0, want as f32],
        1e-5,
    );
}

#[test]
fn column_sums_activations_embedding_scatter_and_adamw() {
    let ctx = context();
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    let mut rng = Rng(38);
    // Column sums of columns 3.. of an [m, 300] matrix, accumulated at offset 3: one pass (37 rows) and
    // two passes through chunk partial sums (1337 rows: chunks of 32, the last one partial).
    for m in [37, 1337] {
        let (n, lda) = (297, 300);
        assert_eq!(
            ops::col_sum::chunk_rows(m, n, ctx.compute_units).is_some(),
            m > ops::col_sum::SINGLE_PASS_ROWS,
            "the case exercises the path it means to"
        );
        let a = rng.vec(m * lda, 1.0);
        let base = rng.vec(lda, 1.0);
        let out = upload(&ctx, &base);
        let (ab, scratch) = (
            upload(&ctx, &a),
            upload(
                &ctx,
                &rng.vec(ops::col_sum::scratch_floats(m, n, ctx.compute_units), 1.0),
            ),
        );
        run_recorded(&ctx, |pb| {
            ops::col_sum::record(
                pb,
                &k,
                &tk,
                Columns {
                    buffer: &ab,
                    offset: 3,
                    rows: m,
                    cols: n,
                    stride: lda,
                },
                &out,
                3,
                &scratch,
            )
        });
        let mut want = base.clone();
        for j in 0..n {
            want[3 + j] += (0..m).map(|i| a[i * lda + 3 + j] as f64).sum::<f64>() as f32;
        }
        assert_close(
            &format!("col_sum over {m} rows"),
            &read(&ctx, &out, lda),
            &want,
            1e-5,
        );
    }

    // gelu, gelu' and silu' against f64.
    let x = rng.vec(1001, 4.0);
    let g0 = rng.vec(1001, 1.0);
    let x_b = upload(&ctx, &x);
    for op in [
        Elementwise::Gelu,
        Elementwise::TimesGeluDerivative,
        Elementwise::TimesSiluDerivative,
    ] {
        let g = upload(&ctx, &g0);
        run_recorded(&ctx, |pb| {
            ops::elementwise::record(
                pb,
                &k,
                &tk,
                op,
                1001,
                ops::elementwise::Bindings { x: &x_b, g: &g },
            )
            .unwrap()
        });
        let h = 1e-5;
        let want: Vec<f32> = x
            .iter()
            .zip(&g0)
            .map(|(&v, &gi)| {
                let v = v as f64;
                match op {
                    Elementwise::Gelu => cpu_ref::gelu_tanh(v) as f32,
                    Elementwise::TimesGeluDerivative => {
                        (gi as f64 * (cpu_ref::gelu_tanh(v + h) - cpu_ref::gelu_tanh(v - h))
                            / (2.0 * h)) as f32
                    }
                    _ => {
                        (gi as f64 * (cpu_ref::silu(v + h) - cpu_ref::silu(v - h)) / (2.0 * h))
                            as f32
                    }
                }
            })
            .collect();
        assert_close(
            &format!("elementwise {op:?}"),
            &read(&ctx, &g, 1001),
            &want,
            1e-5,
        );
    }

    // Embedding scatter over a split table (rows 0..20 and 20..37), repeated tokens included, and two
    // tokens long enough to be cut into pieces (at least 121 rows of token 3 in the first part, 38 of
    // token 30 in the second), as the mask token of a masked-diffusion batch is.
    let (v, d, rows) = (37, 19, 253);
    let tokens: Vec<u32> = (0..rows)
        .map(|r| {
            if r % 2 == 0 && r < 242 {
                3
            } else if r % 3 == 1 && r < 225 {
                30
            } else {
                rng.below(v as u32)
            }
        })
        .collect();
    let dx = rng.vec(rows * d, 1.0);
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by_key(|&r| tokens[r as usize]);
    let (mut seg_token, mut seg_start) = (vec![], vec![]);
    for (i, &r) in order.iter().enumerate() {
        if seg_token.last() != Some(&tokens[r as usize]) {
            seg_token.push(tokens[r as usize]);
            seg_start.push(i as u32);
        }
    }
    seg_start.push(rows as u32);
    let mut want = vec![0f32; v * d];
    for r in 0..rows {
        for j in 0..d {
            want[tokens[r] as usize * d + j] += dx[r * d + j];
        }
    }
    let piece = ops::embedding_backward::piece_rows(rows, ctx.compute_units);
    let pieces = ops::embedding_backward::Pieces::split(&seg_token, &seg_start, piece);
    assert_eq!(
        pieces.split_token,
        vec![3, 30],
        "tokens 3 and 30 are cut into pieces of {piece} rows"
    );
    let dxb = upload(&ctx, &dx);
    let (pt, ps, sr, sl) = (
        upload_u32(&ctx, &pieces.token),
        upload_u32(&ctx, &pieces.start),
        upload_u32(&ctx, &order),
        upload_u32(&ctx, &pieces.slot),
    );
    let (st, sf) = (
        upload_u32(&ctx, &pieces.split_token),
        upload_u32(&ctx, &pieces.split_first),
    );
    let partials = upload(
        &ctx,
        &rng.vec(
            ops::embedding_backward::partials_floats(rows, d, ctx.compute_units),
            1.0,
        ),
    );
    let pb_in = ops::embedding_backward::PieceBuffers {
        token: &pt,
        start: &ps,
        rows: &sr,
        slot: &sl,
        split_token: &st,
        split_first: &sf,
        n_pieces: pieces.token.len() as u32,
        n_split: pieces.split_token.len() as u32,
    };
    let mut got = Vec::new();
    for (start, part_rows) in [(0usize, 20usize), (20, 17)] {
        let part = upload(&ctx, &vec![0.0; part_rows * d]);
        run_recorded(&ctx, |pb| {
            ops::embedding_backward::record(
                pb,
                &k,
                &tk,
                &dxb,
                rows,
                d,
                &pb_in,
                (&part, start, part_rows),
                v,
                &partials,
            )
            .unwrap()
        });
        got.extend(read(&ctx, &part, part_rows * d));
    }
    assert_close("embedding scatter", &got, &want, 1e-5);

    // AdamW with clipping by a global norm and the EMA, three steps, against the PyTorch formula in f64.
    let n = 777;
    let (mut w, g) = (rng.vec(n, 1.0), rng.vec(n, 2.0));
    let (wb, gb, mb, vb, eb) = (
        upload(&ctx, &w),
        upload(&ctx, &g),
        upload(&ctx, &vec![0.0; n]),
        upload(&ctx, &vec![0.0; n]),
        upload(&ctx, &w),
    );
    let norm_sq: f64 = g.iter().map(|&x| (x as f64).powi(2)).sum();
    let nb = upload(&ctx, &[norm_sq as f32]);
    let (lr, b1, b2, eps, wd, max_norm, ema_decay) = (0.01, 0.9, 0.999, 1e-8, 0.1, 1.0, 0.5);
    let (mut m, mut vv, mut e) = (
        vec![0f64; n],
        vec![0f64; n],
        w.iter().map(|&x| x as f64).collect::<Vec<_>>(),
    );
    let mut w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    for step in 1..=3u64 {
        let a = AdamW {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
            step,
            max_norm,
            ema_decay,
            grad_unscale: 1.0,
            skip_nonfinite: false,
        };
        run_recorded(&ctx, |pb| {
            ops::adamw::record(
                pb,
                &k,
                &tk,
                &a,
                n,
                ops::adamw::Bindings {
                    w: &wb,
                    grad: &gb,
                    m: &mb,
                    v: &vb,
                    ema: Some(&eb),
                    norm_sq: &nb,
                },
            )
            .unwrap()
        });
        let c = (max_norm / (norm_sq.sqrt() + 1e-6)).min(1.0);
        for i in 0..n {
            let gi = g[i] as f64 * c;
            w64[i] *= 1.0 - lr * wd;
            m[i] += (1.0 - b1) * (gi - m[i]);
            vv[i] = b2 * vv[i] + (1.0 - b2) * gi * gi;
            let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            w64[i] -= lr / bc1 * m[i] / (vv[i].sqrt() / bc2.sqrt() + eps);
            e[i] = ema_decay * e[i] + (1.0 - ema_decay) * w64[i];
        }
    }
    w = w64.iter().map(|&x| x as f32).collect();
    assert_close("adamw weights", &read(&ctx, &wb, n), &w, 1e-6);
    assert_close(
        "adamw ema",
        &read(&ctx, &eb, n),
        &e.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        1e-6,
    );
}
