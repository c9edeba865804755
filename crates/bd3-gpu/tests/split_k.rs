//! Split-K products (matmul.wgsl's K slices summed by col_sum.wgsl) against a plain f64 loop: the
//! weight gradient dW += dyᵀ·x (accumulating) and a plain store, at sizes that are not multiples of
//! the tiles or the slab, with a ragged last slice.

mod common;
use bd3_gpu::ops::matmul::{Epilogue, Matmul};
use bd3_gpu::ops::{self};
use bd3_gpu::ContextOptions;
use common::*;

#[test]
fn split_k_weight_gradient_and_store_match_the_cpu_loop() {
    // 64 units want 128 workgroups; a 45 × 70 output has 2 tiles, so K = 2600 is cut into 5 slices
    // of 528 (the last one 488 long).
    let ctx = context_with(ContextOptions {
        compute_units: Some(64),
        ..Default::default()
    });
    let (k, tk) = (kernels(&ctx, 16), train_kernels(&ctx, 16));
    let mut rng = Rng(51);
    let (rows, cols, m) = (45usize, 70usize, 2600usize);
    let (ld_dy, ld_x) = (rows + 3, cols + 5); // strided operands, as inside wider activations
    let dy = rng.vec(m * ld_dy, 1.0);
    let x = rng.vec(m * ld_x, 1.0);
    let dw0 = rng.vec(rows * cols, 1.0);
    let mut want = vec![0f64; rows * cols];
    for i in 0..m {
        for r in 0..rows {
            for c in 0..cols {
                want[r * cols + c] += dy[i * ld_dy + r] as f64 * x[i * ld_x + c] as f64;
            }
        }
    }

    let grad = Matmul::weight_grad(
        m as u32,
        rows as u32,
        cols as u32,
        ld_dy as u32,
        ld_x as u32,
    );
    assert_eq!(
        grad.k_slices(64),
        5,
        "the test must exercise the split path"
    );
    let wide = Matmul::weight_grad(m as u32, 300, 300, 300, 300);
    assert_eq!(
        wide.k_slices(1),
        1,
        "one unit is filled by the plain product's 9 tiles"
    );
    let scratch = upload(&ctx, &vec![0.0; grad.split_scratch_floats(64)]);
    let (dy_b, x_b) = (upload(&ctx, &dy), upload(&ctx, &x));
    for (epilogue, base) in [
        (Epilogue::Residual, dw0.clone()),
        (Epilogue::Store, vec![9.0; rows * cols]),
    ] {
        let mm = Matmul { epilogue, ..grad };
        let out = upload(&ctx, &base);
        let plan = {
            let mut planned = Vec::new();
            run_recorded(&ctx, |pb| {
                ops::matmul::record_accumulating(
                    pb,
                    &k,
                    &tk,
                    "weight grad",
                    &mm,
                    ops::matmul::AccumulateIo {
                        a: &dy_b,
                        b: &x_b,
                        out: &out,
                        scratch: &scratch,
                    },
                );
                planned = pb.planned().to_vec();
            });
            planned
        };
        assert_eq!(plan.len(), 2, "slices, then their sum");
        assert_eq!(plan[0].groups[2], 5);
        let expect: Vec<f32> = want
            .iter()
            .zip(&base)
            .map(|(w, b)| {
                if epilogue == Epilogue::Residual {
                    (*w + *b as f64) as f32
                } else {
                    *w as f32
                }
            })
            .collect();
        assert_close(
            &format!("split-K {epilogue:?}"),
            &read(&ctx, &out, rows * cols),
            &expect,
            1e-5,
        );
    }
}
