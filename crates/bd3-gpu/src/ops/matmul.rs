//! `shaders/matmul.wgsl` and `shaders/matmul_large.wgsl`: every Linear of the forward and backward
//! passes, out = epilogue(A·B + bias) with strided operands, a row mapping (KV caches) and dropout.
//!
//! Variants, chosen per product from its size and the adapter ([`Matmul::tiling`]):
//! - 128 × 128 output tiles (`matmul_large.wgsl`: 8 × 8 per thread, 16-byte loads, double-buffered
//!   staging; K slabs of 8 in the browser's 16 KiB or 16 where the adapter allows 32 KiB) for
//!   products that give every compute unit two such tiles, alone or in K slices: the Linears of
//!   training and their gradients;
//! - 64-row output tiles (4 rows per thread) for the other wide inputs;
//! - for M ≤ 16 (sampling steps, the conditioning of a small batch) matrix-vector products
//!   ([`super::gemv`]: a few output columns per workgroup, every weight read shared by the rows) when
//!   A and B are contiguous in k as in every forward Linear, else 16-row tiles (1 row per thread), so
//!   a step of a few rows neither pays for a 64-row tile nor runs on a dozen workgroups;
//! - split K ([`record_accumulating`]): a product whose output tiles cannot give every compute unit
//!   two workgroups but whose K is long (a weight gradient over thousands of rows) runs as K slices
//!   into a scratch buffer, summed by a column-sum pass.
//!
//! Mixed precision ([`Precision::Mixed`], [`crate::ops::Kernels::set_precision`]): every product
//! recorded through [`record`] and [`record_accumulating`] takes the tensor-core kernel
//! (`shaders/matmul_coop.wgsl`: f16 operands staged from the f32 buffers, f32 sums, the same epilogue)
//! instead; f32 stays the default and the reference. The tests run its emulated twin
//! (`matmul_coop_emulated.wgsl`) in that role on adapters without cooperative matrices.

use super::col_sum::{self, Columns};
use super::gemv::{self, Gemv, GemvKernels};
use super::{bindings, words, Kernels, TrainKernels};
use crate::context::GpuContext;
use crate::program::{Buf, Cost, Kernel, ProgramBuilder};
use crate::shaders;
use crate::uniform_params;
use crate::weights::WeightFormat;
use bd3_model::{Error, Result};

/// 16 × 16 threads.
pub const THREADS: u32 = 256;
/// Output columns per workgroup.
pub const TILE_N: u32 = 64;

uniform_params! {
    pub struct Params {
        pub m: u32,
        pub n: u32,
        pub k: u32,
        pub a_offset: u32,
        pub a_row_stride: u32,
        pub a_k_stride: u32,
        pub b_offset: u32,
        pub b_k_stride: u32,
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
        pub k_split: u32,
        pub split_stride: u32,
    }
}

bindings! {
    pub struct Bindings {
        a: Req,
        b: Req,
        bias: OptIn,
        /// adaLN modulation rows holding the gate (GatedResidual).
        gate: OptIn,
        out: Req,
        /// Pre-activation (Gelu/Silu) or dropped branch output (residual modes), for the backward pass.
        aux: OptOut,
    }
}

/// What happens to v = A·B + bias before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// out = v
    Store = 0,
    /// out = gelu_tanh(v)
    Gelu = 1,
    /// out = silu(v)
    Silu = 2,
    /// out += gate[s] · drop(v)
    GatedResidual = 3,
    /// out += drop(v)
    Residual = 4,
}

/// A matrix product, typed: see the shader header for the strides' meaning.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_offset: u32,
    pub a_row_stride: u32,
    pub a_k_stride: u32,
    pub b_offset: u32,
    pub b_k_stride: u32,
    pub b_col_stride: u32,
    pub ldc: u32,
    pub out_col_offset: u32,
    pub bias_offset: u32,
    pub epilogue: Epilogue,
    /// Rows per sequence (selects the gate row).
    pub rows_per_seq: u32,
    pub gate_stride: u32,
    pub gate_offset: u32,
    /// Output row of input row i: (i / out_rows_per_seq)·out_seq_stride + out_row_offset + i % out_rows_per_seq.
    pub out_rows: OutRows,
    pub dropout: Option<Dropout>,
    /// How B is stored: f16 weights take the f16 twins of the kernels.
    pub b_format: WeightFormat,
}

