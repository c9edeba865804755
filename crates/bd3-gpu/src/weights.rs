//! Model weights on the GPU, uploaded tensor by tensor from a strict [`Checkpoint`].
//!
//! A matrix larger than one storage binding (the 50258 × 768 embedding and head are 154 MB in f32,
//! over the 128 MiB default) is split by rows into parts; kernels run once per part.
//!
//! For sampling, the large matrices (the embedding, every block's Linear weights and the head) can be
//! stored as f16 ([`WeightFormat::F16`]): half the bytes each model call reads and half the memory.
//! Kernels convert while loading and accumulate in f32; biases, LayerNorm weights and the
//! conditioning path stay f32. Training always uses f32 weights.

use crate::context::GpuContext;
use crate::program::Buf;
use bd3_model::{Checkpoint, Error, ModelConfig, Result};

/// How the large weight matrices are stored on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// The reference: what `verify` and training use.
    #[default]
    F32,
    /// IEEE half precision (rounded to nearest even on upload), read as f32 by the kernels.
    F16,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 => 2,
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a user asks for: a format, or `auto` (f16 where the adapter has `shader-f16`, else f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightChoice {
    #[default]
    F32,
    F16,
    Auto,
}

impl WeightChoice {
    pub const NAMES: [&'static str; 3] = ["f32", "f16", "auto"];

    pub fn from_name(name: &str) -> Option<WeightChoice> {
        match name {
            "f32" => Some(WeightChoice::F32),
            "f16" => Some(WeightChoice::F16),
            "auto" => Some(WeightChoice::Auto),
            _ => None,
        }
    }

    /// The format on `ctx`, and why when it differs from the request; f16 needs `shader-f16`.
    pub fn resolve(self, ctx: &GpuContext) -> Result<(WeightFormat, Option<&'static str>)> {
        let f16 = ctx.features.contains(wgpu::Features::SHADER_F16);
        match (self, f16) {
            (WeightChoice::F32, _) => Ok((WeightFormat::F32, None)),
            (WeightChoice::F16 | WeightChoice::Auto, true) => Ok((WeightFormat::F16, None)),
            (WeightChoice::Auto, false) => Ok((
                WeightFormat::F32,
                Some("this adapter lacks shader-f16"),
            )),
            (WeightChoice::F16, false) => Err(Error::Invalid(format!(
                "f16 weights need the shader-f16 feature, which {} lacks (use --weights f32 or auto)",
                ctx.info.name
            ))),
        }
    }
}

/// Rows per part of a [rows, cols] matrix whose elements take `format.bytes()` each.
fn rows_per_part(ctx: &GpuContext, rows: usize, cols: usize, format: WeightFormat) -> usize {
    ((ctx.split_threshold() / (cols as u64 * format.bytes())) as usize).clamp(1, rows.max(1))
}

/// Bytes of a buffer holding `n` elements (padded to whole words: bindings are word-sized).
fn padded_bytes(n: usize, format: WeightFormat) -> u64 {
    (n as u64 * format.bytes()).div_ceil(4) * 4
}

/// `data` rounded to f16 (nearest even), packed two per word, low half first (as `array<f16>` reads it).
pub fn f16_words(data: &[f32]) -> Vec<u32> {
    data.chunks(2)
        .map(|pair| {
            let lo = half::f16::from_f32(pair[0]).to_bits() as u32;
            let hi = pair
                .get(1)
                .map_or(0, |&x| half::f16::from_f32(x).to_bits() as u32);
            lo | (hi << 16)
        })
        .collect()
}

/// One row range of a matrix in its own buffer.
pub struct Part {
    pub buffer: Buf,
    pub row_start: usize,
    pub rows: usize,
}

/// A row-major [rows, cols] matrix stored as one or more row ranges.
pub struct SplitMatrix {
    pub parts: Vec<Part>,
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
}

impl SplitMatrix {
    pub fn upload(
        ctx: &GpuContext,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<SplitMatrix> {
        assert_eq!(data.len(), rows * cols);
        let rows_per_part = rows_per_part(ctx, rows, cols, WeightFormat::F32);
        let mut parts = Vec::new();
        let mut row_start = 0;
        while row_start < rows {
            let n = rows_per_part.min(rows - row_start);
            let bytes = bytemuck::cast_slice(&data[row_start * cols..(row_start + n) * cols]);
            parts.push(Part {
                buffer: ctx.storage_init(label, bytes)?,
                row_start,
                rows: n,
            });
            row_start += n;
        }
        Ok(SplitMatrix {
            parts,
            rows,
            cols,
            format: WeightFormat::F32,
        })
    }
}

/// A Linear layer: weight [out, in] as stored by PyTorch, optional bias [out].
pub struct Linear {
    pub weight: SplitMatrix,
    pub bias: Option<Buf>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.rows
    }
    pub fn in_features(&self) -> usize {
        self.weight.cols
    }
}

pub struct BlockWeights {
    pub norm1: Buf,
    pub attn_qkv: Linear,
    pub attn_out: Linear,
    pub norm2: Buf,
    pub mlp_up: Linear,
    pub mlp_down: Linear,
    /// adaLN: c → (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp); None for AR.
    pub adaln: Option<Linear>,
}

pub struct Weights {
    pub vocab_embed: SplitMatrix,
    /// sigma_map.mlp.0 and .2 (None for AR).
    pub sigma_map: Option<(Linear, Linear)>,
    pub blocks: Vec<BlockWeights>,
    pub norm_final: Buf,
    /// Final adaLN: c → (shift, scale); None for AR.
    pub final_adaln: Option<Linear>,
    pub head: Linear,
    /// rotary_emb.inv_freq as stored in the checkpoint.
    pub inv_freq: Vec<f32>,
}

impl Weights {
    /// Zero-filled f32 weights shaped for `cfg`, with the default rotary frequencies; tensors are
    /// then written one at a time ([`Weights::write`]), so a loader never holds more than one on the host.
    pub fn allocate(ctx: &GpuContext, cfg: &ModelConfig) -> Result<Weights> {
        Weights::allocate_as(ctx, cfg, WeightFormat::F32)
    }

    /// As [`Weights::allocate`], with the embedding, the blocks' Linear weights and the head stored
    /// as `format` (the small conditioning matrices, biases and norms stay f32).
    pub fn allocate_as(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        format: WeightFormat,
    ) -> Result<Weights> {
        let vector = |name: &str, n: usize| ctx.storage(name, (n * 4) as u64);
        let matrix_as =
            |name: &str, rows: usize, cols: usize, format: WeightFormat| -> Result<SplitMatrix> {
                let rows_per_part = rows_per_part(ctx, rows, cols, format);
                let mut parts = Vec::new();
                let mut row_start = 0;
                while row_start < rows {
                    let n = rows_per_part.min(rows - row_start);
                    parts.push(Part {
                        buffer: ctx.storage(name, padded_bytes(n * cols, format))?,
                        row_start,
                        rows: n,
                    });
                    row_start += n;
                }
                Ok(SplitMatrix {
                    parts,
                    rows,
                    cols,
                    format,
                })
            };
        let matrix = |name: &str, rows: usize, cols: usize| matrix_as(name, rows, cols, format);
        let linear_as = |name: &str, rows: usize, cols: usize, bias: bool, f: WeightFormat| {
            Ok::<_, Error>(Linear {
                weight: matrix_as(name, rows, cols, f)?,
                bias: if bias {
                    Some(vector(name, rows)?)
                } else {
                    None
                },
            })
        };
        // The conditioning path runs once per generation (or per call on a few rows): f32 throughout.
        let small = |name: &str, rows: usize, cols: usize, bias: bool| {
            linear_as(name, rows, cols, bias, WeightFormat::F32)
        };
        let linear = |name: &str, rows: usize, cols: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: matrix(name, rows, cols)?,
                bias: if bias {
                    Some(vector(name, rows)?)
                } else {
                    None
                },
            })
        };
        let (d, c) = (cfg.hidden_dim, cfg.cond_dim);
        let adaln = cfg.kind.has_adaln();
        Ok(Weights {
            vocab_embed: matrix("vocab_embed", cfg.vocab_size, d)?,
            sigma_map: if adaln {
                Some((
                    small(
                        "sigma_map.mlp.0",
                        c,
                        bd3_model::config::TIMESTEP_FEATURES,
                        true,
                    )?,
                    small("sigma_map.mlp.2", c, c, true)?,
                ))
            } else {
                None
            },
            blocks: (0..cfg.n_blocks)
                .map(|_| {
                    Ok(BlockWeights {
                        norm1: vector("norm1", d)?,
                        attn_qkv: linear("attn_qkv", 3 * d, d, false)?,
                        attn_out: linear("attn_out", d, d, false)?,
                        norm2: vector("norm2", d)?,
                        mlp_up: linear("mlp.0", 4 * d, d, true)?,
                        mlp_down: linear("mlp.2", d, 4 * d, true)?,
                        adaln: if adaln {
                            Some(small("adaLN_modulation", 6 * d, c, true)?)
                        } else {
                            None
                        },
                    })
                })
                .collect::<Result<_>>()?,
            norm_final: vector("norm_final", d)?,
            final_adaln: if adaln {
                Some(small("output_layer.adaLN_modulation", 2 * d, c, true)?)
            } else {
                None
            },
            head: linear("output_layer.linear", cfg.vocab_size, d, true)?,
            inv_freq: bd3_model::tables::default_inv_freq(cfg.head_dim()),
        })
    }

    /// Write one tensor (canonical name) into its buffers. Returns false for a name this model lacks.
    pub fn write(&mut self, ctx: &GpuContext, name: &str, data: &[f32]) -> Result<bool> {
        if name == "rotary_emb.inv_freq" {
            if data.len() != self.inv_freq.len() {
                return Err(bd3_model::Error::Invalid(format!(
                    "tensor `{name}` has {} values, expected {}",
                    data.len(),
                    self.inv_freq.len()
                )));
            }
            self.inv_freq = data.to_vec();
            return Ok(true);
        }
        let Some(t) = self.tensors().into_iter().find(|t| t.name == name) else {
            return Ok(false);
        };
        let total: usize = t.parts.iter().map(|p| p.1).sum();
        if data.len() != total {
            return Err(bd3_model::Error::Invalid(format!(
                "tensor `{name}` has {} values, expected {total}",
                data.len()
            )));
        }
        let mut off = 0;
        for (b, n) in &t.parts {
            let part = &data[off..off + n];
            match t.format {
                WeightFormat::F32 => {
                    ctx.queue()
                        .write_buffer(b.whole(), b.offset(), bytemuck::cast_slice(part))
                }
                WeightFormat::F16 => ctx.queue().write_buffer(
                    b.whole(),
                    b.offset(),
                    bytemuck::cast_slice(&f16_words(part)),
                ),
            }
            off += n;
        }
        Ok(true)
    }

    /// Upload every tensor of a strictly checked checkpoint, one at a time.
    pub fn upload(ctx: &GpuContext, cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<Weights> {
        Weights::upload_as(ctx, cfg, ckpt, WeightFormat::F32)
    }

    /// [`Weights::upload`] into weights allocated as [`Weights::allocate_as`].
    pub fn upload_as(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        ckpt: &Checkpoint,
        format: WeightFormat,
    ) -> Result<Weights> {
        let mut w = Weights::allocate_as(ctx, cfg, format)?;
        for (name, _) in bd3_model::checkpoint::expected_tensors(cfg) {
            let data = ckpt.tensor_f32(&name)?;
            w.write(ctx, &name, &data)?;
        }
        Ok(w)
    }
}

