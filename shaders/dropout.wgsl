// The dropout mask, shared by matmul.wgsl (which applies dropout in its residual epilogues) and
// gate_backward.wgsl (which regenerates the same mask for the gradient): both include this file,
// so the two can never disagree.
//   keep(row, col) ⇔ U(seed, salt, row, col) ≥ dropout, U uniform in [0, 1) from 24 hashed bits.
// The includer's uniform `p` has `dropout: f32`, `seed: u32` and `salt: u32`.
// Includes: hash.wgsl (mix32).

// #include "hash.wgsl"

fn keep(row: u32, col: u32) -> bool {
    let h = mix32(p.seed ^ mix32(p.salt ^ mix32(row ^ mix32(col + 0x9e3779b9u))));
    return f32(h >> 8u) * (1.0 / 16777216.0) >= p.dropout;
}
