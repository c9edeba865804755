//! One module per kernel: its parameter block (a `#[repr(C)]` struct matching the WGSL `Params`
//! field by field, checked by a test through naga), its named bindings, the choice among its variants,
//! its work count for plans, and the one function that records a dispatch of it.
//!
//! | module | kernel | what it computes |
//! |---|---|---|
//! | [`embedding`] | embedding.wgsl | x = E[tokens] (a sampling call of ≤ 16 rows gathers them in attn_qkv's prologue instead) |
//! | [`layernorm`] | layernorm.wgsl | LayerNorm with adaLN modulation, rows re-mapped |
//! | [`matmul`] | matmul.wgsl | every Linear, forward and backward, with fused epilogues |
//! | [`gemv`] | gemv.wgsl, gemv_subgroup.wgsl | the Linears of ≤ 16 rows, with a LayerNorm prologue (which can gather embedding rows) |
//! | [`attention`] | attention.wgsl, attention_dq.wgsl, attention_dkv.wgsl, attention_decode.wgsl, attention_combine.wgsl | masked rotary attention and its gradients; split-KV for few queries |
//! | [`token_loss`] | token_loss.wgsl | SUBS / AR log-probs, loss and logits gradient |
//! | [`sedd_loss`] | sedd_loss.wgsl | SEDD log-score, score entropy and logits gradient |
//! | [`reduce_sum`] | reduce_sum.wgsl | Σx or Σx² into one value |
//! | [`grad_norm`] | grad_norm.wgsl | Σx² over many tensors (with reduce_sum) |
//! | [`sample`] | sample.wgsl, sample_subgroup.wgsl | one token per row: nucleus and exponential race |
//! | [`confidence`] | confidence.wgsl | confidence decoding: keep the most confident draws |
//! | [`col_sum`] | col_sum.wgsl | column sums (bias gradients) |
//! | [`elementwise`] | elementwise.wgsl | gelu and the activation derivatives |
//! | [`gate_backward`] | gate_backward.wgsl | gated residual backward, dropout regenerated |
//! | [`layernorm_backward`] | layernorm_backward.wgsl | LayerNorm input gradient |
//! | [`layernorm_param_grads`] | layernorm_param_grads.wgsl | LayerNorm weight and modulation gradients |
//! | [`embedding_backward`] | embedding_backward.wgsl | embedding scatter without atomics |
//! | [`adamw`] | adamw.wgsl | clipped AdamW step and the EMA |

use crate::context::GpuContext;
use crate::program::{Buf, Kernel};
use crate::shaders;
use bd3_model::{Error, Result};

pub mod adamw;
pub mod attention;
pub mod col_sum;
pub mod confidence;
pub mod elementwise;
pub mod embedding;
pub mod embedding_backward;
pub mod gate_backward;
pub mod gemv;
pub mod grad_norm;
pub mod layernorm;
pub mod layernorm_backward;
pub mod layernorm_param_grads;
pub mod matmul;
pub mod reduce_sum;
pub mod sample;
pub mod sedd_loss;
pub mod token_loss;

/// A required binding.
pub type Req<'a> = &'a Buf;
/// An optional input (a placeholder is bound when absent).
pub type OptIn<'a> = Option<&'a Buf>;
/// An optional output (a placeholder is bound when absent).
pub type OptOut<'a> = Option<&'a Buf>;
/// A second optional output of the same dispatch: two writable bindings may not alias.
pub type OptOut2<'a> = Option<&'a Buf>;
/// A third one.
pub type OptOut3<'a> = Option<&'a Buf>;

/// Declares an op's named bindings (binding 1 onwards, in order; the names are the WGSL variables',
/// which a test checks).
macro_rules! bindings {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident : $kind:ident),* $(,)? }) => {
        $(#[$m])*
        pub struct $name<'a> { $($(#[$fm])* pub $field: $crate::ops::$kind<'a>,)* }
        impl $name<'_> {
            /// The WGSL variable of each binding, from binding 1.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];
            #[allow(unused_variables)]
            pub(crate) fn slices(&self, k: &$crate::ops::Placeholders) -> Vec<$crate::program::Slice> {
                vec![$($crate::ops::bindings!(@slice k, self.$field, $kind)),*]
            }
        }
    };
    (@slice $k:ident, $e:expr, Req) => { $crate::program::Slice::from($e) };
    (@slice $k:ident, $e:expr, OptIn) => { $crate::program::Slice::from($e.unwrap_or(&$k.input)) };
    (@slice $k:ident, $e:expr, OptOut) => { $crate::program::Slice::from($e.unwrap_or(&$k.output)) };
    (@slice $k:ident, $e:expr, OptOut2) => { $crate::program::Slice::from($e.unwrap_or(&$k.output2)) };
    (@slice $k:ident, $e:expr, OptOut3) => { $crate::program::Slice::from($e.unwrap_or(&$k.output3)) };
}
pub(crate) use bindings;