impl SplitMatrix {
    /// A zero matrix with the same row ranges (gradients and optimizer state of a split weight).
    pub fn zeros_like(ctx: &GpuContext, label: &str, like: &SplitMatrix) -> Result<SplitMatrix> {
        SplitMatrix::zeros_like_in(like, &|bytes| ctx.storage(label, bytes))
    }

    /// [`SplitMatrix::zeros_like`] with its buffers from `alloc` (bytes → zeroed buffer).
    fn zeros_like_in(
        like: &SplitMatrix,
        alloc: &dyn Fn(u64) -> Result<Buf>,
    ) -> Result<SplitMatrix> {
        if like.format != WeightFormat::F32 {
            return Err(Error::Invalid(format!(
                "training needs f32 weights; this model holds {} weights",
                like.format
            )));
        }
        let parts = like
            .parts
            .iter()
            .map(|p| {
                Ok(Part {
                    buffer: alloc((p.rows * like.cols * 4) as u64)?,
                    row_start: p.row_start,
                    rows: p.rows,
                })
            })
            .collect::<Result<_>>()?;
        Ok(SplitMatrix {
            parts,
            rows: like.rows,
            cols: like.cols,
            format: WeightFormat::F32,
        })
    }
}

/// Where packed buffers go ([`Weights::zeros_like_packed`]): in order, each at the next offset
/// aligned for a storage binding, in a new pack when the current one would pass `cap` bytes (the
/// context's split threshold: the largest binding, or less where a test asks for small bindings).
/// A buffer larger than `cap` gets a pack of its own.
#[derive(Debug, PartialEq, Eq)]
pub struct PackLayout {
    /// (pack, byte offset) of each buffer.
    pub places: Vec<(usize, u64)>,
    /// Bytes of each pack.
    pub pack_bytes: Vec<u64>,
}

