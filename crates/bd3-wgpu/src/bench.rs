//! `bd3-wgpu bench forward`: the vectorised BD3LM training forward (x_t ⊕ x_0, 2L tokens per sequence)
//! at a chosen size with random weights. Prints tokens/s per batch size, time per kernel kind
//! (timestamp queries, where the adapter has them), GEMM GFLOP/s, and the submits, buffers and bind
//! groups created per forward once warm (the structural counts that must stay at 1, 0, 0).

use bd3_gpu::plan::{
    dispatch_header, dispatch_line, summarize, AdapterDesc, DEFAULT_COMPUTE_UNITS,
};
use bd3_gpu::{ContextOptions, ForwardInput, ForwardShape, GpuContext, GpuModel, PlannedDispatch};
use bd3_model::init::{random_weights, to_safetensors, SplitMix};
use bd3_model::{Checkpoint, Error, ModelConfig, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// The benchmarks. Sizes: `small` = 768,12,12,50258,1024 (the official model), `tiny` =
/// 64,4,2,128,16, or D,H,N,V,L (hidden, heads, blocks, vocabulary, length; keep D, V, L small on a
/// software adapter).
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// The vectorised BD3LM training forward (x_t ⊕ x_0) at each batch size: tokens/s, time per
    /// kernel kind, GEMM GFLOP/s, and submits/buffers/bind groups per warm forward
    Forward(BatchArgs),
    /// First-hitting generation with the KV cache: ms per model call and what each call costs
    Sample(SampleBenchArgs),
    /// One training step (forward, backward, clip + AdamW + EMA) at each batch size
    Train(BatchArgs),
}

/// `--plan`: print the dispatch plan for a native adapter instead of running anything (no GPU needed).
#[derive(clap::Args, Default)]
pub struct PlanArgs {
    /// Print the dispatch plan (one line per dispatch, then the totals) instead of running
    #[arg(long)]
    plan: bool,
    /// Compute units of the planned adapter [default: an H200's 132]
    #[arg(long, requires = "plan", value_parser = clap::value_parser!(u32).range(1..))]
    units: Option<u32>,
    /// Optional features of the planned adapter, comma-separated
    #[arg(long, requires = "plan", value_enum, value_delimiter = ',')]
    features: Vec<PlanFeature>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFeature {
    /// shader-f16
    F16,
    /// Subgroup operations
    Subgroups,
    /// Tensor cores (cooperative matrices, 16×16×16 f16→f32, as on an H200; implies f16 and subgroups)
    Coop,
}

/// The options shared by `bench forward` and `bench train`.
#[derive(clap::Args)]
pub struct BatchArgs {
    /// Model size: small, tiny or D,H,N,V,L
    #[arg(long, default_value = "small", value_parser = parse_size)]
    size: BenchSize,
    /// Batch sizes, comma-separated
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    batch: Vec<usize>,
    /// Block size (capped at the length)
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Timed repetitions per batch size
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,
    /// Arithmetic of the products: f32, or mixed (tensor cores; with --plan, needs --features coop)
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
    #[command(flatten)]
    plan: PlanArgs,
}

#[derive(clap::Args)]
pub struct SampleBenchArgs {
    /// Model size: small, tiny or D,H,N,V,L
    #[arg(long, default_value = "small", value_parser = parse_size)]
    size: BenchSize,
    /// Sequences generated together
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Block size (capped at the length)
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Tokens per sequence [default: the model length]
    #[arg(long)]
    length: Option<usize>,
    /// Nucleus mass
    #[arg(long, default_value_t = bd3_gpu::defaults::TOP_P)]
    top_p: f64,
    /// How the weight matrices are stored on the GPU (f16 plans an adapter with shader-f16)
    #[arg(long, value_enum, default_value_t = crate::sample::WeightsArg::default_choice())]
    weights: crate::sample::WeightsArg,
    /// Submit a block's first-hitting calls at once, or one call at a time (to compare)
    #[arg(long, value_enum, default_value_t = Submit::Block)]
    submit: Submit,
    #[command(flatten)]
    plan: PlanArgs,
}

/// How `bench sample` submits first-hitting calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Submit {
    /// A whole block's calls in one submission (what `sample` does)
    Block,
    /// One submission and one read-back per call
    Call,
}

