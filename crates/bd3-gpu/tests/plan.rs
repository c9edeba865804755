//! Plans against recorded programs: a small model is recorded on the real adapter (lavapipe in CI)
//! and planned on a planning context made from that adapter's description; the dispatches must be
//! the same, one for one (label, kernel, workgroups, threads, FLOPs, bytes). Also the plan's GEMM
//! FLOPs against the model's arithmetic.

mod common;
use bd3_gpu::plan::AdapterDesc;
use bd3_gpu::{
    ContextOptions, ForwardShape, GpuContext, GpuModel, OptimConfig, PlannedDispatch,
    SampleOptions, Sampler, TrainShape, Trainer,
};
use bd3_model::config::TIMESTEP_FEATURES;
use bd3_model::{AttentionMask, ModelConfig};
use common::context_with;
use std::sync::Arc;

fn config(kind: &str, block_size: usize) -> ModelConfig {
    // The AR baseline is a BD3LM config with the "ar" parameterization, causal and without adaLN.
    let extra = if kind == "ar" {
        r#","parameterization":"ar","causal":true,"adaln":false"#
    } else {
        ""
    };
    let model_type = if kind == "ar" { "bd3lm" } else { kind };
    let json = format!(
        r#"{{"model_type":"{model_type}","block_size":{block_size},"cond_dim":24,"hidden_dim":40,"model_length":20,"n_blocks":2,"n_heads":2,"vocab_size":70{extra}}}"#
    );
    ModelConfig::from_json_bytes(json.as_bytes(), "plan test", None).unwrap()
}

/// A real model on the adapter and a planning model for the same adapter description.
fn pair(cfg: &ModelConfig, opts: ContextOptions) -> (GpuModel, GpuModel) {
    let ctx = context_with(opts.clone());
    let planning = Arc::new(GpuContext::planning(&AdapterDesc::of(&ctx), opts));
    let real = pollster::block_on(GpuModel::allocate(ctx, cfg.clone())).unwrap();
    let planned = pollster::block_on(GpuModel::allocate(planning, cfg.clone())).unwrap();
    (real, planned)
}

fn same(what: &str, recorded: Vec<&PlannedDispatch>, plan: &[PlannedDispatch]) {
    assert!(!plan.is_empty(), "{what}: empty plan");
    assert_eq!(
        recorded.len(),
        plan.len(),
        "{what}: {} dispatches recorded, {} planned",
        recorded.len(),
        plan.len()
    );
    for (i, (r, p)) in recorded.iter().zip(plan).enumerate() {
        assert_eq!(*r, p, "{what}: dispatch {i} differs");
    }
}

