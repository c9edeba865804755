//! `shaders/gemv.wgsl` and `shaders/gemv_subgroup.wgsl`: the Linears of a few rows (M ≤ 16: a
//! sampling call's block, a small batch's conditioning) as matrix-vector products,
//! out = epilogue(prologue(A)·Wᵀ + bias), with the epilogue of `matmul.wgsl` and an optional
//! LayerNorm/adaLN prologue (the normalisation computed per row inside the kernel, so a block's
//! LayerNorms need no dispatch of their own).
//!
//! Variants, all of one source:
//! - the reduction of the K partial sums: subgroup operations where the adapter has
//!   `wgpu::Features::SUBGROUP`, workgroup memory otherwise (the browser backend);
//! - the views of the input and the weight: vec4 (16-byte loads) when K and every offset and stride
//!   are multiples of 4, scalar otherwise;
//! - the weight format: f32, or f16 (`enable f16;`, only on adapters with `SHADER_F16`) with f32
//!   inputs and accumulation;
//! - the input format: f32 activations, or, for a prologue that gathers its rows from an embedding
//!   table stored in f16 ([`RowSource::Embedding`]), f16 rows.
//!
//! A workgroup owns [`columns_per_group`] output columns (1, 2, 4 or 8, compiled in), as many as keep two workgroups per compute
//! unit, so each weight row is read once and the input rows are shared by the columns.

use super::layernorm::LayerNorm;
use super::matmul::Matmul;
use super::{bindings, Kernels};
use crate::context::GpuContext;
use crate::program::{Cost, Kernel, ProgramBuilder};
use crate::shaders;
use crate::uniform_params;
pub use crate::weights::WeightFormat;
use bd3_model::{Error, Result};

/// Threads per workgroup.
pub const THREADS: u32 = 64;
/// The most rows a product may have.
pub const MAX_ROWS: u32 = 16;
/// Output columns a workgroup may own (each compiled as its own kernel).
pub const COLUMN_CHOICES: [u32; 4] = [1, 2, 4, 8];

uniform_params! {
    pub struct Params {
        pub m: u32,
        pub n: u32,
        pub k: u32,
        pub a_offset: u32,
        pub a_row_stride: u32,
        pub b_offset: u32,
        pub b_col_stride: u32,
        pub ldc: u32,
        pub out_col_offset: u32,
        pub has_bias: u32,
        pub bias_offset: u32,
        pub epilogue: u32,
        pub rows_per_seq: u32,
        pub gate_stride: u32,
        pub gate_offset: u32,
        pub out_rows_per_seq: u32,
        pub out_seq_stride: u32,
        pub out_row_offset: u32,
        pub store_aux: u32,
        pub dropout: f32,
        pub seed: u32,
        pub salt: u32,
        pub in_rows_per_seq: u32,
        pub map_rows_per_seq: u32,
        pub in_row_offset: u32,
        pub first_row: u32,
        pub use_row_index: u32,
        pub norm: u32,
        pub has_mod: u32,
        pub shift_offset: u32,
        pub scale_offset: u32,
        pub mod_stride: u32,
        pub keep_input: u32,
    }
}

bindings! {
    pub struct Bindings {
        /// The input rows (f32), contiguous in k; with a [`RowSource::Embedding`] prologue, the
        /// embedding table (f32 or f16).
        a: Req,
        /// The weight [N, K] (f32, or f16 for the f16 kernels).
        b: Req,
        bias: OptIn,
        /// adaLN modulation rows: the gate of a gated residual and/or the shift and scale of the
        /// LayerNorm prologue (one buffer: in a block both are the block's modulation rows).
        gate: OptIn,
        out: Req,
        /// Pre-activation or dropped branch output, as matmul's (the backward pass needs it); with a
        /// [`RowSource::Embedding`] prologue, the gathered rows instead (the residual stream).
        aux: OptOut,
        /// The LayerNorm weight [K] (the prologue only).
        ln_w: OptIn,
        /// The input row of each mapped row (u32; a sampler's picked positions, or the token ids of an
        /// embedding prologue).
        row_index: OptIn,
    }
}

