"""Build OCI image layouts on disk from small in-memory specs, for tests.

A layer is the pair ``(media_type, data)``. ``build_layer`` makes one from a mapping of
paths to entries; any other pair, however malformed, is accepted too, so hostile
layers are written the same way as well-formed ones. ``build_layout`` turns images and
multi-platform indexes into an OCI image layout that skopeo can push.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REF_NAME = "org.opencontainers.image.ref.name"
COMPRESSIONS = {"tar": OCI_LAYER_TAR, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}
DEFAULT_MTIME = 1_700_000_000


@dataclass(frozen=True)
class File:
    """A regular file; ``data`` given as text is encoded as UTF-8."""

    data: bytes | str = b""
    mode: int = 0o644
    mtime: int = DEFAULT_MTIME


@dataclass(frozen=True)
class Dir:
    """A directory entry."""

    mode: int = 0o755
    mtime: int = DEFAULT_MTIME


@dataclass(frozen=True)
class Symlink:
    """A symbolic link; the target is stored exactly as given."""

    target: str


@dataclass(frozen=True)
class Hardlink:
    """A hard link to an entry stored earlier in the same layer."""

    target: str


@dataclass(frozen=True)
class Whiteout:
    """Deletes the path it is keyed by, as the entry ``<dir>/.wh.<name>``."""


@dataclass(frozen=True)
class Opaque:
    """Hides what lower layers hold under the directory it is keyed by."""


@dataclass(frozen=True)
class Device:
    """A character device, block device or fifo, for hostile layers."""

    kind: str = "fifo"
    major: int = 0
    minor: int = 0


Entry = Union[File, Dir, Symlink, Hardlink, Whiteout, Opaque, Device]
Spec = Mapping[str, Union[bytes, str, Entry]]
LayerPair = tuple[str, bytes]

_DEVICE_TYPES = {
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def sha256_digest(data: bytes) -> str:
    """Return the ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_info(path: str, entry: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    """Describe one spec entry as a tar header and, for files, its content."""
    if isinstance(entry, Whiteout):
        head, base = os.path.split(path.rstrip("/"))
        path, entry = os.path.join(head, ".wh." + base), File()
    elif isinstance(entry, Opaque):
        path, entry = os.path.join(path.rstrip("/"), ".wh..wh..opq"), File()

    info = tarfile.TarInfo(path)
    info.mtime = DEFAULT_MTIME
    info.uname = info.gname = "root"
    content = None
    if isinstance(entry, File):
        content = entry.data.encode() if isinstance(entry.data, str) else entry.data
        info.size, info.mode, info.mtime = len(content), entry.mode, entry.mtime
    elif isinstance(entry, Dir):
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, entry.mode, entry.mtime
    elif isinstance(entry, Symlink):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
    elif isinstance(entry, Hardlink):
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, entry.target, 0o644
    elif isinstance(entry, Device):
        info.type, info.mode = _DEVICE_TYPES[entry.kind], 0o644
        info.devmajor, info.devminor = entry.major, entry.minor
    return info, content


def build_tar(spec: Spec) -> bytes:
    """Return an uncompressed tar holding the spec's entries in the spec's order.

    Names are written unchanged, so ``../x`` or ``/etc/x`` make hostile layers.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, value in spec.items():
            entry = value if not isinstance(value, (bytes, str)) else File(value)
            info, content = _tar_info(path, entry)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def compress(data: bytes, compression: str, *, parts: int = 1) -> bytes:
    """Compress ``data`` as "gzip", "zstd" or "tar" (unchanged).

    With ``parts`` above one the data is cut into that many gzip members or zstd
    frames, concatenated, as some tools write them.
    """
    if compression not in COMPRESSIONS:
        message = f"unknown compression {compression!r}, expected one of {COMPRESSIONS}"
        raise ValueError(message)

    size = -(-len(data) // parts) if data else 0
    chunks = [data[i : i + size] for i in range(0, len(data), size)] if size else [b""]
    if compression == "gzip":
        return b"".join(gzip.compress(chunk, mtime=0) for chunk in chunks)
    if compression == "zstd":
        compressor = zstandard.ZstdCompressor()
        return b"".join(compressor.compress(chunk) for chunk in chunks)
    return data


def build_layer(spec: Spec, compression: str = "gzip", *, parts: int = 1) -> LayerPair:
    """Return ``(media_type, data)`` for a layer holding the spec's entries."""
    data = compress(build_tar(spec), compression, parts=parts)
    return COMPRESSIONS[compression], data


def raw_layer(data: bytes, media_type: str = OCI_LAYER_GZIP) -> LayerPair:
    """Return arbitrary bytes as a layer of the given media type, for hostile cases."""
    return media_type, data


def diff_id(layer: LayerPair) -> str:
    """Return the digest of the layer's uncompressed tar.

    Data that does not decompress as its media type says (a hostile layer) gets the
    digest of the bytes as they are.
    """
    media_type, data = layer
    try:
        if media_type.endswith("gzip"):
            return sha256_digest(gzip.decompress(data))
        if media_type.endswith("zstd"):
            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=True
            )
            return sha256_digest(reader.read())
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        pass
    return sha256_digest(data)


@dataclass
class ImageSpec:
    """One image: its layers (bottom first), platform and optional extras.

    ``config`` entries are merged into the image config's ``config`` object (for
    example ``{"WorkingDir": "/app"}``); ``annotations`` go into the manifest.
    """

    layers: list[LayerPair]
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] | None = None

    @property
    def platform(self) -> str:
        """The platform as ``os/arch[/variant]``."""
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


@dataclass
class IndexSpec:
    """A multi-platform image: an OCI image index over several images."""

    images: list[ImageSpec]
    annotations: dict[str, str] | None = None


