// Shared by matmul.wgsl (which applies dropout in its residual epilogues) and gate_backward.wgsl
// (which regenerates the same mask for the gradient); the host prepends this file to both, so the
// two can never disagree. Each kernel's Params has `dropout`, `seed` and `salt`.
//   keep(row, col) ⇔ U(seed, salt, row, col) ≥ dropout, U uniform in [0, 1) from 24 hashed bits.

// "lowbias32" integer hash (C. Wellons).
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