#[derive(Clone)]
pub struct BenchSize {
    pub hidden: usize,
    pub heads: usize,
    pub blocks: usize,
    pub vocab: usize,
    pub length: usize,
}

pub fn parse_size(s: &str) -> Result<BenchSize> {
    let v: Vec<usize> = match s {
        "small" => vec![768, 12, 12, 50258, 1024],
        "tiny" => vec![64, 4, 2, 128, 16],
        spec => spec
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Invalid(format!("`{spec}`: expected small, tiny or D,H,N,V,L")))?,
    };
    if v.len() != 5 || v.contains(&0) {
        return Err(Error::Invalid(format!(
            "`{s}`: expected five positive numbers D,H,N,V,L"
        )));
    }
    Ok(BenchSize {
        hidden: v[0],
        heads: v[1],
        blocks: v[2],
        vocab: v[3],
        length: v[4],
    })
}

/// A BD3LM config of the given size (official field names), validated like a real one.
pub fn bench_config(size: &BenchSize, block_size: usize) -> Result<ModelConfig> {
    let json = format!(
        r#"{{"model_type":"bd3lm","block_size":{block_size},"cond_dim":128,"hidden_dim":{},"model_length":{},"n_blocks":{},"n_heads":{},"vocab_size":{}}}"#,
        size.hidden, size.length, size.blocks, size.heads, size.vocab
    );
    ModelConfig::from_json_bytes(json.as_bytes(), "bench config", None)
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Forward(a) => forward(a)?,
        BenchCommand::Sample(a) => sample(a)?,
        BenchCommand::Train(a) => train(a)?,
    }
    Ok(())
}

/// A GPU model of `size` with random weights, through the strict loader like a real checkpoint.
fn random_model(
    ctx: &Arc<GpuContext>,
    size: &BenchSize,
    block_size: usize,
) -> Result<(GpuModel, usize, f64)> {
    random_model_as(ctx, size, block_size, bd3_gpu::weights::WeightFormat::F32)
}

/// [`random_model`] with the matrices stored as `format`.
fn random_model_as(
    ctx: &Arc<GpuContext>,
    size: &BenchSize,
    block_size: usize,
    format: bd3_gpu::weights::WeightFormat,
) -> Result<(GpuModel, usize, f64)> {
    let cfg = bench_config(size, block_size)?;
    let t0 = Instant::now();
    let tensors = random_weights(&cfg, 7, 0.02);
    let params: usize = tensors.iter().map(|t| t.data.len()).sum();
    let bytes = to_safetensors(&cfg, &tensors, None);
    drop(tensors);
    let ckpt = Checkpoint::from_bytes(bytes, "random weights", &cfg)?;
    let model = pollster::block_on(GpuModel::load_as(ctx.clone(), cfg, &ckpt, format))?;
    Ok((model, params, t0.elapsed().as_secs_f64()))
}

fn print_model(model: &GpuModel, params: usize, secs: f64) {
    let cfg = &model.cfg;
    println!(
        "model: hidden {}, {} heads, {} blocks, vocab {}, L = {}, block size {} — {:.1}M parameters, built and loaded in {:.1} s",
        cfg.hidden_dim, cfg.n_heads, cfg.n_blocks, cfg.vocab_size, cfg.model_length, cfg.block_size, params as f64 / 1e6, secs
    );
}

