"""Parsing manifests and image indexes, and choosing a platform; no I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InvalidContent, NotFound
from .types import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ResolvedImage,
)

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MAX_INDEX_DEPTH = 4

_FOREIGN_TYPES = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",)


@dataclass(frozen=True)
class Platform:
    """An os/architecture[/variant] triple, as in an image index."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not os/arch or os/arch/variant")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"

    def matches(self, entry: dict[str, Any]) -> bool:
        """Whether an index entry's platform object is this platform."""
        if entry.get("os") != self.os or entry.get("architecture") != self.architecture:
            return False
        return self.variant is None or entry.get("variant") in (self.variant, None)


@dataclass(frozen=True)
class ParsedManifest:
    """A manifest or index document with its digest and media type."""

    digest: str
    media_type: str
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(
    data: bytes, content_type: str | None, context: str
) -> ParsedManifest:
    """Parse manifest bytes; the media type comes from the body or the header.

    Raises InvalidContent for oversized, non-JSON, schema 1 or unknown documents.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        message = f"{context}: manifest is over {MAX_MANIFEST_BYTES} bytes"
        raise InvalidContent(message)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    try:
        body = json.loads(data)
    except ValueError:
        message = f"{context}: manifest {digest} is not valid JSON"
        raise InvalidContent(message, digest=digest) from None
    if not isinstance(body, dict):
        message = f"{context}: manifest {digest} is not a JSON object"
        raise InvalidContent(message, digest=digest)

    media_type = body.get("mediaType") or _bare_type(content_type)
    if not media_type:
        media_type = OCI_INDEX if "manifests" in body else OCI_MANIFEST
    if body.get("schemaVersion") == 1 or "signatures" in body:
        message = f"{context}: Docker schema 1 manifests are not supported"
        raise InvalidContent(message, digest=digest)
    if media_type not in INDEX_TYPES + MANIFEST_TYPES:
        message = f"{context}: unsupported manifest media type {media_type!r}"
        raise InvalidContent(message, digest=digest)
    return ParsedManifest(digest, media_type, body)


def select_platform(index: ParsedManifest, platform: Platform, context: str) -> str:
    """The digest of the index entry for platform; NotFound when there is none."""
    entries = index.body.get("manifests")
    if not isinstance(entries, list):
        message = f"{context}: index {index.digest} has no manifests list"
        raise InvalidContent(message, digest=index.digest)

    for number, entry in enumerate(entries):
        where = f"{context}: index {index.digest} entry {number}"
        descriptor = Descriptor.from_json(entry, where)
        if platform.matches(descriptor.platform or {}):
            return descriptor.digest

    message = f"{context}: the image index has no {platform} image"
    raise NotFound(message, digest=index.digest)


def image_from_manifest(reference: str, manifest: ParsedManifest) -> ResolvedImage:
    """Turn an image manifest into a ResolvedImage, refusing foreign layers."""
    context = f"{reference}: manifest {manifest.digest}"
    layers_json = manifest.body.get("layers")
    if not isinstance(layers_json, list):
        raise InvalidContent(f"{context} has no layers list", digest=manifest.digest)

    config = Descriptor.from_json(manifest.body.get("config"), f"{context} config")
    layers = []
    for number, entry in enumerate(layers_json):
        layer = Descriptor.from_json(entry, f"{context} layer {number}")
        if layer.urls or layer.media_type in _FOREIGN_TYPES:
            message = (
                f"{context}: layer {layer.digest} is a foreign layer served from "
                "outside the registry; refusing it"
            )
            raise InvalidContent(message, reference=reference, digest=layer.digest)
        layers.append(layer)

    return ResolvedImage(
        reference=reference,
        manifest_digest=manifest.digest,
        media_type=manifest.media_type,
        config=config,
        layers=tuple(layers),
    )


def _bare_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip()


def resolve_image(
    reference: str,
    target: str,
    pinned: str | None,
    fetch: Callable[[str], ParsedManifest],
    platform: Platform,
) -> ResolvedImage:
    """Follow a tag or digest through image indexes down to one image manifest.

    ``fetch`` returns the parsed manifest for a tag or digest. A digest reference
    (``pinned``) must match what was fetched, every index entry must match its
    digest, and indexes that nest deeper than MAX_INDEX_DEPTH or loop are refused.
    """
    manifest = fetch(target)
    _check_digest(reference, pinned, manifest)

    seen = {manifest.digest}
    while manifest.is_index:
        if len(seen) > MAX_INDEX_DEPTH:
            message = f"{reference}: image indexes nest deeper than {MAX_INDEX_DEPTH}"
            raise InvalidContent(message, reference=reference, digest=manifest.digest)
        child = select_platform(manifest, platform, reference)
        if child in seen:
            message = f"{reference}: image index {manifest.digest} refers to itself"
            raise InvalidContent(message, reference=reference, digest=child)
        seen.add(child)
        manifest = fetch(child)
        _check_digest(reference, child, manifest)

    return image_from_manifest(reference, manifest)


def _check_digest(
    reference: str, expected: str | None, manifest: ParsedManifest
) -> None:
    if expected is not None and manifest.digest != expected:
        message = (
            f"{reference}: manifest content has digest {manifest.digest}, "
            f"expected {expected}; refusing it"
        )
        raise InvalidContent(message, reference=reference, digest=expected)
