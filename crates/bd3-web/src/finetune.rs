//! Fine-tuning the loaded model in the page: the training of `bd3-wgpu train --init` on a text,
//! step by step (bd3_gpu::train_loop, shared with the native trainer), then the EMA weights in
//! place for generation and as a downloadable checkpoint folder.
//!
//! JS API (the GPU methods are async):
//!   engine.finetunePrepare(text or [texts], {steps, batch, lr, seed, warmup, ema, dropout, valEvery, valBatches})
//!       split, tokenise and chunk the text as `train` does a .txt file, plan the run's GPU memory
//!       (refusing a run the adapter's limits cannot hold), allocate → {documents, tokens,
//!       trainChunks, validChunks, memory, weightsMemory, length, clipMin, clipMax}
//!   engine.finetuneStep()       one optimizer step → {step, loss, lr}
//!   engine.finetuneValidate()   validation NELBO on the held-out chunks (EMA weights), or null
//!   engine.finetuneFinish()     the EMA weights become the model's (as `train` saves them)
//!   engine.finetuneExport()     {config, model, tokenizer}: the folder `train` writes

use crate::{js_err, set, Engine};
use bd3_gpu::train_loop::{
    ema_nelbo, model_bytes, plan_memory, train_shape, train_step, StepSettings,
};
use bd3_gpu::weights::WeightFormat;
use bd3_gpu::{OptimConfig, TrainShape, Trainer, Weights};
use bd3_model::data::{split_chunks, text_documents, VALID_EVERY};
use bd3_model::objective::Clip;
use bd3_model::ModelConfig;
use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

/// A fine-tuning run in progress.
pub(crate) struct FineTune {
    trainer: Trainer,
    shape: TrainShape,
    settings: StepSettings,
    /// The training window of t: the native default (`--clip-min`/`--clip-max`), the unclipped NELBO.
    clip: Clip,
    train: Vec<Vec<u32>>,
    valid: Vec<Vec<u32>>,
    backup: Weights,
    step: u64,
}

/// The checkpoint of the last finished run, as `train` saves it.
pub(crate) struct Finished {
    cfg: ModelConfig,
    clip: Clip,
}

fn num(options: &JsValue, key: &str) -> Result<Option<f64>, JsError> {
    match Reflect::get(options, &key.into())
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
    {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| JsError::new(&format!("fine-tuning setting `{key}` is not a number"))),
    }
}

