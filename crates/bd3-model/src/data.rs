//! Training text: reading a corpus (files, folders, JSONL, fortune files), tokenizing it with EOS
//! between documents, and wrapping it into length-L chunks with a held-out validation split
//! (official `dataloader.py`, `wrap=True`: documents are concatenated with EOS and cut into non-overlapping chunks).

use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use std::path::{Path, PathBuf};

/// One line of a JSONL corpus: its `text` is a document, other fields are ignored.
#[derive(serde::Deserialize)]
struct JsonlDocument {
    text: String,
}

/// The documents of a corpus path, in a stable order.
///  - a folder (the path itself may be a symlink to one): every regular file below it (sorted;
///    `.dat` indexes, symlinks and special files skipped);
///  - `*.jsonl`: one JSON object per line, its `text` field a document;
///  - a file with lines that are exactly `%` (fortune format): the pieces between them;
///  - any other file: one document.
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    let mut docs = Vec::new();
    for f in &files {
        let bytes = crate::error::read_file(f)?;
        let text = String::from_utf8(bytes).map_err(|e| Error::File {
            path: f.clone(),
            message: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        if f.extension().is_some_and(|e| e == "jsonl") {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let doc: JsonlDocument =
                    crate::json::from_object(line.as_bytes()).map_err(|source| {
                        let what = if source.is_data() {
                            "not an object with a string field `text`"
                        } else {
                            "not JSON"
                        };
                        Error::Json {
                            path: f.display().to_string(),
                            message: format!("line {}: {what}", i + 1),
                            source,
                        }
                    })?;
                docs.push(doc.text);
            }
        } else {
            docs.extend(split_documents(text));
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    if docs.is_empty() {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: "the corpus has no text".into(),
        });
    }
    Ok(docs)
}

/// The documents of one plain text file (any corpus file but `*.jsonl`): the pieces between lines
/// that are exactly `%` (fortune format), or else the whole text as one document. Blank documents
/// are kept here; [`read_corpus`] and [`text_documents`] drop them.
pub fn split_documents(text: String) -> Vec<String> {
    if text.lines().any(|l| l == "%") {
        text.split("\n%\n")
            .map(|d| d.trim_matches(|c| c == '\n' || c == '%').to_string())
            .collect()
    } else {
        vec![text]
    }
}

/// The documents of a text given in memory (the page's pasted or dropped text), exactly as
/// [`read_corpus`] reads the same text from a `.txt` file: possibly none.
pub fn text_documents(text: &str) -> Vec<String> {
    let mut docs = split_documents(text.to_string());
    docs.retain(|d| !d.trim().is_empty());
    docs
}

/// The path given by the user is followed if it is a symlink; it must be a regular file or a folder.
/// A FIFO, socket or device is refused before it is opened (reading one could block forever).
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: "not a regular file or folder (a FIFO, socket or device cannot be a corpus)"
                .into(),
        });
    }
    collect_below(path, &meta, out)
}

