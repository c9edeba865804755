#!/usr/bin/env bash
# Installs what bd3-wgpu needs on a fresh Debian 12 machine (run as root): Vulkan on the CPU (Mesa
# lavapipe; Mesa 25 from bookworm-backports runs the kernels 2.5-6x faster than Debian 12's Mesa 22).
# Idempotent: does nothing when a Vulkan driver is already installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
  exit 0
fi
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && grep -q '^Suites: bookworm bookworm-updates$' "$src"; then
  sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' "$src"
fi
apt-get update -q
apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers libvulkan1 \
  || apt-get install -y -q mesa-vulkan-drivers libvulkan1
