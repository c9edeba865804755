//! Every WGSL kernel against the plain CPU loop beside it (`bd3_model::cpu_ref`), on random non-zero
//! inputs at sizes that are not multiples of the tiles.

mod common;
use bd3_gpu::ops::attention::{Attention, Variant};
use bd3_gpu::ops::layernorm::{LayerNorm, Modulation};
use bd3_gpu::ops::matmul::{Matmul, Tile};
use bd3_gpu::ops::{self, reduce_sum::Reduction, token_loss::Head};
use bd3_model::cpu_ref;
use bd3_model::AttentionMask;
use common::*;

#[test]
fn matmul_every_epilogue_at_awkward_sizes() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(1);
    let (m, n, kk) = (70, 45, 37);
    let a = rng.vec(m * kk, 1.0);
    let w = rng.vec(n * kk, 1.0);
    let bias = rng.vec(n, 0.5);
    let rows_per_seq = 35;
    let gate = rng.vec(2 * n, 1.0);
    let base = rng.vec(m * n, 1.0);
    let ones = vec![1.0; 2 * n];
    let cases = epilogue_cases(&gate, &ones, rows_per_seq);
    for (epi, cpu_epi) in cases {
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
        let p = mm.params(true, false);
        // Both variants (64-row and 16-row output tiles) on the same problem.
        for (kernel, tile) in [
            (&k.matmul.wide, Tile::Rows64),
            (&k.matmul.narrow, Tile::Rows16),
        ] {
            let out = upload(&ctx, &base);
            let (a_buf, w_buf, bias_buf, gate_buf) = (
                upload(&ctx, &a),
                upload(&ctx, &w),
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
            run_recorded(&ctx, |pb| {
                ops::matmul::record_variant(pb, &k, "matmul", kernel, tile, &p, b)
            });
            assert_close(
                &format!("{} {epi:?}", kernel.name),
                &read(&ctx, &out, m * n),
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn matmul_writes_a_column_range_from_an_offset_input() {
    // The head path: A starts at a row offset, the weight part covers output columns 20..33 of 50.
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(2);
    let (rows_total, m, n_total, kk) = (9, 5, 50, 19);
    let a = rng.vec(rows_total * kk, 1.0);
    let (col0, n) = (20, 13);
    let w = rng.vec(n * kk, 1.0);
    let bias_full = rng.vec(n_total, 1.0);
    let mm = Matmul {
        a_offset: (3 * kk) as u32,
        ldc: n_total as u32,
        out_col_offset: col0 as u32,
        bias_offset: col0 as u32,
        ..Matmul::plain(m as u32, n as u32, kk as u32)
    };
    let out = upload(&ctx, &vec![7.0; m * n_total]);
    let (a_buf, w_buf, bias_buf) = (upload(&ctx, &a), upload(&ctx, &w), upload(&ctx, &bias_full));
    run_recorded(&ctx, |pb| {
        ops::matmul::record(
            pb,
            &k,
            "matmul",
            &mm,
            ops::matmul::Bindings {
                a: &a_buf,
                b: &w_buf,
                bias: Some(&bias_buf),
                gate: None,
                out: &out,
                aux: None,
            },
        )
    });
    let got = read(&ctx, &out, m * n_total);
    let mut part = vec![0.0; m * n];
    cpu_ref::matmul_bt(
        &a[3 * kk..(3 + m) * kk],
        &w,
        Some(&bias_full[col0..col0 + n]),
        cpu_ref::Dims { m, n, k: kk },
        cpu_ref::Epilogue::Store,
        &mut part,
    );
    let mut want = vec![7.0; m * n_total];
    for i in 0..m {
        want[i * n_total + col0..i * n_total + col0 + n].copy_from_slice(&part[i * n..(i + 1) * n]);
    }
    assert_close("matmul column range", &got, &want, 1e-4);
}

#[test]
fn layernorm_with_and_without_modulation_and_row_mapping() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(3);
    let (n_seq, in_rows, dim) = (2, 7, 300);
    let x: Vec<f32> = rng
        .vec(n_seq * in_rows * dim, 2.0)
        .iter()
        .map(|v| v + 0.7)
        .collect();
    let w = rng.vec(dim, 1.0);
    let mod_stride = 6 * dim;
    let modv = rng.vec(n_seq * mod_stride, 0.5);
    // Rows 2..5 of each sequence, modulated with chunks 3 (shift) and 4 (scale).
    let (out_rows, offset) = (3, 2);
    let p = LayerNorm {
        n_rows: (n_seq * out_rows) as u32,
        dim: dim as u32,
        in_rows_per_seq: in_rows as u32,
        out_rows_per_seq: out_rows as u32,
        in_row_offset: offset as u32,
        modulation: Some(Modulation {
            shift: (3 * dim) as u32,
            scale: (4 * dim) as u32,
            stride: mod_stride as u32,
        }),
    };
    let out = upload(&ctx, &vec![0.0; n_seq * out_rows * dim]);
    let (x_buf, w_buf, mod_buf) = (upload(&ctx, &x), upload(&ctx, &w), upload(&ctx, &modv));
    let ln = |p: LayerNorm,
              modv: Option<&bd3_gpu::Buf>,
              out: &bd3_gpu::Buf,
              row_index: Option<&bd3_gpu::Buf>| {
        run_recorded(&ctx, |pb| {
            ops::layernorm::record(
                pb,
                &k,
                &p,
                ops::layernorm::Bindings {
                    x: &x_buf,
                    w: &w_buf,
                    modv,
                    out,
                    row_index,
                },
            )
            .unwrap()
        });
    };
    ln(p, Some(&mod_buf), &out, None);
    let selected: Vec<f32> = (0..n_seq)
        .flat_map(|s| {
            x[(s * in_rows + offset) * dim..(s * in_rows + offset + out_rows) * dim].to_vec()
        })
        .collect();
    let shift_scale: Vec<f32> = (0..n_seq)
        .flat_map(|s| modv[s * mod_stride + 3 * dim..s * mod_stride + 5 * dim].to_vec())
        .collect();
    let want = cpu_ref::layernorm_modulate(&selected, dim, &w, Some(&shift_scale), out_rows);
    assert_close(
        "layernorm modulated",
        &read(&ctx, &out, want.len()),
        &want,
        1e-5,
    );

    let p = LayerNorm {
        n_rows: (n_seq * in_rows) as u32,
        in_rows_per_seq: in_rows as u32,
        out_rows_per_seq: in_rows as u32,
        in_row_offset: 0,
        modulation: None,
        ..p
    };
    let out = upload(&ctx, &vec![0.0; n_seq * in_rows * dim]);
    ln(p, None, &out, None);
    let want = cpu_ref::layernorm_modulate(&x, dim, &w, None, in_rows);
    assert_close(
        "layernorm plain",
        &read(&ctx, &out, want.len()),
        &want,
        1e-5,
    );

    // Gathered rows: sequence 0 takes its row 6, sequence 1 its row 1 (a sampler's picked positions).
    let p = LayerNorm {
        n_rows: 2,
        out_rows_per_seq: 1,
        ..p
    };
    let out = upload(&ctx, &vec![0.0; 2 * dim]);
    ln(p, None, &out, Some(&upload_u32(&ctx, &[6, 1])));
    let picked = [
        x[6 * dim..7 * dim].to_vec(),
        x[(in_rows + 1) * dim..(in_rows + 2) * dim].to_vec(),
    ]
    .concat();
    let want = cpu_ref::layernorm_modulate(&picked, dim, &w, None, 1);
    assert_close(
        "layernorm gathered rows",
        &read(&ctx, &out, want.len()),
        &want,
        1e-5,
    );
}

#[test]
fn embedding_gathers_across_table_parts() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(4);
    let (v, d, n) = (37, 19, 23);
    let table = rng.vec(v * d, 1.0);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(v as u32)).collect();
    let out = upload(&ctx, &vec![0.0; n * d]);
    let ids_buf = upload_u32(&ctx, &ids);
    for (start, rows) in [(0usize, 20usize), (20, 17)] {
        let part = upload(&ctx, &table[start * d..(start + rows) * d]);
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
                (v, bd3_gpu::weights::WeightFormat::F32),
                ops::embedding::Bindings {
                    ids: &ids_buf,
                    table: &part,
                    out: &out,
                },
            )
            .unwrap()
        });
    }
    assert_close(
        "embedding",
        &read(&ctx, &out, n * d),
        &cpu_ref::embedding(&ids, &table, d),
        0.0,
    );
}

