#!/usr/bin/env bash
# The sidecar image the tests run (tests/sidecar.rs), tagged dockside:local:
# the release's own image for this host's platform (scripts/release.sh writes
# dist/dockside_<version>_image_<arch>.tar, assembled from the release
# binaries of the current source), loaded into the engine under test. Nothing
# is pulled or compiled here; without the release it fails and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
archive="dist/dockside_${version}_image_${arch}.tar"
[ -f "$archive" ] || { echo "build-image: $archive is missing: run scripts/release.sh first" >&2; exit 1; }
docker load -q -i "$archive" >/dev/null
docker tag "dockside:$version" dockside:local
size=$(docker image inspect -f '{{.Size}}' dockside:local)
echo "build-image: dockside:local = dockside:$version ($(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' dockside:local)), $((size / 1024 / 1024)) MiB"
