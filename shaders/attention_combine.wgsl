// The merge of split-KV attention (flash-decoding): attention_decode.wgsl leaves, per query i, head h,
// sequence b and key chunk s, the chunk's running maximum m_s, sum l_s = Σ_k e^{s_k − m_s} and
// unnormalised output o_s = Σ_k e^{s_k − m_s} v_k. The softmax over all keys is
//   M = max_s m_s,  w_s = e^{m_s − M},  o = Σ_s w_s o_s / Σ_s w_s l_s,  lse = M + ln Σ_s w_s l_s
// (the log-sum-exp only with write_lse = 1). A chunk that saw no key has m_s = MASKED (below
// MASKED_TEST) and l_s = 0: it gets weight 0, never e^{MASKED − M}. A query that saw no key in any
// chunk gets o = 0.
//
// Bindings: 0 params, 1 partials [B·H·n_q·n_splits, head_dim + 2] (record
//           r = ((b·H + h)·n_q + i)·n_splits + s: o_s at r·(head_dim + 2) + j, then m_s, l_s),
//           2 out [B·n_q, H·head_dim] (attention.wgsl's layout), 3 lse_delta [B·H·n_q, 2] (slot 0).
// Tiling: workgroup (i, h, b) merges one query of one head; thread t owns columns t, t + 64, … of
// the head vector and reads every chunk's (m_s, l_s) itself (a few dozen chunks: cheaper than
// sharing them through workgroup memory and a barrier). No workgroup memory.

struct Params {
    n_q: u32,
    n_heads: u32,
    head_dim: u32,
    n_splits: u32,
    write_lse: u32,
}

// attention_common.wgsl's MASKED is −3e38; anything below this is a chunk without visible keys.
const MASKED_TEST: f32 = -1.0e38;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse_delta: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wg.x;
    let h = wg.y;
    let b = wg.z;
    let rec = p.head_dim + 2u;
    let first = ((b * p.n_heads + h) * p.n_q + i) * p.n_splits;

    var mx = -3.0e38;
    for (var s = 0u; s < p.n_splits; s++) {
        mx = max(mx, partials[(first + s) * rec + p.head_dim]);
    }
    var total = 0.0;
    for (var s = 0u; s < p.n_splits; s++) {
        let r = (first + s) * rec;
        let m = partials[r + p.head_dim];
        total += select(0.0, exp(m - mx) * partials[r + p.head_dim + 1u], m > MASKED_TEST);
    }
    let inv = select(0.0, 1.0 / total, total > 0.0);
    let o = (b * p.n_q + i) * p.n_heads * p.head_dim + h * p.head_dim;
    for (var col = lid; col < p.head_dim; col += WG) {
        var acc = 0.0;
        for (var s = 0u; s < p.n_splits; s++) {
            let r = (first + s) * rec;
            let m = partials[r + p.head_dim];
            acc += select(0.0, exp(m - mx) * partials[r + col], m > MASKED_TEST);
        }
        out[o + col] = acc * inv;
    }
    if (p.write_lse != 0u && lid == 0u) {
        lse_delta[2u * ((b * p.n_heads + h) * p.n_q + i)] = mx + log(total);
    }
}
