//! BD3-LM in the browser: a thin wasm-bindgen layer over the same kernels, model and samplers as the
//! native `bd3-wgpu` binary.
//!
//! JS API (all methods that touch the GPU are async):
//!   Engine.create()                                   open the WebGPU device
//!   engine.adapter()                                  adapter description
//!   engine.beginLoad(configJson, headerBytes, tokenizerJson?, fileLength?)   check config, tensor list
//!                                                     and data_offsets (against the file's length), allocate
//!   engine.putTensor(name, dtype, bytes)              one tensor of model.safetensors at a time
//!   engine.finishLoad()                               every tensor arrived → model info
//!   engine.generate(options, onEvent)                 sample; onEvent receives every step
//!   requestStop()                                     stop the running generation
//!   engine.verify(files)                              run `bd3-wgpu verify`'s checks on a fixture folder
//!   engine.finetune*(…)                             fine-tune the loaded model on text (finetune.rs)
//!   engine.debugPanic()                               test hook: panics (the page's ?selftest=panic)
//! A panic is reported through the panic hook (console.error, and `globalThis.bd3Panic(message)`
//! when the worker defines it); the instance is unusable afterwards, so the worker is replaced.
//! Weights stream to the GPU tensor by tensor: the whole checkpoint is never held in wasm memory.

use bd3_gpu::weights::WeightChoice;
use bd3_gpu::{
    generate, ContextOptions, GpuContext, GpuModel, SampleEvent, SampleOptions, Sampler,
};
use bd3_model::checkpoint::{bytes_to_f32, check_header, parse_header, validate_entries};
use bd3_model::tokenizer::TextTokenizer;
use bd3_model::{Error, ModelConfig};
use js_sys::{Array, Function, Object, Reflect};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasm_bindgen::prelude::*;

mod finetune;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.report())
}

fn set(o: &Object, k: &str, v: impl Into<JsValue>) {
    let _ = Reflect::set(o, &k.into(), &v.into());
}

/// Installs the panic hook when the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("bd3-web {info}");
        let global = js_sys::global();
        let call = |target: &JsValue, name: &str| {
            if let Some(f) = Reflect::get(target, &name.into())
                .ok()
                .and_then(|f| f.dyn_into::<Function>().ok())
            {
                let _ = f.call1(target, &JsValue::from(msg.as_str()));
            }
        };
        if let Ok(console) = Reflect::get(&global, &"console".into()) {
            call(&console, "error");
        }
        call(&global, "bd3Panic");
    }));
}

/// A file length from JS (a Number): a whole number of bytes, exactly representable.
fn file_length(v: Option<f64>) -> Result<Option<u64>, JsError> {
    match v {
        None => Ok(None),
        Some(x)
            if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= 9_007_199_254_740_992.0 =>
        {
            Ok(Some(x as u64))
        }
        Some(x) => Err(JsError::new(&format!(
            "model.safetensors: the file length {x} is not a whole number of bytes"
        ))),
    }
}

thread_local! {
    static STOP: Arc<AtomicBool> = Arc::new(AtomicBool::new(false));
}

/// Ask the running `generate` to stop before its next model call (on a GPU, first-hitting BD3-LM
/// submits a block's calls at once: before its next block).
#[wasm_bindgen(js_name = requestStop)]
pub fn request_stop() {
    STOP.with(|s| s.store(true, Ordering::SeqCst));
}

struct Loading {
    model: GpuModel,
    /// Stored tensor name → canonical name, for the tensors still expected.
    pending: BTreeMap<String, String>,
    seen: HashSet<String>,
}

#[wasm_bindgen]
pub struct Engine {
    ctx: Arc<GpuContext>,
    model: Option<GpuModel>,
    tokenizer: Option<TextTokenizer>,
    loading: Option<Loading>,
    /// Fine-tuning (finetune.rs): the run in progress, and the last finished one.
    finetune: Option<finetune::FineTune>,
    finished: Option<finetune::Finished>,
    /// Why the loaded model's weights are not in the format asked for (`auto` without shader-f16).
    weights_note: Option<&'static str>,
}

