#!/usr/bin/env bash
# A newer Docker engine beside the host's 20.10, for the engine matrix:
#   sid-cd      Docker 28.5 (sid), containerd image store, DOCKER_MIN_API_VERSION=1.44
#   sid-legacy  Docker 28.5 (sid), legacy (graphdriver) image store, API floor 1.44
#   trixie-cd   Docker 26.1 (trixie), containerd image store, API floor 1.44
#
# usage: scripts/engine.sh setup SUITE     fetch sid|trixie packages (idempotent)
#        scripts/engine.sh start NAME      start containerd + dockerd for NAME (idempotent)
#        scripts/engine.sh stop NAME       stop them by the PIDs recorded at start
#        scripts/engine.sh restart NAME    stop + start (the dockerd-restart fault test)
#        scripts/engine.sh env NAME        prints the exports that point tests at NAME
#
# Nothing of the host changes: packages come from a private apt configuration
# (apt-get download + dpkg -x, never the host's sources or dpkg database); every
# path is under $ROOT; the daemons run in the host's network namespace (so the
# tests' loopback broker and registry are reachable) on a bridge of their own,
# created here, with iptables, forwarding and masquerading off. Never
# `--bridge=none` here: in the host namespace it deletes the host's docker0.
set -euo pipefail
ROOT=${DOCKSIDE_ENGINES:-/var/lib/dockside-engines}
HERE=$(cd "$(dirname "$0")" && pwd)

mirror() {
  local m
  m=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  [ -n "$m" ] || m=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^https?:/){print $i; exit}}' /etc/apt/sources.list 2>/dev/null)
  echo "${m:-http://deb.debian.org/debian}"
}

setup() {
  local suite=$1 d=$ROOT/$1
  case "$suite" in sid|trixie) ;; *) echo "engine.sh: unknown suite $suite" >&2; exit 2 ;; esac
  if [ -x "$d/pkgs/usr/sbin/dockerd" ] && [ -x "$d/bin/runc" ] && "$d/bin/runc" --version >/dev/null 2>&1; then
    echo "engine.sh: $suite engine already fetched: $("$d/pkgs/usr/sbin/dockerd" --version)"
    return 0
  fi
  command -v dpkg-deb >/dev/null || { echo "engine.sh: dpkg-deb missing" >&2; exit 1; }
  local a=$d/apt
  rm -rf "$d/pkgs" "$d/pkgs-libc" "$d/tools" "$d/debs"
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$d/debs" "$d/bin"
  cat >"$a/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(mirror) $suite main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(mirror) bookworm main
EOF
  cat >"$a/apt.conf" <<EOF
Dir::Etc::SourceList "$a/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Parts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
Dir::State::Lists "$a/lists";
Dir::State::status "/dev/null";
Dir::Cache "$a/cache";
Acquire::Languages "none";
Acquire::Check-Valid-Until "false";
APT::Sandbox::User "root";
EOF
  export APT_CONFIG=$a/apt.conf
  apt-get -q -q update
  cd "$d/debs"
  local tini=tini-static
  apt-cache show "tini-static/$suite" >/dev/null 2>&1 || tini=tini
  # runc of both suites needs glibc >= 2.38 (bookworm has 2.36): it runs with the
  # suite's own libc6 + libseccomp2, pointed at by patchelf.
  apt-get -q -q download "docker.io/$suite" "docker-cli/$suite" "containerd/$suite" "$tini/$suite" \
    "runc/$suite" "libc6/$suite" "libseccomp2/$suite" patchelf/bookworm
  for f in docker.io_*.deb docker-cli_*.deb containerd_*.deb tini*.deb runc_*.deb; do dpkg -x "$f" "$d/pkgs"; done
  for f in libc6_*.deb libseccomp2_*.deb; do dpkg -x "$f" "$d/pkgs-libc"; done
  dpkg -x patchelf_*.deb "$d/tools"
  local l=$d/pkgs-libc/usr/lib/x86_64-linux-gnu
  "$d/tools/usr/bin/patchelf" --set-interpreter "$l/ld-linux-x86-64.so.2" --set-rpath "$l" "$d/pkgs/usr/sbin/runc"
  ln -sf "$d/pkgs/usr/sbin/runc" "$d/bin/runc"
  ln -sf "$d/pkgs/usr/bin/tini-static" "$d/bin/docker-init"
  rm -rf "$d/pkgs/usr/share" "$d/pkgs/etc" "$d/pkgs/lib" "$d/pkgs/usr/lib/cni" "$a/lists" "$a/cache" "$d/debs"
  "$d/pkgs/usr/sbin/dockerd" --version
  "$d/bin/runc" --version | head -1
}

