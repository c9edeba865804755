//! Every file in `shaders/` parses and validates with naga, and keeps its workgroup memory within
//! the 16 KiB that browsers allow (wgpu itself does not check this against the adapter).

use bd3_gpu::shaders::{
    all_files, attention_file, attention_file_within, matmul_source, WORKGROUP_MEMORY_BUDGET,
};

fn validate(name: &str, source: &str) -> naga::Module {
    // Only the files that declare an extension get its capability (the mixed-precision products),
    // and only the subgroup variants may use subgroup operations (the host builds them only where
    // the adapter has them); every other kernel must validate without.
    let mut caps = capabilities_of(source);
    if name.contains("subgroup") {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    validate_with(name, source, caps)
}

fn validate_with(name: &str, source: &str, caps: naga::valid::Capabilities) -> naga::Module {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    module
}

/// Workgroup memory as browsers count it: each variable rounded up to 16 bytes (Chromium rejects
/// attention_dkv at 16 400 bytes where the plain sum is 16 380).
fn workgroup_bytes(module: &naga::Module) -> usize {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    module
        .global_variables
        .iter()
        .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
        .map(|(_, v)| (layouter[v.ty].size as usize).div_ceil(16) * 16)
        .sum()
}

#[test]
fn every_shader_file_is_listed_and_validates_within_the_memory_budget() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let shaders = all_files();
    let mut listed: Vec<String> = shaders.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "shaders/ and shaders::all_files() must agree"
    );
    for (name, source) in &shaders {
        // The attention kernels are compiled specialised (HEAD_DIM, TILE): check them as compiled;
        // attention_specialisations_validate_for_every_head_dim covers the other head dims.
        let source = if [
            "attention.wgsl",
            "attention_dq.wgsl",
            "attention_dkv.wgsl",
            "attention_decode.wgsl",
        ]
        .contains(name)
        {
            attention_file(name, 64).unwrap()
        } else {
            source.to_string()
        };
        let m = validate(name, &source);
        let bytes = workgroup_bytes(&m);
        // The tensor-core attention is native-only (cooperative matrices are): checked against the
        // adapter's limit by the host and in tensor_core_attention_validates_and_emits_spirv.
        let budget = match name.starts_with("attention") && name.contains("_coop") {
            true => NATIVE_COOP_ATTENTION_BUDGET,
            false => WORKGROUP_MEMORY_BUDGET,
        };
        assert!(
            bytes <= budget,
            "{name} uses {bytes} bytes of workgroup memory"
        );
        let file = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        assert!(
            file.starts_with("//"),
            "{name} must open with a header comment (math, bindings, tiling)"
        );
    }
}

