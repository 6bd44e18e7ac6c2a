#!/usr/bin/env bash
# Builds, once, a Debian 12 root with systemd (debootstrap) and imports it
# into the local engine as dockside-test/systemd:bookworm-2: a real systemd as
# PID 1 for tests/systemd_pid1.rs and tests/package.rs (adduser, which the
# Debian package depends on, included). Idempotent; the root is cached in
# /var/lib/dockside-systemd. Touches nothing else of the host.
set -euo pipefail
image=dockside-test/systemd:bookworm-2
root=/var/lib/dockside-systemd/root-2
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
if [ ! -x "$root/lib/systemd/systemd" ]; then
  echo "systemd-image: debootstrap (about a minute)"
  rm -rf "$root.tmp"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,ca-certificates,adduser \
    bookworm "$root.tmp" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"
  mv "$root.tmp" "$root"
fi
# Units that would touch the shared kernel, or are noise in a container.
for u in systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.mount \
  proc-sys-fs-binfmt_misc.automount systemd-modules-load.service sys-kernel-config.mount \
  sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount dev-hugepages.mount \
  systemd-pstore.service fstrim.timer e2scrub_all.timer e2scrub_reap.service apt-daily.timer \
  apt-daily-upgrade.timer systemd-remount-fs.service getty@tty1.service console-getty.service \
  systemd-logind.service systemd-timesyncd.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
echo "systemd-image: importing $image"
tar -C "$root" -c . | docker import - "$image" >/dev/null
