//! Every op module against its WGSL, through naga's reflection: the `#[repr(C)]` parameter block has
//! the uniform struct's members in order with the same names, types and byte offsets and the same
//! size; the named bindings are the shader's variables at bindings 1, 2, … in order; and the
//! declared threads per workgroup are the entry point's `@workgroup_size`. A field or binding added
//! on one side only fails here.

use bd3_gpu::ops::{self, attention::Pass};
use bd3_gpu::program::UniformParams;
use bd3_gpu::shaders;

/// One op's host-side declarations.
struct OpSide {
    file: &'static str,
    source: String,
    fields: &'static [bd3_gpu::program::ParamField],
    size: usize,
    bindings: &'static [&'static str],
    threads: u32,
}

fn side<P: UniformParams>(
    file: &'static str,
    source: String,
    bindings: &'static [&'static str],
    threads: u32,
) -> OpSide {
    OpSide {
        file,
        source,
        fields: P::FIELDS,
        size: std::mem::size_of::<P>(),
        bindings,
        threads,
    }
}

fn all_ops() -> Vec<OpSide> {
    use ops::*;
    let src = |name: &str| shaders::kernel_source(name).unwrap().to_string();
    let att = |p: Pass| shaders::attention_file(p.file(), 64).unwrap();
    vec![
        side::<embedding::Params>(
            "embedding.wgsl",
            src("embedding.wgsl"),
            embedding::Bindings::NAMES,
            embedding::THREADS,
        ),
        side::<layernorm::Params>(
            "layernorm.wgsl",
            src("layernorm.wgsl"),
            layernorm::Bindings::NAMES,
            layernorm::THREADS,
        ),
        side::<matmul::Params>(
            "matmul.wgsl (64-row tile)",
            shaders::matmul_source(4).unwrap(),
            matmul::Bindings::NAMES,
            matmul::THREADS,
        ),
        side::<matmul::Params>(
            "matmul.wgsl (16-row tile)",
            shaders::matmul_source(1).unwrap(),
            matmul::Bindings::NAMES,
            matmul::THREADS,
        ),
        side::<matmul::Params>(
            "matmul_large.wgsl",
            shaders::matmul_large_source(shaders::LargeSlab::K8, true).unwrap(),
            matmul::Bindings::NAMES,
            matmul::THREADS,
        ),
        side::<matmul::Params>(
            "matmul_coop.wgsl",
            shaders::matmul_coop_source(32, shaders::CoopTiles::SMALL).unwrap(),
            matmul::Bindings::NAMES,
            4 * 32,
        ),
        side::<matmul::Params>(
            "matmul_coop_emulated.wgsl",
            shaders::matmul_coop_emulated_source(shaders::CoopTiles::SMALL).unwrap(),
            matmul::Bindings::NAMES,
            matmul::COOP_EMULATED_THREADS,
        ),
        side::<gemv::Params>(
            "gemv.wgsl",
            src("gemv.wgsl"),
            gemv::Bindings::NAMES,
            gemv::THREADS,
        ),
        side::<gemv::Params>(
            "gemv_subgroup.wgsl",
            src("gemv_subgroup.wgsl"),
            gemv::Bindings::NAMES,
            gemv::THREADS,
        ),
        side::<gemv::Params>(
            "gemv.wgsl (f16 weights, scalar views)",
            gemv::source(
                gemv::Reduction::Workgroup,
                gemv::WeightFormat::F16,
                gemv::WeightFormat::F32,
                false,
                1,
            )
            .unwrap(),
            gemv::Bindings::NAMES,
            gemv::THREADS,
        ),
        side::<gemv::Params>(
            "gemv_subgroup.wgsl (f16 weights)",
            gemv::source(
                gemv::Reduction::Subgroup,
                gemv::WeightFormat::F16,
                gemv::WeightFormat::F32,
                true,
                8,
            )
            .unwrap(),
            gemv::Bindings::NAMES,
            gemv::THREADS,
        ),
        side::<gemv::Params>(
            "gemv.wgsl (f16 weights, f16 table rows)",
            gemv::source(
                gemv::Reduction::Workgroup,
                gemv::WeightFormat::F16,
                gemv::WeightFormat::F16,
                true,
                2,
            )
            .unwrap(),
            gemv::Bindings::NAMES,
            gemv::THREADS,
        ),
        side::<attention::Params>(
            "attention.wgsl",
            att(Pass::Forward),
            attention::Bindings::TILED_NAMES,
            attention::THREADS,
        ),
        side::<attention::Params>(
            "attention_coop.wgsl",
            shaders::CoopAttention::Forward
                .source(64, Some(32))
                .unwrap(),
            attention::Bindings::TILED_NAMES,
            attention::coop_threads(Some(32)),
        ),
        side::<attention::Params>(
            "attention_coop_emulated.wgsl",
            shaders::CoopAttention::Forward.source(64, None).unwrap(),
            attention::Bindings::TILED_NAMES,
            attention::coop_threads(None),
        ),
        side::<attention::Params>(
            "attention_dq_coop.wgsl",
            shaders::CoopAttention::QueryGrad
                .source(64, Some(32))
                .unwrap(),
            attention::QueryGradBindings::NAMES,
            attention::coop_threads(Some(32)),
        ),
        side::<attention::Params>(
            "attention_dq_coop_emulated.wgsl",
            shaders::CoopAttention::QueryGrad.source(64, None).unwrap(),
            attention::QueryGradBindings::NAMES,
            attention::coop_threads(None),
        ),
        side::<attention::Params>(
            "attention_dkv_coop.wgsl",
            shaders::CoopAttention::KeyValueGrad
                .source(64, Some(32))
                .unwrap(),
            attention::KeyValueGradBindings::NAMES,
            attention::coop_threads(Some(32)),
        ),
        side::<attention::Params>(
            "attention_dkv_coop_emulated.wgsl",
            shaders::CoopAttention::KeyValueGrad
                .source(64, None)
                .unwrap(),
            attention::KeyValueGradBindings::NAMES,
            attention::coop_threads(None),
        ),
        side::<attention::Params>(
            "attention_decode.wgsl",
            att(Pass::Decode),
            attention::Bindings::NAMES,
            attention::THREADS,
        ),
        side::<attention::CombineParams>(
            "attention_combine.wgsl",
            src("attention_combine.wgsl"),
            attention::CombineBindings::NAMES,
            attention::THREADS,
        ),
        side::<attention::Params>(
            "attention_dq.wgsl",
            att(Pass::QueryGrad),
            attention::QueryGradBindings::NAMES,
            attention::THREADS,
        ),
        side::<attention::Params>(
            "attention_dkv.wgsl",
            att(Pass::KeyValueGrad),
            attention::KeyValueGradBindings::NAMES,
            attention::THREADS,
        ),
        side::<token_loss::Params>(
            "token_loss.wgsl",
            src("token_loss.wgsl"),
            token_loss::Bindings::NAMES,
            token_loss::THREADS,
        ),
        side::<sedd_loss::Params>(
            "sedd_loss.wgsl",
            src("sedd_loss.wgsl"),
            sedd_loss::Bindings::NAMES,
            sedd_loss::THREADS,
        ),
        side::<reduce_sum::Params>(
            "reduce_sum.wgsl",
            src("reduce_sum.wgsl"),
            reduce_sum::Bindings::NAMES,
            reduce_sum::THREADS,
        ),
        side::<grad_norm::Params>(
            "grad_norm.wgsl",
            src("grad_norm.wgsl"),
            grad_norm::Bindings::NAMES,
            grad_norm::THREADS,
        ),
        side::<sample::Params>(
            "sample.wgsl",
            src("sample.wgsl"),
            sample::Bindings::NAMES,
            sample::THREADS,
        ),
        side::<sample::Params>(
            "sample_subgroup.wgsl",
            src("sample_subgroup.wgsl"),
            sample::Bindings::NAMES,
            sample::THREADS,
        ),
        side::<confidence::Params>(
            "confidence.wgsl",
            src("confidence.wgsl"),
            confidence::Bindings::NAMES,
            confidence::THREADS,
        ),
        side::<col_sum::Params>(
            "col_sum.wgsl",
            src("col_sum.wgsl"),
            col_sum::Bindings::NAMES,
            col_sum::THREADS,
        ),
        side::<elementwise::Params>(
            "elementwise.wgsl",
            src("elementwise.wgsl"),
            elementwise::Bindings::NAMES,
            elementwise::THREADS,
        ),
        side::<gate_backward::Params>(
            "gate_backward.wgsl",
            src("gate_backward.wgsl"),
            gate_backward::Bindings::NAMES,
            gate_backward::THREADS,
        ),
        side::<layernorm_backward::Params>(
            "layernorm_backward.wgsl",
            src("layernorm_backward.wgsl"),
            layernorm_backward::Bindings::NAMES,
            layernorm_backward::THREADS,
        ),
        side::<layernorm_param_grads::Params>(
            "layernorm_param_grads.wgsl",
            src("layernorm_param_grads.wgsl"),
            layernorm_param_grads::Bindings::NAMES,
            layernorm_param_grads::THREADS,
        ),
        side::<embedding_backward::Params>(
            "embedding_backward.wgsl",
            src("embedding_backward.wgsl"),
            embedding_backward::Bindings::NAMES,
            embedding_backward::THREADS,
        ),
        side::<adamw::Params>(
            "adamw.wgsl",
            src("adamw.wgsl"),
            adamw::Bindings::NAMES,
            adamw::THREADS,
        ),
    ]
}