/// Every variant of the matrix-vector kernels as the host builds it (the VIEWS region rewritten for
/// scalar views, f16 weights and the f16 table rows of an embedding prologue), with only the
/// capabilities it declares it needs, within the budget.
#[test]
fn every_gemv_variant_validates() {
    use bd3_gpu::ops::gemv::{source, Reduction, WeightFormat};
    use naga::valid::Capabilities;
    for reduction in [Reduction::Workgroup, Reduction::Subgroup] {
        for (weights, input) in [
            (WeightFormat::F32, WeightFormat::F32),
            (WeightFormat::F16, WeightFormat::F32),
            (WeightFormat::F16, WeightFormat::F16),
        ] {
            for (vec4, cols) in [
                (true, 1),
                (true, 2),
                (true, 4),
                (true, 8),
                (false, 1),
                (false, 8),
            ] {
                let src = source(reduction, weights, input, vec4, cols).unwrap();
                assert!(src.contains(&format!("const COLS: u32 = {cols}u;")));
                let name = format!(
                    "gemv {reduction:?} {weights:?} input {input:?} vec4={vec4} cols={cols}"
                );
                let mut caps = Capabilities::empty();
                if reduction == Reduction::Subgroup {
                    caps |= Capabilities::SUBGROUP;
                }
                if weights == WeightFormat::F16 {
                    caps |= Capabilities::SHADER_FLOAT16;
                    assert!(src.starts_with("enable f16;"), "{name}");
                }
                let m = validate_with(&name, &src, caps);
                assert!(workgroup_bytes(&m) <= WORKGROUP_MEMORY_BUDGET, "{name}");
                let (b, a) = if vec4 {
                    (
                        format!("b: array<vec4<{}>>", weights.name()),
                        format!("a: array<vec4<{}>>", input.name()),
                    )
                } else {
                    (
                        format!("b: array<{}>", weights.name()),
                        format!("a: array<{}>", input.name()),
                    )
                };
                assert!(src.contains(&a), "{name}: input bound as {a}");
                assert!(src.contains(&b), "{name}: weights bound as {b}");
                // Without the capability it names, a variant does not validate (the choice matters).
                if caps != Capabilities::empty() {
                    let module = naga::front::wgsl::parse_str(&src).unwrap();
                    assert!(
                        naga::valid::Validator::new(
                            naga::valid::ValidationFlags::all(),
                            Capabilities::empty()
                        )
                        .validate(&module)
                        .is_err(),
                        "{name} validates without {caps:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_large_matmul_variant_validates_within_its_budget() {
    // The 8-deep slab within the browser's 16 KiB, the 16-deep one within 32 KiB (native only; the
    // host picks it from the adapter's limit), each with vector and element loads; the host's count
    // of the workgroup memory is the compiled one.
    use bd3_gpu::shaders::{matmul_large_source, LargeSlab};
    for (slab, budget) in [
        (LargeSlab::K8, WORKGROUP_MEMORY_BUDGET),
        (LargeSlab::K16, 32 * 1024),
    ] {
        for aligned in [true, false] {
            let src = matmul_large_source(slab, aligned).unwrap();
            assert!(src.contains(&format!("const BK: u32 = {}u;", slab as u32)));
            assert!(src.contains(&format!("const ALIGNED: u32 = {}u;", aligned as u32)));
            let name = format!("matmul_large {slab:?} aligned={aligned}");
            let bytes = workgroup_bytes(&validate(&name, &src));
            assert_eq!(bytes, slab.workgroup_bytes(), "{name}");
            assert!(bytes <= budget, "{name} uses {bytes} bytes of {budget}");
            assert_eq!(LargeSlab::within(budget), slab);
        }
    }
}

#[test]
fn narrow_matmul_validates() {
    let src = matmul_source(1).unwrap();
    assert!(src.contains("const ROWS_PER_THREAD: u32 = 1u;"));
    validate("matmul_narrow", &src);
}

#[test]
fn attention_specialisations_validate_for_every_head_dim() {
    // The browser budget and a native 32 KiB one: every head dim, every kernel.
    for budget in [WORKGROUP_MEMORY_BUDGET, 32 * 1024] {
        for head_dim in (2..=128).step_by(2) {
            for name in [
                "attention.wgsl",
                "attention_dq.wgsl",
                "attention_dkv.wgsl",
                "attention_decode.wgsl",
            ] {
                let (src, tiles) = attention_file_within(name, head_dim, budget).unwrap();
                assert!(
                    src.contains(&format!("const HEAD_DIM: u32 = {head_dim}u;")),
                    "head_dim {head_dim} was not substituted"
                );
                let m = validate(&format!("{name} dh={head_dim}"), &src);
                let bytes = workgroup_bytes(&m);
                assert!(
                    bytes <= budget,
                    "{name} dh={head_dim} uses {bytes} bytes of {budget}"
                );
                let constant = |c: &str| -> usize {
                    src.split(&format!("const {c}: u32 = "))
                        .nth(1)
                        .and_then(|r| r.split('u').next())
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                assert_eq!(
                    (constant("BQ"), constant("BK")),
                    (tiles.q, tiles.k),
                    "{name} dh={head_dim}: the compiled tiles"
                );
                assert_eq!(
                    bytes,
                    bd3_gpu::shaders::attention_workgroup_bytes(name, head_dim, tiles),
                    "{name} dh={head_dim}: the host's count of its workgroup memory"
                );
            }
        }
    }
    // The decode kernel holds a sampling call's 16 queries and 32-key tiles in the browser budget.
    assert_eq!(
        bd3_gpu::shaders::attention_tiles("attention_decode.wgsl", 64, WORKGROUP_MEMORY_BUDGET)
            .unwrap(),
        bd3_gpu::shaders::AttentionTiles { q: 16, k: 32 }
    );
    // The small model's head dim gets 32-query forward tiles in the browser budget, larger natively.
    assert_eq!(
        bd3_gpu::shaders::attention_tiles("attention.wgsl", 64, WORKGROUP_MEMORY_BUDGET).unwrap(),
        bd3_gpu::shaders::AttentionTiles { q: 32, k: 16 }
    );
    assert_eq!(
        bd3_gpu::shaders::attention_tiles("attention.wgsl", 64, 32 * 1024).unwrap(),
        bd3_gpu::shaders::AttentionTiles { q: 64, k: 16 }
    );
}

#[test]
fn f16_weight_twins_validate_and_the_rewrite_fails_loudly() {
    use bd3_gpu::shaders::{kernel_source, with_f16_weights};
    let f16 = |name: &str, source: &str| {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::SHADER_FLOAT16,
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    };
    for (name, source, var) in [
        (
            "embedding",
            kernel_source("embedding.wgsl").unwrap().to_string(),
            "table",
        ),
        ("matmul", matmul_source(4).unwrap(), "b"),
        ("matmul_narrow", matmul_source(1).unwrap(), "b"),
        // (the matrix-vector kernels write their own f16 views: gemv::source, tested above)
    ] {
        let twin = with_f16_weights(&source, var).unwrap();
        assert!(twin.starts_with("enable f16;"), "{name}");
        assert!(twin.contains(&format!("{var}: array<f16>")), "{name}");
        f16(&format!("{name} (f16 weights)"), &twin);
    }
    // A file without the declaration (or a renamed binding) is an error, not an f32 kernel.
    assert!(with_f16_weights(kernel_source("layernorm.wgsl").unwrap(), "b").is_err());
}

/// The naga capabilities a shader file declares it needs (`enable …;`).
fn capabilities_of(source: &str) -> naga::valid::Capabilities {
    use naga::valid::Capabilities;
    let mut caps = Capabilities::empty();
    if source.contains("enable f16;") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if source.contains("enable wgpu_cooperative_matrix;") {
        caps |= Capabilities::COOPERATIVE_MATRIX | Capabilities::SUBGROUP;
    }
    if source.contains("@builtin(subgroup_size)") {
        caps |= Capabilities::SUBGROUP;
    }
    caps
}

/// What an adapter with tensor cores gives a workgroup (an H200 over Vulkan: 48 KiB).
const NATIVE_COOP_ATTENTION_BUDGET: usize = 48 * 1024;

/// SPIR-V as wgpu's Vulkan backend writes it, and whether it holds a cooperative multiply-add
/// (OpCooperativeMatrixMulAddKHR, opcode 4459; naga's writer panics on some forms its validator
/// accepts, e.g. a cooperative store whose stride is computed inline).
fn spirv_has_coop_multiply_add(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
) -> bool {
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let words = naga::back::spv::write_vec(module, info, &options, None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e:?}"));
    assert_eq!(words[0], 0x0723_0203, "{name}: SPIR-V magic");
    // Walk the instructions (word count in the high half of each first word) after the header.
    let mut at = 5;
    while at < words.len() {
        if words[at] & 0xffff == 4459 {
            return true;
        }
        at += (words[at] >> 16).max(1) as usize;
    }
    false
}

#[test]
fn tensor_core_attention_validates_and_emits_spirv() {
    // The forward and both gradients at every head dimension that is a multiple of 16 up to 128,
    // each kernel (subgroups of 32 and 64) and its emulated twin; the host's count of the workgroup
    // memory is the compiled one, and at the small model's head dim 64 every kernel fits the 32 KiB
    // of common adapters (lavapipe runs the twins), at 128 a tensor-core adapter's 48 KiB or not (the
    // host keeps attention in f32 where any of them does not fit).
    use bd3_gpu::shaders::CoopAttention;
    for pass in CoopAttention::ALL {
        for head_dim in (16..=128).step_by(16) {
            for subgroup in [Some(32), Some(64), None] {
                let name = format!("{pass:?} dh={head_dim} subgroups {subgroup:?}");
                let source = pass.source(head_dim, subgroup).unwrap();
                assert!(source.contains(&format!("const HEAD_DIM: u32 = {head_dim}u;")));
                let module = naga::front::wgsl::parse_str(&source)
                    .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
                let info = naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    capabilities_of(&source),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(
                    workgroup_bytes(&module),
                    pass.workgroup_bytes(head_dim),
                    "{name}: the host's count of its workgroup memory"
                );
                assert_eq!(
                    spirv_has_coop_multiply_add(&name, &module, &info),
                    subgroup.is_some(),
                    "{name}: cooperative multiply-add in the SPIR-V"
                );
            }
        }
        assert!(pass.workgroup_bytes(64) <= 32 * 1024, "{pass:?}");
        assert!(pass.source(40, None).is_err());
    }
    assert!(CoopAttention::Forward.workgroup_bytes(128) <= NATIVE_COOP_ATTENTION_BUDGET);
    assert!(CoopAttention::QueryGrad.workgroup_bytes(128) > NATIVE_COOP_ATTENTION_BUDGET);
}

#[test]
fn cooperative_matrix_product_validates_and_emits_spirv() {
    use bd3_gpu::shaders::{matmul_coop_emulated_source, matmul_coop_source, CoopTiles};
    let coop = matmul_coop_source(32, CoopTiles::SMALL).unwrap();
    assert!(coop.starts_with("//"));
    for needle in [
        "enable wgpu_cooperative_matrix;",
        "coopMultiplyAdd",
        "coopLoadT<coop_mat16x16<f16, A>>",
        "coopStoreT",
    ] {
        assert!(coop.contains(needle), "matmul_coop lacks {needle}");
    }
    // Without the capability naga refuses it: the check below is not vacuous.
    let module = naga::front::wgsl::parse_str(&coop)
        .unwrap_or_else(|e| panic!("matmul_coop: {}", e.emit_to_string(&coop)));
    assert!(naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::SHADER_FLOAT16 | naga::valid::Capabilities::SUBGROUP,
    )
    .validate(&module)
    .is_err());
    let native_budget = bd3_gpu::ops::attention::NATIVE_WORKGROUP_MEMORY_CAP;
    for (tiles, budget) in [
        (CoopTiles::SMALL, WORKGROUP_MEMORY_BUDGET),
        (CoopTiles::LARGE, native_budget),
    ] {
        for (name, source) in [
            (
                format!("matmul_coop {tiles:?} (subgroups of 32)"),
                matmul_coop_source(32, tiles).unwrap(),
            ),
            (
                format!("matmul_coop {tiles:?} (subgroups of 64)"),
                matmul_coop_source(64, tiles).unwrap(),
            ),
            (
                format!("matmul_coop_emulated {tiles:?}"),
                matmul_coop_emulated_source(tiles).unwrap(),
            ),
        ] {
            assert!(
                source.contains(&format!("const TM: u32 = {}u;", tiles.m))
                    && source.contains(&format!("const TN: u32 = {}u;", tiles.n)),
                "{name}: tiles not substituted"
            );
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
            let info = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                capabilities_of(&source),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let bytes = workgroup_bytes(&module);
            assert!(bytes <= budget, "{name} uses {bytes} bytes of {budget}");
            assert_eq!(
                bytes,
                tiles.workgroup_bytes(),
                "{name}: the host's count of its workgroup memory"
            );
            assert_eq!(
                spirv_has_coop_multiply_add(&name, &module, &info),
                name.starts_with("matmul_coop "),
                "{name}: cooperative multiply-add in the SPIR-V"
            );
        }
    }
    // The large tiles exceed the browsers' 16 KiB: native adapters only (the host checks the limit).
    assert!(CoopTiles::LARGE.workgroup_bytes() > WORKGROUP_MEMORY_BUDGET);
    // A subgroup size that does not divide the tile is refused.
    assert!(matmul_coop_source(48, CoopTiles::SMALL).is_err());
}