/// `bench sample`: first-hitting generation with the KV cache, nucleus 0.9, random weights.
fn sample(a: SampleBenchArgs) -> Result<()> {
    let SampleBenchArgs {
        size,
        batch,
        block_size,
        length,
        top_p,
        weights,
        submit,
        mut plan,
    } = a;
    let block_size = block_size.min(size.length);
    // Sizes are checked before anything is allocated.
    let cfg = bench_config(&size, block_size)?;
    let length_wanted = length.unwrap_or(cfg.model_length);
    if !(2..=bd3_model::config::MAX_MODEL_LENGTH).contains(&length_wanted) {
        return Err(Error::Invalid(format!(
            "--length {length_wanted} must be between 2 and {}",
            bd3_model::config::MAX_MODEL_LENGTH
        )));
    }
    cfg.check_batch(batch, length_wanted.max(cfg.model_length))?;
    if plan.plan {
        if weights != crate::sample::WeightsArg::F32 && !plan.f16() {
            plan.features.push(PlanFeature::F16);
        }
        return plan_sample(
            &plan,
            &size,
            block_size,
            batch,
            length_wanted,
            top_p,
            weights,
        );
    }
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::default(),
    ))?);
    println!("adapter: {}", ctx.adapter_summary());
    let (format, why) = bd3_gpu::weights::WeightChoice::from(weights).resolve(&ctx)?;
    println!(
        "weights: {format}{}",
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    );
    let (mut model, params, secs) = random_model_as(&ctx, &size, block_size, format)?;
    print_model(&model, params, secs);
    model.block_recording = submit == Submit::Block;
    let length = length.unwrap_or(model.cfg.model_length);
    let opts = sample_options(batch, length, top_p, block_size);
    // Warm-up: two blocks record every program shape (sample and commit) and compile the pipelines.
    let warm = bd3_gpu::SampleOptions {
        length: (2 * block_size).min(length),
        ..opts.clone()
    };
    pollster::block_on(bd3_gpu::generate(&mut model, &warm, &mut |_| {}))?;
    let before = ctx.snapshot();
    let t = Instant::now();
    let result = pollster::block_on(bd3_gpu::generate(&mut model, &opts, &mut |_| {}))?;
    let secs = t.elapsed().as_secs_f64();
    let c = ctx.snapshot() - before;
    let calls = result.calls as f64;
    let generated = batch * (length - 1);
    println!(
        "first-hitting, nucleus {top_p}, KV cache: {length} tokens per sequence, batch {batch}, \
         submitted per {}",
        match submit {
            Submit::Block => "block",
            Submit::Call => "call",
        }
    );
    println!(
        "{:>14} {:>14} {:>12} {:>8} {:>10}",
        "ms/model call", "tokens/s", "model calls", "NFEs", "seconds"
    );
    println!(
        "{:>14.3} {:>14.1} {:>12} {:>8} {:>10.2}",
        secs * 1e3 / calls,
        generated as f64 / secs,
        result.calls,
        result.nfe,
        secs
    );
    println!(
        "per model call: submits {:.2}, buffers created {}, bind groups created {}, pipelines created {}, bytes read back {:.1}",
        c.submits as f64 / calls, c.buffers_created, c.bind_groups_created, c.pipelines_created, c.bytes_read_back as f64 / calls
    );
    println!("(a sampling call reads back one u32 token per sequence; a block commit reads back nothing)");
    Ok(())
}

/// First-hitting generation of `length` tokens per sequence from BOS, without early stops.
fn sample_options(
    batch: usize,
    length: usize,
    top_p: f64,
    block_size: usize,
) -> bd3_gpu::SampleOptions {
    bd3_gpu::SampleOptions {
        batch,
        length,
        prompt: Vec::new(),
        top_p,
        sampler: bd3_gpu::Sampler::FirstHitting,
        steps: block_size,
        seed: 1,
        var_length: false,
        entropy_check: false,
        stop: None,
    }
}

impl PlanArgs {
    fn f16(&self) -> bool {
        self.features.contains(&PlanFeature::F16)
    }

    fn subgroups(&self) -> bool {
        self.features.contains(&PlanFeature::Subgroups)
    }

