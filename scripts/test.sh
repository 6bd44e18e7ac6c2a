#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment set-up, lint gates,
# unit and integration tests against the real engine and broker, then the
# 3-minute soak run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The sidecar image the tests run (tests/sidecar.rs): the Dockerfile, built without pulls.
scripts/build-image.sh
scripts/check-aarch64.sh
cargo test --all-targets -- --test-threads=2
DOCKSIDE_SOAK_SECS=180 cargo test --test soak -- --ignored --nocapture