fn collect_below(path: &Path, meta: &std::fs::Metadata, out: &mut Vec<PathBuf>) -> Result<()> {
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let m = std::fs::symlink_metadata(&e).map_err(|source| Error::Io {
                path: e.clone(),
                source,
            })?;
            if m.is_dir() || (m.is_file() && e.extension().is_none_or(|x| x != "dat")) {
                collect_below(&e, &m, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Token chunks for training and validation.
pub struct Chunks {
    pub train: Vec<Vec<u32>>,
    pub valid: Vec<Vec<u32>>,
}

/// Every 20th document is held out for validation (`train`, `eval` and the page's fine-tuning share
/// the split).
pub const VALID_EVERY: usize = 20;

/// Tokenize (EOS after every document), hold out every `valid_every`-th document for validation,
/// and wrap each split into chunks of `length` tokens (the remainder is dropped). There must be a
/// validation chunk when `valid_every` > 0 ([`split_chunks`] allows none).
pub fn chunk_corpus(
    docs: &[String],
    tok: &TextTokenizer,
    eos: u32,
    length: usize,
    valid_every: usize,
) -> Result<Chunks> {
    let chunks = split_chunks(docs, tok, eos, length, valid_every)?;
    if valid_every > 0 && chunks.valid.is_empty() {
        return Err(Error::Invalid(format!(
            "the corpus is too small to hold out a validation chunk of {length} tokens"
        )));
    }
    Ok(chunks)
}

/// [`chunk_corpus`] without the demand for a validation chunk: for a run that does not validate
/// (a short text the held-out documents of which make no whole chunk). There must be a training chunk.
pub fn split_chunks(
    docs: &[String],
    tok: &TextTokenizer,
    eos: u32,
    length: usize,
    valid_every: usize,
) -> Result<Chunks> {
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, d) in docs.iter().enumerate() {
        let dst = if valid_every > 0 && i % valid_every == valid_every - 1 {
            &mut valid
        } else {
            &mut train
        };
        dst.extend(tok.encode(d)?);
        dst.push(eos);
    }
    let wrap =
        |ids: Vec<u32>| -> Vec<Vec<u32>> { ids.chunks_exact(length).map(|c| c.to_vec()).collect() };
    let n_train = train.len();
    let chunks = Chunks {
        train: wrap(train),
        valid: wrap(valid),
    };
    if chunks.train.is_empty() {
        return Err(Error::Invalid(format!(
            "the corpus has {n_train} training tokens, fewer than one chunk of {length}"
        )));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bd3-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn jsonl_lines_are_objects_with_a_text_field() {
        let d = scratch("jsonl");
        let f = d.join("c.jsonl");
        std::fs::write(
            &f,
            "{\"text\": \"one two\", \"id\": 1}\n\n{\"text\": \"three\"}\n",
        )
        .unwrap();
        assert_eq!(read_corpus(&f).unwrap(), ["one two", "three"]);
        for (bad, needle) in [
            (
                "[\"one two\"]",
                "line 2: not an object with a string field `text`",
            ),
            (
                "{\"text\": 5}",
                "line 2: not an object with a string field `text`",
            ),
            (
                "{\"title\": \"x\"}",
                "line 2: not an object with a string field `text`",
            ),
            ("{\"text\": ", "line 2: not JSON"),
        ] {
            std::fs::write(&f, format!("{{\"text\": \"ok\"}}\n{bad}\n")).unwrap();
            let e = read_corpus(&f).unwrap_err();
            assert!(
                std::error::Error::source(&e).is_some(),
                "the parse error is kept as the source"
            );
            let line = e.report();
            assert!(
                line.contains(needle)
                    && line.starts_with(&f.display().to_string())
                    && !line.contains('\n'),
                "{line}"
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn text_in_memory_splits_as_the_same_text_file_reads() {
        let d = scratch("text");
        let f = d.join("c.txt");
        for text in [
            "one document\n\nwith two paragraphs\n",
            "first\n%\nsecond\n%\n\n%\nthird\n%\n",
            "% not a separator\n",
        ] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(text_documents(text), read_corpus(&f).unwrap(), "{text:?}");
        }
        assert_eq!(text_documents("a\n%\nb"), ["a", "b"]);
        assert!(text_documents(" \n%\n\n").is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_without_blocking() {
        let d = scratch("fifo");
        let fifo = d.join("corpus.txt");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            // Opening a FIFO for reading blocks until a writer appears: the check must come first.
            let e = read_corpus(&fifo).unwrap_err().to_string();
            assert!(e.contains("not a regular file or folder"), "{e}");
        }
        let e = read_corpus(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("not a regular file or folder"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_given_through_a_symlink_is_read() {
        let d = scratch("link");
        std::fs::create_dir_all(d.join("real")).unwrap();
        std::fs::write(d.join("real/a.txt"), "first document").unwrap();
        std::fs::write(d.join("real/b.txt"), "second document").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        assert_eq!(
            read_corpus(&d.join("link")).unwrap(),
            ["first document", "second document"]
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
