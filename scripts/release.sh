#!/usr/bin/env bash
# The release (SPEC §15): from a clean checkout, with only the package
# registries reachable, builds into dist/
#   dockside-<version>-<target>{,.sha256}   static binaries: x86_64 and aarch64
#                                           musl, armv7 glibc with crt-static
#   dockside_<version>_{amd64,arm64,armhf}.deb
#   oci/                                    one OCI layout: linux/amd64, arm64, arm/v7
#   dockside_<version>_image_<arch>.tar     the host platform's image for `docker load`
#   completions/, dockside.1                from the binary's own CLI definition
#   SHA256SUMS
# It installs the Debian packages and rustup targets it needs; anything still
# missing stops it with a message naming it, and dist/ is only replaced once
# everything is built. Usage: scripts/release.sh [--profile NAME] (default
# release; CI may pass a lighter one for the arm targets: --arm-profile NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

profile=release
arm_profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --arm-profile) arm_profile=$2; shift 2 ;;
    *) echo "release: unknown argument $1" >&2; exit 2 ;;
  esac
done

die() { echo "release: $*" >&2; exit 1; }
t_start=$(date +%s)

# ---- tools
declare -A pkg_of=(
  [musl-gcc]=musl-tools
  [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
  [arm-linux-gnueabihf-gcc]=gcc-arm-linux-gnueabihf
  [dpkg-deb]=dpkg
  [skopeo]=skopeo
  [lintian]=lintian
  [python3]=python3
  [gzip]=gzip
  [sha256sum]=coreutils
  [git]=git
)
missing=()
for tool in "${!pkg_of[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${pkg_of[$tool]}")
done
[ -f /usr/arm-linux-gnueabihf/lib/libc.a ] || missing+=(libc6-dev-armhf-cross)
[ -f /usr/aarch64-linux-gnu/lib/libc.so ] || missing+=(libc6-dev-arm64-cross)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  echo "release: installing ${missing[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; } ||
    die "cannot install ${missing[*]} (Debian packages)"
fi
for tool in "${!pkg_of[@]}"; do
  command -v "$tool" >/dev/null || die "missing tool: $tool (Debian package ${pkg_of[$tool]})"
done
[ -f /usr/arm-linux-gnueabihf/lib/libc.a ] || die "missing the armhf C library (Debian package libc6-dev-armhf-cross)"

targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t" >/dev/null 2>&1 || die "missing Rust target: $t (rustup target add $t)"
done

version=$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="dockside"))')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# Reproducible timestamps: the commit's time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export DOCKSIDE_GIT_COMMIT=$commit

out=$(mktemp -d "$root/.dist.XXXXXX")
trap 'rm -rf "$out"' EXIT

# ---- binaries
build() { # target profile
  local t=$1 p=$2 cc linker
  case "$t" in
    x86_64-unknown-linux-musl) cc=musl-gcc; linker="" ;;
    aarch64-unknown-linux-musl) cc=aarch64-linux-gnu-gcc; linker=aarch64-linux-gnu-gcc ;;
    # No 32-bit musl target here: Debian 12's armhf glibc, linked statically.
    armv7-unknown-linux-gnueabihf) cc=arm-linux-gnueabihf-gcc; linker=arm-linux-gnueabihf-gcc ;;
  esac
  local T=${t//-/_}
  local TU=${T^^}
  local t0=$(date +%s)
  env "CC_$T=$cc" ${linker:+"CARGO_TARGET_${TU}_LINKER=$linker"} \
    "CARGO_TARGET_${TU}_RUSTFLAGS=-C target-feature=+crt-static" \
    cargo build --locked --quiet --profile "$p" --target "$t" --bin dockside ||
    die "the build for $t failed"
  local dir=$p; [ "$p" = dev ] && dir=debug
  local bin="${CARGO_TARGET_DIR:-target}/$t/$dir/dockside"
  file -b "$bin" 2>/dev/null | grep -q "statically linked\|static-pie linked" ||
    { command -v file >/dev/null && die "$bin is not static: $(file -b "$bin")"; }
  cp "$bin" "$out/dockside-$version-$t"
  (cd "$out" && sha256sum "dockside-$version-$t" >"dockside-$version-$t.sha256")
  echo "release: $t ($p) in $(( $(date +%s) - t0 )) s, $(stat -c %s "$bin") bytes"
}
command -v file >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends file >/dev/null 2>&1 || true
build x86_64-unknown-linux-musl "$profile"
build aarch64-unknown-linux-musl "$arm_profile"
build armv7-unknown-linux-gnueabihf "$arm_profile"

host_bin="$out/dockside-$version-x86_64-unknown-linux-musl"
got=$("$host_bin" --version)
[ "$got" = "dockside $version ($commit, x86_64-unknown-linux-musl)" ] || die "unexpected --version: $got"

# ---- completions and man page, from the CLI definition
mkdir -p "$out/completions"
"$host_bin" completions bash >"$out/completions/dockside.bash"
"$host_bin" completions zsh >"$out/completions/_dockside"
"$host_bin" completions fish >"$out/completions/dockside.fish"
"$host_bin" manpage >"$out/dockside.1"

