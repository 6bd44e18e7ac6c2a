#!/usr/bin/env bash
# Installs and starts what the integration tests need, idempotently, on loopback:
# Docker engine, Mosquitto (binaries only: each test starts its own broker on a
# free port), the distribution registry, the scratch busybox test image, and a
# headless Home Assistant (scripts/ha/install.sh, once: about 80 s and 1.5 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v docker-registry >/dev/null || need+=(docker-registry)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)
command -v haproxy >/dev/null || need+=(haproxy)
command -v musl-gcc >/dev/null || need+=(musl-tools)
# The arm release binaries run under emulation (tests/foreign_arch.rs); the
# release's checks read binaries and packages.
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v file >/dev/null || need+=(file)
command -v dpkg-deb >/dev/null || need+=(dpkg)
# The panel's browser tests (tests/panel.rs): headless Chromium through ChromeDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-env: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# cargo-deny for the dependency gate (scripts/test.sh), built once from crates.io
# into a cache outside the clone (about 2.5 min), pinned so the gate does not move.
deny_root=/var/cache/dockside-tools
if ! "$deny_root/bin/cargo-deny" --version 2>/dev/null | grep -qx 'cargo-deny 0.20.2'; then
  echo "test-env: building cargo-deny 0.20.2"
  CARGO_TARGET_DIR="$deny_root/target" cargo install --quiet --locked --force \
    --root "$deny_root" --version 0.20.2 cargo-deny
fi

"$here/dockerd.sh" start

"$here/test-image.sh"
# Home Assistant for the discovery end-to-end test (tests/homeassistant.rs).
"$here/systemd-image.sh"
"$here/ha/install.sh"
echo "test-env: ready (docker $(docker version -f '{{.Server.Version}}' 2>/dev/null), $(mosquitto -h 2>/dev/null | head -1))"