/// Where each sequence's output rows go (a KV cache holds `seq_stride` rows per sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutRows {
    pub rows_per_seq: u32,
    pub seq_stride: u32,
    pub row_offset: u32,
}

/// Inverted dropout of a residual branch, keyed by (seed, salt, row, column).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u32,
    pub salt: u32,
}

impl Matmul {
    /// `out[m, n] = a[m, :] · w[n, :]`: a Linear with its weight stored [out = n, in = k].
    pub fn plain(m: u32, n: u32, k: u32) -> Matmul {
        Matmul {
            m,
            n,
            k,
            a_offset: 0,
            a_row_stride: k,
            a_k_stride: 1,
            b_offset: 0,
            b_k_stride: 1,
            b_col_stride: k,
            ldc: n,
            out_col_offset: 0,
            bias_offset: 0,
            epilogue: Epilogue::Store,
            rows_per_seq: m.max(1),
            gate_stride: 0,
            gate_offset: 0,
            out_rows: OutRows {
                rows_per_seq: m.max(1),
                seq_stride: 0,
                row_offset: 0,
            },
            dropout: None,
            b_format: WeightFormat::F32,
        }
    }

    /// `out[m, c] = Σ_r dy[m, r] · w[r, c]`: the input gradient of a Linear whose weight is [rows, cols].
    pub fn input_grad(m: u32, rows: u32, cols: u32, ld_dy: u32) -> Matmul {
        Matmul {
            a_row_stride: ld_dy,
            b_k_stride: cols,
            b_col_stride: 1,
            ..Matmul::plain(m, cols, rows)
        }
    }

    /// `out[r, c] += Σ_m dy[m, r] · x[m, c]`: the weight gradient [rows, cols] over m input rows.
    pub fn weight_grad(m: u32, rows: u32, cols: u32, ld_dy: u32, ld_x: u32) -> Matmul {
        Matmul {
            a_row_stride: 1,
            a_k_stride: ld_dy,
            b_k_stride: ld_x,
            b_col_stride: 1,
            epilogue: Epilogue::Residual,
            ..Matmul::plain(rows, cols, m)
        }
    }

    pub fn params(&self, has_bias: bool, store_aux: bool) -> Params {
        let d = self.dropout.unwrap_or(Dropout {
            p: 0.0,
            seed: 0,
            salt: 0,
        });
        Params {
            m: self.m,
            n: self.n,
            k: self.k,
            a_offset: self.a_offset,
            a_row_stride: self.a_row_stride,
            a_k_stride: self.a_k_stride,
            b_offset: self.b_offset,
            b_k_stride: self.b_k_stride,
            b_col_stride: self.b_col_stride,
            ldc: self.ldc,
            out_col_offset: self.out_col_offset,
            has_bias: has_bias as u32,
            bias_offset: self.bias_offset,
            epilogue: self.epilogue as u32,
            rows_per_seq: self.rows_per_seq,
            gate_stride: self.gate_stride,
            gate_offset: self.gate_offset,
            out_rows_per_seq: self.out_rows.rows_per_seq,
            out_seq_stride: self.out_rows.seq_stride,
            out_row_offset: self.out_rows.row_offset,
            store_aux: store_aux as u32,
            dropout: d.p,
            seed: d.seed,
            salt: d.salt,
            k_split: self.k.max(1),
            split_stride: 0,
        }
    }

    /// Whether the product may be split into K slices: a plain store or accumulation into a
    /// contiguous [m, n] output (no bias, gate, aux, dropout or row mapping).
    fn splittable(&self) -> bool {
        let contiguous = self.ldc == self.n
            && self.out_col_offset == 0
            && self.out_rows.seq_stride == 0
            && self.out_rows.row_offset == 0;
        contiguous
            && self.dropout.is_none()
            && matches!(self.epilogue, Epilogue::Store | Epilogue::Residual)
    }

