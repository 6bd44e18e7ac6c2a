#!/usr/bin/env bash
# Raspberry Pi build check (CI): the whole crate type-checks for
# aarch64-unknown-linux-musl and its C parts (ring) cross-compile.
# The full static build for a Pi is the same with `build --release`:
#   CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
#   CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
#   cargo build --release --target aarch64-unknown-linux-musl
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
command -v aarch64-linux-gnu-gcc >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
}
CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
  cargo check --quiet --locked --target "$target" --bin dockside
echo "check-aarch64: ok"
