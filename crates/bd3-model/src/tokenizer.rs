//! Text ↔ token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate).
//!
//! The official checkpoints use GPT-2's byte-level BPE (50257 tokens) plus one mask token: vocabulary
//! 50258, mask = 50257, BOS = EOS = 50256 = `<|endoftext|>`. [`TextTokenizer::gpt2_from_files`] builds
//! that tokenizer from GPT-2's `encoder.json` + `vocab.bpe`.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::{AddedToken, Tokenizer};

pub struct TextTokenizer {
    inner: Tokenizer,
    name: String,
}

impl TextTokenizer {
    pub fn from_file(path: &std::path::Path) -> Result<TextTokenizer> {
        let bytes = crate::error::read_file(path)?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<TextTokenizer> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|source| Error::Tokenizer {
            path: name.to_string(),
            message: "not a usable tokenizer.json".into(),
            source,
        })?;
        Ok(TextTokenizer {
            inner,
            name: name.to_string(),
        })
    }

    /// GPT-2's byte-level BPE from its vocabulary (`encoder.json`) and merges (`vocab.bpe`).
    pub fn gpt2_from_files(
        encoder_json: &std::path::Path,
        merges: &std::path::Path,
    ) -> Result<TextTokenizer> {
        let (e, m) = (
            encoder_json.display().to_string(),
            merges.display().to_string(),
        );
        let bpe = BPE::from_file(&e, &m)
            .build()
            .map_err(|source| Error::Tokenizer {
                path: e.clone(),
                message: format!("cannot build GPT-2 BPE with {m}"),
                source,
            })?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(
            tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
        ));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        inner
            .add_special_tokens([AddedToken::from("<|endoftext|>", true)])
            .map_err(|source| Error::Tokenizer {
                path: e.clone(),
                message: "cannot add <|endoftext|>".into(),
                source,
            })?;
        Ok(TextTokenizer { inner, name: e })
    }

    /// Train a byte-level BPE of `vocab_size` tokens (EOS `<|endoftext|>` included, as the last id) on
    /// `docs`, so that BOS = EOS = vocab − 1 and a model of vocab + 1 (the mask) follows the official
    /// GPT-2 convention (BOS = EOS = model vocab − 2).
    pub fn train_bpe(docs: &[String], vocab_size: usize) -> Result<TextTokenizer> {
        use tokenizers::models::bpe::BpeTrainer;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        if vocab_size < 300 {
            return Err(Error::Invalid(format!("a byte-level BPE needs a vocabulary of at least 300 (256 bytes + merges), not {vocab_size}")));
        }
        // One id stays free for the model's mask token.
        let max = crate::config::MAX_VOCAB_SIZE - 1;
        if vocab_size > max {
            return Err(Error::Invalid(format!(
                "a vocabulary of {vocab_size} is more than the supported maximum {max}"
            )));
        }
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size - 1)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // Bounded pieces keep training near-linear in the corpus size (see `training_pieces`).
        inner
            .train(&mut trainer, docs.iter().flat_map(|d| training_pieces(d)))
            .map_err(|e| Error::Invalid(format!("BPE training failed: {e}")))?;
        inner
            .add_special_tokens([AddedToken::from("<|endoftext|>", true)])
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(TextTokenizer {
            inner,
            name: "trained tokenizer".into(),
        })
    }

    /// The id of EOS (= BOS) in this tokenizer, the last one.
    pub fn eos_id(&self) -> u32 {
        self.inner
            .token_to_id("<|endoftext|>")
            .unwrap_or(self.vocab_size() as u32 - 1)
    }

    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Invalid(format!("cannot serialise the tokenizer: {e}")))
    }

    /// A short identity of this tokenizer: FNV-1a (64-bit, decimal) of its serialised JSON, the
    /// value `train` saves in its state. Two tokenizers with the same fingerprint map text to the
    /// same ids, so token ids written under one can be read under the other.
    pub fn fingerprint(&self) -> Result<String> {
        let h = self
            .to_json()?
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        Ok(h.to_string())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Text → ids, without BOS/EOS (the sampler adds BOS itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Invalid(format!("{}: cannot encode the text: {e}", self.name)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids → text; ids the tokenizer does not know (the mask token) become `[MASK]`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size() as u32;
        let mut out = String::new();
        let mut run = Vec::new();
        for &id in ids.iter().chain(std::iter::once(&u32::MAX)) {
            if id < n {
                run.push(id);
                continue;
            }
            if !run.is_empty() {
                out.push_str(
                    &self.inner.decode(&run, false).map_err(|e| {
                        Error::Invalid(format!("{}: cannot decode: {e}", self.name))
                    })?,
                );
                run.clear();
            }
            if id != u32::MAX {
                out.push_str("[MASK]");
            }
        }
        Ok(out)
    }

    /// The text of each token for display, concatenating to `decode(ids)`: a character that byte-level
    /// BPE split over several tokens goes whole to the token that completes it (the others get ""),
    /// instead of each showing a replacement character.
    pub fn pieces(&self, ids: &[u32]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut start = 0;
        for i in 0..ids.len() {
            let text = self.decode(&ids[start..=i])?;
            // A UTF-8 character has at most 4 bytes, so a group never needs more than 4 tokens.
            if text.ends_with('\u{FFFD}') && i + 1 - start < 4 && i + 1 < ids.len() {
                out.push(String::new());
                continue;
            }
            out.push(text);
            start = i + 1;
        }
        Ok(out)
    }

    /// The tokenizer must leave room for the mask token and agree on EOS = vocab_size − 2.
    pub fn check_fits(&self, cfg: &ModelConfig) -> Result<()> {
        let n = self.vocab_size();
        if n + 1 != cfg.vocab_size {
            return Err(Error::Config {
                path: self.name.clone(),
                message: format!(
                    "tokenizer does not match the checkpoint: the tokenizer has {n} tokens, but the model expects {} (its vocabulary of {} minus the mask token)",
                    cfg.vocab_size - 1,
                    cfg.vocab_size
                ),
            });
        }
        Ok(())
    }
}

/// The longest piece of text (in bytes) the BPE trainer sees at once.
pub const MAX_TRAINING_PIECE: usize = 256;

/// `text` cut into consecutive pieces of at most [`MAX_TRAINING_PIECE`] bytes (a character is never
/// split), each cut placed before a whitespace character where there is one, so that the
/// pre-tokenizer's words (" word") come out as they would from the whole text. The trainer
/// pre-tokenizes each piece on its own, so no word it counts is longer than a piece: its merge loop,
/// quadratic in a word's length, stays bounded, and one 1 MB line without spaces trains in linear time.
pub fn training_pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= MAX_TRAINING_PIECE {
            return Some(std::mem::take(&mut rest));
        }
        let mut limit = MAX_TRAINING_PIECE;
        while !rest.is_char_boundary(limit) {
            limit -= 1;
        }
        // The last whitespace at or before the limit (not at 0, so every piece makes progress).
        let cut = rest[..limit]
            .char_indices()
            .rev()
            .find(|&(i, c)| i > 0 && c.is_whitespace())
            .map_or(limit, |(i, _)| i);
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_pieces_are_bounded_and_cover_the_text() {
        let long_word = "x".repeat(1 << 20);
        let mixed = format!("{} {} tail", "é".repeat(1000), "ab cd ".repeat(200));
        let no_break = "名".repeat(5000);
        for text in [
            long_word.as_str(),
            mixed.as_str(),
            no_break.as_str(),
            "",
            "short text",
            "  ",
        ] {
            let pieces: Vec<&str> = training_pieces(text).collect();
            assert_eq!(pieces.concat(), text);
            assert!(
                pieces
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= MAX_TRAINING_PIECE),
                "{:?}",
                pieces.iter().map(|p| p.len()).max()
            );
        }
        // Cuts fall before whitespace where possible: every piece of spaced text starts a word.
        let spaced = "word ".repeat(500);
        assert!(training_pieces(&spaced).skip(1).all(|p| p.starts_with(' ')));
        assert!(training_pieces(&long_word).count() >= (1 << 20) / MAX_TRAINING_PIECE);
    }

    #[test]
    fn bpe_training_on_one_long_line_finishes() {
        // 64 KiB without a space: one word for the pre-tokenizer unless cut (quadratic merges).
        let line: String = (0..1 << 16)
            .map(|i| (b'a' + ((i * 7 + i / 13) % 26) as u8) as char)
            .collect();
        let tok = TextTokenizer::train_bpe(std::slice::from_ref(&line), 400).unwrap();
        assert!(tok.vocab_size() > 300);
        assert_eq!(
            tok.decode(&tok.encode(&line[..1000]).unwrap()).unwrap(),
            &line[..1000]
        );
    }

    #[test]
    fn pieces_keep_split_characters_whole() {
        let docs: Vec<String> = (0..20)
            .map(|i| format!("café {i} naïve ☕ and more text, 名前 {i}"))
            .collect();
        let tok = TextTokenizer::train_bpe(&docs, 300).unwrap();
        let ids = tok.encode("a ☕ café 名前 ☃ 𝄞 x").unwrap(); // ☃ and 𝄞 are not in the training text: split in bytes
        let pieces = tok.pieces(&ids).unwrap();
        assert_eq!(pieces.len(), ids.len());
        assert_eq!(pieces.concat(), tok.decode(&ids).unwrap());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // The split really happened (otherwise this test could not fail): some token alone is not valid UTF-8.
        assert!(ids
            .iter()
            .any(|&id| tok.decode(&[id]).unwrap().contains('\u{FFFD}')));
    }
}
