#!/usr/bin/env bash
# Builds the tests' FROM-scratch busybox image on the engine DOCKER_HOST points
# at (the host's by default), once. The classic builder: no BuildKit needed.
set -euo pipefail
if ! docker image inspect dockside-test/busybox:latest >/dev/null 2>&1; then
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  cp /bin/busybox "$ctx/busybox"
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
ENTRYPOINT []
CMD ["/bin/sleep", "3600"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t dockside-test/busybox:latest "$ctx" >/dev/null 2>"$ctx/err" || { cat "$ctx/err" >&2; exit 1; }
  echo "test-image: built dockside-test/busybox:latest on ${DOCKER_HOST:-the host engine}"
fi