/// How the K partial sums are added across a workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// subgroupAdd, then workgroup memory across the subgroups (`gemv_subgroup.wgsl`).
    Subgroup,
    /// Workgroup memory only (`gemv.wgsl`): every adapter, the browser's included.
    Workgroup,
}

impl Reduction {
    /// Subgroups where the device has them.
    pub fn for_features(features: wgpu::Features) -> Reduction {
        if features.contains(wgpu::Features::SUBGROUP) {
            Reduction::Subgroup
        } else {
            Reduction::Workgroup
        }
    }
}

/// The WGSL of one variant: the kernel file of `reduction` for `cols` columns per workgroup, with its
/// VIEWS region rewritten for `vec4` or scalar views, the `weights` element type and the `input`
/// element type of `a` (f16 only for an embedding table stored in f16).
pub fn source(
    reduction: Reduction,
    weights: WeightFormat,
    input: WeightFormat,
    vec4: bool,
    cols: u32,
) -> std::result::Result<String, String> {
    if !COLUMN_CHOICES.contains(&cols) {
        return Err(format!(
            "gemv: {cols} columns per workgroup is not one of {COLUMN_CHOICES:?}"
        ));
    }
    let (file, text) = match reduction {
        Reduction::Workgroup => ("gemv.wgsl", shaders::GEMV_WGSL),
        Reduction::Subgroup => ("gemv_subgroup.wgsl", shaders::GEMV_SUBGROUP_WGSL),
    };
    let (begin, end) = ("// VIEWS BEGIN\n", "// VIEWS END\n");
    let (Some(start), Some(stop)) = (text.find(begin), text.find(end)) else {
        return Err(format!(
            "{file}: no `{}` … `{}` region",
            begin.trim(),
            end.trim()
        ));
    };
    if text.matches(begin).count() != 1 || stop < start {
        return Err(format!("{file}: expected one VIEWS region"));
    }
    let mut out = String::with_capacity(text.len() + 1024);
    if weights == WeightFormat::F16 || input == WeightFormat::F16 {
        out.push_str("enable f16;\n");
    }
    out.push_str(&text[..start + begin.len()]);
    out.push_str(&views(weights, input, vec4));
    out.push_str(&text[stop..]);
    shaders::specialize(&out, &[("COLS", cols)])
}

