//! The WGSL sources, as the kernels are compiled: `shaders/*.wgsl` with their
//! `// #include "file.wgsl"` lines resolved at build time (build.rs, shader_include.rs), so native and
//! browser builds get the same text. A file with an `@compute` entry point is a kernel and has a
//! constant here (`attention_dq.wgsl` -> [`ATTENTION_DQ_WGSL`]); a file without one exists only to be
//! included, and its header says which names the includer must define.
//!
//! Sizes that must be constant in WGSL but depend on the model or the shape (HEAD_DIM, BQ, BK,
//! ROWS_PER_THREAD) stay `const` declarations in the file; the host sets them with [`specialize`].

include!(concat!(env!("OUT_DIR"), "/shader_sources.rs"));

/// The resolved source of the kernel file `name` (e.g. `"matmul.wgsl"`), if there is one.
pub fn source(name: &str) -> Option<&'static str> {
    KERNELS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Every file of `shaders/` with source that compiles: a kernel's own, and for an include-only file
/// that of the first kernel (by name) that includes it.
pub fn all_files() -> Vec<(&'static str, &'static str)> {
    let mut v = KERNELS.to_vec();
    v.extend(
        INCLUDES
            .iter()
            .map(|(file, kernel)| (*file, source(kernel).expect("build.rs lists kernels only"))),
    );
    v
}

/// `source` with each `const NAME: u32 = …u;` declaration of `consts` set to the given value. Every
/// name must be declared exactly once, at the start of a line: otherwise this fails (a renamed
/// constant must not silently leave the default in place).
pub fn specialize(source: &str, consts: &[(&str, u32)]) -> Result<String, String> {
    let mut out = source.to_string();
    for (name, value) in consts {
        let decl = format!("const {name}: u32 = ");
        let starts: Vec<usize> = out
            .match_indices(&decl)
            .map(|(i, _)| i)
            .filter(|&i| i == 0 || out.as_bytes()[i - 1] == b'\n')
            .collect();
        let [start] = starts[..] else {
            return Err(format!(
                "specialize: expected one line `{decl}…u;`, found {}",
                starts.len()
            ));
        };
        let end = out[start..]
            .find(';')
            .map(|e| start + e + 1)
            .filter(|&e| !out[start..e].contains('\n'));
        let end = end.ok_or(format!(
            "specialize: `{decl}` is not followed by `;` on its line"
        ))?;
        let old = &out[start + decl.len()..end - 1];
        if old
            .strip_suffix('u')
            .is_none_or(|d| d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("specialize: {name} is `{old}`, not a u32 literal"));
        }
        out.replace_range(start..end, &format!("{decl}{value}u;"));
    }
    Ok(out)
}

/// Workgroup memory budget for any kernel: the WebGPU default limit, which browsers enforce.
pub const WORKGROUP_MEMORY_BUDGET: usize = 16 * 1024;

/// The resolved source of a kernel file, or an error naming it.
pub fn kernel_source(name: &str) -> Result<&'static str, String> {
    source(name).ok_or_else(|| format!("no kernel file `{name}` in shaders/"))
}

/// Rows per tile of an attention kernel: `q` queries and `k` keys (attention_common.wgsl). The
/// forward and query-gradient kernels give a workgroup `q` queries, the key/value-gradient kernel `k`
/// keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionTiles {
    pub q: usize,
    pub k: usize,
}

/// Tile sizes tried for an attention kernel, best first, as (rows the workgroup owns, rows of the
/// other side per step): multiples of the 8 × 8 thread grid, more owned rows first (each staged
/// tile of the other side is shared by more rows).
const ATTENTION_TILE_CANDIDATES: [(usize, usize); 7] = [
    (64, 32),
    (64, 16),
    (32, 32),
    (32, 16),
    (16, 16),
    (16, 8),
    (8, 8),
];

/// Tiles of the decode kernel (attention_decode.wgsl), best first: all of a sampling call's 16
/// queries, and the longest key tile that fits (fewer barriers per chunk).
const DECODE_TILE_CANDIDATES: [(usize, usize); 3] = [(16, 32), (16, 16), (16, 8)];