/// `navigator.hardwareConcurrency` of the page or worker, when the browser reports it.
fn hardware_concurrency() -> Option<u32> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let n = Reflect::get(&navigator, &"hardwareConcurrency".into())
        .ok()?
        .as_f64()?;
    (n >= 1.0 && n.is_finite()).then(|| n.min(1024.0) as u32)
}

#[wasm_bindgen]
impl Engine {
    pub async fn create() -> Result<Engine, JsError> {
        // A fallback adapter (SwiftShader) runs workgroups on the CPU's threads, which wasm cannot
        // count itself: the page's hardwareConcurrency sizes its work (GpuContext ignores it for a GPU).
        let opts = ContextOptions {
            cpu_threads: hardware_concurrency(),
            ..ContextOptions::default()
        };
        let ctx = GpuContext::new(opts).await.map_err(js_err)?;
        Ok(Engine {
            ctx: Arc::new(ctx),
            model: None,
            tokenizer: None,
            loading: None,
            finetune: None,
            finished: None,
            weights_note: None,
        })
    }

    pub fn adapter(&self) -> String {
        self.ctx.adapter_summary()
    }

    /// Check `config.json` and the safetensors header (the JSON after its 8-byte length) strictly,
    /// then allocate the model and build its kernels. Returns the tensors to send, in file order.
    ///
    /// `header` is the header's bytes exactly as stored; `file_length` the whole file's length when
    /// known. The data_offsets are checked as the native loader checks them: with the length, they
    /// must tile the data section to the file's last byte; without it (a server that sends no
    /// Content-Length), they must tile it from its first byte and the caller checks the stream ends
    /// after the last tensor.
    ///
    /// `weights`: "f32", "f16" or "auto" (the default: f16 where the adapter has shader-f16), how the
    /// matrices are stored on the GPU; `info()` says which is in use and why.
    #[wasm_bindgen(js_name = beginLoad)]
    pub async fn begin_load(
        &mut self,
        config_json: String,
        header: Vec<u8>,
        tokenizer_json: Option<String>,
        file_length: Option<f64>,
        weights: Option<String>,
    ) -> Result<Array, JsError> {
        self.model = None;
        self.loading = None;
        self.finetune = None;
        self.finished = None;
        let cfg = ModelConfig::from_json_bytes(config_json.as_bytes(), "config.json", None)
            .map_err(js_err)?;
        let header_len = header.len() as u64;
        // Without the file's length, the file is taken to end where the last tensor does (the caller
        // checks that the stream ends there).
        let file_len = match self::file_length(file_length)? {
            Some(n) => n,
            None => parse_header(&header, "model.safetensors")
                .map_err(js_err)?
                .iter()
                .map(|e| e.3 .1 as u64)
                .max()
                .unwrap_or(0)
                .saturating_add(8 + header_len),
        };
        let entries = check_header(&header, file_len, "model.safetensors").map_err(js_err)?;
        let plain: Vec<(String, String, Vec<usize>)> = entries
            .iter()
            .map(|(n, d, s, _)| (n.clone(), d.clone(), s.clone()))
            .collect();
        let names = validate_entries(&plain, &cfg, "model.safetensors").map_err(js_err)?;
        self.tokenizer = match tokenizer_json {
            Some(t) => {
                let tok =
                    TextTokenizer::from_bytes(t.as_bytes(), "tokenizer.json").map_err(js_err)?;
                tok.check_fits(&cfg).map_err(js_err)?;
                Some(tok)
            }
            None => None,
        };
        let choice = match weights.as_deref() {
            None => WeightChoice::Auto,
            Some(name) => WeightChoice::from_name(name).ok_or_else(|| {
                JsError::new(&format!(
                    "weights must be one of {}, not `{name}`",
                    WeightChoice::NAMES.join(", ")
                ))
            })?,
        };
        let (format, note) = choice.resolve(&self.ctx).map_err(js_err)?;
        self.weights_note = note;
        let mut model = GpuModel::allocate_as(self.ctx.clone(), cfg, format)
            .await
            .map_err(js_err)?;
        // On a software adapter (SwiftShader) a call takes most of a second and the round trip is
        // negligible, so a block's calls go one by one: Stop and the token-by-token display keep the
        // latency of one call. A GPU gets one submission per block.
        model.block_recording = !self.ctx.is_software();
        let pending: BTreeMap<String, String> = names
            .into_iter()
            .map(|(canonical, full)| (full, canonical))
            .collect();
        let order = Array::new();
        for (name, dtype, shape, (a, b)) in &entries {
            let e = Object::new();
            set(&e, "name", name.as_str());
            set(&e, "dtype", dtype.as_str());
            set(&e, "begin", *a as f64);
            set(&e, "end", *b as f64);
            set(
                &e,
                "shape",
                shape
                    .iter()
                    .map(|&x| JsValue::from(x as f64))
                    .collect::<Array>(),
            );
            order.push(&e);
        }
        self.loading = Some(Loading {
            model,
            pending,
            seen: HashSet::new(),
        });
        Ok(order)
    }