    /// A planning model of `size` (no GPU, no weights in memory).
    fn model(&self, size: &BenchSize, block_size: usize) -> Result<GpuModel> {
        self.model_as(size, block_size, crate::sample::WeightsArg::F32)
    }

    /// [`PlanArgs::model`] with its matrices stored as `weights` resolves on the planned adapter.
    fn model_as(
        &self,
        size: &BenchSize,
        block_size: usize,
        weights: crate::sample::WeightsArg,
    ) -> Result<GpuModel> {
        let mut adapter = AdapterDesc::native(
            self.units.unwrap_or(DEFAULT_COMPUTE_UNITS),
            self.f16(),
            self.subgroups(),
        );
        if self.features.contains(&PlanFeature::Coop) {
            adapter = adapter.with_cooperative_matrix();
        }
        let ctx = Arc::new(GpuContext::planning(&adapter, ContextOptions::default()));
        let cfg = bench_config(size, block_size)?;
        let (format, _) = bd3_gpu::weights::WeightChoice::from(weights).resolve(&ctx)?;
        let model = pollster::block_on(GpuModel::allocate_as(ctx, cfg, format))?;
        println!(
            "plan for {} (max storage binding {} MiB), model: hidden {}, {} heads, {} blocks, vocab {}, L = {}, block size {}, {format} weights",
            adapter.name, adapter.max_storage_binding >> 20, size.hidden, size.heads, size.blocks, size.vocab, size.length, block_size
        );
        Ok(model)
    }

    fn units(&self) -> u32 {
        self.units.unwrap_or(DEFAULT_COMPUTE_UNITS)
    }
}

/// Print one line per dispatch, then the plan line.
fn print_plan(what: &str, dispatches: &[PlannedDispatch], units: u32) {
    println!("\n{what}");
    println!("{}", dispatch_header());
    for d in dispatches {
        println!("{}", dispatch_line(d));
    }
    println!("{}", summarize([dispatches], units).line());
}

/// `bench sample --plan`: the sampler's whole call sequence on a planning model; the plan line gives
/// means per model call.
fn plan_sample(
    plan: &PlanArgs,
    size: &BenchSize,
    block_size: usize,
    batch: usize,
    length: usize,
    top_p: f64,
    weights: crate::sample::WeightsArg,
) -> Result<()> {
    let mut model = plan.model_as(size, block_size, weights)?;
    let opts = sample_options(batch, length, top_p, block_size);
    let result = pollster::block_on(bd3_gpu::generate(&mut model, &opts, &mut |_| {}))?;
    let calls = &model.call_plans;
    // The first sampling call of the last block: the cache at its fullest.
    let shown = calls
        .iter()
        .rposition(|c| c.iter().any(|d| d.label == "sample"))
        .map(|last| {
            let mut i = last;
            while i > 0 && calls[i - 1].iter().any(|d| d.label == "sample") {
                i -= 1;
            }
            i
        });
    println!("first-hitting, nucleus {top_p}, KV cache: {length} tokens per sequence, batch {batch}: {} model calls", result.calls);
    if let Some(i) = shown {
        println!(
            "\ndispatches of model call {} (the first sampling call of the last block):",
            i + 1
        );
        println!("{}", dispatch_header());
        for d in &calls[i] {
            println!("{}", dispatch_line(d));
        }
    }
    println!(
        "\nper model call, mean over the {} calls of the generation:",
        calls.len()
    );
    println!(
        "{}",
        summarize(calls.iter().map(|c| c.as_slice()), plan.units()).line()
    );
    Ok(())
}

/// Every batch of the list fits the activation bound of the model (checked before anything is allocated;
/// 2L rows: BD3LM trains on x_t ⊕ x_0).
fn check_batches(size: &BenchSize, batches: &[usize], block_size: usize) -> Result<()> {
    let cfg = bench_config(size, block_size)?;
    batches.iter().try_for_each(|&b| {
        if b == 0 {
            Err(Error::Invalid("--batch sizes must be at least 1".into()))
        } else {
            cfg.check_batch(b, 2 * cfg.model_length)
        }
    })
}

