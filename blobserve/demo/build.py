"""Rebuild the bundled demo image layout from site/: `python -m blobserve.demo.build`.

The output is byte-for-byte reproducible (fixed mtimes, owners and gzip header), so
the committed layout only changes when the site does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SITE = os.path.join(HERE, "site")
LAYOUT = os.path.join(HERE, "layout")
MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z
TAG = "latest"


def _layer_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, files in os.walk(SITE):
            dirs.sort()
            relative = os.path.relpath(folder, SITE)
            if relative != ".":
                tar.addfile(_info(relative, tarfile.DIRTYPE, 0o755, 0))
            for name in sorted(files):
                with open(os.path.join(folder, name), "rb") as handle:
                    data = handle.read()
                path = os.path.normpath(os.path.join(relative, name))
                tar.addfile(
                    _info(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data)
                )
    return buffer.getvalue()


def _info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    info.uname = info.gname = "root"
    return info


def _write_blob(data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(LAYOUT, "blobs", "sha256", digest), "wb") as handle:
        handle.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build() -> str:
    """Write the layout and return the manifest digest."""
    shutil.rmtree(LAYOUT, ignore_errors=True)
    os.makedirs(os.path.join(LAYOUT, "blobs", "sha256"))

    tar = _layer_tar()
    layer = _write_blob(gzip.compress(tar, mtime=0))
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"WorkingDir": "/www"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_blob = _write_blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **config_blob,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}
        ],
    }
    manifest_blob = _write_blob(json.dumps(manifest, sort_keys=True).encode())

    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                **manifest_blob,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }
        ],
    }
    with open(os.path.join(LAYOUT, "index.json"), "w") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
    with open(os.path.join(LAYOUT, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    return str(manifest_blob["digest"])


if __name__ == "__main__":
    print(build())