impl PackLayout {
    pub fn new(sizes: &[u64], align: u64, cap: u64) -> PackLayout {
        let mut places = Vec::with_capacity(sizes.len());
        let mut pack_bytes: Vec<u64> = Vec::new();
        for &size in sizes {
            let offset = match pack_bytes.last() {
                Some(&used) if used.next_multiple_of(align) + size <= cap => {
                    used.next_multiple_of(align)
                }
                _ => {
                    pack_bytes.push(0);
                    0
                }
            };
            *pack_bytes.last_mut().expect("a pack is open") = offset + size;
            places.push((pack_bytes.len() - 1, offset));
        }
        PackLayout { places, pack_bytes }
    }
}

/// One named trainable tensor and the buffers that hold it (one per row range).
pub struct TensorRef {
    /// Canonical checkpoint name, without the `backbone.` prefix.
    pub name: String,
    pub shape: Vec<usize>,
    /// (buffer, number of values) per part, in row order.
    pub parts: Vec<(Buf, usize)>,
    /// How the values are stored (f32 for every vector).
    pub format: WeightFormat,
}

impl Weights {
    /// A zero-filled copy of the structure (gradients, Adam moments): same tensors, same splits.
    pub fn zeros_like(ctx: &GpuContext, label: &str, w: &Weights) -> Result<Weights> {
        Weights::zeros_like_in(w, &|bytes| ctx.storage(label, bytes))
    }

