// The key/value tile of attention.wgsl and attention_dq.wgsl (the two walk keys for each query):
// tile row t is key t of sequence b, head h, read from fused qkv rows [q | k | v] of width 3·D:
//   tile_rot = k' (k rotated at position (key + pos_offset) mod pos_period), tile_val = v.
// The includer defines `fn kv_at(i: u32) -> f32`, the float at index i of the rows that hold the
// keys and values (row b·kv_seq_stride + key).
// Includes: attention_common.wgsl (Params, HEAD_DIM, rotate_pair; stage_tile calls tile_entry).

// #include "attention_common.wgsl"

fn tile_entry(b: u32, h: u32, key: u32, j: u32) -> vec4<f32> {
    let d_model = p.n_heads * HEAD_DIM;
    let base = (b * p.kv_seq_stride + key) * (3u * d_model) + h * HEAD_DIM;
    let k = rotate_pair(kv_at(base + d_model + j), kv_at(base + d_model + j + HALF), (key + p.pos_offset) % p.pos_period, j);
    return vec4<f32>(k, kv_at(base + 2u * d_model + j), kv_at(base + 2u * d_model + j + HALF));
}
