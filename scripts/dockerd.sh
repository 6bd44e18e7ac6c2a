#!/usr/bin/env bash
# start | stop | restart the local Docker engine (no systemd here), or, when
# DOCKSIDE_TEST_ENGINE names one (scripts/engine.sh env), that newer engine.
set -euo pipefail
if [ -n "${DOCKSIDE_TEST_ENGINE:-}" ]; then
  exec "$(dirname "$0")/engine.sh" "${1:-}" "$DOCKSIDE_TEST_ENGINE"
fi
log=/var/log/dockside-test-dockerd.log

ready() { docker version -f '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  ready && return 0
  if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    :
  else
    rm -f /var/run/docker.pid
    nohup dockerd --host unix:///var/run/docker.sock >>"$log" 2>&1 &
  fi
  for _ in $(seq 1 150); do ready && return 0; sleep 0.2; done
  echo "dockerd.sh: dockerd did not come up; see $log" >&2
  tail -20 "$log" >&2 || true
  exit 1
}

stop() {
  [ -f /var/run/docker.pid ] || return 0
  pid=$(cat /var/run/docker.pid)
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "dockerd.sh: dockerd did not stop" >&2
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|restart" >&2; exit 2 ;;
esac