fn attention_case(
    head_dim: usize,
    mask: AttentionMask,
    batch: usize,
    seq: usize,
    n_heads: usize,
    pos_period: usize,
    seed: u64,
) {
    attention_case_within(None, head_dim, mask, batch, seq, n_heads, pos_period, seed);
}

/// `budget`: the attention kernel specialised for that much workgroup memory (None: the device's choice).
#[allow(clippy::too_many_arguments)]
fn attention_case_within(
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
    let k = match budget {
        Some(b) => attention_kernels(&ctx, head_dim, b).0,
        None => kernels(&ctx, head_dim),
    };
    let mut rng = Rng(seed);
    let d = n_heads * head_dim;
    let qkv = rng.vec(batch * seq * 3 * d, 1.5);
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|j| (1.0 / 10000f64.powf(2.0 * j as f64 / head_dim as f64)) as f32)
        .collect();
    let (cos, sin) = bd3_model::tables::rotary_tables(&inv_freq, pos_period.min(seq));
    let a = Attention::self_attention(
        batch as u32,
        seq as u32,
        n_heads as u32,
        head_dim as u32,
        mask,
        pos_period as u32,
    );
    let out = upload(&ctx, &vec![0.0; batch * seq * d]);
    let (qkv_buf, cos_buf, sin_buf) = (upload(&ctx, &qkv), upload(&ctx, &cos), upload(&ctx, &sin));
    let b = ops::attention::Bindings {
        qrows: &qkv_buf,
        kvrows: &qkv_buf,
        rope_cos: &cos_buf,
        rope_sin: &sin_buf,
        out: &out,
        lse_delta: None,
        partials: None,
    };
    run_recorded(&ctx, |pb| ops::attention::record(pb, &k, &a, b));
    let want = cpu_ref::attention(
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
    assert_close(
        &format!("attention {mask:?} dh={head_dim} budget {budget:?}"),
        &read(&ctx, &out, want.len()),
        &want,
        1e-4,
    );
}

