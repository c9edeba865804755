//! The large-tile f32 product (`matmul_large.wgsl`: 128 × 128 tiles, 8 × 8 per thread,
//! double-buffered vector staging) against plain CPU loops: both K slabs (8, the browser's 16 KiB;
//! 16, 32 KiB natively), both views (16-byte quads, element loads), the three strided layouts of the
//! forward and backward passes, every epilogue, the row mapping with dropout and aux, and split K, at
//! sizes that are multiples of neither the tile nor the slab; and the choice of tiles.
//! Tolerance: the f32 kernels' 1e-4 of max |want| (tests/kernels.rs).

mod common;
use bd3_gpu::ops::matmul::{self, Epilogue, LargeKernels, Matmul, Tile, Tiling};
use bd3_gpu::program::Kernel;
use bd3_gpu::shaders::LargeSlab;
use bd3_gpu::{ContextOptions, GpuContext};
use bd3_model::cpu_ref;
use common::*;

const TOL: f64 = 1e-4;

/// Both slabs' kernels, built whatever the device's own choice.
fn large_kernels(ctx: &GpuContext) -> Vec<LargeKernels> {
    [LargeSlab::K8, LargeSlab::K16]
        .into_iter()
        .map(|slab| pollster::block_on(LargeKernels::new(ctx, slab)).unwrap())
        .collect()
}

/// `data` in a buffer padded to a multiple of 16 bytes (the large kernel reads operands as vec4).
fn upload_padded(ctx: &GpuContext, data: &[f32]) -> bd3_gpu::program::Buf {
    let mut v = data.to_vec();
    v.resize(data.len().next_multiple_of(4), 0.0);
    upload(ctx, &v)
}

/// One dispatch of `kernel` (128 × 128 tiles) for `mm` onto `base`.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &GpuContext,
    k: &bd3_gpu::ops::Kernels,
    kernel: &Kernel,
    mm: &Matmul,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    gate: Option<&[f32]>,
    base: &[f32],
) -> Vec<f32> {
    let (a_b, b_b, out) = (
        upload_padded(ctx, a),
        upload_padded(ctx, b),
        upload(ctx, base),
    );
    let bias_b = bias.map(|x| upload(ctx, x));
    let gate_b = gate.map(|x| upload(ctx, x));
    let p = mm.params(bias.is_some(), false);
    run_recorded(ctx, |pb| {
        let bind = matmul::Bindings {
            a: &a_b,
            b: &b_b,
            bias: bias_b.as_ref(),
            gate: gate_b.as_ref(),
            out: &out,
            aux: None,
        };
        matmul::record_variant(pb, k, "large", kernel, Tile::Large, &p, bind)
    });
    read(ctx, &out, base.len())
}

/// The forward, input-gradient and weight-gradient products of a Linear d_in → d_out over m rows,
/// with activations inside wider buffers (row strides `pad` wider) and operands at an offset.
fn layouts(
    rng: &mut Rng,
    m: usize,
    d_in: usize,
    d_out: usize,
    pad: usize,
    offset: usize,
) -> Vec<(&'static str, Matmul, Vec<f32>, Vec<f32>)> {
    let ld = d_in + pad;
    let ld_dy = d_out + pad;
    let x = rng.vec(offset + m * ld, 1.0);
    let w = rng.vec(d_out * d_in, 1.0);
    let dy = rng.vec(m * ld_dy, 1.0);
    let forward = Matmul {
        a_offset: offset as u32,
        a_row_stride: ld as u32,
        ..Matmul::plain(m as u32, d_out as u32, d_in as u32)
    };
    let input_grad = Matmul::input_grad(m as u32, d_out as u32, d_in as u32, ld_dy as u32);
    let weight_grad = Matmul {
        b_offset: offset as u32,
        ..Matmul::weight_grad(m as u32, d_out as u32, d_in as u32, ld_dy as u32, ld as u32)
    };
    vec![
        ("forward y = x·Wᵀ", forward, x.clone(), w.clone()),
        ("input gradient dy·W", input_grad, dy.clone(), w),
        ("weight gradient dW += dyᵀ·x", weight_grad, dy, x),
    ]
}

