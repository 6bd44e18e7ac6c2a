#!/usr/bin/env python3
"""Writes dockside's multi-platform OCI image layout from prebuilt static
binaries (SPEC §15): no compiler, no daemon, byte-for-byte reproducible for
the same inputs and --created time.

Each platform is one layer, the same files as the Dockerfile's runtime stage:
the binary at /usr/local/bin/dockside, CA certificates, a non-root user
10001, /var/lib/dockside (the state volume) and /tmp. The image config
carries the entrypoint, the HEALTHCHECK (`dockside health`), the state
volume and the org.opencontainers.image.* labels.

    oci-image.py --out DIR --version V --revision R --created EPOCH \
        --certs /etc/ssl/certs/ca-certificates.crt amd64=BIN arm64=BIN arm/v7=BIN
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

SOURCE = "https://github.com/dockside-mqtt/dockside"
UID = 10001


def blob(out, data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


def layer(binary, certs, mtime):
    """The root filesystem as an uncompressed tar (sorted, owned by root
    except the state directory, fixed times)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name, data=None, mode=0o644, uid=0, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.mode = mode
            info.uid = info.gid = uid
            info.uname = info.gname = ""
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)

        d = tarfile.DIRTYPE
        for name in ["etc", "etc/dockside", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin", "var", "var/lib"]:
            add(name, mode=0o755, kind=d)
        add("etc/group", b"dockside:x:10001:\n")
        add("etc/passwd", b"dockside:x:10001:10001:dockside:/var/lib/dockside:/nonexistent\n")
        with open(certs, "rb") as f:
            add("etc/ssl/certs/ca-certificates.crt", f.read())
        add("tmp", mode=0o1777, kind=d)
        with open(binary, "rb") as f:
            add("usr/local/bin/dockside", f.read(), mode=0o755)
        add("var/lib/dockside", mode=0o700, uid=UID, kind=d)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--revision", required=True)
    p.add_argument("--created", type=int, required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("platforms", nargs="+", help="ARCH[/VARIANT]=BINARY")
    a = p.parse_args()

    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    created = datetime.datetime.fromtimestamp(a.created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "org.opencontainers.image.title": "dockside",
        "org.opencontainers.image.description": "Docker engines mirrored onto MQTT, with Home Assistant discovery",
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.revision": a.revision,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "MIT",
        "org.opencontainers.image.created": created,
    }
    manifests = []
    for spec in a.platforms:
        plat, _, binary = spec.partition("=")
        arch, _, variant = plat.partition("/")
        if not binary or not os.path.isfile(binary):
            sys.exit(f"oci-image: no binary for {plat}: {binary!r}")
        tar = layer(binary, a.certs, a.created)
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=9) as z:
            z.write(tar)
        layer_desc = blob(a.out, gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")
        config = {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": {
                "User": f"{UID}:{UID}",
                "Env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                ],
                "Entrypoint": ["/usr/local/bin/dockside"],
                "Volumes": {"/var/lib/dockside": {}},
                "StopSignal": "SIGTERM",
                "Labels": labels,
                # Docker's extension of the image config, as `docker build`
                # writes it for HEALTHCHECK (durations in nanoseconds).
                "Healthcheck": {
                    "Test": ["CMD", "/usr/local/bin/dockside", "health"],
                    "Interval": 15_000_000_000,
                    "Timeout": 5_000_000_000,
                    "StartPeriod": 20_000_000_000,
                    "Retries": 2,
                },
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
            "history": [{"created": created, "created_by": f"scripts/oci-image.py {os.path.basename(binary)}"}],
        }
        if variant:
            config["variant"] = variant
        config_desc = blob(
            a.out,
            json.dumps(config, sort_keys=True, separators=(",", ":")).encode(),
            "application/vnd.oci.image.config.v1+json",
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
            "annotations": labels,
        }
        m = blob(
            a.out,
            json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        m["platform"] = {"architecture": arch, "os": "linux"}
        if variant:
            m["platform"]["variant"] = variant
        manifests.append(m)
    # The multi-platform image is an index blob; the layout's index.json names
    # it by version (as `buildx --output type=oci` does), and tools pick the
    # platform from it.
    image_index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
        "annotations": labels,
    }
    top = blob(
        a.out,
        json.dumps(image_index, sort_keys=True, separators=(",", ":")).encode(),
        "application/vnd.oci.image.index.v1+json",
    )
    top["annotations"] = {"org.opencontainers.image.ref.name": a.version}
    layout_index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]}
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump(layout_index, f, sort_keys=True, indent=1)


if __name__ == "__main__":
    main()
