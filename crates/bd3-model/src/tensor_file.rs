//! Reading any safetensors file as plain arrays (fixtures, case files): every float dtype as f64,
//! every integer dtype as i64, with a one-line error naming the file and tensor.

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
}

/// A tensor's shape and values.
#[derive(Clone, Debug)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile> {
        let bytes = crate::error::read_file(path)?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: Vec<u8>, path: &str) -> Result<TensorFile> {
        let path = path.to_string();
        crate::checkpoint::check_file(&bytes, &path)?;
        SafeTensors::deserialize(&bytes).map_err(|source| Error::Safetensors {
            path: path.clone(),
            message: "not a readable safetensors file".into(),
            source,
        })?;
        Ok(TensorFile { path, bytes })
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated at open")
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .st()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect();
        n.sort();
        n
    }

    pub fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    fn err(&self, name: &str, message: String) -> Error {
        Error::Checkpoint {
            path: self.path.clone(),
            tensor: Some(name.to_string()),
            message,
        }
    }

    pub fn f64(&self, name: &str) -> Result<Array<f64>> {
        let st = self.st();
        let v = st
            .tensor(name)
            .map_err(|_| self.err(name, "missing".into()))?;
        let d = v.data();
        let data: Vec<f64> = match v.dtype() {
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => crate::checkpoint::to_f32(v.dtype(), d)
                .into_iter()
                .map(f64::from)
                .collect(),
            other => {
                return Err(self.err(name, format!("expected a float tensor, found {other:?}")))
            }
        };
        Ok(Array {
            shape: v.shape().to_vec(),
            data,
        })
    }

    pub fn i64(&self, name: &str) -> Result<Array<i64>> {
        let st = self.st();
        let v = st
            .tensor(name)
            .map_err(|_| self.err(name, "missing".into()))?;
        let d = v.data();
        let data: Vec<i64> = match v.dtype() {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U8 | Dtype::BOOL => d.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(self.err(name, format!("expected an integer tensor, found {other:?}")))
            }
        };
        Ok(Array {
            shape: v.shape().to_vec(),
            data,
        })
    }

    /// [`TensorFile::i64`] of a tensor that must have `rank` dimensions, none of them zero; the
    /// error names the tensor and its shape.
    pub fn i64_rank(&self, name: &str, rank: usize) -> Result<Array<i64>> {
        let a = self.i64(name)?;
        self.check_rank(name, &a.shape, rank)?;
        Ok(a)
    }

    /// [`TensorFile::f64`] of a tensor that must have `rank` dimensions, none of them zero.
    pub fn f64_rank(&self, name: &str, rank: usize) -> Result<Array<f64>> {
        let a = self.f64(name)?;
        self.check_rank(name, &a.shape, rank)?;
        Ok(a)
    }

    /// The single value of a scalar tensor (shape [] or [1]).
    pub fn f64_scalar(&self, name: &str) -> Result<f64> {
        let a = self.f64(name)?;
        match a.data.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.err(name, format!("shape {:?}, expected a scalar", a.shape))),
        }
    }

    /// The single value of an integer scalar tensor (shape [] or [1]).
    pub fn i64_scalar(&self, name: &str) -> Result<i64> {
        let a = self.i64(name)?;
        match a.data.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.err(name, format!("shape {:?}, expected a scalar", a.shape))),
        }
    }

    fn check_rank(&self, name: &str, shape: &[usize], rank: usize) -> Result<()> {
        if shape.len() != rank || shape.contains(&0) {
            return Err(self.err(
                name,
                format!("malformed fixture: shape {shape:?}, expected {rank} non-empty dimensions"),
            ));
        }
        Ok(())
    }
}
