#!/usr/bin/env bash
# Runs every test of the project: kernel parity (WGSL vs CPU loops), naga validation, loader errors,
# and `bd3-wgpu verify` against the fixtures of the official PyTorch code, on software Vulkan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Fail loudly if Vulkan is missing instead of silently picking another backend.
export WGPU_BACKEND=vulkan XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace
