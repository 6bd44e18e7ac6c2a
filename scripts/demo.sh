#!/usr/bin/env bash
# Runs dockside in the foreground on this machine: makes sure a Docker engine
# and a Mosquitto broker on 127.0.0.1:1883 are up (installing them if needed),
# builds dockside and starts it with the example config.
# Watch it with: mosquitto_sub -h 127.0.0.1 -t 'dockside/#' -v
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh >/dev/null
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  echo "demo: starting mosquitto on 127.0.0.1:1883"
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' > /tmp/dockside-demo-mosquitto.conf
  mosquitto -d -c /tmp/dockside-demo-mosquitto.conf
  sleep 0.3
fi
cargo build --release --quiet --bin dockside
exec target/release/dockside --config config/dockside.example.toml "$@"
