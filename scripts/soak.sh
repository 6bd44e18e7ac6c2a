#!/usr/bin/env bash
# Soak run (tests/soak.rs): DOCKSIDE_SOAK_SECS of random container churn, broker
# restarts with a wiped store, one dockerd restart and SIGHUPs, with checkpoints
# comparing every retained state to `docker inspect`. Default 30 minutes; CI
# runs 180 s through scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh
DOCKSIDE_SOAK_SECS=${DOCKSIDE_SOAK_SECS:-1800} exec cargo test --release --test soak -- --ignored --nocapture