/// Every mask at the small model's head dim, with batch 2, 3 heads and lengths that are no multiple
/// of any tile (16, 32, 64): partial query and key tiles, skipped tiles, tiles fully inside the mask
/// (block size 16 lines up with the key tiles) and boundary tiles masked element-wise.
fn attention_every_mask_at_head_dim_64(budget: usize) {
    let b = Some(budget);
    attention_case_within(b, 64, AttentionMask::Full, 2, 45, 3, 45, 40);
    attention_case_within(b, 64, AttentionMask::Causal, 2, 101, 3, 101, 41);
    attention_case_within(
        b,
        64,
        AttentionMask::BlockCausal { block_size: 4 },
        2,
        45,
        3,
        45,
        42,
    );
    attention_case_within(
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
        43,
    );
    attention_case_within(
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
        44,
    );
}

#[test]
fn attention_every_mask_browser_tiles() {
    attention_every_mask_at_head_dim_64(BROWSER_BUDGET);
}

#[test]
fn attention_every_mask_native_tiles() {
    attention_every_mask_at_head_dim_64(NATIVE_BUDGET);
}

#[test]
fn attention_large_and_odd_head_dims() {
    // 128: the smallest tiles (16 × 8 forward in 16 KiB); 22: columns that do not fill the 8 lanes.
    for budget in [BROWSER_BUDGET, NATIVE_BUDGET] {
        attention_case_within(
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
            45,
        );
        attention_case_within(Some(budget), 22, AttentionMask::Causal, 2, 67, 2, 67, 46);
    }
}

#[test]
fn attention_full_and_causal() {
    attention_case(6, AttentionMask::Full, 2, 21, 3, 21, 5);
    attention_case(16, AttentionMask::Causal, 1, 70, 2, 70, 6);
}

#[test]
fn attention_block_causal_and_block_diffusion() {
    attention_case(
        16,
        AttentionMask::BlockCausal { block_size: 4 },
        2,
        22,
        2,
        22,
        7,
    );
    // x_t ⊕ x_0 with L = 35 and a block size that does not divide the 64-query workgroup.
    attention_case(
        10,
        AttentionMask::BlockDiff {
            half_len: 35,
            block_size: 5,
        },
        2,
        70,
        2,
        35,
        8,
    );
    attention_case(
        16,
        AttentionMask::BlockDiff {
            half_len: 12,
            block_size: 1,
        },
        1,
        24,
        3,
        12,
        9,
    );
}