    /// [`Weights::zeros_like`] packed into a few large buffers (as few as the adapter's binding
    /// limit allows; each tensor part is a view at an aligned offset, see [`Buf::view`]), returned
    /// beside it: a pass over every value (the gradient norm, a clear) then binds the packs, not
    /// the hundred-odd parts. The gaps between parts stay zero.
    pub fn zeros_like_packed(
        ctx: &GpuContext,
        label: &str,
        w: &Weights,
    ) -> Result<(Weights, Vec<Buf>)> {
        // The sizes in allocation order, from a dry run, then the packs they fill.
        let sizes = std::cell::RefCell::new(Vec::new());
        Weights::zeros_like_in(w, &|bytes| {
            sizes.borrow_mut().push(bytes);
            Ok(Buf::planned(bytes))
        })?;
        let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(16);
        let layout = PackLayout::new(&sizes.into_inner(), align, ctx.split_threshold());
        let packs = layout
            .pack_bytes
            .iter()
            .map(|&bytes| ctx.storage(label, bytes))
            .collect::<Result<Vec<_>>>()?;
        let next = std::cell::Cell::new(0);
        let weights = Weights::zeros_like_in(w, &|bytes| {
            let (pack, offset) = layout.places[next.get()];
            next.set(next.get() + 1);
            Ok(packs[pack].view(offset, bytes))
        })?;
        Ok((weights, packs))
    }