#[test]
fn forward_training_and_sampling_plans_equal_the_recorded_programs() {
    // Split weights and chunked logits too: a 2 KiB binding threshold puts the 70 × 40 embedding and
    // head in several parts, and plans must follow the adapter's limits like the recording does.
    for opts in [
        ContextOptions::default(),
        ContextOptions {
            split_threshold: Some(2048),
            ..Default::default()
        },
    ] {
        for (kind, block) in [("bd3lm", 4), ("mdlm", 20), ("ar", 1)] {
            let cfg = config(kind, block);
            let (mut real, mut planned) = pair(&cfg, opts.clone());
            let what = format!("{kind}, split threshold {:?}", opts.split_threshold);

            let shape = match kind {
                "bd3lm" => ForwardShape::bd3lm_train(3, 20, block),
                "ar" => ForwardShape::plain(3, 19, AttentionMask::Causal, bd3_gpu::Objective::Ar),
                _ => ForwardShape::plain(3, 20, AttentionMask::Full, bd3_gpu::Objective::Subs),
            };
            let plan = planned.plan_forward(&shape).unwrap();
            same(
                &format!("forward, {what}"),
                real.record_forward(&shape).unwrap().recorded(),
                &plan,
            );

            let tshape = TrainShape {
                forward: shape,
                dropout_milli: 100,
            };
            let mut trainer =
                pollster::block_on(Trainer::new(&real, OptimConfig::default())).unwrap();
            let mut planned_trainer =
                pollster::block_on(Trainer::new(&planned, OptimConfig::default())).unwrap();
            let step_plan = planned_trainer.plan_step(&planned, &tshape).unwrap();
            let mut recorded = trainer
                .record_training(&real, &tshape)
                .unwrap()
                .recorded()
                .into_iter()
                .cloned()
                .collect::<Vec<_>>();
            trainer
                .optimizer_step(&real, OptimConfig::default().lr)
                .unwrap();
            recorded.extend(
                trainer
                    .optimizer_program()
                    .unwrap()
                    .recorded()
                    .into_iter()
                    .cloned(),
            );
            same(
                &format!("training step, {what}"),
                recorded.iter().collect(),
                &step_plan,
            );

            // A short generation: every step shape (sampling and commit calls) the sampler records;
            // for BD3LM and MDLM also confidence decoding (its step adds the selection pass, and the
            // planning model reveals as many positions per call as the GPU would).
            let samplers: &[Sampler] = if kind == "ar" {
                &[Sampler::FirstHitting]
            } else {
                &[
                    Sampler::FirstHitting,
                    Sampler::Confidence { tokens_per_call: 3 },
                ]
            };
            let mut calls = 0;
            for &sampler in samplers {
                let opts = SampleOptions {
                    batch: 2,
                    length: 20,
                    prompt: vec![],
                    top_p: 0.9,
                    sampler,
                    steps: block,
                    seed: 3,
                    var_length: false,
                    entropy_check: false,
                    stop: None,
                };
                let real_run =
                    pollster::block_on(bd3_gpu::generate(&mut real, &opts, &mut |_| {})).unwrap();
                let planned_run =
                    pollster::block_on(bd3_gpu::generate(&mut planned, &opts, &mut |_| {}))
                        .unwrap();
                assert_eq!(
                    planned_run.calls, real_run.calls,
                    "{what}, {sampler:?}: the planned generation makes the same calls"
                );
                calls += real_run.calls;
            }
            let real_steps: Vec<_> = real.call_programs().collect();
            assert!(!real_steps.is_empty());
            for (shape, program) in real_steps {
                let p = planned
                    .call_programs()
                    .find(|(s, _)| *s == shape)
                    .unwrap_or_else(|| panic!("{what}: no planned step {shape:?}"))
                    .1;
                same(
                    &format!("step {shape:?}, {what}"),
                    program.recorded(),
                    &p.plan,
                );
            }
            assert_eq!(
                planned.call_plans.len(),
                calls,
                "{what}: one plan per model call"
            );
            // Calls of at most 16 rows (2 sequences × a BD3LM block of 4, or an AR model's newest
            // token) embed their tokens in block 0's attn_qkv prologue when the table is one
            // binding; MDLM's 20-token windows (40 rows) and a split table keep the gather pass.
            let folded = kind != "mdlm" && opts.split_threshold.is_none();
            for plan in &planned.call_plans {
                let gathers = plan.iter().filter(|d| d.label == "embedding").count();
                assert_eq!(
                    gathers == 0,
                    folded,
                    "{what}: {gathers} embedding dispatches"
                );
            }
        }
    }
}