/// The shader's view: uniform members (name, offset, scalar type), struct size, binding names, threads.
struct ShaderSide {
    members: Vec<(String, u32, &'static str)>,
    span: u32,
    bindings: Vec<String>,
    threads: u32,
}

fn reflect(file: &str, source: &str) -> ShaderSide {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    let mut uniform = None;
    let mut bindings = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        assert_eq!(rb.group, 0, "{file}: everything is in group 0");
        if rb.binding == 0 {
            assert_eq!(
                var.space,
                naga::AddressSpace::Uniform,
                "{file}: binding 0 is the parameter block"
            );
            uniform = Some(var.ty);
        } else {
            bindings.push((rb.binding, var.name.clone().unwrap_or_default()));
        }
    }
    bindings.sort();
    for (i, (b, name)) in bindings.iter().enumerate() {
        assert_eq!(
            *b as usize,
            i + 1,
            "{file}: bindings are numbered 1, 2, … without gaps ({name} is at {b})"
        );
    }
    let ty =
        &module.types[uniform.unwrap_or_else(|| panic!("{file}: no parameter block at binding 0"))];
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{file}: the parameter block is not a struct")
    };
    let members = members
        .iter()
        .map(|m| {
            let scalar = match &module.types[m.ty].inner {
                naga::TypeInner::Scalar(s) => match (s.kind, s.width) {
                    (naga::ScalarKind::Uint, 4) => "u32",
                    (naga::ScalarKind::Sint, 4) => "i32",
                    (naga::ScalarKind::Float, 4) => "f32",
                    other => panic!("{file}: member {:?} has type {other:?}", m.name),
                },
                other => panic!("{file}: member {:?} is not a scalar: {other:?}", m.name),
            };
            (m.name.clone().unwrap_or_default(), m.offset, scalar)
        })
        .collect();
    let entry = module
        .entry_points
        .iter()
        .find(|e| e.name == "main")
        .unwrap_or_else(|| panic!("{file}: no entry point `main`"));
    ShaderSide {
        members,
        span: *span,
        bindings: bindings.into_iter().map(|b| b.1).collect(),
        threads: entry.workgroup_size.iter().product(),
    }
}