    /// The tiles and K slices of this product on an adapter of `units` compute units (the f32
    /// kernels; the matrix-vector and mixed-precision choices come first, see [`record`]). Every
    /// unit should get two workgroups:
    /// - 128 × 128 tiles ([`Tile::Large`]) when they alone give that;
    /// - else, for a splittable product with a long K, 128 × 128 tiles in as many K slices as that
    ///   takes, if no more than one slice per [`MIN_K_PER_SLICE`] of K and [`MAX_K_SLICES`];
    /// - else 64 × 64 tiles (16 × 64 for M ≤ 16), in K slices if those still fall short, as many
    ///   as the same bounds allow.
    pub fn tiling(&self, units: u32) -> Tiling {
        let wanted = 2 * units.max(1);
        let small = self.small_tile();
        let one = |tile| Tiling { tile, slices: 1 };
        if self.m == 0 || self.n == 0 {
            return one(small);
        }
        let large_tiles = Tile::Large.tiles(self);
        if small == Tile::Rows64 && large_tiles >= wanted {
            return one(Tile::Large);
        }
        let max_slices = (self.k / MIN_K_PER_SLICE).clamp(1, MAX_K_SLICES);
        if !self.splittable() || max_slices == 1 {
            return one(small);
        }
        let large_slices = wanted.div_ceil(large_tiles);
        if small == Tile::Rows64 && large_slices <= max_slices {
            return Tiling {
                tile: Tile::Large,
                slices: large_slices,
            };
        }
        Tiling {
            tile: small,
            slices: self.slices_for(small.tiles(self), units),
        }
    }

    /// K slices that give `tiles` output tiles two workgroups per unit, within the bounds of
    /// [`Matmul::tiling`] (one per [`MIN_K_PER_SLICE`] of K, at most [`MAX_K_SLICES`]).
    fn slices_for(&self, tiles: u32, units: u32) -> u32 {
        let max_slices = (self.k / MIN_K_PER_SLICE).clamp(1, MAX_K_SLICES);
        (2 * units.max(1))
            .div_ceil(tiles.max(1))
            .clamp(1, max_slices)
    }

    /// The tile of the 64-row kernel: 16 × 64 for M ≤ 16, else 64 × 64.
    pub fn small_tile(&self) -> Tile {
        if self.m <= 16 {
            Tile::Rows16
        } else {
            Tile::Rows64
        }
    }

    /// K slices for this product on an adapter of `units` compute units ([`Matmul::tiling`]).
    pub fn k_slices(&self, units: u32) -> u32 {
        self.tiling(units).slices
    }

    /// Whether every quad of four consecutive elements that `matmul_large.wgsl` loads (along each
    /// operand's unit-stride dimension) is one aligned 16-byte vector, with slices of `k_split`:
    /// unit stride there, offsets and the other stride multiples of 4, and the quad's extent too.
    pub fn quads_aligned(&self, k_split: u32) -> bool {
        let k_ok = self.k.is_multiple_of(4) && k_split.is_multiple_of(4);
        let a = if self.a_row_stride == 1 && self.a_k_stride != 1 {
            self.a_k_stride.is_multiple_of(4) && self.m.is_multiple_of(4)
        } else {
            self.a_k_stride == 1 && self.a_row_stride.is_multiple_of(4) && k_ok
        };
        let b = if self.b_col_stride == 1 && self.b_k_stride != 1 {
            self.b_k_stride.is_multiple_of(4) && self.n.is_multiple_of(4)
        } else {
            self.b_k_stride == 1 && self.b_col_stride.is_multiple_of(4) && k_ok
        };
        a && b && self.a_offset.is_multiple_of(4) && self.b_offset.is_multiple_of(4)
    }

    /// Floats of scratch a split of this product needs (0 when it is not split).
    pub fn split_scratch_floats(&self, units: u32) -> usize {
        match self.k_slices(units) {
            1 => 0,
            s => s as usize * self.m as usize * self.n as usize,
        }
    }
}