#[test]
fn large_product_matches_the_cpu_loop_in_every_layout_slab_and_view() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(61);
    // Aligned: every quad is a 16-byte vector (dims, strides and offsets multiples of 4), K ends in
    // a partial slab. Unaligned: nothing is a multiple of 4. Both span two tiles each way.
    for (m, d_in, d_out, pad, offset, aligned) in [
        (200usize, 76usize, 140usize, 4usize, 4usize, true),
        (150, 37, 133, 3, 5, false),
    ] {
        for (what, mm, a, b) in layouts(&mut rng, m, d_in, d_out, pad, offset) {
            assert_eq!(
                mm.quads_aligned(mm.k),
                aligned,
                "{what}: the case must exercise its view"
            );
            let (rows, cols) = (mm.m as usize, mm.n as usize);
            let base = rng.vec(rows * cols, 1.0);
            let want: Vec<f32> = product(&mm, &a, &b)
                .iter()
                .zip(&base)
                .map(|(&v, &b0)| match mm.epilogue {
                    Epilogue::Residual => (b0 as f64 + v) as f32,
                    _ => v as f32,
                })
                .collect();
            for lk in large_kernels(&ctx) {
                // The element-load view is correct for any problem; the vector view only for aligned.
                let mut views = vec![&lk.unaligned];
                if aligned {
                    views.push(&lk.aligned);
                }
                for kernel in views {
                    let got = run(&ctx, &k, kernel, &mm, &a, &b, None, None, &base);
                    assert_close(
                        &format!("{what} {m}×{d_in}→{d_out} {}", kernel.name),
                        &got,
                        &want,
                        TOL,
                    );
                }
            }
        }
    }
}

#[test]
fn large_product_applies_every_epilogue() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(62);
    let (m, n, kk) = (150, 133, 37);
    let a = rng.vec(m * kk, 1.0);
    let w = rng.vec(n * kk, 1.0);
    let bias = rng.vec(n, 0.5);
    let rows_per_seq = 75;
    let gate = rng.vec(2 * n, 1.0);
    let base = rng.vec(m * n, 1.0);
    let ones = vec![1.0; 2 * n];
    for (epi, cpu_epi) in epilogue_cases(&gate, &ones, rows_per_seq) {
        let mut want = base.clone();
        cpu_ref::matmul_bt(
            &a,
            &w,
            Some(&bias),
            cpu_ref::Dims { m, n, k: kk },
            cpu_epi,
            &mut want,
        );
        let mm = Matmul {
            epilogue: epi,
            rows_per_seq: rows_per_seq as u32,
            gate_stride: n as u32,
            ..Matmul::plain(m as u32, n as u32, kk as u32)
        };
        for lk in large_kernels(&ctx) {
            let got = run(
                &ctx,
                &k,
                &lk.unaligned,
                &mm,
                &a,
                &w,
                Some(&bias),
                Some(&gate),
                &base,
            );
            assert_close(&format!("{epi:?} {}", lk.unaligned.name), &got, &want, TOL);
        }
    }
}