# NAME → suite, image store, bridge name and subnet
describe() {
  case "$1" in
    sid-cd) SUITE=sid SNAP=true BR=dsk-sidcd NET=10.213.1 ;;
    sid-legacy) SUITE=sid SNAP=false BR=dsk-sidleg NET=10.213.2 ;;
    trixie-cd) SUITE=trixie SNAP=true BR=dsk-trixcd NET=10.213.3 ;;
    *) echo "engine.sh: unknown engine $1 (sid-cd, sid-legacy, trixie-cd)" >&2; exit 2 ;;
  esac
  D=$ROOT/$SUITE
  R=$ROOT/run-$1
}

env_of() {
  describe "$1"
  echo "export PATH=$D/bin:$D/pkgs/usr/bin:$D/pkgs/usr/sbin:\$PATH"
  echo "export DOCKER_HOST=unix://$R/docker.sock"
  echo "export DOCKER_CONFIG=$R/cli"
  echo "export DOCKSIDE_TEST_ENGINE=$1"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ping_engine() { curl -sf --max-time 2 --unix-socket "$R/docker.sock" http://x/_ping >/dev/null 2>&1; }

start() {
  describe "$1"
  [ -x "$D/pkgs/usr/sbin/dockerd" ] || setup "$SUITE"
  if alive "$R/dockerd.pid" && ping_engine; then echo "engine.sh: $1 already running"; return 0; fi
  mkdir -p "$R"/{containerd-root,containerd-state,data,exec,log,cli}
  export PATH=$D/bin:$D/pkgs/usr/bin:$D/pkgs/usr/sbin:/usr/sbin:/usr/bin:/sbin:/bin
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
  fi
  ip link set "$BR" up
  if ! alive "$R/containerd.pid"; then
    local cv=3
    "$D/pkgs/usr/bin/containerd" --version | grep -q ' v\?1\.[0-9]' && cv=2
    cat >"$R/containerd.toml" <<EOF
version = $cv
root = '$R/containerd-root'
state = '$R/containerd-state'
disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.runtime', 'io.containerd.cri.v1.images', 'io.containerd.nri.v1.nri', 'io.containerd.internal.v1.opt']
[grpc]
  address = '$R/containerd.sock'
EOF
    rm -f "$R/containerd.sock" "$R/containerd.sock.ttrpc"
    nohup "$D/pkgs/usr/bin/containerd" --config "$R/containerd.toml" >>"$R/log/containerd.log" 2>&1 &
    echo $! >"$R/containerd.pid"
    for _ in $(seq 100); do [ -S "$R/containerd.sock" ] && break; sleep 0.1; done
    [ -S "$R/containerd.sock" ] || { echo "engine.sh: containerd did not start" >&2; tail "$R/log/containerd.log" >&2; exit 1; }
  fi
  echo "{ \"features\": { \"containerd-snapshotter\": $SNAP } }" >"$R/daemon.json"
  rm -f "$R/docker.pid"
  DOCKER_MIN_API_VERSION=1.44 nohup "$D/pkgs/usr/sbin/dockerd" --config-file "$R/daemon.json" \
    -H "unix://$R/docker.sock" --data-root "$R/data" --exec-root "$R/exec" --pidfile "$R/docker.pid" \
    --containerd "$R/containerd.sock" --bridge "$BR" --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false --userland-proxy=false --cgroup-parent "/dockside-$1" \
    >>"$R/log/dockerd.log" 2>&1 &
  echo $! >"$R/dockerd.pid"
  for _ in $(seq 150); do ping_engine && break; sleep 0.2; done
  ping_engine || { echo "engine.sh: dockerd $1 did not start" >&2; tail -20 "$R/log/dockerd.log" >&2; exit 1; }
  # The test image, built on this engine with the classic builder.
  DOCKER_HOST=unix://$R/docker.sock DOCKER_CONFIG=$R/cli "$HERE/test-image.sh"
  curl -s --unix-socket "$R/docker.sock" http://x/version |
    python3 -c 'import json,sys; v=json.load(sys.stdin); print("engine.sh: %s up: Docker %s, API %s (min %s)" % (sys.argv[1], v["Version"], v["ApiVersion"], v["MinAPIVersion"]))' "$1"
}

stop_pid() {
  local f=$1 p
  alive "$f" || { rm -f "$f"; return 0; }
  p=$(cat "$f")
  kill -TERM "$p"
  for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p"
  rm -f "$f"
}

# Only dockerd: containerd keeps running, as on a host where the docker service restarts.
stop_dockerd() { describe "$1"; stop_pid "$R/dockerd.pid"; }

stop() {
  describe "$1"
  stop_pid "$R/dockerd.pid"
  stop_pid "$R/containerd.pid"
  rm -f "$R/docker.sock" "$R/containerd.sock" "$R/containerd.sock.ttrpc"
  awk -v d="$R/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount "$m" || true; done
  ip link show "$BR" >/dev/null 2>&1 && ip link del "$BR"
  return 0
}

case "${1:-}" in
  setup) setup "${2:?suite}" ;;
  start) start "${2:?engine}" ;;
  stop) stop "${2:?engine}" ;;
  restart) stop_dockerd "${2:?engine}"; start "$2" ;;
  env) env_of "${2:?engine}" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
