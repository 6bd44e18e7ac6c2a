#!/bin/bash
# Builds a headless Home Assistant for the discovery end-to-end test: a Debian
# forky chroot (every HA release after 2026.2.3 needs Python >= 3.14.2, which
# only forky/sid have; the host stays bookworm and its apt sources untouched)
# with HA in a venv. Idempotent: a second run only checks. Root needed.
# usage: scripts/ha/install.sh          env: DOCKSIDE_HA_ROOT, DOCKSIDE_HA_VERSION
set -euo pipefail
ROOT=${DOCKSIDE_HA_ROOT:-/var/lib/dockside-ha/root-forky}
VERSION=${DOCKSIDE_HA_VERSION:-2026.11.0}
# The Debian mirror the host already uses (its apt sources), else deb.debian.org.
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^https?:/){print $i; exit}}' /etc/apt/sources.list 2>/dev/null)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CHENV=(/usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
       SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
t0=$(date +%s)

if [ -x "$ROOT/opt/ha-venv/bin/hass" ] && [ -f "$ROOT/opt/ha-venv/.dockside-ha-$VERSION" ]; then
  echo "Home Assistant $VERSION already installed in $ROOT"
  exit 0
fi

command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  mkdir -p "$ROOT"
  debootstrap --variant=minbase \
    --include=ca-certificates,python3,python3-venv,python3-dev,build-essential,libffi-dev,libssl-dev,zlib1g-dev,libjpeg-dev,libturbojpeg0,procps \
    forky "$ROOT" "$MIRROR" /usr/share/debootstrap/scripts/sid
fi
cp -f /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp -f /etc/hosts "$ROOT/etc/hosts"
# The host may trust extra CAs (e.g. a package-registry proxy): so does the chroot.
cp -f /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
"$(dirname "$0")/mounts.sh" "$ROOT"
chroot "$ROOT" "${CHENV[@]}" update-ca-certificates >/dev/null
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/etc/pip.conf"
chroot "$ROOT" "${CHENV[@]}" apt-get clean

[ -x "$ROOT/opt/ha-venv/bin/python" ] || chroot "$ROOT" "${CHENV[@]}" python3 -m venv /opt/ha-venv
chroot "$ROOT" "${CHENV[@]}" /opt/ha-venv/bin/pip install -q --upgrade pip wheel uv
chroot "$ROOT" "${CHENV[@]}" /opt/ha-venv/bin/uv pip install -q --python /opt/ha-venv/bin/python "homeassistant==$VERSION"
# Requirements of mqtt and of what HA always sets up, installed now (else HA
# pip-installs them at its first start, slowly and outside our control).
chroot "$ROOT" "${CHENV[@]}" bash -c '
  set -euo pipefail
  HA=$(/opt/ha-venv/bin/python -c "import homeassistant,os;print(os.path.dirname(homeassistant.__file__))")
  reqs=$(/opt/ha-venv/bin/python - "$HA" <<PY
import json, os, sys
base = os.path.join(sys.argv[1], "components")
out = set()
for d in ["mqtt", "frontend", "recorder", "backup", "hardware", "isal", "zeroconf", "network",
          "analytics", "image_upload", "hassio", "http", "onboarding", "auth", "config", "api"]:
    p = os.path.join(base, d, "manifest.json")
    if os.path.exists(p):
        out.update(json.load(open(p)).get("requirements", []))
print(" ".join(sorted(out)))
PY
)
  /opt/ha-venv/bin/uv pip install -q --python /opt/ha-venv/bin/python -c "$HA/package_constraints.txt" $reqs'
touch "$ROOT/opt/ha-venv/.dockside-ha-$VERSION"
echo "installed Home Assistant $VERSION in $ROOT in $(( $(date +%s) - t0 ))s ($(du -shx "$ROOT" | cut -f1))"
