//! Comparison of our tensors against reference tensors, one printed line per check:
//! `name  max_err  tolerance  ok|FAIL`, and a closing `N passed, M failed`.

use std::io::Write;

#[derive(Clone, Copy, Debug)]
pub enum Tolerance {
    /// |a − b| ≤ rel · max|ref| (the fixtures' rule for logits, hidden states, gradients).
    MaxNormalised(f64),
    /// |a − b| ≤ rel · |ref| elementwise (scalars such as the loss).
    Relative(f64),
    /// |a − b| ≤ abs.
    Absolute(f64),
    /// |a − b| ≤ abs + rel·|ref| elementwise (optimizer steps).
    AbsRel(f64, f64),
    /// Integers: every element equal; max_err counts the mismatches.
    Exact,
}

pub struct Report<'a> {
    out: &'a mut dyn Write,
    pub passed: usize,
    pub failed: usize,
    pub prefix: String,
}

impl<'a> Report<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        Report {
            out,
            passed: 0,
            failed: 0,
            prefix: String::new(),
        }
    }

    pub fn set_prefix(&mut self, prefix: &str) {
        self.prefix = prefix.to_string();
    }

    pub fn line(&mut self, name: &str, max_err: f64, tol: f64, ok: bool) {
        if ok {
            self.passed += 1
        } else {
            self.failed += 1
        }
        let _ = writeln!(
            self.out,
            "{}{name:<40} {max_err:>10.3e} {tol:>10.3e}  {}",
            self.prefix,
            if ok { "ok" } else { "FAIL" }
        );
    }

    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.out, "# {text}");
    }

    /// Compare `got` with `want` (same length; a length mismatch is a failure).
    pub fn compare(&mut self, name: &str, got: &[f64], want: &[f64], tol: Tolerance) {
        if got.len() != want.len() {
            let _ = writeln!(
                self.out,
                "# {name}: {} values, reference has {}",
                got.len(),
                want.len()
            );
            self.line(name, f64::INFINITY, 0.0, false);
            return;
        }
        let max_ref = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if matches!(tol, Tolerance::Exact) {
            let mismatches = got.iter().zip(want).filter(|(a, b)| a != b).count();
            self.line(name, mismatches as f64, 0.0, mismatches == 0);
            return;
        }
        // Report the element closest to (or furthest past) its limit.
        let (mut worst_ratio, mut worst_err, mut worst_limit) = (-1.0f64, 0.0, 0.0);
        for (a, b) in got.iter().zip(want) {
            let err = (a - b).abs();
            let limit = match tol {
                Tolerance::MaxNormalised(r) => r * max_ref,
                Tolerance::Relative(r) => r * b.abs(),
                Tolerance::Absolute(t) => t,
                Tolerance::AbsRel(abs, rel) => abs + rel * b.abs(),
                Tolerance::Exact => unreachable!(),
            };
            let ratio = if err.is_nan() {
                f64::INFINITY
            } else if limit > 0.0 {
                err / limit
            } else if err == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            if ratio > worst_ratio {
                (worst_ratio, worst_err, worst_limit) =
                    (ratio, if err.is_nan() { f64::NAN } else { err }, limit);
            }
        }
        self.line(name, worst_err, worst_limit, worst_ratio <= 1.0);
    }

    pub fn compare_f32(&mut self, name: &str, got: &[f32], want: &[f64], tol: Tolerance) {
        let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
        self.compare(name, &got, want, tol);
    }

    pub fn compare_ids(&mut self, name: &str, got: &[u32], want: &[i64]) {
        let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
        let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
        self.compare(name, &got, &want, Tolerance::Exact);
    }
}