/// Buffers bound where an optional binding is switched off.
pub struct Placeholders {
    /// For an absent input (no bias, no gate, no modulation).
    pub input: Buf,
    /// For an absent output (a buffer may not be read-only and writable in one dispatch, so inputs
    /// and outputs get separate placeholders).
    pub output: Buf,
    /// Second and third output placeholders: writable bindings may not alias (browsers check this).
    pub output2: Buf,
    pub output3: Buf,
}

impl Placeholders {
    pub fn new(ctx: &GpuContext) -> Result<Placeholders> {
        Ok(Placeholders {
            input: ctx.storage("placeholder in", 16)?,
            output: ctx.storage("placeholder out", 16)?,
            output2: ctx.storage("placeholder out 2", 16)?,
            output3: ctx.storage("placeholder out 3", 16)?,
        })
    }
}

/// The kernels inference needs (forward, loss, sampling), built up front.
pub struct Kernels {
    pub embedding: Kernel,
    pub layernorm: Kernel,
    pub matmul: matmul::Variants,
    pub attention: attention::TiledKernel,
    /// The forward for a few queries split over the keys, and the merge of its chunks.
    pub attention_decode: attention::TiledKernel,
    pub attention_combine: Kernel,
    pub token_loss: Kernel,
    pub sedd_loss: Kernel,
    pub reduce_sum: Kernel,
    pub sample: Kernel,
    pub confidence: Kernel,
    pub placeholders: Placeholders,
    /// The twins that read f16 weights (built for a model whose weights are stored in f16).
    pub f16: Option<F16Kernels>,
    /// In mixed precision, the products every GEMM takes (`matmul::record`) and the attention
    /// forward (`attention::record`); None: f32.
    pub mixed: Option<matmul::MixedKernels>,
    /// The head dimension the attention kernels are specialised for.
    pub head_dim: usize,
}

/// Kernels reading weights stored as f16 ([`crate::weights::WeightFormat::F16`]): the embedding
/// gather and the products, each the f32 kernel's twin (`shaders::with_f16_weights`), and the
/// matrix-vector products whose prologue gathers f16 table rows (the first block of a sampling call).
pub struct F16Kernels {
    pub embedding: Kernel,
    pub matmul: matmul::Variants,
    pub gemv_embedding: gemv::GemvKernels,
}

impl F16Kernels {
    pub async fn new(ctx: &GpuContext) -> Result<F16Kernels> {
        if !ctx.features.contains(wgpu::Features::SHADER_F16) {
            return Err(Error::Invalid(format!(
                "f16 weights need the shader-f16 feature, which {} lacks",
                ctx.info.name
            )));
        }
        let twin = |name: &str, var: &str| {
            shaders::with_f16_weights(
                shaders::kernel_source(&format!("{name}.wgsl")).map_err(Error::Gpu)?,
                var,
            )
            .map_err(Error::Gpu)
        };
        Ok(F16Kernels {
            embedding: ctx
                .pipeline(
                    "embedding_f16",
                    &twin("embedding", "table")?,
                    embedding::THREADS,
                )
                .await?,
            matmul: matmul::Variants::new_f16(ctx).await?,
            gemv_embedding: gemv::GemvKernels::with_input(
                ctx,
                gemv::Reduction::for_features(ctx.features),
                crate::weights::WeightFormat::F16,
                crate::weights::WeightFormat::F16,
            )
            .await?,
        })
    }
}

/// The kernel `name` (`shaders/{name}.wgsl`) with `threads` invocations per workgroup.
async fn kernel(ctx: &GpuContext, name: &'static str, threads: u32) -> Result<Kernel> {
    ctx.pipeline(
        name,
        shaders::kernel_source(&format!("{name}.wgsl")).map_err(Error::Gpu)?,
        threads,
    )
    .await
}

impl Kernels {
    /// The f16 twins, or an error naming the kernel when the model was built without them.
    pub fn f16(&self, what: &str) -> &F16Kernels {
        self.f16.as_ref().unwrap_or_else(|| {
            panic!("{what}: f16 weights but no f16 kernels (Kernels::for_weights)")
        })
    }

