//! The sample file of `sample --out FILE` and `gen-ppl`: JSON lines, one per generated sequence,
//!
//!   {"tokens": [4095, 17, ...], "text": "...", "nfe": 128, "calls": 160, "tokenizer": "1234..."}
//!
//! `tokens` is the whole sequence as the sampler returns it (the leading BOS included), `text` its
//! decoding without that BOS, `nfe` / `calls` the model calls of the run that produced it (NFE as the
//! official code counts them: calls that changed the sequence; `calls` also counts cache commits),
//! and `tokenizer` the fingerprint of the tokenizer the ids belong to
//! ([`bd3_model::tokenizer::TextTokenizer::fingerprint`]), so that a scorer never reads ids of
//! another vocabulary as its own.

use bd3_model::{Error, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

/// One line of a sample file.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleLine {
    pub tokens: Vec<u32>,
    pub text: String,
    pub nfe: u64,
    pub calls: u64,
    pub tokenizer: String,
}

/// Write one sequence as one JSON line.
pub fn write_sample_line(
    w: &mut impl Write,
    tokens: &[u32],
    text: &str,
    nfe: u64,
    calls: u64,
    tokenizer_fingerprint: &str,
) -> std::io::Result<()> {
    let line = json!({ "tokens": tokens, "text": text, "nfe": nfe, "calls": calls, "tokenizer": tokenizer_fingerprint });
    writeln!(w, "{line}")
}

/// Read a sample file; blank lines are skipped, anything else that is not a sample line is an
/// error naming the file and line.
pub fn read_sample_file(path: &Path) -> Result<Vec<SampleLine>> {
    let bytes = bd3_model::error::read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::File {
        path: path.to_path_buf(),
        message: "not UTF-8 text".into(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |message: String| Error::File {
            path: format!("{} line {}", path.display(), i + 1).into(),
            message,
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| at(format!("not a JSON sample line ({e})")))?;
        out.push(parse_line(&v).map_err(at)?);
    }
    if out.is_empty() {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: "holds no samples".into(),
        });
    }
    Ok(out)
}

fn parse_line(v: &Value) -> std::result::Result<SampleLine, String> {
    let tokens = v
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or("no `tokens` array")?
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect::<Option<Vec<u32>>>()
        .ok_or("`tokens` must hold token ids (whole numbers below 2^32)")?;
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .ok_or("no `text` string")?
        .to_string();
    let count = |k: &str| match v.get(k) {
        None => Ok(0),
        Some(x) => x.as_u64().ok_or(format!("`{k}` must be a whole number")),
    };
    // A line without a fingerprint has ids of an unknown vocabulary; the scorer then refuses them
    // unless they are re-tokenised from the text.
    let tokenizer = match v.get("tokenizer") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`tokenizer` must be a string".into()),
    };
    Ok(SampleLine {
        tokens,
        text,
        nfe: count("nfe")?,
        calls: count("calls")?,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lines_read_back_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("bd3-sample-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.jsonl");
        let mut buf = Vec::new();
        write_sample_line(&mut buf, &[4095, 1, 2], "a \"quoted\"\nline", 7, 9, "123").unwrap();
        buf.extend_from_slice(b"\n");
        write_sample_line(&mut buf, &[4095], "", 1, 1, "123").unwrap();
        std::fs::write(&path, &buf).unwrap();
        let lines = read_sample_file(&path).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            SampleLine {
                tokens: vec![4095, 1, 2],
                text: "a \"quoted\"\nline".into(),
                nfe: 7,
                calls: 9,
                tokenizer: "123".into()
            }
        );

        std::fs::write(&path, "{\"tokens\": [1, -2], \"text\": \"\"}\n").unwrap();
        let e = read_sample_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("token ids"), "{e}");
        std::fs::write(&path, "\n\n").unwrap();
        assert!(read_sample_file(&path)
            .unwrap_err()
            .to_string()
            .contains("no samples"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