/// A whole number setting in `range`.
fn whole(
    options: &JsValue,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, JsError> {
    let v = num(options, key)?.unwrap_or(default as f64);
    if v.fract() != 0.0 || v < *range.start() as f64 || v > *range.end() as f64 {
        return Err(JsError::new(&format!(
            "{key} must be a whole number from {} to {}, not {v}",
            range.start(),
            range.end()
        )));
    }
    Ok(v as u64)
}

#[wasm_bindgen]
impl Engine {
    #[wasm_bindgen(js_name = finetunePrepare)]
    pub async fn finetune_prepare(
        &mut self,
        texts: JsValue,
        options: JsValue,
    ) -> Result<Object, JsError> {
        self.finetune = None;
        let model = self
            .model
            .as_ref()
            .ok_or_else(|| JsError::new("load a model first"))?;
        if model.weights.format() != WeightFormat::F32 {
            return Err(JsError::new(&format!(
                "fine-tuning needs f32 weights, and this model was loaded with {} weights: choose Weights f32 and load it again",
                model.weights.format()
            )));
        }
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            JsError::new("this model has no tokenizer.json: it cannot be fine-tuned on text")
        })?;
        let cfg = model.cfg.clone();
        let batch = whole(&options, "batch", 1, 1..=4096)? as usize;
        let seed = whole(&options, "seed", 1, 0..=(1 << 53))?;
        let warmup = whole(&options, "warmup", 0, 0..=(1 << 53))?;
        let val_batches = whole(&options, "valBatches", 0, 0..=(1 << 32))? as usize;
        let lr = num(&options, "lr")?.unwrap_or(1e-4);
        let ema = num(&options, "ema")?.unwrap_or(0.0);
        let dropout = num(&options, "dropout")?.unwrap_or(0.0);
        if lr <= 0.0 {
            return Err(JsError::new(&format!(
                "the learning rate must be positive, not {lr}"
            )));
        }
        if !(0.0..1.0).contains(&ema) || !(0.0..1.0).contains(&dropout) {
            return Err(JsError::new(
                "the EMA decay and the dropout must be in [0, 1)",
            ));
        }
        cfg.check_batch(batch, bd3_gpu::nelbo::loss_shape(&cfg, 1).seq)
            .map_err(js_err)?;
        // The documents of the text as `train --data FILE.txt` reads them (several texts: as it
        // reads a folder of those files, in the order given), and its chunks.
        let texts: Vec<String> = match texts.as_string() {
            Some(t) => vec![t],
            None => js_sys::Array::from(&texts)
                .iter()
                .map(|t| {
                    t.as_string()
                        .ok_or_else(|| JsError::new("the texts to train on must be strings"))
                })
                .collect::<Result<_, _>>()?,
        };
        let docs: Vec<String> = texts.iter().flat_map(|t| text_documents(t)).collect();
        if docs.is_empty() {
            return Err(JsError::new(
                "there is no text to train on: paste some text or drop .txt files",
            ));
        }
        let chunks = split_chunks(&docs, tok, tok.eos_id(), cfg.model_length, VALID_EVERY).map_err(|_| {
            let tokens: usize = docs.iter().map(|d| tok.encode(d).map(|t| t.len() + 1).unwrap_or(0)).sum();
            JsError::new(&format!(
                "the text is too short to train on: it makes {tokens} tokens, and every 20th document is held out, so fewer than one chunk of {} tokens (the model's context) is left to train on; add more text",
                cfg.model_length
            ))
        })?;
        let tokens: usize = chunks.train.len() * cfg.model_length;
        let n_valid = if val_batches == 0 {
            chunks.valid.len()
        } else {
            (val_batches * batch).min(chunks.valid.len())
        };
        let optim = OptimConfig {
            lr,
            ema_decay: ema,
            ..Default::default()
        };
        // The memory of the run, planned before anything is allocated: a run the adapter's limits
        // cannot hold is refused here, with the buffer that does not fit.
        let memory = plan_memory(&bd3_gpu::AdapterDesc::of(&model.ctx), &cfg, batch, dropout, optim, n_valid > 0)
            .await
            .map_err(|e| JsError::new(&format!("this GPU cannot hold the fine-tuning run at batch {batch}: {}; try a smaller batch", e.report())))?;
        let trainer = Trainer::new(model, optim).await.map_err(js_err)?;
        let backup =
            Weights::zeros_like(&model.ctx, "weights backup", &model.weights).map_err(js_err)?;
        model.ctx.check().map_err(js_err)?;
        let out = Object::new();
        set(&out, "documents", docs.len() as f64);
        set(&out, "trainChunks", chunks.train.len() as f64);
        set(&out, "validChunks", n_valid as f64);
        set(&out, "heldOutChunks", chunks.valid.len() as f64);
        set(&out, "tokens", tokens as f64);
        set(&out, "length", cfg.model_length as f64);
        set(&out, "memory", memory.total as f64);
        set(&out, "weightsMemory", memory.weights as f64);
        let clip = Clip::NELBO;
        set(&out, "clipMin", clip.min);
        set(&out, "clipMax", clip.max);
        self.finetune = Some(FineTune {
            trainer,
            shape: train_shape(&cfg, batch, dropout),
            settings: StepSettings {
                seed,
                batch,
                grad_accum: 1,
                lr,
                warmup,
            },
            clip,
            train: chunks.train,
            valid: chunks.valid[..n_valid].to_vec(),
            backup,
            step: 0,
        });
        Ok(out)
    }

    /// One optimizer step. A non-finite loss or gradient ends the run with an error.
    #[wasm_bindgen(js_name = finetuneStep)]
    pub async fn finetune_step(&mut self) -> Result<Object, JsError> {
        let model = self
            .model
            .as_ref()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        let ft = self
            .finetune
            .as_mut()
            .ok_or_else(|| JsError::new("no fine-tuning run is prepared"))?;
        let r = train_step(
            model,
            &mut ft.trainer,
            &ft.shape,
            &ft.train,
            &ft.settings,
            ft.clip,
            ft.step,
        )
        .await
        .map_err(js_err)?;
        model.ctx.check().map_err(js_err)?;
        let bad = if !r.loss.is_finite() {
            Some(("training loss", r.loss))
        } else {
            r.grad_norm
                .filter(|n| !n.is_finite())
                .map(|n| ("gradient norm", n))
        };
        if let Some((what, value)) = bad {
            return Err(JsError::new(&format!("step {}: the {what} is {value} (not finite); training stopped (try a lower learning rate)", ft.step + 1)));
        }
        ft.step += 1;
        let out = Object::new();
        set(&out, "step", ft.step as f64);
        set(&out, "loss", r.loss);
        set(&out, "lr", r.lr);
        Ok(out)
    }

    /// The validation NELBO per token on the held-out chunks, with the EMA weights (null when the
    /// text holds out no whole chunk).
    #[wasm_bindgen(js_name = finetuneValidate)]
    pub async fn finetune_validate(&mut self) -> Result<JsValue, JsError> {
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        let ft = self
            .finetune
            .as_ref()
            .ok_or_else(|| JsError::new("no fine-tuning run is prepared"))?;
        if ft.valid.is_empty() {
            return Ok(JsValue::NULL);
        }
        let nelbo = ema_nelbo(
            model,
            &ft.trainer,
            &ft.backup,
            &ft.valid,
            ft.settings.batch,
            ft.settings.seed,
        )
        .await
        .map_err(js_err)?;
        Ok(JsValue::from(nelbo))
    }

    /// End the run: the EMA weights (the trained ones without an EMA) become the model's, as
    /// `train` saves them; generation and the export use them from now on.
    #[wasm_bindgen(js_name = finetuneFinish)]
    pub fn finetune_finish(&mut self) -> Result<(), JsError> {
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        let ft = self
            .finetune
            .take()
            .ok_or_else(|| JsError::new("no fine-tuning run is prepared"))?;
        if let Some(ema) = &ft.trainer.ema {
            bd3_gpu::train::copy_weights(&model.ctx, ema, &model.weights);
        }
        self.finished = Some(Finished {
            cfg: model.cfg.clone(),
            clip: ft.clip,
        });
        Ok(())
    }

    /// The checkpoint folder of the last finished run, as `train --out` writes it: config.json
    /// (with the training clip window as sampling_eps_min/max), model.safetensors, tokenizer.json.
    #[wasm_bindgen(js_name = finetuneExport)]
    pub async fn finetune_export(&self) -> Result<Object, JsError> {
        let model = self
            .model
            .as_ref()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        let done = self
            .finished
            .as_ref()
            .ok_or_else(|| JsError::new("no fine-tuning run has finished"))?;
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| JsError::new("this model has no tokenizer"))?;
        let cfg = ModelConfig {
            sampling_eps_min: done.clip.min,
            sampling_eps_max: done.clip.max,
            ..done.cfg.clone()
        };
        let bytes = model_bytes(
            &model.ctx,
            &cfg,
            &model.weights,
            (done.clip.min, done.clip.max),
        )
        .await
        .map_err(js_err)?;
        let out = Object::new();
        set(&out, "config", cfg.to_json());
        set(&out, "model", Uint8Array::from(&bytes[..]));
        set(&out, "tokenizer", tok.to_json().map_err(js_err)?);
        Ok(out)
    }
}