    fn zeros_like_in(w: &Weights, alloc: &dyn Fn(u64) -> Result<Buf>) -> Result<Weights> {
        let vector = |b: &Buf| alloc(b.size());
        let linear = |l: &Linear| -> Result<Linear> {
            Ok(Linear {
                weight: SplitMatrix::zeros_like_in(&l.weight, alloc)?,
                bias: l.bias.as_ref().map(vector).transpose()?,
            })
        };
        Ok(Weights {
            vocab_embed: SplitMatrix::zeros_like_in(&w.vocab_embed, alloc)?,
            sigma_map: w
                .sigma_map
                .as_ref()
                .map(|(a, b)| Ok::<_, bd3_model::Error>((linear(a)?, linear(b)?)))
                .transpose()?,
            blocks: w
                .blocks
                .iter()
                .map(|b| {
                    Ok(BlockWeights {
                        norm1: vector(&b.norm1)?,
                        attn_qkv: linear(&b.attn_qkv)?,
                        attn_out: linear(&b.attn_out)?,
                        norm2: vector(&b.norm2)?,
                        mlp_up: linear(&b.mlp_up)?,
                        mlp_down: linear(&b.mlp_down)?,
                        adaln: b.adaln.as_ref().map(linear).transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
            norm_final: vector(&w.norm_final)?,
            final_adaln: w.final_adaln.as_ref().map(linear).transpose()?,
            head: linear(&w.head)?,
            inv_freq: w.inv_freq.clone(),
        })
    }

    /// Every trainable tensor with its checkpoint name, in the checkpoint's order
    /// (`rotary_emb.inv_freq` is a fixed buffer, not a parameter).
    pub fn tensors(&self) -> Vec<TensorRef> {
        let mut out = Vec::new();
        let vec_ref = |name: String, b: &Buf| TensorRef {
            name,
            shape: vec![b.size() as usize / 4],
            parts: vec![(b.clone(), b.size() as usize / 4)],
            format: WeightFormat::F32,
        };
        let mat_ref = |name: String, m: &SplitMatrix| TensorRef {
            name,
            shape: vec![m.rows, m.cols],
            parts: m
                .parts
                .iter()
                .map(|p| (p.buffer.clone(), p.rows * m.cols))
                .collect(),
            format: m.format,
        };
        let linear = |out: &mut Vec<TensorRef>, name: &str, l: &Linear| {
            out.push(mat_ref(format!("{name}.weight"), &l.weight));
            if let Some(b) = &l.bias {
                out.push(vec_ref(format!("{name}.bias"), b));
            }
        };
        out.push(mat_ref("vocab_embed.embedding".into(), &self.vocab_embed));
        if let Some((a, b)) = &self.sigma_map {
            linear(&mut out, "sigma_map.mlp.0", a);
            linear(&mut out, "sigma_map.mlp.2", b);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            out.push(vec_ref(format!("blocks.{i}.norm1.weight"), &b.norm1));
            linear(&mut out, &format!("blocks.{i}.attn_qkv"), &b.attn_qkv);
            linear(&mut out, &format!("blocks.{i}.attn_out"), &b.attn_out);
            out.push(vec_ref(format!("blocks.{i}.norm2.weight"), &b.norm2));
            linear(&mut out, &format!("blocks.{i}.mlp.0"), &b.mlp_up);
            linear(&mut out, &format!("blocks.{i}.mlp.2"), &b.mlp_down);
            if let Some(a) = &b.adaln {
                linear(&mut out, &format!("blocks.{i}.adaLN_modulation"), a);
            }
        }
        out.push(vec_ref(
            "output_layer.norm_final.weight".into(),
            &self.norm_final,
        ));
        linear(&mut out, "output_layer.linear", &self.head);
        if let Some(a) = &self.final_adaln {
            linear(&mut out, "output_layer.adaLN_modulation", a);
        }
        out
    }
}

impl Weights {
    /// How the large matrices are stored (the head's format: they all share it).
    pub fn format(&self) -> WeightFormat {
        self.head.weight.format
    }
}

#[cfg(test)]
mod tests {
    use super::PackLayout;

    #[test]
    fn packs_fill_in_order_at_aligned_offsets_up_to_the_cap() {
        let l = PackLayout::new(&[100, 300, 20, 600, 2000, 8], 256, 1024);
        assert_eq!(
            l.places,
            [(0, 0), (0, 256), (0, 768), (1, 0), (2, 0), (3, 0)]
        );
        // A buffer over the cap alone in its pack.
        assert_eq!(l.pack_bytes, [788, 600, 2000, 8]);
        assert_eq!(
            PackLayout::new(&[4, 4], 16, 1 << 20).places,
            [(0, 0), (0, 16)]
        );
        // A cap that is no multiple of the alignment (an H200's 2 GiB − 4 binding limit): the next
        // aligned offset after a part ending 8 bytes short of it is past it, so the next part goes
        // to a new pack, and no pack passes the cap.
        let cap = (1u64 << 31) - 4;
        let l = PackLayout::new(&[cap - 8, 8], 16, cap);
        assert_eq!(l.places, [(0, 0), (1, 0)]);
        assert!(l.pack_bytes.iter().all(|&b| b <= cap), "{:?}", l.pack_bytes);
    }
}