#[test]
fn large_product_maps_rows_with_dropout_and_aux() {
    // A KV-cache-like row mapping with dropout into a residual: aux holds drop(v) (0 or
    // v / (1 − p), v from the CPU loop), out = old + aux on the mapped rows and nothing else
    // changes; the mask is keep(row, column), the same as the 64-row kernel's.
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(63);
    let (n_seq, rows_per_seq, n, kk) = (3usize, 47usize, 132usize, 40usize);
    let m = n_seq * rows_per_seq;
    let a = rng.vec(m * kk, 1.0);
    let w = rng.vec(n * kk, 1.0);
    let cache_rows = rows_per_seq + 3;
    let p_drop = 0.25f32;
    let mm = Matmul {
        epilogue: Epilogue::Residual,
        out_rows: matmul::OutRows {
            rows_per_seq: rows_per_seq as u32,
            seq_stride: cache_rows as u32,
            row_offset: 2,
        },
        dropout: Some(matmul::Dropout {
            p: p_drop,
            seed: 77,
            salt: 3,
        }),
        ..Matmul::plain(m as u32, n as u32, kk as u32)
    };
    let v = product(&mm, &a, &w);
    let cache0 = rng.vec(n_seq * cache_rows * n, 1.0);
    let (a_b, w_b) = (upload_padded(&ctx, &a), upload_padded(&ctx, &w));
    let go = |kernel: &Kernel, tile: Tile| {
        let (out, aux) = (
            upload(&ctx, &cache0),
            upload(&ctx, &vec![0.0; cache0.len()]),
        );
        let p = mm.params(false, true);
        run_recorded(&ctx, |pb| {
            let bind = matmul::Bindings {
                a: &a_b,
                b: &w_b,
                bias: None,
                gate: None,
                out: &out,
                aux: Some(&aux),
            };
            matmul::record_variant(pb, &k, "mapped", kernel, tile, &p, bind)
        });
        (
            read(&ctx, &out, cache0.len()),
            read(&ctx, &aux, cache0.len()),
        )
    };
    let (_, aux_64) = go(&k.matmul.wide, Tile::Rows64);
    for lk in large_kernels(&ctx) {
        for kernel in [&lk.aligned, &lk.unaligned] {
            let (out, aux) = go(kernel, Tile::Large);
            let name = kernel.name;
            let mut dropped = 0;
            for s in 0..n_seq {
                for r in 0..cache_rows {
                    let mapped = (2..2 + rows_per_seq).contains(&r);
                    for j in 0..n {
                        let o = (s * cache_rows + r) * n + j;
                        if !mapped {
                            assert_eq!(out[o], cache0[o], "{name}: unmapped row {r} changed");
                            assert_eq!(aux[o], 0.0, "{name}: unmapped aux row {r} written");
                            continue;
                        }
                        let i = s * rows_per_seq + r - 2;
                        let kept = (v[i * n + j] / (1.0 - p_drop as f64)) as f32;
                        assert_eq!(
                            aux[o] == 0.0,
                            aux_64[o] == 0.0,
                            "{name}: the dropout mask differs from the 64-row kernel's"
                        );
                        if aux[o] == 0.0 {
                            dropped += 1;
                        } else {
                            let tol = 1e-4 * (1.0 + kept.abs());
                            assert!((aux[o] - kept).abs() <= tol, "{name}: aux ({s}, {r}, {j})");
                        }
                        assert!(
                            (out[o] - (cache0[o] + aux[o])).abs() <= 1e-5 * (1.0 + out[o].abs()),
                            "{name}: out ({s}, {r}, {j})"
                        );
                    }
                }
            }
            let frac = dropped as f64 / (m * n) as f64;
            assert!(
                (0.2..0.3).contains(&frac),
                "{name}: dropped {frac:.3} of the values, want about {p_drop}"
            );
        }
    }
}

