#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment set-up, lint gates,
# the release (scripts/release.sh: binaries, packages, image), unit and
# integration tests against the real engine and broker (the release's .deb
# under systemd, its image as a sidecar), the arm binaries under qemu, the
# engine matrix (Docker 28.5 and 26.1 beside the host's 20.10), then the
# 3-minute soak run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh
# Build products live outside the clone, so a run on a machine that ran one
# before reuses them (a cold run builds everything and still fits).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dockside-ci/target}"
mkdir -p "$CARGO_TARGET_DIR"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Licences, crate sources and duplicated majors (deny.toml says why each allowed one is).
/var/cache/dockside-tools/bin/cargo-deny check bans licenses sources
# dist/ (SPEC §15); the sidecar test runs its host image as dockside:local.
scripts/release.sh
scripts/build-image.sh
cargo test --all-targets -- --test-threads=2

# The Raspberry Pi builds, run under emulation against the real engine,
# broker and registry.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for pair in aarch64-unknown-linux-musl:qemu-aarch64-static armv7-unknown-linux-gnueabihf:qemu-arm-static; do
  echo "== ${pair%%:*} under ${pair#*:}"
  DOCKSIDE_BIN="dist/dockside-$version-${pair%%:*}" DOCKSIDE_BIN_RUNNER="${pair#*:}" \
    cargo test --test foreign_arch -- --ignored --test-threads=1
done

# The engine matrix: each engine runs the engine-facing suites that matter for
# it (README "Engines tested"). The engines run beside the host's, stopped by
# the PIDs engine.sh recorded.
engines=()
stop_engines() { for e in "${engines[@]}"; do scripts/engine.sh stop "$e" || true; done; }
trap stop_engines EXIT
matrix() { # engine, test binaries... (`binary=filter`: only the tests whose name has filter)
  local e=$1; shift
  engines+=("$e")
  scripts/engine.sh start "$e"
  local args=() filtered=()
  for t in "$@"; do
    case "$t" in
      *=*) filtered+=("$t") ;;
      *) args+=(--test "$t") ;;
    esac
  done
  echo "== engine $e: $*"
  (
    eval "$(scripts/engine.sh env "$e")"
    if [ ${#args[@]} -gt 0 ]; then cargo test "${args[@]}" -- --test-threads=2; fi
    for f in ${filtered[@]+"${filtered[@]}"}; do
      cargo test --test "${f%%=*}" -- "${f#*=}" --test-threads=2
    done
  )
  scripts/engine.sh stop "$e"
}
# Docker 28.5, containerd image store, API floor 1.44: what fresh Docker 29 installs are.
# (stacks: the order test; stack updates are update_management's recreate, run here already)
matrix sid-cd core commands command_flood fault_dockerd updates update_command update_management stats stacks=compose_stack
# Docker 28.5 with the legacy store: the image-store-dependent parts.
matrix sid-legacy updates update_command
# Docker 26.1 (Debian trixie), containerd store: states, events and update checks.
matrix trixie-cd core updates

DOCKSIDE_SOAK_SECS=180 cargo test --test soak -- --ignored --nocapture