#[test]
fn plan_gemm_flops_are_the_model_arithmetic() {
    let cfg = config("bd3lm", 4);
    let planning = Arc::new(GpuContext::planning(
        &AdapterDesc::native(132, false, false),
        ContextOptions::default(),
    ));
    let mut model = pollster::block_on(GpuModel::allocate(planning, cfg.clone())).unwrap();
    let (b, l) = (3, cfg.model_length);
    let plan = model
        .plan_forward(&ForwardShape::bd3lm_train(b, l, 4))
        .unwrap();
    let gemm: u64 = plan
        .iter()
        .filter(|d| d.kernel.starts_with("matmul") || d.kernel.starts_with("gemv"))
        .map(|d| d.flops)
        .sum();
    let (d, c, v, n) = (
        cfg.hidden_dim as u64,
        cfg.cond_dim as u64,
        cfg.vocab_size as u64,
        cfg.n_blocks as u64,
    );
    let rows = (b * 2 * l) as u64;
    let blocks = n * 2 * rows * 12 * d * d;
    let head = 2 * (b * l) as u64 * d * v;
    let conditioning =
        2 * b as u64 * (TIMESTEP_FEATURES as u64 * c + c * c + n * c * 6 * d + c * 2 * d);
    assert_eq!(gemm, blocks + head + conditioning);
    // Attention sees, per query of x_t ⊕ x_0, its own block of x_t plus the earlier clean blocks, or
    // (for x_0) the clean blocks up to its own: Σ over queries, times 4·head_dim FLOPs per pair.
    let pairs: u64 = (0..2 * l)
        .map(|q| {
            AttentionMask::BlockDiff {
                half_len: l,
                block_size: 4,
            }
            .intervals(q, 2 * l)
            .iter()
            .map(|(a, e)| (e - a) as u64)
            .sum::<u64>()
        })
        .sum();
    let attention: u64 = plan
        .iter()
        .filter(|d| d.kernel == "attention")
        .map(|d| d.flops)
        .sum();
    assert_eq!(
        attention,
        n * b as u64 * cfg.n_heads as u64 * pairs * 4 * cfg.head_dim() as u64
    );
}

#[test]
fn split_weight_gradients_are_planned_as_recorded() {
    // 26 sequences of x_t ⊕ x_0 (1040 rows) on an adapter described with 8 units: the 40 × 40 weight
    // gradients have one output tile, so they run as K slices plus a column sum.
    let cfg = config("bd3lm", 4);
    let (real, planned) = pair(
        &cfg,
        ContextOptions {
            compute_units: Some(8),
            ..Default::default()
        },
    );
    let shape = TrainShape {
        forward: ForwardShape::bd3lm_train(26, 20, 4),
        dropout_milli: 100,
    };
    let mut trainer = pollster::block_on(Trainer::new(&real, OptimConfig::default())).unwrap();
    let mut planned_trainer =
        pollster::block_on(Trainer::new(&planned, OptimConfig::default())).unwrap();
    let plan = planned_trainer
        .record_training(&planned, &shape)
        .unwrap()
        .plan
        .clone();
    assert!(
        plan.iter()
            .any(|d| d.label == "weight grad" && d.groups[2] > 1),
        "no split weight gradient in the plan"
    );
    same(
        "split training program",
        trainer.record_training(&real, &shape).unwrap().recorded(),
        &plan,
    );
}

#[test]
fn the_gradient_norm_reads_the_packed_gradients_in_two_dispatches() {
    // The gradients are views into a few packs (Weights::zeros_like_packed), so the norm's first pass
    // reads every pack in one dispatch and a second sums its partials, whatever the tensor count;
    // with weights split at 2 KiB (and packs of at most that) the 40-wide model's gradients need
    // many packs: ⌈packs / 7⌉ + 1 dispatches, still fewer than one per tensor.
    let cfg = config("bd3lm", 4);
    let shape = TrainShape {
        forward: ForwardShape::bd3lm_train(3, 20, 4),
        dropout_milli: 100,
    };
    let (params, tensors) = {
        let ctx = Arc::new(GpuContext::planning(
            &AdapterDesc::native(132, false, false),
            ContextOptions::default(),
        ));
        let model = pollster::block_on(GpuModel::allocate(ctx, cfg.clone())).unwrap();
        let tensors = model.weights.tensors();
        assert!(tensors.len() > 20, "{} tensors", tensors.len());
        let params: u64 = tensors
            .iter()
            .flat_map(|t| t.parts.iter().map(|p| p.1 as u64))
            .sum();
        (params, tensors.len())
    };
    for (split_threshold, one_pack) in [(None, true), (Some(2048u64), false)] {
        let ctx = Arc::new(GpuContext::planning(
            &AdapterDesc::native(132, false, false),
            ContextOptions {
                split_threshold,
                ..Default::default()
            },
        ));
        let model = pollster::block_on(GpuModel::allocate(ctx, cfg.clone())).unwrap();
        let optim = OptimConfig {
            max_grad_norm: 1.0,
            ..Default::default()
        };
        let mut trainer = pollster::block_on(Trainer::new(&model, optim)).unwrap();
        let plan = trainer.plan_step(&model, &shape).unwrap();
        let norm: Vec<_> = plan
            .iter()
            .filter(|d| d.label.starts_with("grad_norm"))
            .collect();
        let packs = trainer.gradient_packs().len();
        assert_eq!(packs == 1, one_pack, "{packs} packs");
        assert_eq!(
            norm.len(),
            packs.div_ceil(7) + 1,
            "split threshold {split_threshold:?}"
        );
        assert!(
            packs.div_ceil(7) + 1 < tensors,
            "no fewer dispatches than tensors"
        );
        // Every gradient value is read once (with the zero gaps that align the views).
        let read: u64 = norm
            .iter()
            .filter(|d| d.label == "grad_norm")
            .map(|d| d.flops / 2)
            .sum();
        assert!(
            read >= params && read < params + 64 * 200,
            "{read} values read for {params} parameters"
        );
    }
}