    /// The kernels of a model with f32 weights.
    pub async fn new(ctx: &GpuContext, head_dim: usize) -> Result<Kernels> {
        Kernels::for_weights(ctx, head_dim, crate::weights::WeightFormat::F32).await
    }

    /// The kernels of a model whose large matrices are stored as `format`.
    pub async fn for_weights(
        ctx: &GpuContext,
        head_dim: usize,
        format: crate::weights::WeightFormat,
    ) -> Result<Kernels> {
        Ok(Kernels {
            embedding: kernel(ctx, "embedding", embedding::THREADS).await?,
            layernorm: kernel(ctx, "layernorm", layernorm::THREADS).await?,
            matmul: matmul::Variants::new(ctx).await?,
            attention: attention::kernel(ctx, attention::Pass::Forward, head_dim).await?,
            attention_decode: attention::kernel(ctx, attention::Pass::Decode, head_dim).await?,
            attention_combine: kernel(ctx, "attention_combine", attention::THREADS).await?,
            token_loss: kernel(ctx, "token_loss", token_loss::THREADS).await?,
            sedd_loss: kernel(ctx, "sedd_loss", sedd_loss::THREADS).await?,
            reduce_sum: kernel(ctx, "reduce_sum", reduce_sum::THREADS).await?,
            sample: sample::kernel(ctx, sample::Reductions::for_adapter(ctx)).await?,
            confidence: kernel(ctx, "confidence", confidence::THREADS).await?,
            placeholders: Placeholders::new(ctx)?,
            f16: match format {
                crate::weights::WeightFormat::F32 => None,
                crate::weights::WeightFormat::F16 => Some(F16Kernels::new(ctx).await?),
            },
            mixed: None,
            head_dim,
        })
    }

    /// Run the products in `precision`: mixed takes the tensor-core kernel and fails (one line naming
    /// the adapter) without cooperative matrices. Programs recorded before keep their kernels.
    pub async fn set_precision(
        &mut self,
        ctx: &GpuContext,
        precision: matmul::Precision,
    ) -> Result<()> {
        self.mixed = match precision {
            matmul::Precision::F32 => None,
            matmul::Precision::Mixed => Some(matmul::mixed_kernels(ctx, self.head_dim).await?),
        };
        Ok(())
    }

    /// For tests on adapters without tensor cores: mixed precision through the emulated twin of the
    /// cooperative product (same staging, tiles and f16 rounding; plain loops).
    #[doc(hidden)]
    pub async fn set_emulated_mixed_precision(&mut self, ctx: &GpuContext) -> Result<()> {
        self.mixed = Some(matmul::coop_emulated_kernels(ctx, self.head_dim).await?);
        Ok(())
    }
}

/// The kernels only training needs, built when a trainer is made (sampling never pays for them).
pub struct TrainKernels {
    pub attention_dq: attention::TiledKernel,
    pub attention_dkv: attention::TiledKernel,
    pub col_sum: Kernel,
    pub elementwise: Kernel,
    pub gate_backward: Kernel,
    pub grad_norm: Kernel,
    pub layernorm_backward: Kernel,
    pub layernorm_param_grads: Kernel,
    pub embedding_backward: Kernel,
    pub adamw: Kernel,
}

impl TrainKernels {
    pub async fn new(ctx: &GpuContext, head_dim: usize) -> Result<TrainKernels> {
        let k = |name: &'static str, threads: u32| kernel(ctx, name, threads);
        Ok(TrainKernels {
            attention_dq: attention::kernel(ctx, attention::Pass::QueryGrad, head_dim).await?,
            attention_dkv: attention::kernel(ctx, attention::Pass::KeyValueGrad, head_dim).await?,
            col_sum: k("col_sum", col_sum::THREADS).await?,
            elementwise: k("elementwise", elementwise::THREADS).await?,
            gate_backward: k("gate_backward", gate_backward::THREADS).await?,
            grad_norm: k("grad_norm", grad_norm::THREADS).await?,
            layernorm_backward: k("layernorm_backward", layernorm_backward::THREADS).await?,
            layernorm_param_grads: k("layernorm_param_grads", layernorm_param_grads::THREADS)
                .await?,
            embedding_backward: k("embedding_backward", embedding_backward::THREADS).await?,
            adamw: k("adamw", adamw::THREADS).await?,
        })
    }
}

/// Bytes of `n` f32 or u32 values.
pub(crate) fn words(n: u64) -> u64 {
    4 * n
}