/// The shortest K range worth a slice of its own.
pub const MIN_K_PER_SLICE: u32 = 512;
/// At most this many K slices (the column sum then reads each output this many times).
pub const MAX_K_SLICES: u32 = 16;
/// K slices start at multiples of the staged slab: the deepest of matmul.wgsl's (16) and
/// matmul_large.wgsl's ([`shaders::LargeSlab`], at most 16).
const BK: u32 = 16;
const _: () = assert!(BK.is_multiple_of(shaders::LargeSlab::K16 as u32));

/// The output tile of the f32 tiled kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 16 × 64, one row per thread (`matmul.wgsl`, ROWS_PER_THREAD = 1): M ≤ 16.
    Rows16,
    /// 64 × 64, 4 × 4 per thread (`matmul.wgsl`).
    Rows64,
    /// 128 × 128, 8 × 8 per thread, double-buffered vector staging (`matmul_large.wgsl`).
    Large,
}

impl Tile {
    pub fn rows(self) -> u32 {
        match self {
            Tile::Rows16 => 16,
            Tile::Rows64 => 64,
            Tile::Large => LARGE_TILE,
        }
    }

    pub fn cols(self) -> u32 {
        match self {
            Tile::Rows16 | Tile::Rows64 => TILE_N,
            Tile::Large => LARGE_TILE,
        }
    }

    /// Output tiles of `mm`.
    pub fn tiles(self, mm: &Matmul) -> u32 {
        mm.m.div_ceil(self.rows()) * mm.n.div_ceil(self.cols())
    }
}

/// Rows and columns of [`Tile::Large`].
pub const LARGE_TILE: u32 = 128;

/// How a product runs: its tile and K slices ([`Matmul::tiling`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tile: Tile,
    pub slices: u32,
}

/// The large-tile kernels of a device (`matmul_large.wgsl`): the deepest K slab its workgroup
/// memory holds, with quads loaded as vectors or element by element.
pub struct LargeKernels {
    pub slab: shaders::LargeSlab,
    pub aligned: Kernel,
    pub unaligned: Kernel,
}

impl LargeKernels {
    pub async fn new(ctx: &GpuContext, slab: shaders::LargeSlab) -> Result<LargeKernels> {
        let build = |label: &'static str, aligned| async move {
            ctx.pipeline(
                label,
                &shaders::matmul_large_source(slab, aligned).map_err(Error::Gpu)?,
                THREADS,
            )
            .await
        };
        let (aligned, unaligned) = match slab {
            shaders::LargeSlab::K8 => ("matmul_large", "matmul_large_unaligned"),
            shaders::LargeSlab::K16 => ("matmul_large_k16", "matmul_large_k16_unaligned"),
        };
        Ok(LargeKernels {
            slab,
            aligned: build(aligned, true).await?,
            unaligned: build(unaligned, false).await?,
        })
    }

    /// With the deepest slab `ctx`'s workgroup memory holds.
    pub async fn for_device(ctx: &GpuContext) -> Result<LargeKernels> {
        let limit = ctx.limits.max_compute_workgroup_storage_size as usize;
        LargeKernels::new(ctx, shaders::LargeSlab::within(limit)).await
    }

    /// The kernel for `mm` in slices of `k_split`, or None when an operand's buffer cannot be read
    /// as vec4 (its size is not a multiple of 16 bytes; the 64-row kernel takes the product).
    pub fn for_product(&self, mm: &Matmul, k_split: u32, b: &Bindings) -> Option<&Kernel> {
        if !b.a.size().is_multiple_of(16) || !b.b.size().is_multiple_of(16) {
            return None;
        }
        Some(match mm.quads_aligned(k_split) {
            true => &self.aligned,
            false => &self.unaligned,
        })
    }
}

