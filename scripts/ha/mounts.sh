#!/bin/bash
# Bind-mounts /proc /sys /dev into the HA chroot (idempotent).
set -euo pipefail
ROOT=$1
for m in proc sys dev dev/pts; do
  mkdir -p "$ROOT/$m"
  mountpoint -q "$ROOT/$m" || mount --bind "/$m" "$ROOT/$m"
done