#[test]
fn large_tiles_split_k_for_a_weight_gradient() {
    // 4 units want 8 workgroups; a 140 × 76 weight gradient has 2 large tiles, so K = 2100 rows
    // are cut into 4 slices (of 528; the last 516) summed by col_sum.wgsl.
    let ctx = context_with(ContextOptions {
        compute_units: Some(4),
        ..Default::default()
    });
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    let mut rng = Rng(64);
    let (rows, cols, m) = (140usize, 76usize, 2100usize);
    let (ld_dy, ld_x) = (rows + 4, cols + 4);
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
    assert_eq!(
        mm.tiling(4),
        Tiling {
            tile: Tile::Large,
            slices: 4
        }
    );
    let want: Vec<f32> = product(&mm, &dy, &x)
        .iter()
        .zip(&dw0)
        .map(|(&v, &b)| (b as f64 + v) as f32)
        .collect();
    let scratch = upload(&ctx, &vec![0.0; mm.split_scratch_floats(4)]);
    let (dy_b, x_b, out) = (
        upload_padded(&ctx, &dy),
        upload_padded(&ctx, &x),
        upload(&ctx, &dw0),
    );
    let mut planned = Vec::new();
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
        planned = pb.planned().to_vec();
    });
    let large = k.matmul.large.as_ref().unwrap();
    assert_eq!(planned.len(), 2, "slices, then their sum");
    assert_eq!(planned[0].kernel, large.aligned.name);
    assert_eq!(planned[0].groups, [1, 2, 4]);
    assert_eq!(planned[1].kernel, "col_sum");
    assert_close(
        "large split-K weight gradient",
        &read(&ctx, &out, rows * cols),
        &want,
        TOL,
    );
}

#[test]
fn tiles_follow_the_size_of_the_product() {
    // At the H200's 132 units, the 170M model's training products (batch 8 of x_t ⊕ x_0: 16 384
    // rows) take 128 × 128 tiles; weight gradients split in K to fill the GPU; a sampling call's few
    // rows keep the 16-row tiles and small unsplittable products the 64-row ones.
    let rows = 16384;
    let fwd = Matmul::plain(rows, 2304, 768);
    assert_eq!(fwd.tiling(132).tile, Tile::Large);
    assert_eq!(fwd.tiling(132).slices, 1);
    let dw = Matmul::weight_grad(rows, 2304, 768, 2304, 768);
    assert_eq!(
        dw.tiling(132),
        Tiling {
            tile: Tile::Large,
            slices: 3
        }
    );
    assert_eq!(Matmul::plain(16, 768, 768).tiling(132).tile, Tile::Rows16);
    let small = Matmul {
        epilogue: Epilogue::Gelu,
        ..Matmul::plain(200, 300, 768)
    };
    assert_eq!(
        small.tiling(132),
        Tiling {
            tile: Tile::Rows64,
            slices: 1
        }
    );
}

#[test]
fn a_buffer_the_large_kernel_cannot_read_as_vectors_takes_the_64_row_kernel() {
    let ctx = context_with(ContextOptions {
        compute_units: Some(1),
        ..Default::default()
    });
    let k = kernels(&ctx, 16);
    let mut rng = Rng(65);
    let (m, n, kk) = (130usize, 131usize, 37usize);
    let mm = Matmul::plain(m as u32, n as u32, kk as u32);
    assert_eq!(mm.tiling(1).tile, Tile::Large);
    let (a, w) = (rng.vec(m * kk, 1.0), rng.vec(n * kk, 1.0));
    let mut want = vec![0.0; m * n];
    cpu_ref::matmul_bt(
        &a,
        &w,
        None,
        cpu_ref::Dims { m, n, k: kk },
        cpu_ref::Epilogue::Store,
        &mut want,
    );
    let large = k.matmul.large.as_ref().unwrap();
    // 130·37 floats is not a multiple of 4; padded, it is.
    for (padded, kernel) in [(false, k.matmul.wide.name), (true, large.unaligned.name)] {
        let a_b = match padded {
            true => upload_padded(&ctx, &a),
            false => upload(&ctx, &a),
        };
        let (w_b, out) = (upload_padded(&ctx, &w), upload(&ctx, &vec![0.0; m * n]));
        let mut ran = "";
        run_recorded(&ctx, |pb| {
            let bind = matmul::Bindings {
                a: &a_b,
                b: &w_b,
                bias: None,
                gate: None,
                out: &out,
                aux: None,
            };
            matmul::record(pb, &k, "choice", &mm, bind);
            ran = pb.planned()[0].kernel;
        });
        assert_eq!(ran, kernel, "padded operands: {padded}");
        assert_close(kernel, &read(&ctx, &out, m * n), &want, TOL);
    }
}
