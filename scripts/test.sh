#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment set-up, lint gates,
# unit and integration tests against the real engine and broker, the engine
# matrix (Docker 28.5 and 26.1 beside the host's 20.10), then the 3-minute
# soak run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The sidecar image the tests run (tests/sidecar.rs): the Dockerfile, built without pulls.
scripts/build-image.sh
scripts/check-aarch64.sh
cargo test --all-targets -- --test-threads=2

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
matrix sid-cd core commands fault_dockerd updates update_command update_management stats stacks=compose_stack
# Docker 28.5 with the legacy store: the image-store-dependent parts.
matrix sid-legacy updates update_command
# Docker 26.1 (Debian trixie), containerd store: states, events and update checks.
matrix trixie-cd core updates

DOCKSIDE_SOAK_SECS=180 cargo test --test soak -- --ignored --nocapture