/// KV-cache style: `n_q` queries (rows `row0..row0 + n_q`) against all `seq` keys, no mask.
fn attention_offset_case(
    budget: Option<usize>,
    hd: usize,
    heads: usize,
    seq: usize,
    row0: usize,
    n_q: usize,
    seed: u64,
) {
    let ctx = context();
    let k = match budget {
        Some(b) => attention_kernels(&ctx, hd, b).0,
        None => kernels(&ctx, hd),
    };
    let mut rng = Rng(seed);
    let d = heads * hd;
    let qkv = rng.vec(seq * 3 * d, 1.0);
    let inv: Vec<f32> = (0..hd / 2).map(|j| 0.3f32.powi(j as i32)).collect();
    let (cos, sin) = bd3_model::tables::rotary_tables(&inv, seq);
    let a = Attention {
        n_q: n_q as u32,
        n_kv: seq as u32,
        n_heads: heads as u32,
        head_dim: hd as u32,
        q_seq_stride: seq as u32,
        q_row_offset: row0 as u32,
        kv_seq_stride: seq as u32,
        q_index_offset: row0 as u32,
        mask: AttentionMask::Full,
        pos_period: seq as u32,
        pos_offset: 0,
        batch: 1,
    };
    let out = upload(&ctx, &vec![0.0; n_q * d]);
    let (buf, cos_buf, sin_buf) = (upload(&ctx, &qkv), upload(&ctx, &cos), upload(&ctx, &sin));
    let b = ops::attention::Bindings {
        qrows: &buf,
        kvrows: &buf,
        rope_cos: &cos_buf,
        rope_sin: &sin_buf,
        out: &out,
        lse_delta: None,
        partials: None,
    };
    // attention.wgsl itself (a few queries would get the decode path: decode_* tests below).
    run_recorded(&ctx, |pb| {
        ops::attention::record_variant(pb, &k, &a, b, Variant::Tiled).unwrap()
    });
    let all = cpu_ref::attention(
        &qkv,
        cpu_ref::AttentionShape {
            batch: 1,
            seq,
            n_heads: heads,
            mask: AttentionMask::Full,
            pos_period: seq,
        },
        &cos,
        &sin,
    );
    assert_close(
        &format!("attention offset queries dh={hd} budget {budget:?}"),
        &read(&ctx, &out, n_q * d),
        &all[row0 * d..(row0 + n_q) * d],
        1e-4,
    );
}

#[test]
fn attention_queries_at_an_offset_see_every_key() {
    attention_offset_case(None, 8, 2, 21, 16, 5, 10);
    // Several query tiles starting mid-sequence, a partial last key tile.
    for budget in [BROWSER_BUDGET, NATIVE_BUDGET] {
        attention_offset_case(Some(budget), 64, 2, 77, 30, 37, 11);
    }
}

/// One decode-attention case: `n_q` queries at cache rows `row0..` (logical indices the same) of
/// `batch` sequences against their first `n_kv` of `stride` cached rows, rotary at
/// (index + pos_offset) mod pos_period.
#[derive(Clone, Copy, Debug)]
struct DecodeCase {
    mask: AttentionMask,
    n_kv: usize,
    row0: usize,
    n_q: usize,
}

/// The plain loop: every (sequence, head, query), the scores of the keys the mask allows, softmax,
/// Σ p·v, and the log-sum-exp of the scaled scores; in f64.
fn cpu_decode_attention(
    qkv: &[f32],
    a: &Attention,
    cos: &[f32],
    sin: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (h_n, dh) = (a.n_heads as usize, a.head_dim as usize);
    let d = h_n * dh;
    let stride = a.kv_seq_stride as usize;
    let (n_q, n_kv, row0) = (a.n_q as usize, a.n_kv as usize, a.q_row_offset as usize);
    let pos = |i: usize| (i + a.pos_offset as usize) % a.pos_period as usize;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0f32; a.batch as usize * n_q * d];
    let mut lse = vec![0f32; a.batch as usize * h_n * n_q];
    for b in 0..a.batch as usize {
        for h in 0..h_n {
            let row = |r: usize, which: usize| {
                &qkv[(b * stride + r) * 3 * d + which * d + h * dh..][..dh]
            };
            for i in 0..n_q {
                let qi = row0 + i;
                let q = cpu_ref::rotate(row(qi, 0), cos, sin, pos(qi));
                let keys: Vec<usize> = (0..n_kv).filter(|&k| a.mask.allows(qi, k)).collect();
                assert!(!keys.is_empty(), "test case with a query that sees no key");
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&k| {
                        let kr = cpu_ref::rotate(row(k, 1), cos, sin, pos(k));
                        q.iter().zip(&kr).map(|(x, y)| x * y).sum::<f64>() * scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (&k, sk) in keys.iter().zip(&s) {
                    let p = (sk - m).exp() / z;
                    for (j, v) in row(k, 2).iter().enumerate() {
                        out[(b * n_q + i) * d + h * dh + j] += (p * *v as f64) as f32;
                    }
                }
                lse[(b * h_n + h) * n_q + i] = (m + z.ln()) as f32;
            }
        }
    }
    (out, lse)
}

