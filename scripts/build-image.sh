#!/usr/bin/env bash
# Builds the top-level Dockerfile on a machine where no image can be pulled,
# and tags it dockside:local. The Dockerfile's builder (rust:1-bookworm) is
# replaced by a local Debian 12 root (scripts/systemd-image.sh builds it with
# debootstrap from Debian packages), and the static binary is compiled here
# with the Rust toolchain of this machine (x86_64 musl) and handed to the
# Dockerfile through target/docker-prebuilt/. The runtime stage is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
command -v musl-gcc >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
}
cargo build --release --locked --quiet --target "$target" --bin dockside
mkdir -p target/docker-prebuilt
cp "target/$target/release/dockside" target/docker-prebuilt/dockside
scripts/systemd-image.sh
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# A small context: the Dockerfile and the binary (the sources are not needed here).
mkdir -p "$ctx/target/docker-prebuilt"
cp Dockerfile "$ctx/"
cp target/docker-prebuilt/dockside "$ctx/target/docker-prebuilt/"
DOCKER_BUILDKIT=0 docker build -q --build-arg BUILDER=dockside-test/systemd:bookworm \
  -t dockside:local "$ctx" >/dev/null
size=$(docker image inspect -f '{{.Size}}' dockside:local)
echo "build-image: dockside:local, $((size / 1024 / 1024)) MiB"
