#!/usr/bin/env bash
# Builds the wasm package of crates/bd3-web into web/pkg, where the page (index.html) loads it.
# With wasm-pack: `wasm-pack build crates/bd3-web --target web --mode no-install --release --out-dir ../../web/pkg`
# (offline; wasm-opt is switched off in the crate's metadata because Debian's binaryen breaks the module).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v wasm-pack >/dev/null 2>&1; then
  wasm-pack build crates/bd3-web --target web --mode no-install --release --out-dir ../../web/pkg
else
  cargo build -p bd3-web --target wasm32-unknown-unknown --release
  wasm-bindgen --target web --out-dir web/pkg target/wasm32-unknown-unknown/release/bd3_web.wasm
fi