/// Every case at head dim `hd` with kernels for `budget`, unsplit, in 3 chunks and in the count
/// the device would choose, with and without the log-sum-exp; checked against the plain loop.
fn decode_cases(budget: Option<usize>, hd: usize, cases: &[DecodeCase], seed: u64) {
    let ctx = context();
    let k = match budget {
        Some(b) => attention_kernels(&ctx, hd, b).0,
        None => kernels(&ctx, hd),
    };
    let (batch, heads) = (2usize, 3usize);
    let d = heads * hd;
    let mut rng = Rng(seed);
    for (n, c) in cases.iter().enumerate() {
        // Rows past n_kv exist and must not be read; positions wrap (a ring cache re-based).
        let stride = c.n_kv + 3;
        let (period, pos_offset) = (c.n_kv + 5, 7 + n);
        let qkv = rng.vec(batch * stride * 3 * d, 1.5);
        let inv: Vec<f32> = bd3_model::tables::default_inv_freq(hd);
        let (cos, sin) = bd3_model::tables::rotary_tables(&inv, period);
        let a = Attention {
            n_q: c.n_q as u32,
            n_kv: c.n_kv as u32,
            n_heads: heads as u32,
            head_dim: hd as u32,
            q_seq_stride: stride as u32,
            q_row_offset: c.row0 as u32,
            kv_seq_stride: stride as u32,
            q_index_offset: c.row0 as u32,
            mask: c.mask,
            pos_period: period as u32,
            pos_offset: pos_offset as u32,
            batch: batch as u32,
        };
        let (want, want_lse) = cpu_decode_attention(&qkv, &a, &cos, &sin);
        let auto = ops::attention::decode_splits(ctx.compute_units, &a);
        for (m, splits) in [1, 3, auto].into_iter().enumerate() {
            let with_lse = (n + m) % 2 == 0;
            let out = upload(&ctx, &vec![f32::NAN; batch * c.n_q * d]);
            let lse = upload(&ctx, &vec![f32::NAN; 2 * batch * heads * c.n_q]);
            let partials = upload(
                &ctx,
                &vec![f32::NAN; ops::attention::partials_floats_for(&a, splits).max(1)],
            );
            let (buf, cos_buf, sin_buf) =
                (upload(&ctx, &qkv), upload(&ctx, &cos), upload(&ctx, &sin));
            let b = ops::attention::Bindings {
                qrows: &buf,
                kvrows: &buf,
                rope_cos: &cos_buf,
                rope_sin: &sin_buf,
                out: &out,
                lse_delta: with_lse.then_some(&lse),
                partials: (splits > 1).then_some(&partials),
            };
            let mut dispatches = Vec::new();
            run_recorded(&ctx, |pb| {
                ops::attention::record_variant(pb, &k, &a, b, Variant::Decode { splits }).unwrap();
                dispatches = pb.planned().iter().map(|d| d.kernel).collect();
            });
            let expected: &[&str] = if splits == 1 {
                &["attention_decode"]
            } else {
                &["attention_decode", "attention_combine"]
            };
            assert_eq!(dispatches, expected, "{c:?}: {splits} chunks");
            let what = format!("decode attention dh={hd} budget {budget:?} {c:?}, {splits} chunks");
            assert_close(&what, &read(&ctx, &out, want.len()), &want, 1e-4);
            if with_lse {
                let got: Vec<f32> = read(&ctx, &lse, 2 * want_lse.len())
                    .into_iter()
                    .step_by(2)
                    .collect();
                assert_close(&format!("{what}: lse"), &got, &want_lse, 1e-5);
            }
        }
    }
}

