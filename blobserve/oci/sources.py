"""Where an image comes from: a registry, or a local OCI layout for some repos."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import InvalidContent
from .auth import CredentialStore
from .blobs import VerifyingReader
from .layout import LayoutSource
from .reference import Reference
from .registry import ClientOptions, Observer, RegistryClient
from .types import Descriptor, Limits, ResolvedImage
from .unpack import Unpacker


class ImageSource(Protocol):
    """What the rest of blobserve needs from a registry or a layout."""

    def resolve(self, ref: Reference) -> ResolvedImage: ...

    def open_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        *,
        max_bytes: int | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> VerifyingReader: ...

    def ping(self, registry: str) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """Everything needed to build the image sources; small and picklable."""

    options: ClientOptions = field(default_factory=ClientOptions)
    docker_auth: str | None = None
    layouts: tuple[tuple[str, str], ...] = ()


class Sources:
    """Picks the layout configured for a repository, else the registry client."""

    def __init__(self, spec: SourceSpec, observe: Observer | None = None) -> None:
        self.spec = spec
        self.registry = RegistryClient(
            spec.options, CredentialStore(spec.docker_auth), observe=observe
        )
        self._layouts = {
            name: LayoutSource(path, spec.options.platform)
            for name, path in spec.layouts
        }

    def for_ref(self, ref: Reference) -> ImageSource:
        return self._layouts.get(ref.name, self.registry)

    def is_layout(self, ref: Reference) -> bool:
        return ref.name in self._layouts


@dataclass(frozen=True)
class UnpackResult:
    """What one unpack produced."""

    bytes: int
    entries: int
    pulled: int
    seconds: float


def unpack_image(
    sources: Sources,
    ref: Reference,
    image: ResolvedImage,
    dest: str,
    limits: Limits,
    replacements: tuple[tuple[str, str, str], ...] = (),
    progress: Callable[[int], None] | None = None,
) -> UnpackResult:
    """Stream, verify and unpack every layer of an image into dest, in order.

    Then apply the (path, search, replacement) edits. Raises the source's errors,
    InvalidContent or LimitExceeded; dest is left half-written on failure and is
    the caller's to discard.
    """
    started = time.perf_counter()
    source = sources.for_ref(ref)
    unpacker = Unpacker(dest, limits)
    pulled = 0

    for layer in image.layers:
        stream = source.open_blob(
            ref, layer, max_bytes=limits.max_layer_bytes, on_read=progress
        )
        try:
            unpacker.apply(stream, layer.media_type, layer.digest)
        finally:
            stream.close()
        pulled += stream.bytes_read

    for path, search, replacement in replacements:
        apply_replacement(dest, path, search, replacement, str(ref))
    seconds = time.perf_counter() - started
    return UnpackResult(unpacker.bytes_written, unpacker.entries, pulled, seconds)


def apply_replacement(
    root: str, path: str, search: str, replacement: str, reference: str
) -> None:
    """Replace every occurrence of search in one file of the tree, in place.

    The file must be a regular file inside root (symlinks are resolved and must
    stay inside); anything else raises InvalidContent naming the path.
    """
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, path.lstrip("/")))
    inside = target.startswith(real_root + os.sep)
    if not inside or not os.path.isfile(target):
        message = f"{reference}: replacement path {path} is not a file in the image"
        raise InvalidContent(message, reference=reference)

    with open(target, "rb") as handle:
        content = handle.read()
    edited = content.replace(search.encode(), replacement.encode())
    if edited != content:
        mode = os.stat(target).st_mode
        os.unlink(target)
        with open(target, "wb") as handle:
            handle.write(edited)
        os.chmod(target, mode & 0o777)
