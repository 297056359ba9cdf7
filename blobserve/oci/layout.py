"""An OCI image layout directory as an image source, with no registry involved."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from ..errors import InvalidContent, NotFound
from .blobs import VerifyingReader
from .manifest import ParsedManifest, Platform, parse_manifest, resolve_image
from .reference import Reference
from .types import MAX_MANIFEST_BYTES, Descriptor, ResolvedImage

REF_NAME = "org.opencontainers.image.ref.name"


class LayoutSource:
    """Images from `<root>/index.json` and `<root>/blobs/sha256/`.

    A tag is found through the `org.opencontainers.image.ref.name` annotation of
    the top-level index, either as the bare tag or as a full reference.
    """

    def __init__(self, root: str, platform: str = "linux/amd64") -> None:
        self.root = root
        self._platform = Platform.parse(platform)

    def resolve(self, ref: Reference) -> ResolvedImage:
        """Resolve a tag or digest in the layout; NotFound when it is not there."""
        target = ref.digest or self._tag_digest(ref)
        return resolve_image(
            str(ref),
            target,
            target,
            lambda digest: self._manifest(ref, digest),
            self._platform,
        )

    def open_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        *,
        max_bytes: int | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> VerifyingReader:
        """Open a blob file as a stream checked against its descriptor."""
        handle = open(self._blob_path(ref, descriptor.digest), "rb")
        try:
            return VerifyingReader(
                handle, descriptor, max_bytes=max_bytes, on_read=on_read
            )
        except BaseException:
            handle.close()
            raise

    def ping(self, registry: str) -> None:
        """A layout is always reachable once its index can be read."""
        self._index()

    def _tag_digest(self, ref: Reference) -> str:
        for entry in self._index().get("manifests", []):
            name = (entry.get("annotations") or {}).get(REF_NAME)
            if name in (ref.tag, f"{ref.name}:{ref.tag}"):
                return str(entry["digest"])
        raise NotFound(f"{ref}: tag {ref.tag!r} is not in the layout {self.root}")

    def _index(self) -> dict[str, Any]:
        path = os.path.join(self.root, "index.json")
        try:
            with open(path, "rb") as handle:
                index = json.load(handle)
        except FileNotFoundError:
            raise NotFound(f"the OCI layout {self.root} has no index.json") from None
        except ValueError:
            raise InvalidContent(f"{path} is not valid JSON") from None
        if not isinstance(index, dict):
            raise InvalidContent(f"{path} is not a JSON object")
        return index

    def _manifest(self, ref: Reference, digest: str) -> ParsedManifest:
        with open(self._blob_path(ref, digest), "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        return parse_manifest(data, None, str(ref))

    def _blob_path(self, ref: Reference, digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        path = os.path.join(self.root, "blobs", algorithm, hexdigest)
        if algorithm != "sha256" or not os.path.isfile(path):
            raise NotFound(f"{ref}: blob {digest} is not in the layout {self.root}")
        return path
