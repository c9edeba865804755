#!/usr/bin/env bash
# The toolchain of the browser build (idempotent): the wasm32 target, wasm-bindgen-cli pinned to the
# wasm-bindgen version in Cargo.lock (0.2.130; without --locked, see the browser recipe), and wasm-pack,
# which scripts/build-web.sh runs offline (--mode no-install) so it never downloads anything itself.
set -euo pipefail
rustup target list --installed | grep -q '^wasm32-unknown-unknown$' || rustup target add wasm32-unknown-unknown
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen 0.2.130" ]; then
  cargo install wasm-bindgen-cli --version 0.2.130
fi
command -v wasm-pack >/dev/null 2>&1 || cargo install wasm-pack --locked
