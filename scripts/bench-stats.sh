#!/usr/bin/env bash
# Stats benchmark (SPEC §13, issue: 100 containers sampled every 30 s):
# CPU time of dockside and of the engine (dockerd + containerd) over the same
# window with [stats] off, then on. Prints one line per run and the deltas.
#
#   scripts/bench-stats.sh [containers=100] [seconds=180] [interval=30s, in s]
#
# Against a newer engine: eval "$(scripts/engine.sh env sid-cd)" first (its
# dockerd and containerd are then the ones measured).
#
# Uses the embedded broker on a port of its own, its own containers
# (dsbench-stats-*), removed at the end; stops only the dockside it started.
set -euo pipefail
n=${1:-100}
secs=${2:-180}
interval=${3:-30s}
cd "$(dirname "$0")/.."
bin=target/release/dockside
cargo build --release --quiet --bin dockside
scripts/test-image.sh >/dev/null
image=dockside-test/busybox:latest
work=$(mktemp -d /tmp/dockside-bench-stats.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  docker ps -aq --filter name=dsbench-stats- | xargs -r docker rm -f >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
docker ps -aq --filter name=dsbench-stats- | xargs -r docker rm -f >/dev/null
for i in $(seq 1 "$n"); do
  docker run -d --name "dsbench-stats-$i" "$image" sh -c 'trap "exit 0" TERM; while true; do sleep 5; done' >/dev/null
done

# CPU ticks (utime + stime) of a pid.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# dockerd and its containerd (stats go through containerd's metrics).
if [ -n "${DOCKSIDE_TEST_ENGINE:-}" ]; then
  run_dir=/var/lib/dockside-engines/run-$DOCKSIDE_TEST_ENGINE
  engine_pids() { cat "$run_dir/dockerd.pid" "$run_dir/containerd.pid"; }
else
  engine_pids() { local d; d=$(cat /var/run/docker.pid); { echo "$d"; pgrep -P "$d" -x containerd || true; } | sort -u; }
fi
engine_ticks() { local t=0; for p in $(engine_pids); do t=$((t + $(ticks "$p"))); done; echo $t; }

run() { # $1 = true|false
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/cfg.toml" <<CFG
[mqtt]
embedded = true
embedded_listen = "127.0.0.1:$port"
base_topic = "dsbench"
[homeassistant]
enabled = true
[state]
dir = "$work/state-$1"
[containers]
include = ["dsbench-stats-*"]
[stats]
enabled = $1
interval = "$interval"
[log]
level = "warn"
CFG
  "$bin" --config "$work/cfg.toml" >"$work/log-$1" 2>&1 &
  pid=$!
  # Start-up, first sync and the first round of calls (each container's
  # first call lets the engine take two samples) are not part of the window:
  # the window is the steady state a long-running dockside is in.
  sleep $((10 + ${interval%s}))
  local d0 e0 d1 e1
  d0=$(ticks "$pid"); e0=$(engine_ticks)
  sleep "$secs"
  d1=$(ticks "$pid"); e1=$(engine_ticks)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 - "$1" "$d0" "$d1" "$e0" "$e1" "$hz" "$secs" <<'PY'
import sys
on, d0, d1, e0, e1, hz, secs = sys.argv[1], *map(int, sys.argv[2:])
d = (d1 - d0) / hz / secs * 100
e = (e1 - e0) / hz / secs * 100
print(f"stats={on:5} dockside {d:5.2f} % of a core   engine (dockerd+containerd) {e:5.2f} % of a core")
open("/tmp/dockside-bench-stats-" + on, "w").write(f"{d} {e}\n")
PY
}
echo "$n containers, interval $interval, window ${secs}s, $(nproc) cores, $(docker version -f '{{.Server.Version}}')"
run false
run true
read -r doff eoff </tmp/dockside-bench-stats-false
read -r don eon </tmp/dockside-bench-stats-true
python3 -c "print(f'stats on: dockside {float($don):.2f} % of a core (target <= 1), engine extra {float($eon)-float($eoff):+.2f} % (target <= 2)')"