@dataclass(frozen=True)
class BuiltImage:
    """Digests of one image written to a layout."""

    digest: str
    size: int
    media_type: str
    config: str
    layers: list[str]
    diff_ids: list[str]
    platform: str


@dataclass(frozen=True)
class BuiltIndex:
    """Digests of an image index written to a layout, and of its images by platform."""

    digest: str
    size: int
    media_type: str
    images: dict[str, BuiltImage]

    @property
    def layers(self) -> list[str]:
        """Every layer digest of every platform, in order, without repeats."""
        seen = dict.fromkeys(d for image in self.images.values() for d in image.layers)
        return list(seen)


Built = Union[BuiltImage, BuiltIndex]


class _BlobWriter:
    """Writes content-addressed blobs under ``blobs/sha256`` of a layout."""

    def __init__(self, root: Path) -> None:
        self.directory = root / "blobs" / "sha256"
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> str:
        """Store ``data`` (if not yet there) and return its digest."""
        digest = sha256_digest(data)
        path = self.directory / digest.removeprefix("sha256:")
        if not path.exists():
            path.write_bytes(data)
        return digest

    def write_json(self, document: dict[str, Any]) -> tuple[str, int]:
        """Store a JSON document and return its digest and size."""
        data = json.dumps(document, indent=2, sort_keys=True).encode()
        return self.write(data), len(data)


def _descriptor(
    media_type: str, digest: str, size: int, **extra: Any
) -> dict[str, Any]:
    """Return an OCI descriptor; keyword arguments are added when not None."""
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest}
    descriptor["size"] = size
    descriptor.update({key: value for key, value in extra.items() if value is not None})
    return descriptor


def _write_image(blobs: _BlobWriter, spec: ImageSpec) -> BuiltImage:
    """Write an image's layers, config and manifest; return their digests."""
    layers = [_descriptor(m, blobs.write(data), len(data)) for m, data in spec.layers]
    diff_ids = [diff_id(layer) for layer in spec.layers]

    config = {
        "architecture": spec.architecture,
        "os": spec.os,
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], **spec.config},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "tests/imagebuilder.py"} for _ in layers],
    }
    if spec.variant:
        config["variant"] = spec.variant
    config_digest, config_size = blobs.write_json(config)

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config_digest, config_size),
        "layers": layers,
    }
    if spec.annotations:
        manifest["annotations"] = spec.annotations
    digest, size = blobs.write_json(manifest)

    return BuiltImage(
        digest=digest,
        size=size,
        media_type=OCI_MANIFEST,
        config=config_digest,
        layers=[layer["digest"] for layer in layers],
        diff_ids=diff_ids,
        platform=spec.platform,
    )


def _platform(spec: ImageSpec) -> dict[str, str]:
    """Return the descriptor platform object of an image."""
    platform = {"architecture": spec.architecture, "os": spec.os}
    if spec.variant:
        platform["variant"] = spec.variant
    return platform


def _write_index(blobs: _BlobWriter, spec: IndexSpec) -> BuiltIndex:
    """Write every image of an index, then the index itself."""
    images = {image.platform: _write_image(blobs, image) for image in spec.images}
    if len(images) != len(spec.images):
        raise ValueError("an IndexSpec holds two images of the same platform")

    manifests = [
        _descriptor(OCI_MANIFEST, built.digest, built.size, platform=_platform(image))
        for image, built in zip(spec.images, images.values())
    ]
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }
    if spec.annotations:
        index["annotations"] = spec.annotations
    digest, size = blobs.write_json(index)
    return BuiltIndex(digest, size, OCI_INDEX, images)


def build_layout(
    dest_dir: str | os.PathLike[str], images: Mapping[str, ImageSpec | IndexSpec]
) -> dict[str, Built]:
    """Write an OCI image layout holding ``images`` under their tags.

    The layout gets ``oci-layout``, ``blobs/sha256/*`` and an ``index.json`` whose
    entries carry the tag as ``org.opencontainers.image.ref.name``. Returns, per tag,
    the digests written, so tests can compare them with what a registry serves.
    """
    root = Path(dest_dir)
    blobs = _BlobWriter(root)

    built: dict[str, Built] = {}
    for tag, spec in images.items():
        if isinstance(spec, IndexSpec):
            built[tag] = _write_index(blobs, spec)
        else:
            built[tag] = _write_image(blobs, spec)

    entries = [
        _descriptor(b.media_type, b.digest, b.size, annotations={REF_NAME: tag})
        for tag, b in built.items()
    ]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_text(json.dumps(index, indent=2))
    return built


def simple_image(files: Spec, compression: str = "gzip", **kwargs: Any) -> ImageSpec:
    """Return a one-layer image holding ``files``; keywords go to ``ImageSpec``."""
    return ImageSpec(layers=[build_layer(files, compression)], **kwargs)


def two_platform_index(
    amd64: Spec, arm64: Spec, compression: str = "gzip"
) -> IndexSpec:
    """Return an index of a linux/amd64 and a linux/arm64 image with given files."""
    images = [
        simple_image(amd64, compression, architecture="amd64"),
        simple_image(arm64, compression, architecture="arm64", variant="v8"),
    ]
    return IndexSpec(images)


def read_blob(layout: str | os.PathLike[str], digest: str) -> bytes:
    """Return a blob of a layout by digest."""
    path = Path(layout) / "blobs" / "sha256" / digest.removeprefix("sha256:")
    return path.read_bytes()


def layer_digests(layers: Iterable[LayerPair]) -> list[str]:
    """Return the digests the given layers will have in a registry."""
    return [sha256_digest(data) for _, data in layers]