/// `bench train`: one training step (forward with saved activations, backward, clip + AdamW + EMA)
/// on the vectorised BD3LM input with random weights; the split between the three parts.
fn train(a: BatchArgs) -> Result<()> {
    let BatchArgs {
        size,
        batch: batches,
        block_size,
        iters,
        precision,
        plan,
    } = a;
    let block_size = block_size.min(size.length);
    check_batches(&size, &batches, block_size)?;
    if plan.plan {
        let mut model = plan.model(&size, block_size)?;
        let mut trainer = pollster::block_on(bd3_gpu::Trainer::new(
            &model,
            bd3_gpu::OptimConfig::default(),
        ))?;
        crate::apply_precision(&mut model, Some(&mut trainer), precision)?;
        for &b in &batches {
            let shape = bd3_gpu::TrainShape {
                forward: crate::nelbo::loss_shape(&model.cfg, b),
                dropout_milli: 100,
            };
            let dispatches = trainer.plan_step(&model, &shape)?;
            print_plan(
                &format!(
                    "training step at batch {b} ({} tokens): forward, backward, clip + AdamW + EMA",
                    b * model.cfg.model_length
                ),
                &dispatches,
                plan.units(),
            );
        }
        return Ok(());
    }
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::default(),
    ))?);
    println!("adapter: {}", ctx.adapter_summary());
    let (mut model, params, secs) = random_model(&ctx, &size, block_size)?;
    print_model(&model, params, secs);
    let cfg = model.cfg.clone();
    let mem_weights = ctx.snapshot().bytes_allocated;
    let mut trainer = pollster::block_on(bd3_gpu::Trainer::new(
        &model,
        bd3_gpu::OptimConfig::default(),
    ))?;
    crate::apply_precision(&mut model, Some(&mut trainer), precision)?;
    println!("products: {precision:?} precision");
    println!("training step: x_t ⊕ x_0 forward keeping activations, backward, global-norm clip, AdamW, EMA (dropout 0.1)");
    println!(
        "{:>5}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}",
        "batch", "ms/step", "forward", "backward", "optimizer", "tokens/s", "GPU memory"
    );
    for &b in &batches {
        let l = cfg.model_length;
        let mut rng = SplitMix(5);
        let x0: Vec<Vec<u32>> = (0..b)
            .map(|_| {
                (0..l)
                    .map(|_| (rng.next_u64() % (cfg.vocab_size as u64 - 1)) as u32)
                    .collect()
            })
            .collect();
        let lb = bd3_model::objective::build_batch(
            &cfg,
            &x0,
            bd3_model::objective::Clip::NELBO,
            &mut rng,
            false,
        );
        let input = crate::nelbo::input_of(&lb);
        let fshape = crate::nelbo::loss_shape(&cfg, b);
        let tshape = bd3_gpu::TrainShape {
            forward: fshape,
            dropout_milli: 100,
        };
        let batch = bd3_gpu::TrainBatch {
            input: crate::nelbo::input_of(&lb),
            seed: 1,
            grad_scale: 1.0 / lb.denominator as f32,
        };
        let warm = pollster::block_on(model.forward(&fshape, &input))
            .and_then(|_| pollster::block_on(trainer.forward_backward(&model, &tshape, &batch)));
        if let Err(e) = warm {
            println!("{b:>5}  skipped: {e}");
            continue;
        }
        trainer.optimizer_step(&model, 1e-4)?;
        let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            let t = Instant::now();
            for _ in 0..iters {
                f()?;
            }
            Ok(t.elapsed().as_secs_f64() / iters as f64)
        };
        let fwd = time(&mut || pollster::block_on(model.forward(&fshape, &input)).map(|_| ()))?;
        let fwd_bwd = time(&mut || {
            pollster::block_on(trainer.forward_backward(&model, &tshape, &batch)).map(|_| ())
        })?;
        let opt = time(&mut || {
            trainer.optimizer_step(&model, 1e-4)?;
            pollster::block_on(ctx.read_f32(&model.weights.norm_final, 0, 1)).map(|_| ())
        })?;
        let step = fwd_bwd + opt;
        println!(
            "{b:>5}  {:>10.2}  {:>10.2}  {:>10.2}  {:>10.2}  {:>12.0}  {:>9.0} MiB",
            step * 1e3,
            fwd * 1e3,
            (fwd_bwd - fwd).max(0.0) * 1e3,
            opt * 1e3,
            (b * l) as f64 / step,
            ctx.snapshot().bytes_allocated as f64 / (1 << 20) as f64
        );
    }
    println!("\n(forward = the loss forward alone; backward = the training pass minus it, which also keeps");
    println!(
        " activations; GPU memory = every buffer allocated so far, weights {} MiB included)",
        mem_weights >> 20
    );
    Ok(())
}

