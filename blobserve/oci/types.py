"""Plain data shared by every image source: descriptors and resolved images."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidContent

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: its media type, digest and size."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any, context: str) -> "Descriptor":
        """A descriptor from manifest JSON; InvalidContent if it is malformed."""
        try:
            digest = data["digest"]
            size = data["size"]
            media_type = data.get("mediaType", "")
        except (KeyError, TypeError, AttributeError):
            message = f"{context}: descriptor without digest or size"
            raise InvalidContent(message) from None
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            message = f"{context}: unsupported or malformed digest {digest!r}"
            raise InvalidContent(message)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            message = f"{context}: descriptor {digest} has an invalid size"
            raise InvalidContent(message, digest=digest)
        urls = data.get("urls") or ()
        platform = data.get("platform")
        return cls(str(media_type), digest, size, tuple(urls), platform)


@dataclass(frozen=True)
class ResolvedImage:
    """An image manifest resolved from a reference, with its layers in order."""

    reference: str
    manifest_digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def size(self) -> int:
        """The compressed size of all layers."""
        return sum(layer.size for layer in self.layers)


def is_sha256_digest(text: str) -> bool:
    """Whether text is a well-formed sha256 digest."""
    return bool(_DIGEST.match(text))


@dataclass(frozen=True)
class Limits:
    """Caps that stop a hostile or runaway image early; each applies per image."""

    max_layer_bytes: int = 2 * 1024**3
    max_unpacked_bytes: int = 8 * 1024**3
    max_entries: int = 500_000