/// The largest tiles of attention kernel `name` whose workgroup memory fits `budget` bytes, or an
/// error if even 8 × 8 does not (head dims above about 150 at 16 KiB).
pub fn attention_tiles(
    name: &str,
    head_dim: usize,
    budget: usize,
) -> Result<AttentionTiles, String> {
    let candidates: &[(usize, usize)] = if name == "attention_decode.wgsl" {
        &DECODE_TILE_CANDIDATES
    } else {
        &ATTENTION_TILE_CANDIDATES
    };
    candidates
        .iter()
        .map(|&(own, other)| {
            if name == "attention_dkv.wgsl" {
                AttentionTiles { q: other, k: own }
            } else {
                AttentionTiles { q: own, k: other }
            }
        })
        .find(|&t| attention_workgroup_bytes(name, head_dim, t) <= budget)
        .ok_or_else(|| {
            format!("{name}: head dim {head_dim} does not fit {budget} bytes of workgroup memory")
        })
}

/// An attention kernel file specialised for one head dimension within the browser budget (16 KiB).
pub fn attention_file(name: &str, head_dim: usize) -> Result<String, String> {
    attention_file_within(name, head_dim, WORKGROUP_MEMORY_BUDGET).map(|(s, _)| s)
}

/// An attention kernel file specialised for one head dimension and `budget` bytes of workgroup
/// memory: private arrays need constant sizes, so HEAD_DIM and the tiles ([`attention_tiles`]) are
/// compiled in.
pub fn attention_file_within(
    name: &str,
    head_dim: usize,
    budget: usize,
) -> Result<(String, AttentionTiles), String> {
    let source = kernel_source(name)?;
    let tiles = attention_tiles(name, head_dim, budget)?;
    let text = specialize(
        source,
        &[
            ("HEAD_DIM", head_dim as u32),
            ("BQ", tiles.q as u32),
            ("BK", tiles.k as u32),
        ],
    )?;
    Ok((text, tiles))
}

/// Workgroup memory of an attention kernel with `tiles`, counted as browsers count it: every
/// variable rounded up to 16 bytes (Chromium's rule; naga's sum can be a few bytes less). Staged
/// head vectors take HEAD_DIM + 1 floats a row; every kernel also holds two vec4<u32> of mask bounds.
pub fn attention_workgroup_bytes(name: &str, head_dim: usize, tiles: AttentionTiles) -> usize {
    let var = |floats: usize| (4 * floats).div_ceil(16) * 16;
    let (q, k, row) = (tiles.q, tiles.k, head_dim + 1);
    let bounds = 2 * 16;
    bounds
        + match name {
            // q_s, kv_s, p_s.
            "attention.wgsl" | "attention_decode.wgsl" => var(q * row) + var(k * row) + var(q * k),
            // q_s, do_s, kv_s, ds_s, st_s.
            "attention_dq.wgsl" => 2 * var(q * row) + var(k * row) + var(q * k) + var(2 * q),
            // k_s, v_s, x_s, p_s, ds_s, st_s.
            _ => 2 * var(k * row) + var(q * row) + 2 * var(q * k) + var(2 * q),
        }
}

/// The matmul kernel with `rows_per_thread` output rows per thread (4: 64-row tiles; 1: 16-row).
pub fn matmul_source(rows_per_thread: u32) -> Result<String, String> {
    specialize(MATMUL_WGSL, &[("ROWS_PER_THREAD", rows_per_thread)])
}

/// The tensor-core attention kernels of mixed precision (`attention_coop*.wgsl`,
/// `attention_dq_coop*.wgsl`, `attention_dkv_coop*.wgsl`), each with its emulated twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoopAttention {
    Forward,
    QueryGrad,
    KeyValueGrad,
}

impl CoopAttention {
    pub const ALL: [CoopAttention; 3] = [
        CoopAttention::Forward,
        CoopAttention::QueryGrad,
        CoopAttention::KeyValueGrad,
    ];

    /// Queries and keys per tile: 2 subgroups of 16 rows own the workgroup's side (queries, or for
    /// the key/value gradient 16 keys shared by the subgroups) and walk tiles of 32 of the other.
    pub fn tiles(self) -> AttentionTiles {
        match self {
            CoopAttention::Forward | CoopAttention::QueryGrad => AttentionTiles { q: 32, k: 32 },
            CoopAttention::KeyValueGrad => AttentionTiles { q: 32, k: 16 },
        }
    }

