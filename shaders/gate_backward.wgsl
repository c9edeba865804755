// Backward of the gated residual  x += gate[s] ⊙ y,  y = drop(v)  (shaders/matmul.wgsl, epilogues 3/4):
//   dgate[s, j] += Σ_{rows r of sequence s} dx[r, j] · y[r, j]
//   dv[r, j]     = gate[s, j] · dx[r, j] · keep(r, j) / (1 − p)     (gate ≡ 1 without adaLN)
// The dropout mask keep(r, j) is regenerated from the same hash and key as the forward matmul.
//
// Bindings: 0 params, 1 dx [rows, dim], 2 y [rows, dim], 3 gate (modulation rows), 4 dv [rows, dim],
//           5 dmod (gradient of the modulation rows; dgate lands at gate_offset).
// Tiling: one thread per (sequence, column), 256 per workgroup, walking that sequence's rows.

struct Params {
    n_seq: u32,
    rows_per_seq: u32,
    dim: u32,
    has_gate: u32,
    gate_stride: u32,
    gate_offset: u32,
    dropout: f32,
    seed: u32,
    salt: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> dv: array<f32>;
@group(0) @binding(5) var<storage, read_write> dmod: array<f32>;

fn mix32(x0: u32) -> u32 {
    var x = x0;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

fn keep(row: u32, col: u32) -> bool {
    let h = mix32(p.seed ^ mix32(p.salt ^ mix32(row ^ mix32(col + 0x9e3779b9u))));
    return f32(h >> 8u) * (1.0 / 16777216.0) >= p.dropout;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.n_seq * p.dim) {
        return;
    }
    let s = t / p.dim;
    let j = t % p.dim;
    var g = 1.0;
    if (p.has_gate != 0u) {
        g = gate[s * p.gate_stride + p.gate_offset + j];
    }
    let scale = 1.0 / (1.0 - p.dropout);
    var acc = 0.0;
    for (var i = 0u; i < p.rows_per_seq; i++) {
        let r = s * p.rows_per_seq + i;
        let idx = r * p.dim + j;
        let d = dx[idx];
        acc += d * y[idx];
        var dvi = g * d;
        if (p.dropout > 0.0) {
            dvi = select(0.0, dvi * scale, keep(r, j));
        }
        dv[idx] = dvi;
    }
    if (p.has_gate != 0u) {
        let o = s * p.gate_stride + p.gate_offset + j;
        dmod[o] = dmod[o] + acc;
    }
}
