//! BD3-LM on wgpu: the device, the WGSL kernels, and the GPU model.
//!
//! Data flow: a [`bd3_model::Checkpoint`] → [`Weights`] on the GPU → [`GpuModel::forward`] programs
//! recorded once per shape and replayed with one submission each.

pub mod context;
pub mod layers;
pub mod loss_scale;
pub mod model;
pub mod model_call;
pub mod nelbo;
pub mod ops;
pub mod plan;
pub mod program;
pub mod sampler;
pub mod score;
pub mod shaders;
pub mod train;
pub mod train_loop;
pub mod weights;

pub use context::{ContextOptions, CooperativeMatrix, CounterSnapshot, GpuContext};
pub use model::{Capture, ForwardInput, ForwardOutput, ForwardShape, GpuModel, Objective};
pub use model_call::{CallAction, CallInputs, CallOutput, CallShape};
pub use plan::{AdapterDesc, PlanSummary};
pub use program::{Buf, PlannedDispatch, Program};
pub use sampler::{
    defaults, generate, SampleEvent, SampleOptions, SampleResult, Sampler, SAMPLER_NAMES,
};
pub use score::{score_sequences, unigram_entropy, SampleScore, ScoreOptions};
pub use train::{OptimConfig, TrainBatch, TrainOutput, TrainShape, Trainer};
pub use weights::Weights;
