//! Every file in `shaders/` parses and validates with naga, and keeps its workgroup memory within
//! the 16 KiB that browsers allow (wgpu itself does not check this against the adapter).

use bd3_gpu::shaders::{
    all_files, attention_file, attention_file_within, matmul_source, WORKGROUP_MEMORY_BUDGET,
};

fn validate(name: &str, source: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    // Only the subgroup variants may use subgroup operations (the host builds them only where the
    // adapter has them); every other kernel must validate without.
    let caps = if source.contains("@builtin(subgroup_size)") {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::empty()
    };
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
        assert!(
            bytes <= WORKGROUP_MEMORY_BUDGET,
            "{name} uses {bytes} bytes of workgroup memory"
        );
        let file = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        assert!(
            file.starts_with("//"),
            "{name} must open with a header comment (math, bindings, tiling)"
        );
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
        (
            "matvec",
            kernel_source("matvec.wgsl").unwrap().to_string(),
            "b",
        ),
    ] {
        let twin = with_f16_weights(&source, var).unwrap();
        assert!(twin.starts_with("enable f16;"), "{name}");
        assert!(twin.contains(&format!("{var}: array<f16>")), "{name}");
        f16(&format!("{name} (f16 weights)"), &twin);
    }
    // A file without the declaration (or a renamed binding) is an error, not an f32 kernel.
    assert!(with_f16_weights(kernel_source("layernorm.wgsl").unwrap(), "b").is_err());
}
