// Counter-based randomness shared by the kernels that draw numbers, which include this file:
// dropout.wgsl (the dropout mask, itself included by matmul.wgsl and gate_backward.wgsl) and
// sample.wgsl (the categorical draws). Needs nothing from the includer.
//   mix32(x): the "lowbias32" integer hash (C. Wellons), a bijection on u32 with good avalanche;
//   callers chain it over their keys (seed, salt, row, column / call, stream, …).

fn mix32(x0: u32) -> u32 {
    var x = x0;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}