/// The kernels of a product.
pub struct Variants {
    /// 64 × 64 output tiles.
    pub wide: Kernel,
    /// 16 × 64 output tiles, for M ≤ 16.
    pub narrow: Kernel,
    /// 128 × 128 output tiles (f32 weights only: f16 weights serve sampling, whose products are
    /// matrix-vector or small).
    pub large: Option<LargeKernels>,
    /// Matrix-vector products for M ≤ 16 with A and B contiguous in k (the weight format of the
    /// set, the device's reduction).
    pub gemv: GemvKernels,
}

impl Variants {
    pub async fn new(ctx: &GpuContext) -> Result<Variants> {
        Ok(Variants {
            wide: ctx
                .pipeline(
                    "matmul",
                    &shaders::matmul_source(4).map_err(Error::Gpu)?,
                    THREADS,
                )
                .await?,
            narrow: ctx
                .pipeline(
                    "matmul_narrow",
                    &shaders::matmul_source(1).map_err(Error::Gpu)?,
                    THREADS,
                )
                .await?,
            large: Some(LargeKernels::for_device(ctx).await?),
            gemv: GemvKernels::for_device(ctx).await?,
        })
    }

    /// The twins reading B as f16 (weights stored in f16; `shaders::with_f16_weights`).
    pub async fn new_f16(ctx: &GpuContext) -> Result<Variants> {
        let twin = |source: &str| shaders::with_f16_weights(source, "b").map_err(Error::Gpu);
        Ok(Variants {
            wide: ctx
                .pipeline(
                    "matmul_f16",
                    &twin(&shaders::matmul_source(4).map_err(Error::Gpu)?)?,
                    THREADS,
                )
                .await?,
            narrow: ctx
                .pipeline(
                    "matmul_narrow_f16",
                    &twin(&shaders::matmul_source(1).map_err(Error::Gpu)?)?,
                    THREADS,
                )
                .await?,
            large: None,
            gemv: GemvKernels::new(
                ctx,
                gemv::Reduction::for_features(ctx.features),
                WeightFormat::F16,
            )
            .await?,
        })
    }

    /// The f32 kernel for `tile` (the 64-row one for a large tile whose operands' buffers the large
    /// kernel cannot read, see [`LargeKernels::for_product`]), and the tile it runs.
    pub fn for_tile(&self, tile: Tile, mm: &Matmul, k_split: u32, b: &Bindings) -> (&Kernel, Tile) {
        match tile {
            Tile::Rows16 => (&self.narrow, Tile::Rows16),
            Tile::Large => match self
                .large
                .as_ref()
                .and_then(|l| l.for_product(mm, k_split, b))
            {
                Some(kernel) => (kernel, Tile::Large),
                None => (&self.wide, Tile::Rows64),
            },
            Tile::Rows64 => (&self.wide, Tile::Rows64),
        }
    }
}

/// The precision of the products of a model: f32 throughout (the default and the reference), or
/// mixed: f16 operands on tensor cores with f32 sums, f32 buffers, master weights and optimizer state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Mixed,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        })
    }
}

/// Threads of the emulated twin's workgroup (4 emulated subgroups of 32).
pub const COOP_EMULATED_THREADS: u32 = 128;

/// The mixed-precision products of a model: the cooperative kernel (or, in tests, its emulated twin)
/// with 64 × 64 blocks, and with 128 × 128 blocks where the adapter's workgroup memory holds them.
pub struct MixedKernels {
    pub small: Kernel,
    pub large: Option<Kernel>,
    /// The attention kernels on tensor cores (or their twins), where the head dimension and the
    /// adapter's workgroup memory allow them ([`super::attention::coop_kernels`]); None: attention
    /// stays f32.
    pub attention: Option<super::attention::CoopKernels>,
}

impl MixedKernels {
    /// The kernel for `mm` on an adapter of `units` compute units, and its tiles: 128 × 128 blocks
    /// when they still give every unit two workgroups (each staged slab then feeds 4× the
    /// multiply-adds), else 64 × 64 (small products, the conditioning, weight gradients split in K).
    pub fn for_product(&self, mm: &Matmul, units: u32) -> (&Kernel, shaders::CoopTiles) {
        let big = shaders::CoopTiles::LARGE;
        let blocks =
            mm.m.div_ceil(big.block_rows()) as u64 * mm.n.div_ceil(big.block_cols()) as u64;
        match &self.large {
            Some(k) if blocks >= 2 * units as u64 => (k, big),
            _ => (&self.small, shaders::CoopTiles::SMALL),
        }
    }
}

