#!/usr/bin/env bash
# Builds everything and serves the demo page with the default model on http://127.0.0.1:8080/
# (open it in a browser with WebGPU). Extra arguments go to `bd3-wgpu serve` (e.g. --port, --model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-web-tools.sh
scripts/build-web.sh
cargo build --release -p bd3-wgpu
exec target/release/bd3-wgpu serve "$@"