    /// One tensor of model.safetensors (its raw little-endian bytes).
    #[wasm_bindgen(js_name = putTensor)]
    pub fn put_tensor(&mut self, name: String, dtype: String, bytes: &[u8]) -> Result<(), JsError> {
        let l = self
            .loading
            .as_mut()
            .ok_or_else(|| JsError::new("putTensor before beginLoad"))?;
        let Some(canonical) = l.pending.get(&name).cloned() else {
            // The optional sampling_eps buffers carry no weights the network uses.
            return Ok(());
        };
        let data = bytes_to_f32(&dtype, bytes).ok_or_else(|| {
            JsError::new(&format!(
                "model.safetensors: tensor `{name}`: unsupported dtype {dtype}"
            ))
        })?;
        l.model.write_tensor(&canonical, &data).map_err(js_err)?;
        l.seen.insert(name);
        Ok(())
    }

    #[wasm_bindgen(js_name = finishLoad)]
    pub fn finish_load(&mut self) -> Result<Object, JsError> {
        let l = self
            .loading
            .take()
            .ok_or_else(|| JsError::new("finishLoad before beginLoad"))?;
        if let Some(missing) = l.pending.keys().find(|n| !l.seen.contains(*n)) {
            return Err(JsError::new(&format!(
                "model.safetensors: tensor `{missing}`: missing (the download ended early?)"
            )));
        }
        self.ctx.check().map_err(js_err)?;
        self.model = Some(l.model);
        Ok(self.info())
    }

    /// Test hook (the page's `?selftest=panic`): panics inside the engine, as a bug would, so that
    /// the page's recovery can be tested. Never called otherwise.
    #[wasm_bindgen(js_name = debugPanic)]
    pub fn debug_panic(&mut self) {
        panic!("deliberate panic (test hook debugPanic)");
    }