/// For tests only: set to 1, mixed precision runs the emulated twin ([`coop_emulated_kernels`]) on an
/// adapter without cooperative matrices, so the whole mixed training path (loss scaling included)
/// can be exercised end to end on a software adapter. `info` still reports no cooperative matrices.
pub const EMULATION_ENV: &str = "BD3_EMULATE_TENSOR_CORES";

fn emulated_by_request(ctx: &GpuContext) -> bool {
    ctx.cooperative_matrix.is_none() && std::env::var_os(EMULATION_ENV).is_some_and(|v| v == "1")
}

/// Whether mixed precision can run on `ctx`: an error naming the adapter when it has no cooperative
/// matrices (and the tests' emulation is not requested).
pub fn check_mixed_precision(ctx: &GpuContext) -> Result<()> {
    if ctx.cooperative_matrix.is_some() || emulated_by_request(ctx) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "mixed precision needs cooperative matrices (tensor cores, 16×16×16 f16→f32), which {} lacks (see `bd3-wgpu info`); use --precision f32",
        ctx.adapter_summary()
    )))
}

/// The products mixed precision runs on `ctx`: the tensor-core kernels, the emulated twins when the
/// tests ask for them ([`EMULATION_ENV`]), or the error of [`check_mixed_precision`].
pub async fn mixed_kernels(ctx: &GpuContext, head_dim: usize) -> Result<MixedKernels> {
    check_mixed_precision(ctx)?;
    if emulated_by_request(ctx) {
        return coop_emulated_kernels(ctx, head_dim).await;
    }
    coop_kernels(ctx, head_dim).await
}

/// Whether `ctx`'s workgroup memory holds the kernel with `tiles`.
fn fits(ctx: &GpuContext, tiles: shaders::CoopTiles) -> bool {
    tiles.workgroup_bytes() <= ctx.limits.max_compute_workgroup_storage_size as usize
}

/// The tensor-core products (and attention forward at `head_dim`) for `ctx`'s cooperative
/// matrices, or an error naming the adapter when it has none.
pub async fn coop_kernels(ctx: &GpuContext, head_dim: usize) -> Result<MixedKernels> {
    let Some(coop) = ctx.cooperative_matrix else {
        return Err(Error::Invalid(format!(
            "the tensor-core product needs cooperative matrices, which {} lacks",
            ctx.adapter_summary()
        )));
    };
    let build = |label: &'static str, tiles| async move {
        ctx.pipeline(
            label,
            &shaders::matmul_coop_source(coop.subgroup_size, tiles).map_err(Error::Gpu)?,
            4 * coop.subgroup_size,
        )
        .await
    };
    Ok(MixedKernels {
        small: build("matmul_coop", shaders::CoopTiles::SMALL).await?,
        large: match fits(ctx, shaders::CoopTiles::LARGE) {
            true => Some(build("matmul_coop_large", shaders::CoopTiles::LARGE).await?),
            false => None,
        },
        attention: super::attention::coop_kernels(ctx, head_dim, Some(coop.subgroup_size)).await?,
    })
}

/// The emulated twins of [`coop_kernels`] (need only shader-f16): what the tests run as the mixed
/// products on adapters without tensor cores.
pub async fn coop_emulated_kernels(ctx: &GpuContext, head_dim: usize) -> Result<MixedKernels> {
    if !ctx.features.contains(wgpu::Features::SHADER_F16) {
        return Err(Error::Invalid(format!(
            "the emulated mixed-precision product needs shader-f16, which {} lacks",
            ctx.adapter_summary()
        )));
    }
    let build = |label: &'static str, tiles| async move {
        ctx.pipeline(
            label,
            &shaders::matmul_coop_emulated_source(tiles).map_err(Error::Gpu)?,
            COOP_EMULATED_THREADS,
        )
        .await
    };
    Ok(MixedKernels {
        small: build("matmul_coop_emulated", shaders::CoopTiles::SMALL).await?,
        large: match fits(ctx, shaders::CoopTiles::LARGE) {
            true => Some(build("matmul_coop_emulated_large", shaders::CoopTiles::LARGE).await?),
            false => None,
        },
        attention: super::attention::coop_kernels(ctx, head_dim, None).await?,
    })
}