# ---- Debian packages
deb() { # debian-arch target
  local arch=$1 t=$2
  local st="$out/stage-$arch"
  install -d "$st/DEBIAN" "$st/usr/bin" "$st/etc/dockside" \
    "$st/usr/lib/systemd/system/dockside.service.d" "$st/usr/share/doc/dockside" \
    "$st/usr/share/man/man1" "$st/usr/share/bash-completion/completions" \
    "$st/usr/share/zsh/vendor-completions" "$st/usr/share/fish/vendor_completions.d" \
    "$st/usr/share/lintian/overrides"
  install -m 0755 "$out/dockside-$version-$t" "$st/usr/bin/dockside"
  install -m 0644 systemd/dockside.service "$st/usr/lib/systemd/system/dockside.service"
  install -m 0644 packaging/deb/dockside.service.d-package.conf \
    "$st/usr/lib/systemd/system/dockside.service.d/package.conf"
  # 0640: the postinst gives it group dockside (the user does not exist yet).
  install -m 0640 packaging/deb/dockside.toml "$st/etc/dockside/dockside.toml"
  install -m 0644 packaging/deb/copyright "$st/usr/share/doc/dockside/copyright"
  install -m 0644 config/dockside.example.toml "$st/usr/share/doc/dockside/dockside.example.toml"
  printf 'dockside (%s) unstable; urgency=medium\n\n  * Release %s (%s).\n\n -- dockside maintainers <dockside@users.noreply.github.com>  %s\n' \
    "$version" "$version" "$commit" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" |
    gzip -9n >"$st/usr/share/doc/dockside/changelog.gz"
  gzip -9n <"$out/dockside.1" >"$st/usr/share/man/man1/dockside.1.gz"
  install -m 0644 "$out/completions/dockside.bash" "$st/usr/share/bash-completion/completions/dockside"
  install -m 0644 "$out/completions/_dockside" "$st/usr/share/zsh/vendor-completions/_dockside"
  install -m 0644 "$out/completions/dockside.fish" "$st/usr/share/fish/vendor_completions.d/dockside.fish"
  install -m 0644 packaging/deb/lintian-overrides "$st/usr/share/lintian/overrides/dockside"
  install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$st/DEBIAN/"
  echo /etc/dockside/dockside.toml >"$st/DEBIAN/conffiles"
  local size
  size=$(du -sk --exclude=DEBIAN "$st" | cut -f1)
  cat >"$st/DEBIAN/control" <<CONTROL
Package: dockside
Version: $version
Architecture: $arch
Maintainer: dockside maintainers <dockside@users.noreply.github.com>
Installed-Size: $size
Depends: adduser
Recommends: docker.io | docker-ce
Section: admin
Priority: optional
Homepage: https://github.com/dockside-mqtt/dockside
Description: Docker engines mirrored onto MQTT, with Home Assistant discovery
 dockside watches Docker engines (directly or through Portainer) and mirrors
 them onto MQTT: container state, health, image updates and every Docker
 event go out; start, stop, restart and update commands come in. Home
 Assistant picks it up through MQTT discovery, Jeedom through plain topics.
 As installed it runs its own MQTT broker on 127.0.0.1:1883.
CONTROL
  find "$st" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  dpkg-deb --root-owner-group -Zxz --build "$st" "$out/dockside_${version}_${arch}.deb" >/dev/null ||
    die "dpkg-deb failed for $arch"
  rm -rf "$st"
  # Every error or warning fails the release, except what the overrides explain.
  local tags
  tags=$(lintian --tag-display-limit 0 "$out/dockside_${version}_${arch}.deb" 2>&1 | grep -E '^[EW]: ' || true)
  [ -z "$tags" ] || die "lintian on the $arch package:"$'\n'"$tags"
}
deb amd64 x86_64-unknown-linux-musl
deb arm64 aarch64-unknown-linux-musl
deb armhf armv7-unknown-linux-gnueabihf

# ---- the OCI image, from the binaries above
python3 scripts/oci-image.py --out "$out/oci" --version "$version" --revision "$commit" \
  --created "$SOURCE_DATE_EPOCH" --certs /etc/ssl/certs/ca-certificates.crt \
  amd64="$out/dockside-$version-x86_64-unknown-linux-musl" \
  arm64="$out/dockside-$version-aarch64-unknown-linux-musl" \
  arm/v7="$out/dockside-$version-armv7-unknown-linux-gnueabihf" ||
  die "cannot write the OCI layout"
host_arch=$(dpkg --print-architecture)
case "$host_arch" in
  amd64 | arm64) oci_arch=$host_arch; variant=() ;;
  armhf) oci_arch=arm; variant=(--override-variant v7) ;;
  *) die "no image for this host's platform ($host_arch)" ;;
esac
skopeo --override-os linux --override-arch "$oci_arch" "${variant[@]}" copy --quiet \
  "oci:$out/oci:$version" "docker-archive:$out/dockside_${version}_image_${host_arch}.tar:dockside:$version" ||
  die "skopeo could not write the docker archive"

(cd "$out" && find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name '*.sha256' -printf '%P\n' |
  sort | xargs sha256sum >SHA256SUMS)

rm -rf dist
mv "$out" dist
trap - EXIT
chmod 0755 dist
echo "release: dockside $version ($commit) in dist/ in $(( $(date +%s) - t_start )) s"
ls -l dist