fn decode_case(mask: AttentionMask, n_kv: usize, row0: usize, n_q: usize) -> DecodeCase {
    DecodeCase {
        mask,
        n_kv,
        row0,
        n_q,
    }
}

/// Every mask, 1, 5 and 16 queries, 37 to 1043 keys (no multiple of the 32-key tile or of the
/// chunks), queries inside the cache: chunks wholly outside a query's intervals, chunks that cut
/// an interval, queries whose intervals straddle a block boundary.
fn decode_every_mask() -> Vec<DecodeCase> {
    use AttentionMask::*;
    let block_causal = BlockCausal { block_size: 16 };
    let diff = |half_len, block_size| BlockDiff {
        half_len,
        block_size,
    };
    vec![
        decode_case(Full, 37, 20, 16),
        decode_case(Full, 200, 183, 5),
        decode_case(Full, 1043, 1027, 16),
        decode_case(Full, 1043, 0, 1),
        decode_case(Causal, 37, 21, 16),
        decode_case(Causal, 200, 100, 5),
        decode_case(Causal, 1043, 1042, 1),
        decode_case(block_causal, 37, 3, 1),
        decode_case(block_causal, 200, 180, 16),
        decode_case(block_causal, 1043, 1030, 5),
        // Noisy queries (own block + earlier clean blocks), clean ones, and a block of both.
        decode_case(diff(19, 4), 38, 10, 16),
        decode_case(diff(100, 16), 200, 40, 16),
        decode_case(diff(100, 16), 200, 150, 5),
        decode_case(diff(521, 5), 1042, 300, 1),
    ]
}

#[test]
fn decode_attention_every_mask_split_and_unsplit() {
    decode_cases(Some(BROWSER_BUDGET), 64, &decode_every_mask(), 60);
}

#[test]
fn decode_attention_other_head_dims() {
    // 22: head columns that do not fill the 8 lanes; 128 in the browser budget: 8-key tiles.
    let cases = [
        decode_case(AttentionMask::Causal, 200, 190, 5),
        decode_case(
            AttentionMask::BlockDiff {
                half_len: 100,
                block_size: 16,
            },
            200,
            40,
            16,
        ),
    ];
    decode_cases(Some(NATIVE_BUDGET), 22, &cases, 61);
    decode_cases(Some(BROWSER_BUDGET), 128, &cases, 62);
}

#[test]
fn decode_attention_is_chosen_for_a_few_queries_only() {
    let ctx = context();
    let k = kernels(&ctx, 64);
    let a = |n_q: u32, n_kv: u32| Attention {
        n_q,
        n_kv,
        q_seq_stride: 1040,
        q_row_offset: 0,
        kv_seq_stride: 1040,
        q_index_offset: 0,
        pos_offset: 0,
        ..Attention::self_attention(1, 1040, 12, 64, AttentionMask::Full, 1040)
    };
    let buf = upload(&ctx, &[0.0; 4]);
    let need = ops::attention::partials_floats(&ctx, &a(16, 16));
    let big = upload(&ctx, &vec![0.0; need]);
    let b = |partials, lse| ops::attention::Bindings {
        qrows: &buf,
        kvrows: &buf,
        rope_cos: &buf,
        rope_sin: &buf,
        out: &buf,
        lse_delta: lse,
        partials,
    };
    // 132 units, 12 heads: 22 chunks for two workgroups per unit, whatever the keys filled so far.
    let splits = ops::attention::decode_splits(ctx.compute_units, &a(16, 16));
    assert_eq!(
        splits,
        (2 * ctx.compute_units)
            .div_ceil(12)
            .min(1040u32.div_ceil(32)),
        "splits"
    );
    assert!(splits > 1);
    assert_eq!(need, 12 * 16 * splits as usize * 66);
    for n_kv in [16, 1040] {
        assert_eq!(
            ops::attention::choose(&ctx, &a(16, n_kv), &b(Some(&big), None)),
            Variant::Decode { splits }
        );
    }
    // No scratch, or too little: unsplit. Training (log-sum-exp) or more queries: tiled.
    assert_eq!(
        ops::attention::choose(&ctx, &a(16, 1040), &b(None, None)),
        Variant::Decode { splits: 1 }
    );
    assert_eq!(
        ops::attention::choose(&ctx, &a(16, 1040), &b(Some(&buf), None)),
        Variant::Decode { splits: 1 }
    );
    assert_eq!(
        ops::attention::choose(&ctx, &a(16, 1040), &b(Some(&big), Some(&buf))),
        Variant::Tiled
    );
    assert_eq!(
        ops::attention::choose(&ctx, &a(17, 1040), &b(Some(&big), None)),
        Variant::Tiled
    );
    assert_eq!(ops::attention::partials_floats(&ctx, &a(17, 1040)), 0);
    // A short cache: chunks of at least 32 keys.
    let short = Attention {
        kv_seq_stride: 70,
        ..a(16, 70)
    };
    assert_eq!(ops::attention::decode_splits(ctx.compute_units, &short), 3);
    // Forcing a split count the scratch cannot hold, or too many queries, is an error.
    let mut pb = bd3_gpu::program::ProgramBuilder::new(&ctx);
    assert!(ops::attention::record_variant(
        &mut pb,
        &k,
        &a(16, 1040),
        b(Some(&buf), None),
        Variant::Decode { splits: 4 }
    )
    .is_err());
    assert!(ops::attention::record_variant(
        &mut pb,
        &k,
        &a(17, 1040),
        b(None, None),
        Variant::Decode { splits: 1 }
    )
    .is_err());
    assert!(pb.planned().is_empty());
}

