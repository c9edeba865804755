//! A field of a JSON document read with serde, kept as written until a validation step types it.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// A JSON value of the wanted type, or whatever was found instead, or nothing. Serde's own type
/// errors name neither the field nor the value ("invalid type: string \"64\", expected u64"); with
/// this the validation step says "field `hidden_dim` must be a positive integer, found \"64\"".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(untagged)]
pub(crate) enum Typed<T> {
    Ok(T),
    /// Present with another type (`null` included).
    Other(Value),
    /// Absent from the document (the field's `#[serde(default)]`).
    #[default]
    #[serde(skip)]
    Absent,
}

/// `T` from a JSON document that must be an object. Serde would also fill a struct from an array,
/// by position; a config or a corpus line written as an array is a mistake, not a shorthand.
pub(crate) fn from_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let object: serde_json::Map<String, Value> = serde_json::from_slice(bytes)?;
    T::deserialize(Value::Object(object))
}

impl<T> Typed<T> {
    /// `Ok(None)` when absent, `Err(value)` when present with another type.
    pub(crate) fn get(self) -> Result<Option<T>, Value> {
        match self {
            Typed::Ok(x) => Ok(Some(x)),
            Typed::Other(v) => Err(v),
            Typed::Absent => Ok(None),
        }
    }
}