/// The GPU memory a training run plans (what the page reports before fine-tuning) is what the run
/// allocates on the adapter; an adapter whose buffers cannot hold the run is refused, naming the buffer.
#[test]
fn a_training_run_allocates_the_memory_planned_for_it() {
    use bd3_gpu::train_loop::{plan_memory, train_shape};
    let cfg = config("bd3lm", 4);
    let ctx = common::context();
    let optim = OptimConfig {
        ema_decay: 0.999,
        ..Default::default()
    };
    let (batch, dropout) = (3, 0.1);
    let plan = pollster::block_on(plan_memory(
        &AdapterDesc::of(&ctx),
        &cfg,
        batch,
        dropout,
        optim,
        true,
    ))
    .unwrap();
    let before = ctx.snapshot().bytes_allocated;
    let mut model = pollster::block_on(GpuModel::allocate(ctx.clone(), cfg.clone())).unwrap();
    let weights = ctx.snapshot().bytes_allocated - before;
    let mut trainer = pollster::block_on(Trainer::new(&model, optim)).unwrap();
    trainer
        .plan_step(&model, &train_shape(&cfg, batch, dropout))
        .unwrap();
    let _backup = bd3_gpu::Weights::zeros_like(&ctx, "backup", &model.weights).unwrap();
    model
        .record_forward(&ForwardShape {
            per_token: true,
            ..bd3_gpu::nelbo::loss_shape(&cfg, batch)
        })
        .unwrap();
    let total = ctx.snapshot().bytes_allocated - before;
    assert_eq!((plan.weights, plan.total), (weights, total));
    // The weights, their gradients, two Adam moments, the EMA and the backup: at least six copies.
    assert!(plan.total >= 6 * plan.weights, "{plan:?}");
    let small = AdapterDesc {
        max_buffer: 4096,
        max_storage_binding: 4096,
        ..AdapterDesc::of(&ctx)
    };
    let e = pollster::block_on(plan_memory(&small, &cfg, 64, dropout, optim, true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("for the qkv activations, over this adapter's binding limit")
            && e.contains("lower the batch"),
        "{e}"
    );
}

/// A sampling call over a cache long enough to split: the decode attention runs over key chunks
/// and a combine pass merges them, in the recorded program and in the plan alike, one for one.
#[test]
fn split_kv_attention_of_sampling_calls_is_planned_as_recorded() {
    // 100 cached rows and chunks of at least 32 keys: 4 chunks per head (2 heads, batch 1).
    let json = r#"{"model_type":"bd3lm","block_size":4,"cond_dim":24,"hidden_dim":40,"model_length":100,"n_blocks":2,"n_heads":2,"vocab_size":70}"#;
    let cfg = ModelConfig::from_json_bytes(json.as_bytes(), "plan test", None).unwrap();
    let (mut real, mut planned) = pair(&cfg, ContextOptions::default());
    let opts = SampleOptions {
        batch: 1,
        length: 100,
        prompt: vec![],
        top_p: 0.9,
        sampler: Sampler::FirstHitting,
        steps: 4,
        seed: 5,
        var_length: false,
        entropy_check: false,
        stop: None,
    };
    let real_run = pollster::block_on(bd3_gpu::generate(&mut real, &opts, &mut |_| {})).unwrap();
    let planned_run =
        pollster::block_on(bd3_gpu::generate(&mut planned, &opts, &mut |_| {})).unwrap();
    assert_eq!(planned_run.calls, real_run.calls);
    for (shape, program) in real.call_programs() {
        let p = planned
            .call_programs()
            .find(|(s, _)| *s == shape)
            .unwrap_or_else(|| panic!("no planned step {shape:?}"))
            .1;
        same(&format!("step {shape:?}"), program.recorded(), &p.plan);
    }
    // Every sampling call: per block a 4-chunk decode and its combine, no tiled attention.
    let sampling = planned
        .call_plans
        .iter()
        .filter(|plan| plan.iter().any(|d| d.label == "sample"))
        .collect::<Vec<_>>();
    assert!(!sampling.is_empty());
    for plan in sampling {
        let kernels = |k: &str| plan.iter().filter(|d| d.kernel == k).collect::<Vec<_>>();
        assert!(kernels("attention").is_empty());
        let decode = kernels("attention_decode");
        assert_eq!(decode.len(), cfg.n_blocks);
        assert!(decode.iter().all(|d| d.groups == [4, 2, 1]), "{decode:?}");
        assert_eq!(kernels("attention_combine").len(), cfg.n_blocks);
        // Six dispatches per block (attn_qkv with the embedding and LayerNorm in its prologue, the
        // decode, the combine, attn_out, mlp.0, mlp.2), then the head and the draw; the first call
        // also computes the generation's conditioning.
        let conditioning = ["sigma_map.0", "sigma_map.2", "adaLN", "final adaLN"];
        let network = plan.iter().filter(|d| !conditioning.contains(&d.label));
        assert_eq!(network.count(), 6 * cfg.n_blocks + 2, "{plan:?}");
    }
}

#[test]
fn work_is_sized_for_a_cpu_adapters_threads_and_a_gpus_132_units() {
    let threads = std::thread::available_parallelism().unwrap().get() as u32;
    let info = |t| wgpu::AdapterInfo::new(t, wgpu::Backend::Vulkan);
    let units = |info: &wgpu::AdapterInfo| bd3_gpu::context::default_compute_units(info, None);
    assert_eq!(units(&info(wgpu::DeviceType::Cpu)), threads);
    // The page's count (navigator.hardwareConcurrency) wins over the platform's; only for a CPU.
    let told = bd3_gpu::context::default_compute_units(&info(wgpu::DeviceType::Cpu), Some(6));
    assert_eq!(told, 6);
    let gpu = bd3_gpu::context::default_compute_units(&info(wgpu::DeviceType::Other), Some(6));
    assert_eq!(gpu, bd3_gpu::plan::DEFAULT_COMPUTE_UNITS);
    for t in [
        wgpu::DeviceType::DiscreteGpu,
        wgpu::DeviceType::IntegratedGpu,
        wgpu::DeviceType::Other,
    ] {
        assert_eq!(units(&info(t)), bd3_gpu::plan::DEFAULT_COMPUTE_UNITS);
    }
    // The test adapter (lavapipe in CI) without an explicit count, and with one.
    let ctx = pollster::block_on(GpuContext::new(ContextOptions::default())).unwrap();
    assert_eq!(ctx.compute_units, units(&ctx.info));
    assert_eq!(context_with(ContextOptions::default()).compute_units, 132);
    let seven = ContextOptions {
        compute_units: Some(7),
        ..ContextOptions::default()
    };
    assert_eq!(context_with(seven).compute_units, 7);
}