/// The VIEWS region: the bindings of a (f32 or f16), b (f32 or f16) and ln_w (f32) and their loads
/// of a thread's four lanes, widened to f32 (see `shaders/gemv_body.wgsl`).
fn views(weights: WeightFormat, input: WeightFormat, vec4: bool) -> String {
    let (w, i) = (weights.name(), input.name());
    if vec4 {
        format!(
            "@group(0) @binding(1) var<storage, read> a: array<vec4<{i}>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<{w}>>;

// The k of thread t's four lanes in the step from `base`: four consecutive k, one 16-byte load.
fn lanes(base: u32, t: u32) -> vec4<u32> {{
    return vec4<u32>(base + 4u * t) + vec4<u32>(0u, 1u, 2u, 3u);
}}

// a[start + k] for the four lanes (0 where a lane is past K; with K % 4 = 0 all four are or none).
fn load_a(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {{
    if (live.x) {{
        return vec4<f32>(a[(start + k.x) >> 2u]);
    }}
    return vec4<f32>(0.0);
}}

fn load_b(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {{
    if (live.x) {{
        return vec4<f32>(b[(start + k.x) >> 2u]);
    }}
    return vec4<f32>(0.0);
}}

@group(0) @binding(7) var<storage, read> ln_w: array<vec4<f32>>;

fn load_ln_w(k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {{
    if (live.x) {{
        return ln_w[k.x >> 2u];
    }}
    return vec4<f32>(0.0);
}}
"
        )
    } else {
        format!(
            "@group(0) @binding(1) var<storage, read> a: array<{i}>;
@group(0) @binding(2) var<storage, read> b: array<{w}>;

// The k of thread t's four lanes in the step from `base`: k = base + t + 64i, so each of the four
// loads of a step is coalesced across the threads.
fn lanes(base: u32, t: u32) -> vec4<u32> {{
    return vec4<u32>(base + t) + vec4<u32>(0u, 1u, 2u, 3u) * THREADS;
}}

// a[start + k] for the four lanes (0 where a lane is past K).
fn load_a(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {{
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {{
        if (live[i]) {{
            v[i] = f32(a[start + k[i]]);
        }}
    }}
    return v;
}}

fn load_b(start: u32, k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {{
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {{
        if (live[i]) {{
            v[i] = f32(b[start + k[i]]);
        }}
    }}
    return v;
}}

@group(0) @binding(7) var<storage, read> ln_w: array<f32>;

fn load_ln_w(k: vec4<u32>, live: vec4<bool>) -> vec4<f32> {{
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {{
        if (live[i]) {{
            v[i] = ln_w[k[i]];
        }}
    }}
    return v;
}}
"
        )
    }
}

/// The kernels of one reduction, weight format and input format: vec4 and scalar views, each for
/// every entry of [`COLUMN_CHOICES`].
pub struct GemvKernels {
    pub vec4: Vec<Kernel>,
    pub scalar: Vec<Kernel>,
    pub reduction: Reduction,
    pub weights: WeightFormat,
    /// The element type of the input rows: f32 activations, or f16 for the embedding prologue of a
    /// model stored in f16.
    pub input: WeightFormat,
}

impl GemvKernels {
    /// The kernels of `reduction` for `weights` and f32 inputs; an error where the device lacks what
    /// they need (subgroups, shader-f16).
    pub async fn new(
        ctx: &GpuContext,
        reduction: Reduction,
        weights: WeightFormat,
    ) -> Result<GemvKernels> {
        GemvKernels::with_input(ctx, reduction, weights, WeightFormat::F32).await
    }

    /// The kernels of `reduction` for `weights` and inputs stored as `input`.
    pub async fn with_input(
        ctx: &GpuContext,
        reduction: Reduction,
        weights: WeightFormat,
        input: WeightFormat,
    ) -> Result<GemvKernels> {
        if reduction == Reduction::Subgroup && !ctx.features.contains(wgpu::Features::SUBGROUP) {
            return Err(Error::Gpu(
                "the subgroup matrix-vector kernel needs an adapter with subgroups".into(),
            ));
        }
        if (weights == WeightFormat::F16 || input == WeightFormat::F16)
            && !ctx.features.contains(wgpu::Features::SHADER_F16)
        {
            return Err(Error::Gpu(
                "f16 weights need an adapter with shader-f16".into(),
            ));
        }
        use WeightFormat::{F16, F32};
        // Plans and timings name the variant; the column count shows in the workgroup count.
        let name =
            |vec4: bool| -> Result<&'static str> {
                Ok(match (reduction, weights, input, vec4) {
                    (Reduction::Workgroup, F32, F32, true) => "gemv",
                    (Reduction::Workgroup, F32, F32, false) => "gemv_scalar",
                    (Reduction::Subgroup, F32, F32, true) => "gemv_subgroup",
                    (Reduction::Subgroup, F32, F32, false) => "gemv_subgroup_scalar",
                    (Reduction::Workgroup, F16, F32, true) => "gemv_f16",
                    (Reduction::Workgroup, F16, F32, false) => "gemv_scalar_f16",
                    (Reduction::Subgroup, F16, F32, true) => "gemv_subgroup_f16",
                    (Reduction::Subgroup, F16, F32, false) => "gemv_subgroup_scalar_f16",
                    (Reduction::Workgroup, F16, F16, true) => "gemv_f16_input_f16",
                    (Reduction::Workgroup, F16, F16, false) => "gemv_scalar_f16_input_f16",
                    (Reduction::Subgroup, F16, F16, true) => "gemv_subgroup_f16_input_f16",
                    (Reduction::Subgroup, F16, F16, false) => "gemv_subgroup_scalar_f16_input_f16",
                    (_, F32, F16, _) => return Err(Error::Gpu(
                        "gemv: f16 input rows are an f16 model's embedding table; its weights are \
                         f16 too"
                            .into(),
                    )),
                })
            };
        let (mut vec4s, mut scalars) = (Vec::new(), Vec::new());
        for cols in COLUMN_CHOICES {
            for (vec4, list) in [(true, &mut vec4s), (false, &mut scalars)] {
                let src = source(reduction, weights, input, vec4, cols).map_err(Error::Gpu)?;
                list.push(ctx.pipeline(name(vec4)?, &src, THREADS).await?);
            }
        }
        Ok(GemvKernels {
            vec4: vec4s,
            scalar: scalars,
            reduction,
            weights,
            input,
        })
    }

    /// The f32 kernels with the device's best reduction (what [`Kernels`] holds).
    pub async fn for_device(ctx: &GpuContext) -> Result<GemvKernels> {
        GemvKernels::new(
            ctx,
            Reduction::for_features(ctx.features),
            WeightFormat::F32,
        )
        .await
    }

    /// The kernel for `cols` columns per workgroup (one of [`COLUMN_CHOICES`]).
    pub fn kernel(&self, vec4: bool, cols: u32) -> &Kernel {
        let i = COLUMN_CHOICES
            .iter()
            .position(|&c| c == cols)
            .expect("columns_per_group returns one of COLUMN_CHOICES");
        if vec4 {
            &self.vec4[i]
        } else {
            &self.scalar[i]
        }
    }
}

/// Which rows a prologue normalises: `ln` maps rows and says where the modulation is (its `dim` is
/// K, its `n_rows` the rows of every chunk together); the product covers mapped rows
/// `first_row .. first_row + M` (a chunk of the head); `source` says what `a` holds.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub ln: LayerNorm,
    pub first_row: u32,
    pub source: RowSource,
}

/// Where a LayerNorm prologue's input rows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowSource {
    /// f32 activations in `a`, at the rows `ln` (and the row index, where bound) maps to.
    Activations,
    /// Rows of the embedding table bound as `a` (stored as `table`), picked by the token ids bound as
    /// the row index (`ln`'s input rows per sequence and row offset are ignored). The first workgroup
    /// also writes the rows, unnormalised, to `aux`: the first block of a sampling call embeds its
    /// tokens this way, so the embedding costs no dispatch of its own.
    Embedding { table: WeightFormat },
}

impl RowSource {
    /// The element type of the input rows.
    pub fn format(self) -> WeightFormat {
        match self {
            RowSource::Activations => WeightFormat::F32,
            RowSource::Embedding { table } => table,
        }
    }
}

/// A product of at most [`MAX_ROWS`] rows: `mm` as for matmul.wgsl (A and B contiguous in k;
/// `a_offset` and `a_row_stride` locate the input rows, row r at a_offset + row(r)·a_row_stride)
/// and an optional LayerNorm prologue. Without a prologue, row(r) = r.
#[derive(Clone, Copy, Debug)]
pub struct Gemv {
    pub mm: Matmul,
    pub norm: Option<Norm>,
}

impl Gemv {
    pub fn plain(mm: Matmul) -> Gemv {
        Gemv { mm, norm: None }
    }

    /// Whether a product of this shape can run here: few rows, A and B contiguous in k.
    pub fn fits(mm: &Matmul) -> bool {
        mm.m >= 1 && mm.m <= MAX_ROWS && mm.a_k_stride == 1 && mm.b_k_stride == 1
    }

    /// Whether the vec4 views cover it: K, the offsets and the strides of A and B multiples of 4.
    pub fn vec4_aligned(&self) -> bool {
        let m = &self.mm;
        [m.k, m.a_offset, m.a_row_stride, m.b_offset, m.b_col_stride]
            .iter()
            .all(|v| v % 4 == 0)
    }

    /// What `a` holds: activations, or an embedding table.
    pub fn row_source(&self) -> RowSource {
        self.norm.map_or(RowSource::Activations, |n| n.source)
    }

    /// The kernel parameters; `aux_bound`: the aux binding is given (it receives the epilogue's
    /// value, or the gathered rows of an embedding prologue).
    pub fn params(&self, has_bias: bool, aux_bound: bool, use_row_index: bool) -> Params {
        let embedding = matches!(self.row_source(), RowSource::Embedding { .. });
        let m = self.mm.params(has_bias, aux_bound && !embedding);
        let rows = self.mm.m.max(1);
        let (norm, first_row, in_rows, map_rows, in_offset) = match &self.norm {
            // The token id is the table row.
            Some(n) if embedding => (Some(n.ln), n.first_row, 0, n.ln.out_rows_per_seq.max(1), 0),
            Some(n) => (
                Some(n.ln),
                n.first_row,
                n.ln.in_rows_per_seq,
                n.ln.out_rows_per_seq.max(1),
                n.ln.in_row_offset,
            ),
            None => (None, 0, rows, rows, 0),
        };
        let modulation = norm.and_then(|n| n.modulation);
        let md = modulation.unwrap_or(super::layernorm::Modulation {
            shift: 0,
            scale: 0,
            stride: 0,
        });
        Params {
            m: m.m,
            n: m.n,
            k: m.k,
            a_offset: m.a_offset,
            a_row_stride: m.a_row_stride,
            b_offset: m.b_offset,
            b_col_stride: m.b_col_stride,
            ldc: m.ldc,
            out_col_offset: m.out_col_offset,
            has_bias: m.has_bias,
            bias_offset: m.bias_offset,
            epilogue: m.epilogue,
            rows_per_seq: m.rows_per_seq,
            gate_stride: m.gate_stride,
            gate_offset: m.gate_offset,
            out_rows_per_seq: m.out_rows_per_seq,
            out_seq_stride: m.out_seq_stride,
            out_row_offset: m.out_row_offset,
            store_aux: m.store_aux,
            dropout: m.dropout,
            seed: m.seed,
            salt: m.salt,
            in_rows_per_seq: in_rows,
            map_rows_per_seq: map_rows,
            in_row_offset: in_offset,
            first_row,
            use_row_index: use_row_index as u32,
            norm: norm.is_some() as u32,
            has_mod: modulation.is_some() as u32,
            shift_offset: md.shift,
            scale_offset: md.scale,
            mod_stride: md.stride,
            keep_input: (embedding && aux_bound) as u32,
        }
    }
}

/// Output columns per workgroup for `n` columns on `units` compute units: the most of
/// [`COLUMN_CHOICES`] that still give every unit two workgroups, 1 where even one column
/// per workgroup cannot (plan.rs counts a dispatch with fewer than 2 per unit as underfilled).
pub fn columns_per_group(n: u32, units: u32) -> u32 {
    let wanted = 2 * units.max(1);
    [8, 4, 2]
        .into_iter()
        .find(|&c| n.div_ceil(c) >= wanted)
        .unwrap_or(1)
}

/// Record `g` with the device's kernels for its weight format (`g.mm.b_format`: the f32 kernels,
/// or the f16 ones of a model stored in f16) and input format, vec4 views where aligned.
pub fn record(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    label: &'static str,
    g: &Gemv,
    b: Bindings,
) -> Result<()> {
    let kernels = match (g.mm.b_format, g.row_source().format()) {
        (WeightFormat::F32, WeightFormat::F32) => &k.matmul.gemv,
        (WeightFormat::F16, WeightFormat::F32) => &k.f16(label).matmul.gemv,
        (WeightFormat::F16, WeightFormat::F16) => &k.f16(label).gemv_embedding,
        (WeightFormat::F32, WeightFormat::F16) => {
            return Err(Error::Invalid(format!(
                "{label}: an f16 embedding table with f32 weights (a model is stored in one format)"
            )))
        }
    };
    record_with(pb, k, kernels, label, g, b)
}

/// Record `g` with `kernels` (another reduction; their weight format must be `g.mm.b_format`),
/// vec4 views where aligned.
pub fn record_with(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    kernels: &GemvKernels,
    label: &'static str,
    g: &Gemv,
    b: Bindings,
) -> Result<()> {
    record_views(pb, k, kernels, g.vec4_aligned(), label, g, b)
}

/// Record `g` with the vec4 or the scalar views of `kernels` (the tests run both); the vec4 views
/// need [`Gemv::vec4_aligned`].
pub fn record_views(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    kernels: &GemvKernels,
    vec4: bool,
    label: &'static str,
    g: &Gemv,
    b: Bindings,
) -> Result<()> {
    let mm = &g.mm;
    let bad = |m: String| Err(Error::Invalid(format!("{label}: {m}")));
    if !Gemv::fits(mm) {
        return bad(format!(
            "a matrix-vector product takes 1..={MAX_ROWS} rows contiguous in k, not {} rows \
             (k strides {}, {})",
            mm.m, mm.a_k_stride, mm.b_k_stride
        ));
    }
    if kernels.weights != mm.b_format || kernels.input != g.row_source().format() {
        return bad(format!(
            "{} weights and {} inputs, but kernels for {} weights and {} inputs",
            mm.b_format,
            g.row_source().format(),
            kernels.weights,
            kernels.input
        ));
    }
    if vec4 && !g.vec4_aligned() {
        return bad("the vec4 views need K, offsets and strides that are multiples of 4".into());
    }
    if let Some(n) = &g.norm {
        if n.ln.dim != mm.k || b.ln_w.is_none() {
            return bad(format!(
                "a LayerNorm prologue over {} needs K = {} and its weight",
                n.ln.dim, mm.k
            ));
        }
        if n.ln.modulation.is_some() && b.gate.is_none() {
            return bad("a modulated LayerNorm prologue needs the modulation rows".into());
        }
    }
    if b.row_index.is_some() && g.norm.is_none() {
        return bad("a row index maps the rows of a LayerNorm prologue only".into());
    }
    if matches!(g.row_source(), RowSource::Embedding { .. })
        && (b.row_index.is_none() || b.aux.is_none())
    {
        return bad(
            "an embedding prologue needs the token ids (row index) and the residual rows (aux)"
                .into(),
        );
    }
    let cols = columns_per_group(mm.n, pb.context().compute_units);
    let p = g.params(b.bias.is_some(), b.aux.is_some(), b.row_index.is_some());
    let groups = pb.fold(mm.n.div_ceil(cols) as u64)?;
    let kernel = kernels.kernel(vec4, cols);
    pb.dispatch(
        label,
        kernel,
        &p,
        b.slices(&k.placeholders),
        groups,
        cost(g, kernels.weights, &b),
    );
    Ok(())
}

/// FLOPs and bytes of one dispatch: the product (2·M·N·K), the prologue (8 per input element, its
/// weight and modulation), the inputs and weights in their own formats, the epilogue's reads and
/// writes, and the rows an embedding prologue keeps.
fn cost(g: &Gemv, weights: WeightFormat, b: &Bindings) -> Cost {
    let mm = &g.mm;
    let (m, n, kk) = (mm.m as u64, mm.n as u64, mm.k as u64);
    let weight_bytes = weights.bytes();
    let residual = matches!(
        mm.epilogue,
        super::matmul::Epilogue::GatedResidual | super::matmul::Epilogue::Residual
    );
    let gate = if b.gate.is_some() && mm.epilogue == super::matmul::Epilogue::GatedResidual {
        m.div_ceil(mm.rows_per_seq.max(1) as u64) * n
    } else {
        0
    };
    let (norm_flops, norm_floats) = match &g.norm {
        Some(nm) => {
            // The sequences whose modulation rows the mapped rows read.
            let per_seq = nm.ln.out_rows_per_seq.max(1) as u64;
            let first = nm.first_row as u64;
            let seqs = (first + m - 1) / per_seq - first / per_seq + 1;
            let modulation = if nm.ln.modulation.is_some() {
                2 * seqs * kk
            } else {
                0
            };
            (8 * m * kk, kk + modulation)
        }
        None => (0, 0),
    };
    let embedding = matches!(g.row_source(), RowSource::Embedding { .. });
    let kept = if embedding && b.aux.is_some() {
        m * kk
    } else {
        0
    };
    let floats = m * n
        + kept
        + if residual { m * n } else { 0 }
        + if b.bias.is_some() { n } else { 0 }
        + gate
        + if b.aux.is_some() && !embedding {
            m * n
        } else {
            0
        }
        + norm_floats;
    Cost {
        flops: 2 * m * n * kk + norm_flops,
        bytes: 4 * floats + g.row_source().format().bytes() * m * kk + weight_bytes * kk * n,
    }
}