    /// What the page shows about the loaded model.
    pub fn info(&self) -> Object {
        let o = Object::new();
        set(&o, "adapter", self.adapter());
        if let Some(m) = &self.model {
            let c = &m.cfg;
            set(&o, "kind", c.kind.name());
            set(&o, "vocab", c.vocab_size as f64);
            set(&o, "hidden", c.hidden_dim as f64);
            set(&o, "blocks", c.n_blocks as f64);
            set(&o, "heads", c.n_heads as f64);
            set(&o, "length", c.model_length as f64);
            set(&o, "blockSize", c.block_size as f64);
            set(&o, "tokenizer", self.tokenizer.is_some());
            set(&o, "weights", m.weights.format().name());
            if let Some(note) = self.weights_note {
                set(&o, "weightsNote", note);
            }
            // The sampling defaults for this model (bd3_gpu's, as the CLI uses): the page fills its
            // inputs with them.
            let d = SampleOptions::defaults_for(c);
            let defaults = Object::new();
            set(&defaults, "sampler", d.sampler.name());
            set(&defaults, "topP", d.top_p);
            set(&defaults, "steps", d.steps as f64);
            set(&defaults, "seed", d.seed as f64);
            set(
                &defaults,
                "tokensPerCall",
                bd3_gpu::defaults::TOKENS_PER_CALL as f64,
            );
            set(
                &defaults,
                "confidenceThreshold",
                bd3_gpu::defaults::CONFIDENCE_THRESHOLD,
            );
            set(
                &defaults,
                "samplers",
                bd3_gpu::SAMPLER_NAMES
                    .iter()
                    .map(|&n| JsValue::from(n))
                    .collect::<Array>(),
            );
            set(&o, "defaults", defaults);
        }
        o
    }

