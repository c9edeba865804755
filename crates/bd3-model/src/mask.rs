//! Attention masks as predicates (official `models/dit.py:block_diff_mask`; paper Suppl. B.6), never materialised: "may query q see key k".
//!
//! The GPU kernel (`shaders/attention.wgsl`) does not test keys one by one; it turns each query's
//! allowed set into at most two key intervals. `intervals` here is the same rule on the CPU, and the
//! tests check it against the literal predicate `allows` (and `verify` against the official masks).

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionMask {
    /// Every query sees every key (MDLM, SEDD, and the current block over a KV cache).
    Full,
    /// Query q sees keys 0..=q (AR).
    Causal,
    /// Query q sees keys whose block index is ≤ its own (sampling window without a cache).
    BlockCausal { block_size: usize },
    /// The 2L training mask over x_t ⊕ x_0 (`block_diff_mask`), `half_len` = L.
    BlockDiff { half_len: usize, block_size: usize },
}

impl AttentionMask {
    /// Numeric code shared with the WGSL kernel.
    pub fn code(&self) -> u32 {
        match self {
            AttentionMask::Full => 0,
            AttentionMask::Causal => 1,
            AttentionMask::BlockCausal { .. } => 2,
            AttentionMask::BlockDiff { .. } => 3,
        }
    }

    pub fn block_size(&self) -> usize {
        match *self {
            AttentionMask::BlockCausal { block_size }
            | AttentionMask::BlockDiff { block_size, .. } => block_size,
            _ => 1,
        }
    }

    pub fn half_len(&self) -> usize {
        match *self {
            AttentionMask::BlockDiff { half_len, .. } => half_len,
            _ => 0,
        }
    }

    /// The literal predicate of the official code (`block_diff_mask`, `is_causal`, …).
    pub fn allows(&self, q: usize, k: usize) -> bool {
        match *self {
            AttentionMask::Full => true,
            AttentionMask::Causal => k <= q,
            AttentionMask::BlockCausal { block_size } => k / block_size <= q / block_size,
            AttentionMask::BlockDiff {
                half_len,
                block_size,
            } => {
                let (x0_q, x0_k) = (q >= half_len, k >= half_len);
                let (bq, bk) = ((q % half_len) / block_size, (k % half_len) / block_size);
                let block_diagonal = bq == bk && x0_q == x0_k;
                let offset_block_causal = !x0_q && x0_k && bk < bq;
                let block_causal = x0_q && x0_k && bk <= bq;
                block_diagonal || offset_block_causal || block_causal
            }
        }
    }

    /// The allowed keys of query q among 0..n_keys as two half-open intervals (either may be empty).
    pub fn intervals(&self, q: usize, n_keys: usize) -> [(usize, usize); 2] {
        let clamp = |(a, b): (usize, usize)| (a.min(n_keys), b.min(n_keys));
        let pair = match *self {
            AttentionMask::Full => [(0, n_keys), (0, 0)],
            AttentionMask::Causal => [(0, q + 1), (0, 0)],
            AttentionMask::BlockCausal { block_size } => {
                [(0, (q / block_size + 1) * block_size), (0, 0)]
            }
            AttentionMask::BlockDiff {
                half_len: l,
                block_size,
            } => {
                let b = (q % l) / block_size;
                let block_end = ((b + 1) * block_size).min(l);
                if q < l {
                    // x_t query: its own noisy block, then the clean blocks strictly before it.
                    [(b * block_size, block_end), (l, l + b * block_size)]
                } else {
                    // x_0 query: clean blocks up to and including its own.
                    [(l, l + block_end), (0, 0)]
                }
            }
        };
        pair.map(clamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_equal_the_predicate_for_every_mode() {
        let n = 14;
        let modes = [
            AttentionMask::Full,
            AttentionMask::Causal,
            AttentionMask::BlockCausal { block_size: 3 },
            AttentionMask::BlockDiff {
                half_len: 7,
                block_size: 3,
            },
            AttentionMask::BlockDiff {
                half_len: 7,
                block_size: 1,
            },
            AttentionMask::BlockDiff {
                half_len: 7,
                block_size: 7,
            },
        ];
        for mode in modes {
            for q in 0..n {
                let iv = mode.intervals(q, n);
                for k in 0..n {
                    let inside = iv.iter().any(|&(a, b)| k >= a && k < b);
                    assert_eq!(inside, mode.allows(q, k), "{mode:?} q={q} k={k}");
                }
                assert!(mode.allows(q, q), "every query sees itself");
            }
        }
    }
}
