# dockside as a sidecar image: a static binary on scratch, CA certificates,
# a non-root user, HEALTHCHECK through `dockside health`.
#
#   docker build -t dockside .                     # where base images can be pulled
#   scripts/build-image.sh                         # here: no pulls (see the script)
#   docker buildx build --platform linux/arm64 -t dockside:arm64 .   # Raspberry Pi
ARG BUILDER=docker.io/library/rust:1-bookworm

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
# A binary built beforehand for this platform (scripts/build-image.sh puts
# one in target/docker-prebuilt/) is used as is; otherwise build it here.
RUN set -eu; \
    if [ -x target/docker-prebuilt/dockside ]; then \
      cp target/docker-prebuilt/dockside /dockside; \
    else \
      apt-get update && apt-get install -y --no-install-recommends musl-tools; \
      target="$(uname -m)-unknown-linux-musl"; \
      rustup target add "$target"; \
      cargo build --release --locked --target "$target" --bin dockside; \
      cp "target/$target/release/dockside" /dockside; \
    fi; \
    mkdir -p /out/etc/ssl/certs /out/etc/dockside /out/var/lib/dockside /out/tmp; \
    cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt; \
    echo 'dockside:x:10001:10001:dockside:/var/lib/dockside:/nonexistent' > /out/etc/passwd; \
    echo 'dockside:x:10001:' > /out/etc/group; \
    chown 10001:10001 /out/var/lib/dockside; \
    chmod 1777 /out/tmp

FROM scratch
COPY --from=build /out/ /
COPY --from=build /dockside /usr/local/bin/dockside
# Config: /etc/dockside/dockside.toml when mounted, else the environment
# (DOCKSIDE__SECTION__KEY). State: the volume below.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
VOLUME ["/var/lib/dockside"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=2 \
  CMD ["/usr/local/bin/dockside", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dockside"]