/// The mixed-precision kernel for `mm` and its tiles when the model runs in mixed precision (f32
/// weights only: f16 weight storage is for sampling).
fn mixed_for<'k>(
    pb: &ProgramBuilder,
    k: &'k Kernels,
    mm: &Matmul,
) -> Option<(&'k Kernel, shaders::CoopTiles)> {
    k.mixed
        .as_ref()
        .filter(|_| mm.b_format == WeightFormat::F32)
        .map(|m| m.for_product(mm, pb.context().compute_units))
}

/// Output blocks of `mm` with cooperative `tiles`.
fn tiles_of(mm: &Matmul, tiles: shaders::CoopTiles) -> u32 {
    mm.m.div_ceil(tiles.block_rows()) * mm.n.div_ceil(tiles.block_cols())
}

/// One dispatch of a cooperative product (or its twin) with `tiles`, `slices` K slices of
/// `p.k_split` each (one per workgroup layer z).
#[allow(clippy::too_many_arguments)]
pub fn record_block(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    label: &'static str,
    kernel: &Kernel,
    tiles: shaders::CoopTiles,
    p: &Params,
    slices: u32,
    b: Bindings,
) {
    let groups = [
        p.n.div_ceil(tiles.block_cols()),
        p.m.div_ceil(tiles.block_rows()),
        slices,
    ];
    record_sized(pb, k, label, kernel, groups, p, slices, b);
}

/// The buffers of a product without bias, gate or aux, and the scratch of its K slices (at least
/// [`Matmul::split_scratch_floats`] floats).
pub struct AccumulateIo<'a> {
    pub a: &'a Buf,
    pub b: &'a Buf,
    pub out: &'a Buf,
    pub scratch: &'a Buf,
}

/// `mm` with a plain store or accumulation (the weight gradients), split into K slices when that
/// fills the GPU better (see [`Matmul::k_slices`]).
pub fn record_accumulating(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    tk: &TrainKernels,
    label: &'static str,
    mm: &Matmul,
    io: AccumulateIo,
) {
    let AccumulateIo { a, b, out, scratch } = io;
    let units = pb.context().compute_units;
    let tiling = mm.tiling(units);
    let mixed = mixed_for(pb, k, mm);
    // The cooperative blocks (64 × 64 where 128 × 128 do not fill the GPU) need fewer slices than
    // the f32 large tiles the scratch is sized for.
    let slices = match mixed {
        Some((_, tiles)) if tiling.slices > 1 => {
            tiling.slices.min(mm.slices_for(tiles_of(mm, tiles), units))
        }
        _ => tiling.slices,
    };
    if slices == 1 {
        return record(
            pb,
            k,
            label,
            mm,
            Bindings {
                a,
                b,
                bias: None,
                gate: None,
                out,
                aux: None,
            },
        );
    }
    let tile = tiling.tile;
    let k_split = mm.k.div_ceil(slices).div_ceil(BK) * BK;
    let slices = mm.k.div_ceil(k_split);
    let floats = mm.m as usize * mm.n as usize;
    debug_assert!(
        scratch.size() as usize >= 4 * slices as usize * floats,
        "split-K scratch too small"
    );
    let p = Params {
        epilogue: Epilogue::Store as u32,
        k_split,
        split_stride: floats as u32,
        ..mm.params(false, false)
    };
    let bind = Bindings {
        a,
        b,
        bias: None,
        gate: None,
        out: scratch,
        aux: None,
    };
    match mixed {
        Some((kernel, tiles)) => record_block(pb, k, label, kernel, tiles, &p, slices, bind),
        None => {
            let (kernel, tile) = k.matmul.for_tile(tile, mm, k_split, &bind);
            record_sliced(pb, k, label, kernel, tile, &p, slices, bind)
        }
    }
    let partials = Columns {
        buffer: scratch,
        offset: 0,
        rows: slices as usize,
        cols: floats,
        stride: floats,
    };
    let accumulate = mm.epilogue == Epilogue::Residual;
    col_sum::record_sum(pb, k, tk, partials, out, accumulate);
}