fn forward(a: BatchArgs) -> Result<()> {
    let BatchArgs {
        size,
        batch: batches,
        block_size,
        iters,
        precision,
        plan,
    } = a;
    let block_size = block_size.min(size.length);
    check_batches(&size, &batches, block_size)?;
    if plan.plan {
        let mut model = plan.model(&size, block_size)?;
        crate::apply_precision(&mut model, None, precision)?;
        for &b in &batches {
            let shape = ForwardShape::bd3lm_train(b, model.cfg.model_length, block_size);
            let dispatches = model.plan_forward(&shape)?;
            print_plan(
                &format!(
                    "forward of x_t ⊕ x_0 at batch {b} ({} tokens per sequence) with the SUBS loss",
                    2 * model.cfg.model_length
                ),
                &dispatches,
                plan.units(),
            );
        }
        return Ok(());
    }
    let ctx = Arc::new(pollster::block_on(GpuContext::new(ContextOptions {
        timestamps: true,
        ..Default::default()
    }))?);
    println!("adapter: {}", ctx.adapter_summary());
    let (mut model, params, secs) = random_model(&ctx, &size, block_size)?;
    crate::apply_precision(&mut model, None, precision)?;
    print_model(&model, params, secs);
    let cfg = model.cfg.clone();
    println!("input: x_t ⊕ x_0 ({} tokens per sequence), block-diffusion mask, SUBS loss reduced on the GPU", 2 * cfg.model_length);
    println!();
    println!(
        "{:>5}  {:>10}  {:>12}  {:>8}  {:>9}  {:>8}  {:>11}  {:>11}",
        "batch", "ms/forward", "tokens/s", "submits", "buffers", "binds", "read back", "GEMM GF/s"
    );
    let mut kernel_rows = Vec::new();
    for &b in &batches {
        let l = cfg.model_length;
        let shape = ForwardShape::bd3lm_train(b, l, block_size);
        let mut rng = SplitMix(11);
        let x0: Vec<u32> = (0..b * l)
            .map(|_| (rng.next_u64() % (cfg.vocab_size as u64 - 1)) as u32)
            .collect();
        let xt: Vec<u32> = x0
            .iter()
            .map(|&x| {
                if rng.uniform() < 0.5 {
                    cfg.mask_id()
                } else {
                    x
                }
            })
            .collect();
        let tokens: Vec<u32> = (0..b)
            .flat_map(|s| [&xt[s * l..(s + 1) * l], &x0[s * l..(s + 1) * l]].concat())
            .collect();
        let weights = vec![2.0f32; b * l];
        let sigma = vec![0.0; b];
        let input = ForwardInput {
            tokens: &tokens,
            sigma: &sigma,
            input_ids: &xt,
            targets: &x0,
            weights: &weights,
            sedd_t: &[],
        };
        // Warm-up: records the program, allocates the workspace, compiles pipelines lazily.
        if let Err(e) = pollster::block_on(model.forward(&shape, &input)) {
            println!("{b:>5}  skipped: {e}");
            continue;
        }
        let before = ctx.snapshot();
        let t = Instant::now();
        for _ in 0..iters {
            pollster::block_on(model.forward(&shape, &input))?;
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        let per = ctx.snapshot() - before;
        let n = iters;
        let timing = kernel_times(&ctx, model.program(&shape).unwrap())?;
        let gemm = timing
            .as_ref()
            .map(|k| k.gemm_flops as f64 / k.gemm_seconds / 1e9)
            .map(|g| format!("{g:.1}"))
            .unwrap_or("n/a".into());
        println!(
            "{b:>5}  {:>10.2}  {:>12.0}  {:>8}  {:>9}  {:>8}  {:>9} B  {:>11}",
            secs * 1e3,
            (b * l) as f64 / secs,
            per.submits / n,
            per.buffers_created / n,
            per.bind_groups_created / n,
            per.bytes_read_back / n,
            gemm
        );
        if let Some(k) = timing {
            kernel_rows.push((b, k));
        }
    }
    println!("\ntokens/s counts the L data tokens of each sequence (the network processes 2L).");
    for (b, k) in kernel_rows {
        let total: f64 = k.by_kind.values().map(|v| v.0).sum();
        println!("\ntime per kernel kind, batch {b} (timestamp queries, one pass per dispatch):");
        println!(
            "{:<12} {:>10} {:>7} {:>11}",
            "kernel", "ms", "share", "dispatches"
        );
        for (name, (secs, count)) in &k.by_kind {
            println!(
                "{name:<12} {:>10.3} {:>6.1}% {:>11}",
                secs * 1e3,
                100.0 * secs / total,
                count
            );
        }
    }
    Ok(())
}

struct KernelTimes {
    by_kind: BTreeMap<&'static str, (f64, usize)>,
    gemm_flops: u64,
    gemm_seconds: f64,
}

/// Time every dispatch of a program with timestamp queries; None without TIMESTAMP_QUERY.
fn kernel_times(ctx: &GpuContext, program: &bd3_gpu::Program) -> Result<Option<KernelTimes>> {
    if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        return Ok(None);
    }
    let n = program.dispatch_count() as u32;
    let queries = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("bench timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: 2 * n,
    });
    let resolve = ctx.buffer(
        "timestamps",
        16 * n as u64,
        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
    )?;
    let staging = ctx.take_staging(16 * n as u64)?;
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let timed = program.encode_timed(&mut enc, &queries);
    enc.resolve_query_set(&queries, 0..2 * n, &resolve, 0);
    enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, 16 * n as u64);
    ctx.submit(enc);
    let bytes = pollster::block_on(ctx.map_read(&staging, 16 * n as u64))?;
    ctx.return_staging(staging);
    let stamps: &[u64] = bytemuck::cast_slice(&bytes);
    let period = ctx.queue().get_timestamp_period() as f64 * 1e-9;
    let mut by_kind = BTreeMap::new();
    let (mut gemm_flops, mut gemm_seconds) = (0u64, 0f64);
    for (i, d) in timed.iter().enumerate() {
        let secs = stamps[2 * i + 1].saturating_sub(stamps[2 * i]) as f64 * period;
        let e = by_kind.entry(d.label).or_insert((0.0, 0));
        e.0 += secs;
        e.1 += 1;
        // Every product kernel: the tiled ones (matmul, matmul_narrow, matmul_large…), the
        // cooperative ones and the matrix-vector variants (gemv, gemv_subgroup, gemv_f16…).
        if d.kernel.starts_with("matmul") || d.kernel.starts_with("gemv") {
            gemm_flops += d.flops;
            gemm_seconds += secs;
        }
    }
    Ok(Some(KernelTimes {
        by_kind,
        gemm_flops,
        gemm_seconds,
    }))
}