    /// Rows of its own side a workgroup owns (queries; keys for the key/value gradient).
    pub fn rows_per_workgroup(self) -> usize {
        match self {
            CoopAttention::KeyValueGrad => self.tiles().k,
            _ => self.tiles().q,
        }
    }

    /// Workgroup memory at `head_dim`, as browsers count it (each variable rounded up to 16 bytes):
    /// see each kernel's common file for the buffers.
    pub fn workgroup_bytes(self, head_dim: usize) -> usize {
        let var = |bytes: usize| bytes.div_ceil(16) * 16;
        let AttentionTiles { q, k } = self.tiles();
        let d = head_dim;
        let bounds = 2 * 16;
        bounds
            + match self {
                // q_s, kv_s (f16), s_s, p_s (f16), o_s, m_s, l_s, corr_s.
                CoopAttention::Forward => {
                    var(2 * q * d)
                        + var(2 * k * d)
                        + var(4 * q * k)
                        + var(2 * q * k)
                        + var(4 * q * d)
                        + 3 * var(4 * q)
                }
                // q_s, do_s, kv_s (f16), s_s, dp_s, ds_s (f16), dq_s, st_s.
                CoopAttention::QueryGrad => {
                    2 * var(2 * q * d)
                        + var(2 * k * d)
                        + 2 * var(4 * q * k)
                        + var(2 * q * k)
                        + var(4 * q * d)
                        + var(8 * q)
                }
                // k_s, v_s, q_s, do_s (f16), s_s, dp_s, p_s, ds_s (f16), dk_s, dv_s, st_s.
                CoopAttention::KeyValueGrad => {
                    2 * var(2 * k * d)
                        + 2 * var(2 * q * d)
                        + 2 * var(4 * k * q)
                        + 2 * var(2 * k * q)
                        + 2 * var(4 * k * d)
                        + var(8 * q)
                }
            }
    }

    /// The kernel (subgroups of `subgroup_size`) or its emulated twin (`None`: 32-wide emulated
    /// subgroups) at `head_dim`, which must be a multiple of 16 (the tile edge).
    pub fn source(self, head_dim: usize, subgroup_size: Option<u32>) -> Result<String, String> {
        if head_dim == 0 || !head_dim.is_multiple_of(16) {
            return Err(format!(
                "the tensor-core attention needs a head dimension that is a multiple of 16, not {head_dim}"
            ));
        }
        let AttentionTiles { q, k } = self.tiles();
        let mut consts = vec![
            ("HEAD_DIM", head_dim as u32),
            ("BQ", q as u32),
            ("BK", k as u32),
        ];
        let (kernel, twin) = match self {
            CoopAttention::Forward => (ATTENTION_COOP_WGSL, ATTENTION_COOP_EMULATED_WGSL),
            CoopAttention::QueryGrad => (ATTENTION_DQ_COOP_WGSL, ATTENTION_DQ_COOP_EMULATED_WGSL),
            CoopAttention::KeyValueGrad => {
                (ATTENTION_DKV_COOP_WGSL, ATTENTION_DKV_COOP_EMULATED_WGSL)
            }
        };
        let source = match subgroup_size {
            Some(size) => {
                consts.push(("SUBGROUP_SIZE", size));
                kernel
            }
            None => twin,
        };
        specialize(source, &consts)
    }

    /// The kernel's name (the file's stem), or its twin's.
    pub fn label(self, emulated: bool) -> &'static str {
        match (self, emulated) {
            (CoopAttention::Forward, false) => "attention_coop",
            (CoopAttention::Forward, true) => "attention_coop_emulated",
            (CoopAttention::QueryGrad, false) => "attention_dq_coop",
            (CoopAttention::QueryGrad, true) => "attention_dq_coop_emulated",
            (CoopAttention::KeyValueGrad, false) => "attention_dkv_coop",
            (CoopAttention::KeyValueGrad, true) => "attention_dkv_coop_emulated",
        }
    }
}

/// The K slab of the large-tile f32 product (`matmul_large.wgsl`): 8 keeps its double-buffered
/// slabs in the 16 KiB browsers give; 16 (32 KiB) halves the barriers where the adapter allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LargeSlab {
    K8 = 8,
    K16 = 16,
}