pub fn record(pb: &mut ProgramBuilder, k: &Kernels, label: &'static str, mm: &Matmul, b: Bindings) {
    let p = mm.params(b.bias.is_some(), b.aux.is_some());
    if let Some((kernel, tiles)) = mixed_for(pb, k, mm) {
        return record_block(pb, k, label, kernel, tiles, &p, 1, b);
    }
    if Gemv::fits(mm) {
        let gb = gemv::Bindings {
            a: b.a,
            b: b.b,
            bias: b.bias,
            gate: b.gate,
            out: b.out,
            aux: b.aux,
            ln_w: None,
            row_index: None,
        };
        // Only a grid too large for the adapter fails (never at these widths): the tiled kernel
        // covers any N.
        if gemv::record(pb, k, label, &Gemv::plain(*mm), gb).is_ok() {
            return;
        }
    }
    let variants = match mm.b_format {
        WeightFormat::F32 => &k.matmul,
        WeightFormat::F16 => &k.f16(label).matmul,
    };
    // Unsplit here: a product the tiling would split in K but that is not recorded through
    // record_accumulating keeps the smaller tiles, which fill the GPU better.
    let tile = match mm.tiling(pb.context().compute_units) {
        Tiling { tile, slices: 1 } => tile,
        _ => mm.small_tile(),
    };
    let (kernel, tile) = variants.for_tile(tile, mm, p.k_split, &b);
    record_variant(pb, k, label, kernel, tile, &p, b);
}

/// One dispatch of a given kernel with `tile` (the kernel tests run every variant on one problem).
pub fn record_variant(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    label: &'static str,
    kernel: &Kernel,
    tile: Tile,
    p: &Params,
    b: Bindings,
) {
    record_sliced(pb, k, label, kernel, tile, p, 1, b);
}

/// `slices` K slices of `p.k_split` each, one per workgroup layer z.
#[allow(clippy::too_many_arguments)]
fn record_sliced(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    label: &'static str,
    kernel: &Kernel,
    tile: Tile,
    p: &Params,
    slices: u32,
    b: Bindings,
) {
    let groups = [p.n.div_ceil(tile.cols()), p.m.div_ceil(tile.rows()), slices];
    record_sized(pb, k, label, kernel, groups, p, slices, b);
}

#[allow(clippy::too_many_arguments)]
fn record_sized(
    pb: &mut ProgramBuilder,
    k: &Kernels,
    label: &'static str,
    kernel: &Kernel,
    groups: [u32; 3],
    p: &Params,
    slices: u32,
    b: Bindings,
) {
    let (m, n, kk) = (p.m as u64, p.n as u64, p.k as u64);
    let epilogue_reads = if p.epilogue == Epilogue::GatedResidual as u32
        || p.epilogue == Epilogue::Residual as u32
    {
        m * n
    } else {
        0
    };
    let gate = if b.gate.is_some() {
        m.div_ceil(p.rows_per_seq.max(1) as u64) * n
    } else {
        0
    };
    let outputs = slices as u64 * m * n;
    let cost = Cost {
        flops: 2 * m * n * kk,
        bytes: words(
            m * kk
                + kk * n
                + outputs
                + epilogue_reads
                + if b.bias.is_some() { n } else { 0 }
                + gate
                + if b.aux.is_some() { m * n } else { 0 },
        ),
    };
    pb.dispatch(label, kernel, p, b.slices(&k.placeholders), groups, cost);
}
