//! `verify`'s training checks: every parameter gradient of the loss (and their global norm) against
//! the official backward pass, and AdamW steps against torch.optim.AdamW.

use crate::report::{Report, Tolerance};
use bd3_gpu::train::{read_tensors, write_tensors};
use bd3_gpu::{ForwardInput, ForwardShape, GpuModel, OptimConfig, TrainBatch, TrainShape, Trainer};
use bd3_model::tensor_file::TensorFile;
use bd3_model::{Checkpoint, Result};
use std::collections::HashMap;

/// Gradients: |a − b| ≤ 1e-4·max|ref| per tensor; the global norm to 1e-5 relative.
const GRADS: Tolerance = Tolerance::MaxNormalised(1e-4);
/// AdamW from the stored f32 weights and gradients: |a − b| ≤ 1e-6 + 1e-6·|ref|.
const ADAMW: Tolerance = Tolerance::AbsRel(1e-6, 1e-6);

/// One forward + backward of `shape` (no dropout), compared with `grad.*` and `grad_total_norm`.
pub async fn gradients(
    model: &mut GpuModel,
    shape: ForwardShape,
    input: ForwardInput<'_>,
    tf: &TensorFile,
    report: &mut Report<'_>,
    label: &str,
) -> Result<()> {
    if !tf.names().iter().any(|n| n.starts_with("grad.")) {
        return Ok(());
    }
    // A fresh trainer's gradient accumulators are zero.
    let mut trainer = Trainer::new(
        model,
        OptimConfig {
            ema_decay: 0.0,
            ..Default::default()
        },
    )
    .await?;
    let shape = TrainShape {
        forward: ForwardShape {
            capture: false,
            ..shape
        },
        dropout_milli: 0,
    };
    let grad_scale = 1.0 / shape.forward.scored_rows() as f32;
    let out = trainer
        .forward_backward(
            model,
            &shape,
            &TrainBatch {
                input,
                seed: 0,
                grad_scale,
            },
        )
        .await?;
    if tf.has("loss") {
        report.compare(
            &format!("{label}loss (training pass)"),
            &[out.loss_sum / shape.forward.scored_rows() as f64],
            &tf.f64("loss")?.data,
            Tolerance::Relative(1e-5),
        );
    }
    let mut sq = 0.0f64;
    for (name, _, data) in read_tensors(&model.ctx, trainer.gradients()).await? {
        sq += data.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        let key = format!("grad.backbone.{name}");
        let key = if tf.has(&key) {
            key
        } else {
            format!("grad.{name}")
        };
        if tf.has(&key) {
            report.compare_f32(&format!("{label}{key}"), &data, &tf.f64(&key)?.data, GRADS);
        } else {
            report.compare(
                &format!("{label}grad.{name} (missing in fixture)"),
                &[1.0],
                &[0.0],
                Tolerance::Exact,
            );
        }
    }
    if tf.has("grad_total_norm") {
        report.compare(
            &format!("{label}grad_total_norm"),
            &[sq.sqrt()],
            &tf.f64("grad_total_norm")?.data,
            Tolerance::Relative(1e-5),
        );
    }
    Ok(())
}

/// `adamw_case`: one step on every tensor from the stored weights and gradients, and the two-step
/// cases (with and without weight decay) on the tensors that have them.
pub async fn adamw(
    model: &mut GpuModel,
    ckpt: &Checkpoint,
    grads_file: &TensorFile,
    tf: &TensorFile,
    report: &mut Report<'_>,
) -> Result<()> {
    let hp = |n: &str| -> Result<f64> { tf.f64_scalar(&format!("hp.{n}")) };
    let base = OptimConfig {
        lr: hp("lr")?,
        beta1: hp("beta1")?,
        beta2: hp("beta2")?,
        eps: hp("eps")?,
        weight_decay: hp("weight_decay")?,
        max_grad_norm: 0.0,
        ema_decay: 0.0,
    };
    let names: Vec<String> = model
        .weights
        .tensors()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let original: HashMap<String, Vec<f32>> = names
        .iter()
        .map(|n| Ok((n.clone(), ckpt.tensor_f32(n)?)))
        .collect::<Result<_>>()?;
    let stored = |file: &TensorFile, prefix: &str| -> Result<HashMap<String, Vec<f32>>> {
        let mut m = HashMap::new();
        for n in &names {
            let key = format!("{prefix}backbone.{n}");
            if file.has(&key) {
                m.insert(
                    n.clone(),
                    file.f64(&key)?.data.iter().map(|&x| x as f32).collect(),
                );
            }
        }
        Ok(m)
    };
    let grads1 = stored(grads_file, "grad.")?;
    let two_step_names: Vec<String> = names
        .iter()
        .filter(|n| tf.has(&format!("two_step.g2.backbone.{n}")))
        .cloned()
        .collect();

    for (variant, wd) in [
        ("", base.weight_decay),
        (
            "two_step_wd.",
            tf.f64_scalar("two_step_wd.weight_decay")
                .unwrap_or(f64::NAN),
        ),
    ] {
        if wd.is_nan() {
            continue;
        }
        write_tensors(&model.ctx, &model.weights, &original)?;
        let mut trainer = Trainer::new(
            model,
            OptimConfig {
                weight_decay: wd,
                ..base
            },
        )
        .await?;
        write_tensors(&model.ctx, trainer.gradients(), &grads1)?;
        trainer.optimizer_step(model, base.lr)?;
        let after1 = read_tensors(&model.ctx, &model.weights).await?;
        for (name, _, data) in &after1 {
            let key = if variant.is_empty() {
                format!("updated.backbone.{name}")
            } else {
                format!("{variant}w1.backbone.{name}")
            };
            if tf.has(&key) {
                report.compare_f32(
                    &format!("adamw_case.{key}"),
                    data,
                    &tf.f64(&key)?.data,
                    ADAMW,
                );
            }
        }
        // Second step: the stored step-2 gradients on the two-step tensors, zero elsewhere.
        let g2: HashMap<String, Vec<f32>> = names
            .iter()
            .map(|n| {
                let key = format!("two_step.g2.backbone.{n}");
                let len = original[n].len();
                Ok((
                    n.clone(),
                    if tf.has(&key) {
                        tf.f64(&key)?.data.iter().map(|&x| x as f32).collect()
                    } else {
                        vec![0.0; len]
                    },
                ))
            })
            .collect::<Result<_>>()?;
        write_tensors(&model.ctx, trainer.gradients(), &g2)?;
        trainer.optimizer_step(model, base.lr)?;
        let after2 = read_tensors(&model.ctx, &model.weights).await?;
        let prefix = if variant.is_empty() {
            "two_step."
        } else {
            variant
        };
        for (name, _, data) in &after2 {
            if two_step_names.contains(name) {
                let key = format!("{prefix}w2.backbone.{name}");
                if tf.has(&key) {
                    report.compare_f32(
                        &format!("adamw_case.{key}"),
                        data,
                        &tf.f64(&key)?.data,
                        ADAMW,
                    );
                }
            }
        }
    }
    write_tensors(&model.ctx, &model.weights, &original)?;
    Ok(())
}