impl LargeSlab {
    /// Workgroup memory of the kernel: two buffers of a BK × 128 slab of A and of B.
    pub fn workgroup_bytes(self) -> usize {
        2 * 2 * self as usize * 128 * 4
    }

    /// The deepest slab whose workgroup memory fits `limit` bytes.
    pub fn within(limit: usize) -> LargeSlab {
        match LargeSlab::K16.workgroup_bytes() <= limit {
            true => LargeSlab::K16,
            false => LargeSlab::K8,
        }
    }
}

/// `matmul_large.wgsl` with K slabs of `slab`, its quads loaded as 16-byte vectors (`aligned`) or
/// element by element.
pub fn matmul_large_source(slab: LargeSlab, aligned: bool) -> Result<String, String> {
    specialize(
        MATMUL_LARGE_WGSL,
        &[("BK", slab as u32), ("ALIGNED", aligned as u32)],
    )
}

/// Tiles per subgroup of a cooperative product: `m` × `n` tiles of 16 × 16, so a workgroup of four
/// subgroups (2 × 2) owns a 32·m × 32·n output block (matmul_coop_common.wgsl's TM and TN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTiles {
    pub m: u32,
    pub n: u32,
}

impl CoopTiles {
    /// 64 × 64 blocks, 12 KiB of workgroup memory: any product, any adapter with the capability.
    pub const SMALL: CoopTiles = CoopTiles { m: 2, n: 2 };
    /// 128 × 128 blocks, 20 KiB: each staged slab feeds 4× the multiply-adds (on an H200 a
    /// 128 × 128 block reached 157 TFLOP/s against 94 for 64 × 64, bounds-checked).
    pub const LARGE: CoopTiles = CoopTiles { m: 4, n: 4 };

    pub fn block_rows(self) -> u32 {
        32 * self.m
    }

    pub fn block_cols(self) -> u32 {
        32 * self.n
    }

    /// Workgroup memory of the kernel: the f16 slabs of A and B (K slabs of 32) and one f32 tile
    /// per subgroup, each rounded up to 16 bytes as browsers count.
    pub fn workgroup_bytes(self) -> usize {
        let var = |bytes: usize| bytes.div_ceil(16) * 16;
        let slab = |edge: u32| var(2 * edge as usize * 32);
        slab(self.block_rows()) + slab(self.block_cols()) + var(4 * 4 * 256)
    }

    fn consts(self) -> [(&'static str, u32); 2] {
        [("TM", self.m), ("TN", self.n)]
    }
}

/// The tensor-core product (`matmul_coop.wgsl`) with `tiles` for an adapter whose subgroups have
/// `subgroup_size` invocations (the workgroup is four subgroups; the size must divide a 16 × 16
/// tile, as the emulated twin's lanes split it).
pub fn matmul_coop_source(subgroup_size: u32, tiles: CoopTiles) -> Result<String, String> {
    if subgroup_size == 0 || 256 % subgroup_size != 0 {
        return Err(format!(
            "matmul_coop: subgroups of {subgroup_size} invocations do not divide a 16 × 16 tile"
        ));
    }
    let [tm, tn] = tiles.consts();
    specialize(
        MATMUL_COOP_WGSL,
        &[("SUBGROUP_SIZE", subgroup_size), tm, tn],
    )
}

/// The emulated twin of [`matmul_coop_source`] (`matmul_coop_emulated.wgsl`): the same staging, tiles
/// and epilogue with plain loops, needing only shader-f16 (lavapipe runs it in the tests).
pub fn matmul_coop_emulated_source(tiles: CoopTiles) -> Result<String, String> {
    specialize(MATMUL_COOP_EMULATED_WGSL, &tiles.consts())
}

/// `source` reading the weight binding `var_name` as f16 (`enable f16;`, the binding's
/// `array<f32>` becomes `array<f16>`): the kernel's own reads of it must convert, `f32(name[i])`,
/// which is the identity in the f32 source. Fails if the declaration is not there exactly once.
pub fn with_f16_weights(source: &str, var_name: &str) -> Result<String, String> {
    let decl = format!("var<storage, read> {var_name}: array<f32>;");
    match source.matches(&decl).count() {
        1 => Ok(format!(
            "enable f16;\n{}",
            source.replace(
                &decl,
                &format!("var<storage, read> {var_name}: array<f16>;")
            )
        )),
        n => Err(format!(
            "with_f16_weights: expected one `{decl}`, found {n}"
        )),
    }
}

#[cfg(test)]
#[path = "../shader_include.rs"]
mod shader_include;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn specialize_replaces_the_declaration_and_fails_without_it() {
        let src = "const HEAD_DIM: u32 = 64u;\nconst TILE: u32 = 31u;\nconst HALF: u32 = HEAD_DIM / 2u;\n";
        let s = specialize(src, &[("HEAD_DIM", 32), ("TILE", 7)]).unwrap();
        assert_eq!(
            s,
            "const HEAD_DIM: u32 = 32u;\nconst TILE: u32 = 7u;\nconst HALF: u32 = HEAD_DIM / 2u;\n"
        );
        assert!(specialize(src, &[("ROWS_PER_THREAD", 1)])
            .unwrap_err()
            .contains("found 0"));
        assert!(specialize(src, &[("HALF", 1)])
            .unwrap_err()
            .contains("not a u32 literal"));
        assert!(
            specialize("const A: u32 = 1u;\nconst A: u32 = 2u;\n", &[("A", 3)])
                .unwrap_err()
                .contains("found 2")
        );
        // Only a declaration at the start of a line counts (not one in a comment).
        assert!(specialize("// const A: u32 = 1u;\n", &[("A", 3)]).is_err());
    }