/// The differences between an op module and its shader, as readable lines (empty when they agree).
fn compare(op: &OpSide) -> Vec<String> {
    let sh = reflect(op.file, &op.source);
    let mut diffs = Vec::new();
    let host: Vec<(String, u32, &str)> = op
        .fields
        .iter()
        .map(|f| (f.name.to_string(), f.offset as u32, f.ty))
        .collect();
    if host != sh.members {
        diffs.push(format!(
            "{}: params differ\n  host:   {host:?}\n  shader: {:?}",
            op.file, sh.members
        ));
    }
    if op.size as u32 != sh.span {
        diffs.push(format!(
            "{}: params are {} bytes on the host, {} in the shader",
            op.file, op.size, sh.span
        ));
    }
    if op.bindings != sh.bindings.iter().map(String::as_str).collect::<Vec<_>>() {
        diffs.push(format!(
            "{}: bindings differ\n  host:   {:?}\n  shader: {:?}",
            op.file, op.bindings, sh.bindings
        ));
    }
    if op.threads != sh.threads {
        diffs.push(format!(
            "{}: {} threads per workgroup on the host, {} in the shader",
            op.file, op.threads, sh.threads
        ));
    }
    diffs
}

#[test]
fn every_op_matches_its_shader() {
    let diffs: Vec<String> = all_ops().iter().flat_map(compare).collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn every_kernel_file_has_an_op() {
    let covered: Vec<&str> = all_ops()
        .iter()
        .map(|o| o.file.split(' ').next().unwrap())
        .collect();
    for (f, _) in shaders::KERNELS {
        assert!(covered.contains(&f), "{f} has no op module in this test");
    }
}

/// The check can fail: a field added to the shader only, or to the host only, or a binding
/// renamed, is reported.
#[test]
fn a_field_added_on_one_side_only_is_caught() {
    let ops = all_ops();
    let embedding = ops.iter().find(|o| o.file == "embedding.wgsl").unwrap();
    assert!(compare(embedding).is_empty());

    let shader_only = OpSide {
        source: embedding
            .source
            .replacen("part_rows: u32,", "part_rows: u32,\n    extra: u32,", 1),
        ..side_of(embedding)
    };
    let d = compare(&shader_only);
    assert!(
        d.iter().any(|l| l.contains("params differ"))
            && d.iter().any(|l| l.contains("bytes on the host")),
        "{d:?}"
    );

    // The host declares one field more than the shader.
    bd3_gpu::uniform_params! {
        pub struct WithExtra {
            pub n_rows: u32,
            pub dim: u32,
            pub row_start: u32,
            pub part_rows: u32,
            pub extra: u32,
        }
    }
    let host_only = OpSide {
        fields: <WithExtra as UniformParams>::FIELDS,
        size: std::mem::size_of::<WithExtra>(),
        ..side_of(embedding)
    };
    let d = compare(&host_only);
    assert!(
        d.iter().any(|l| l.contains("params differ"))
            && d.iter().any(|l| l.contains("20 bytes on the host")),
        "{d:?}"
    );

    let renamed = OpSide {
        source: embedding
            .source
            .replace("var<storage, read> table:", "var<storage, read> tabel:")
            .replace("table[", "tabel["),
        ..side_of(embedding)
    };
    assert!(compare(&renamed)
        .iter()
        .any(|l| l.contains("bindings differ")));
}

fn side_of(o: &OpSide) -> OpSide {
    OpSide {
        file: o.file,
        source: o.source.clone(),
        fields: o.fields,
        size: o.size,
        bindings: o.bindings,
        threads: o.threads,
    }
}
