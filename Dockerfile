# dockside as a sidecar image, built from the sources: a static binary on
# scratch, CA certificates, a non-root user, HEALTHCHECK through `dockside health`.
#
#   docker build -t dockside .                     # where base images can be pulled
#   docker buildx build --platform linux/arm64,linux/arm/v7 -t dockside .   # Raspberry Pi
#
# The released image (scripts/release.sh: dist/oci/, the same files) is
# assembled from the release binaries instead, with no compiler.
ARG BUILDER=docker.io/library/rust:1-bookworm

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
# Always compiled here, for this platform, from the sources copied above
# (.dockerignore keeps target/ and dist/ out). 32-bit arm has no musl target
# in rustup: glibc, linked statically.
RUN set -eu; \
    case "$(uname -m)" in \
      x86_64) target=x86_64-unknown-linux-musl; apt-get update; apt-get install -y --no-install-recommends musl-tools ;; \
      aarch64) target=aarch64-unknown-linux-musl; apt-get update; apt-get install -y --no-install-recommends musl-tools ;; \
      armv7l | armv8l) target=armv7-unknown-linux-gnueabihf ;; \
      *) echo "no dockside build for $(uname -m)" >&2; exit 1 ;; \
    esac; \
    rustup target add "$target"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target "$target" --bin dockside; \
    cp "target/$target/release/dockside" /dockside; \
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