    #[test]
    fn every_kernel_has_a_source_and_includes_are_resolved() {
        for (name, src) in KERNELS {
            assert_eq!(source(name), Some(src));
            assert!(
                !src.contains("\n// #include"),
                "{name} has an unresolved include"
            );
        }
        assert_eq!(
            source("reduce.wgsl"),
            None,
            "an include-only file is not a kernel"
        );
        assert!(source("nope.wgsl").is_none());
    }

    #[test]
    fn includes_resolve_once_and_errors_are_reported() {
        let ok = files(&[
            (
                "k.wgsl",
                "// k\n// #include \"b.wgsl\"\n// #include \"a.wgsl\"\n@compute fn main() {}\n",
            ),
            ("a.wgsl", "// a\nfn a() {}\n"),
            ("b.wgsl", "// b\n// #include \"a.wgsl\"\nfn b() {}\n"),
        ]);
        let r = shader_include::resolve_all(&ok).unwrap();
        let k = &r.kernels[0].1;
        assert_eq!(k.matches("fn a() {}").count(), 1);
        assert!(k.find("fn a()").unwrap() < k.find("fn b()").unwrap());
        assert_eq!(
            r.includes,
            vec![
                ("a.wgsl".to_string(), "k.wgsl".to_string()),
                ("b.wgsl".to_string(), "k.wgsl".to_string())
            ]
        );

        let unknown = files(&[(
            "k.wgsl",
            "// #include \"missing.wgsl\"\n@compute fn main() {}\n",
        )]);
        assert!(shader_include::resolve_all(&unknown)
            .err()
            .unwrap()
            .contains("k.wgsl:1: includes \"missing.wgsl\", which is not a file"));
        let cycle = files(&[
            ("k.wgsl", "// #include \"a.wgsl\"\n@compute fn main() {}\n"),
            ("a.wgsl", "// #include \"b.wgsl\"\n"),
            ("b.wgsl", "// #include \"a.wgsl\"\n"),
        ]);
        assert!(shader_include::resolve_all(&cycle)
            .err()
            .unwrap()
            .contains("include cycle k.wgsl -> a.wgsl -> b.wgsl -> a.wgsl"));
        let unused = files(&[
            ("k.wgsl", "@compute fn main() {}\n"),
            ("a.wgsl", "fn a() {}\n"),
        ]);
        assert!(shader_include::resolve_all(&unused)
            .err()
            .unwrap()
            .contains("no kernel includes it"));
        let nested = files(&[
            (
                "k.wgsl",
                "fn f() {\n    // #include \"a.wgsl\"\n}\n@compute fn main() {}\n",
            ),
            ("a.wgsl", "fn a() {}\n"),
        ]);
        assert!(shader_include::resolve_all(&nested)
            .err()
            .unwrap()
            .contains("column 0"));
    }
}
