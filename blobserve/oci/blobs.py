"""Reading a blob while checking it against its descriptor."""

from __future__ import annotations

import hashlib
from typing import Callable, Protocol

from ..errors import InvalidContent, LimitExceeded
from .types import Descriptor


class RawStream(Protocol):
    """What a blob's bytes are read from: a file, or a response body."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class VerifyingReader:
    """A file-like reader that hashes and counts what it reads.

    It refuses to read past the descriptor's size (or ``max_bytes``), and when the
    underlying stream ends it compares size and sha256 with the descriptor: a mismatch
    raises InvalidContent from that last ``read``, so a consumer that reads to the end
    can never accept tampered or truncated content.
    """

    def __init__(
        self,
        raw: RawStream,
        descriptor: Descriptor,
        *,
        max_bytes: int | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._raw = raw
        self._descriptor = descriptor
        self._hash = hashlib.sha256()
        self._count = 0
        self._verified = False
        self._on_read = on_read
        self._limit = descriptor.size
        if max_bytes is not None and descriptor.size > max_bytes:
            message = (
                f"layer {descriptor.digest} is {descriptor.size} bytes, over the "
                f"maxLayerBytes cap of {max_bytes}"
            )
            raise LimitExceeded(message, digest=descriptor.digest)

    @property
    def bytes_read(self) -> int:
        return self._count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._verified:
            return b""
        wanted = self._limit - self._count + 1
        if size is None or size < 0 or size > wanted:
            size = wanted
        data = self._raw.read(size)
        if not data:
            self._verify()
            return b""
        self._count += len(data)
        if self._count > self._limit:
            self._fail(f"is longer than its declared {self._limit} bytes")
        self._hash.update(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read what is left and verify it; raises InvalidContent on mismatch."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self._raw.close()

    def _verify(self) -> None:
        if self._count != self._limit:
            self._fail(f"ended after {self._count} of {self._limit} bytes")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._descriptor.digest:
            self._fail(f"has digest {actual}")
        self._verified = True

    def _fail(self, what: str) -> None:
        digest = self._descriptor.digest
        message = f"blob {digest} {what}; refusing it"
        raise InvalidContent(message, digest=digest)