    /// Generate. `options`: {prompt?: string, promptIds?: number[], length?, topP?,
    /// sampler?: "first-hitting"|"ddpm"|"confidence"|"confidence-threshold", tokensPerCall? (confidence),
    /// confidenceThreshold? (confidence-threshold), steps?, seed?, batch?, varLength?}; what is left
    /// out takes the defaults of `SampleOptions::defaults_for` (as `info().defaults`). `on_event` receives {type: "revealed", block, call, revealed: [[seq, pos, token, text]]}
    /// and {type: "committed", block, end, tokens: number[] (sequence 0), text}. Resolves to {tokens, text, nfe, calls, ms}.
    pub async fn generate(
        &mut self,
        options: JsValue,
        on_event: Function,
    ) -> Result<Object, JsError> {
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        let cfg = model.cfg.clone();
        let get = |k: &str| {
            Reflect::get(&options, &k.into())
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_null())
        };
        let num = |k: &str, d: f64| get(k).and_then(|v| v.as_f64()).unwrap_or(d);
        let prompt: Vec<u32> = match (
            get("prompt")
                .and_then(|v| v.as_string())
                .filter(|s| !s.is_empty()),
            get("promptIds"),
        ) {
            (Some(text), _) => match &self.tokenizer {
                Some(t) => t.encode(&text).map_err(js_err)?,
                None => {
                    return Err(JsError::new(
                        "this model has no tokenizer.json: give the prompt as token ids",
                    ))
                }
            },
            (None, Some(ids)) => Array::from(&ids)
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as u32)
                .collect(),
            (None, None) => Vec::new(),
        };
        let d = SampleOptions::defaults_for(&cfg);
        let sampler_name = get("sampler")
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| d.sampler.name().into());
        let tokens_per_call = get("tokensPerCall").and_then(|v| v.as_f64()).map(|k| {
            if k >= 0.0 && k.fract() == 0.0 {
                k as usize
            } else {
                0
            }
        });
        let sampler = Sampler::from_name(
            &sampler_name,
            tokens_per_call,
            get("confidenceThreshold").and_then(|v| v.as_f64()),
        )
        .map_err(js_err)?;
        STOP.with(|s| s.store(false, Ordering::SeqCst));
        let opts = SampleOptions {
            batch: num("batch", d.batch as f64) as usize,
            length: num("length", d.length as f64) as usize,
            prompt,
            top_p: num("topP", d.top_p),
            sampler,
            steps: num("steps", d.steps as f64) as usize,
            seed: num("seed", d.seed as f64) as u64,
            var_length: get("varLength").and_then(|v| v.as_bool()).unwrap_or(false),
            entropy_check: false,
            stop: Some(STOP.with(|s| s.clone())),
        };
        let tok = self.tokenizer.as_ref();
        let piece = |id: u32| -> String {
            match tok {
                Some(t) => t.decode(&[id]).unwrap_or_default(),
                None => format!("{id} "),
            }
        };
        let started = js_sys::Date::now();
        let mut on = |e: SampleEvent| {
            let o = Object::new();
            match e {
                SampleEvent::Revealed {
                    block,
                    call,
                    revealed,
                } => {
                    set(&o, "type", "revealed");
                    set(&o, "block", block as f64);
                    set(&o, "call", call as f64);
                    let arr = Array::new();
                    for &(s, p, t) in revealed {
                        arr.push(&Array::of4(
                            &(s as f64).into(),
                            &(p as f64).into(),
                            &(t as f64).into(),
                            &piece(t).into(),
                        ));
                    }
                    set(&o, "revealed", arr);
                }
                SampleEvent::Committed {
                    block,
                    end,
                    sequences,
                } => {
                    set(&o, "type", "committed");
                    set(&o, "block", block as f64);
                    set(&o, "end", end as f64);
                    set(
                        &o,
                        "tokens",
                        sequences[0]
                            .iter()
                            .map(|&t| JsValue::from(t as f64))
                            .collect::<Array>(),
                    );
                    let pieces: Vec<String> = match tok {
                        Some(t) => t.pieces(&sequences[0]).unwrap_or_default(),
                        None => sequences[0].iter().map(|&id| piece(id)).collect(),
                    };
                    set(
                        &o,
                        "pieces",
                        pieces.into_iter().map(JsValue::from).collect::<Array>(),
                    );
                }
            }
            let _ = on_event.call1(&JsValue::NULL, &o);
        };
        let result = generate(model, &opts, &mut on).await;
        let ms = js_sys::Date::now() - started;
        let out = Object::new();
        match result {
            Ok(r) => {
                set(
                    &out,
                    "tokens",
                    r.sequences
                        .iter()
                        .map(|s| {
                            s.iter()
                                .map(|&t| JsValue::from(t as f64))
                                .collect::<Array>()
                        })
                        .collect::<Array>(),
                );
                let texts: Array = r
                    .sequences
                    .iter()
                    .map(|s| JsValue::from(render(tok, s)))
                    .collect();
                set(&out, "text", texts);
                set(&out, "nfe", r.nfe as f64);
                set(&out, "calls", r.calls as f64);
                set(&out, "stopped", false);
            }
            Err(Error::Cancelled) => set(&out, "stopped", true),
            Err(e) => return Err(js_err(e)),
        }
        set(&out, "ms", ms);
        Ok(out)
    }

    /// Run the fixture checks of `bd3-wgpu verify` on files fetched by the page: an object mapping
    /// "file" or "sub/file" to Uint8Array. Resolves to the report text (ending "N passed, M failed").
    pub async fn verify(&self, files: Object) -> Result<String, JsError> {
        let mut map = BTreeMap::new();
        for key in Object::keys(&files).iter() {
            let name = key.as_string().unwrap_or_default();
            let bytes = js_sys::Uint8Array::new(
                &Reflect::get(&files, &key).map_err(|_| JsError::new("unreadable file"))?,
            )
            .to_vec();
            map.insert(name, bytes);
        }
        let fixture = bd3_verify::MemFixture {
            name: "fixture".into(),
            files: map,
        };
        let mut out = Vec::new();
        let (passed, failed) = {
            let mut report = bd3_verify::Report::new(&mut out);
            bd3_verify::verify_dir(&self.ctx, &fixture, &mut report)
                .await
                .map_err(js_err)?;
            (report.passed, report.failed)
        };
        let mut text = String::from_utf8_lossy(&out).into_owned();
        text.push_str(&format!("{passed} passed, {failed} failed\n"));
        Ok(text)
    }
}

/// Text of a sequence without its BOS, or token ids when there is no tokenizer.
fn render(tok: Option<&TextTokenizer>, ids: &[u32]) -> String {
    match tok {
        Some(t) => t.decode(ids.get(1..).unwrap_or(&[])).unwrap_or_default(),
        None => ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    }
}
