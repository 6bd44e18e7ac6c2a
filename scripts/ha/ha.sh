#!/bin/bash
# Runs the Home Assistant built by install.sh for one test run: its own config
# directory and HTTP port, so runs never share state. The test drives HA's REST
# API itself (onboarding, MQTT entry, states, services).
# usage: ha.sh start NAME HTTP_PORT   → prints the config dir as seen from the host
#        ha.sh stop NAME              (waits, then SIGKILL after 60 s)
#        ha.sh remove NAME            (stop + delete the config dir)
set -euo pipefail
ROOT=${DOCKSIDE_HA_ROOT:-/var/lib/dockside-ha/root-forky}
HERE=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}; name=${2:-}
[ -n "$name" ] && [[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "usage: ha.sh start|stop|remove NAME [HTTP_PORT]" >&2; exit 2; }
CFG=/opt/dockside-ha/$name          # inside the chroot
HOSTCFG=$ROOT$CFG
PIDFILE=$HOSTCFG/hass.pid

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local p; p=$(cat "$PIDFILE")
  [ -n "$p" ] && [ -r "/proc/$p/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "bin/hass -c $CFG" || return 1
  echo "$p"
}

stop() {
  local pid
  pid=$(running_pid) || return 0
  kill -TERM "$pid"
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  echo "hass $pid did not stop in 60s: SIGKILL" >&2
  kill -KILL "$pid" || true
}

case "$cmd" in
  start)
    port=${3:?HTTP port}
    [ -x "$ROOT/opt/ha-venv/bin/hass" ] || { echo "Home Assistant is not installed in $ROOT: run scripts/ha/install.sh" >&2; exit 1; }
    "$HERE/mounts.sh" "$ROOT"
    cp -f /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    mkdir -p "$HOSTCFG"
    cat >"$HOSTCFG/configuration.yaml" <<YAML
# Headless Home Assistant for dockside's discovery test (no default_config).
homeassistant:
  name: dockside-test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
  internal_url: "http://127.0.0.1:$port"
http:
  server_host: 127.0.0.1
  server_port: $port
logger:
  default: info
  logs:
    homeassistant.components.mqtt: debug
api:
config:
# The recorder, to see that no entity's attributes exceed its 16 KiB limit.
recorder:
  commit_interval: 1
YAML
    if pid=$(running_pid); then echo "already running (pid $pid)" >&2; echo "$HOSTCFG"; exit 0; fi
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
      chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TZ=UTC \
        PATH=/opt/ha-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        /opt/ha-venv/bin/hass -c "$CFG" </dev/null >>"$HOSTCFG/hass.out" 2>&1 &
    for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
    echo "$HOSTCFG"
    ;;
  stop) stop ;;
  remove) stop; rm -rf "$HOSTCFG" ;;
  *) echo "usage: ha.sh start|stop|remove NAME [HTTP_PORT]" >&2; exit 2 ;;
esac