#[test]
fn token_loss_subs_and_ar() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(11);
    let (rows, vocab) = (9, 300);
    let mask_id = (vocab - 1) as u32;
    let logits = rng.vec(rows * vocab, 4.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(mask_id)).collect();
    let weights = rng
        .vec(rows, 3.0)
        .iter()
        .map(|w| w.abs() + 0.5)
        .collect::<Vec<f32>>();
    for ar in [false, true] {
        // SUBS: every other row carries its (clean) token over.
        let inputs: Vec<u32> = (0..rows)
            .map(|r| {
                if ar || r % 2 == 0 {
                    mask_id
                } else {
                    targets[r]
                }
            })
            .collect();
        let lp = upload(&ctx, &vec![0.0; rows * vocab]);
        let tl = upload(&ctx, &vec![0.0; rows + 2]);
        // Rows are global rows 2.. of the loss vector: the chunk offset path.
        let pad = |v: &[u32]| [vec![0, 0], v.to_vec()].concat();
        let padf = |v: &[f32]| [vec![0.0, 0.0], v.to_vec()].concat();
        let (logits_buf, in_buf, tg_buf, w_buf) = (
            upload(&ctx, &logits),
            upload_u32(&ctx, &pad(&inputs)),
            upload_u32(&ctx, &pad(&targets)),
            upload(&ctx, &padf(&weights)),
        );
        let b = ops::token_loss::Bindings {
            logits: &logits_buf,
            input_ids: &in_buf,
            targets: &tg_buf,
            weights: &w_buf,
            log_probs: Some(&lp),
            token_loss: &tl,
            dlogits: None,
        };
        let head = if ar { Head::Ar } else { Head::Subs };
        let chunk = ops::token_loss::LossChunk {
            n_rows: rows as u32,
            vocab: vocab as u32,
            mask_id,
            row_offset: 2,
            grad_scale: 0.0,
        };
        run_recorded(&ctx, |pb| {
            ops::token_loss::record(pb, &k, head, &chunk, b).unwrap()
        });
        let mut want_lp = Vec::new();
        let mut want_loss = Vec::new();
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let l = if ar {
                cpu_ref::ar_log_probs(row, mask_id)
            } else {
                cpu_ref::subs_log_probs(row, inputs[r], mask_id)
            };
            want_loss.push((-(weights[r] as f64) * l[targets[r] as usize]) as f32);
            want_lp.extend(l.iter().enumerate().map(|(v, &x)| {
                if v as u32 == mask_id {
                    0.0
                } else {
                    x as f32
                }
            }));
        }
        let got_lp: Vec<f32> = read(&ctx, &lp, rows * vocab)
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (i % vocab) as u32 == mask_id {
                    0.0
                } else {
                    x
                }
            })
            .collect();
        assert_close(&format!("log_probs ar={ar}"), &got_lp, &want_lp, 1e-5);
        assert_close(
            &format!("token_loss ar={ar}"),
            &read(&ctx, &tl, rows + 2)[2..],
            &want_loss,
            1e-5,
        );
    }
}

