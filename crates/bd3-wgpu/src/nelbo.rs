//! The loss of a model kind on clean chunks: shared with the page, so it lives in `bd3_gpu::nelbo`.

pub use bd3_gpu::nelbo::{evaluate, input_of, loss_shape};