#[test]
fn sedd_score_entropy() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(12);
    let (rows_per_seq, n_seq, vocab) = (3, 2, 300);
    let rows = rows_per_seq * n_seq;
    let mask_id = (vocab - 1) as u32;
    let logits = rng.vec(rows * vocab, 3.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(mask_id)).collect();
    let inputs: Vec<u32> = (0..rows)
        .map(|r| if r % 3 != 1 { mask_id } else { targets[r] })
        .collect();
    let t = [0.37f64, 0.81];
    let consts: Vec<f32> = t
        .iter()
        .flat_map(|&t| {
            let s = bd3_model::schedule::sigma_from_p(t);
            let r = 1.0 / s.exp_m1();
            [
                bd3_model::schedule::esigm1_log(s) + ((vocab - 1) as f64).ln(),
                r,
                r * (r.ln() - 1.0),
                bd3_model::schedule::sedd_dsigma(t),
            ]
            .map(|x| x as f32)
        })
        .collect();
    let (ls, ent, tl) = (
        upload(&ctx, &vec![0.0; rows * vocab]),
        upload(&ctx, &vec![0.0; rows]),
        upload(&ctx, &vec![0.0; rows]),
    );
    let (logits_buf, in_buf, tg_buf, c_buf) = (
        upload(&ctx, &logits),
        upload_u32(&ctx, &inputs),
        upload_u32(&ctx, &targets),
        upload(&ctx, &consts),
    );
    let b = ops::sedd_loss::Bindings {
        logits: &logits_buf,
        input_ids: &in_buf,
        targets: &tg_buf,
        seq_consts: &c_buf,
        log_score: Some(&ls),
        entropy: Some(&ent),
        token_loss: &tl,
        dlogits: None,
    };
    let chunk = ops::token_loss::LossChunk {
        n_rows: rows as u32,
        vocab: vocab as u32,
        mask_id,
        row_offset: 0,
        grad_scale: 0.0,
    };
    run_recorded(&ctx, |pb| {
        ops::sedd_loss::record(pb, &k, &chunk, rows_per_seq as u32, b).unwrap()
    });
    let (mut want_ls, mut want_ent, mut want_tl) = (vec![], vec![], vec![]);
    for r in 0..rows {
        let sigma = bd3_model::schedule::sigma_from_p(t[r / rows_per_seq]);
        let (s, e) = cpu_ref::sedd_row(
            &logits[r * vocab..(r + 1) * vocab],
            inputs[r],
            targets[r],
            mask_id,
            sigma,
        );
        want_ls.extend(s.iter().map(|&x| x as f32));
        want_ent.push(e as f32);
        want_tl.push((e * bd3_model::schedule::sedd_dsigma(t[r / rows_per_seq])) as f32);
    }
    assert_close("log_score", &read(&ctx, &ls, rows * vocab), &want_ls, 1e-5);
    assert_close("entropy", &read(&ctx, &ent, rows), &want_ent, 1e-4);
    assert_close("sedd token_loss", &read(&ctx, &tl, rows), &want_tl, 1e-4);
}

#[test]
fn reduce_sum_of_an_awkward_length() {
    let ctx = context();
    let k = kernels(&ctx, 16);
    let mut rng = Rng(13);
    let x = rng.vec(1003, 2.0);
    let out = upload(&ctx, &[0.0, 0.0]);
    let x_buf = upload(&ctx, &x);
    run_recorded(&ctx, |pb| {
        ops::reduce_sum::record(
            pb,
            &k,
            "reduce_sum",
            1003,
            1,
            Reduction::Sum,
            ops::reduce_sum::Bindings {
                x: &x_buf,
                out: &out,
            },
        )
    });
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    let got = read(&ctx, &out, 2)[1] as f64;
    assert!(
        (got - want).abs() <= 1e-4 * x.iter().map(|v| v.abs() as f64).sum::<f64>(),
        "{got} vs {want}"
    );
}

// The few-row products (gemv.wgsl) have their own file, tests/gemv.rs.
