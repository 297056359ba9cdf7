"""Unpacking image layers, in order, into one directory that never leaks outside.

Each layer is streamed once: compressed blob, decompressor, ``tarfile`` in stream
mode, and one ``open``/``write``/``close`` per file. Safety does not come from
asking the file system (no ``realpath`` or ``lstat`` per member): the Unpacker keeps
a map of every path it created and resolves each member's directory through that map,
following its own symlinks inside the root. Symlinks are written as relative paths to
their in-root target, so the tree on disk resolves inside the root for the kernel too.
OCI whiteouts and opaque directories are applied against the same map.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
import zlib
from typing import IO, Callable, Iterator, Protocol, cast

import zstandard
from isal import igzip, isal_zlib

from ..errors import InvalidContent, LimitExceeded
from .types import Limits

log = logging.getLogger(__name__)

GZIP_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
ZSTD_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
TAR_LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    }
)

_FILE = "file"
_DIR = "dir"
_SYMLINK = "symlink"
_HARDLINK = "hardlink"

_MAX_SYMLINK_HOPS = 40
_IMPLICIT_DIR_MODE = 0o755
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

# Large copies keep the per-file cost at one open, a few writes and one close.
_CHUNK = 1 << 20
# tarfile's stream buffer; each header read copies what is left of it, so it stays
# moderate.
_TAR_BUFSIZE = 64 << 10
# Decompressed bytes a layer may carry beyond its members' declared sizes: tar
# headers, pax records, padding and the end-of-archive blocks. Anything past that is
# junk, and is where a decompression bomb would hide.
_SLACK_BYTES = 1 << 20
_SLACK_PER_ENTRY = 8 << 10

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CORRUPT_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    # isal's stub declares its error class as an instance.
    cast(type[BaseException], isal_zlib.error),
    zstandard.ZstdError,
)


class ByteStream(Protocol):
    """Anything with a ``read`` returning bytes: a VerifyingReader, a binary file."""

    def read(self, size: int = -1, /) -> bytes: ...


def decompressor_for(media_type: str, stream: ByteStream) -> ByteStream:
    """Wrap a compressed layer stream so that reading it yields the tar bytes.

    Gzip layers may hold several members and zstd layers several frames; both are
    read to the end. The returned reader never closes ``stream``. Raises
    InvalidContent naming ``media_type`` when it is not a tar layer type we know.
    """
    if media_type in GZIP_LAYER_TYPES:
        # isal ships without type hints.
        gzip_reader = igzip.GzipFile(  # type: ignore[no-untyped-call]
            fileobj=stream, mode="rb"
        )
        return cast(ByteStream, gzip_reader)
    if media_type in ZSTD_LAYER_TYPES:
        decompressor = zstandard.ZstdDecompressor()
        # zstandard only calls read(); its stub asks for a full file object.
        source = cast(IO[bytes], stream)
        return decompressor.stream_reader(
            source, read_across_frames=True, closefd=False
        )
    if media_type in TAR_LAYER_TYPES:
        return stream

    message = (
        f"layer media type {media_type!r} is not supported; expected a tar layer, "
        "plain or compressed with gzip or zstd"
    )
    raise InvalidContent(message)


class _Skip(Exception):
    """A member that is left out of the tree, for the reason given."""


class _Source:
    """The compressed blob as the decompressor reads it.

    It remembers an exception raised by the blob stream itself (a network or disk
    failure, or a digest mismatch), so that only the decompressor's own errors are
    reported as corrupt content.
    """

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as exc:
            self.error = exc
            raise

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class _LayerReader:
    """Decompressed layer bytes for tarfile, with errors translated and a budget.

    ``allowance`` is how many decompressed bytes the layer may produce so far; the
    Unpacker raises it by each admitted member's size. Reading past it means the
    stream carries data no tar entry accounts for, and stops with LimitExceeded.
    """

    def __init__(self, inner: ByteStream, source: _Source, digest: str) -> None:
        self._inner = inner
        self._source = source
        self._digest = digest
        self.bytes_read = 0
        self.allowance = _SLACK_BYTES

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._inner.read(size)
        except _CORRUPT_STREAM_ERRORS as exc:
            if exc is self._source.error:
                raise
            message = f"{_layer_name(self._digest)} is not a valid layer stream: {exc}"
            raise InvalidContent(message, digest=self._digest or None) from exc

        self.bytes_read += len(data)
        if self.bytes_read > self.allowance:
            message = (
                f"{_layer_name(self._digest)} decompresses to more than its tar "
                f"entries account for (over {self.allowance} bytes); refusing it "
                "under the maxUnpackedBytes cap"
            )
            raise LimitExceeded(message, digest=self._digest or None)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if self._inner is not self._source and close is not None:
            close()


class Unpacker:
    """Applies layers in order into one fresh directory (the image's merged filesystem).

    Nothing is ever written outside ``dest``: member names are re-rooted, ``..``
    names are skipped, symlinks are rewritten to relative in-root targets, hard
    links must point at a regular file this Unpacker wrote, and device, fifo and
    unknown members are skipped. Files get at least owner read and write, and
    directories owner read, write and search; setuid, setgid and sticky bits and
    ownership are never applied. When a layer fails, ``dest`` is left partly
    written and the caller should discard it.
    """

    def __init__(self, dest: str, limits: Limits) -> None:
        self._root = os.path.abspath(dest)
        self._limits = limits
        self._umask = _process_umask()

        # path ("" is the root) -> (kind, number of the layer that last wrote it)
        self._nodes: dict[str, tuple[str, int]] = {"": (_DIR, 0)}
        self._children: dict[str, set[str]] = {"": set()}
        self._links: dict[str, str] = {}
        # member directory as named in the tar -> its resolved in-root path
        self._resolved: dict[str, str] = {}

        self._layer = 0
        self._entries = 0
        self._unpacked = 0
        self._written = 0

    @property
    def bytes_written(self) -> int:
        """Bytes of file content written so far, over all layers."""
        return self._written

    @property
    def entries(self) -> int:
        """Tar members read so far over all layers, the figure maxEntries caps."""
        return self._entries

    def apply(self, stream: ByteStream, media_type: str, digest: str = "") -> None:
        """Unpack one layer on top of the layers applied before it.

        ``stream`` is the compressed blob, normally a VerifyingReader; it is read to
        its very end, so a digest or size mismatch surfaces here, but only after
        the layer's files were written. Raises InvalidContent for an unknown media
        type or a corrupt or truncated stream, LimitExceeded (naming the cap) when
        the image goes over maxUnpackedBytes or maxEntries, and OSError when the
        disk refuses a write.
        """
        started = time.monotonic()
        self._layer += 1
        entries_before = self._entries
        written_before = self._written

        source = _Source(stream)
        reader = _LayerReader(decompressor_for(media_type, source), source, digest)
        try:
            self._unpack_tar(reader, digest)
            reader.drain()
            source.drain()
        finally:
            reader.close()

        log.debug(
            "unpacked %s: %d entries, %d bytes written in %.2f s",
            _layer_name(digest),
            self._entries - entries_before,
            self._written - written_before,
            time.monotonic() - started,
        )

    def _unpack_tar(self, reader: _LayerReader, digest: str) -> None:
        try:
            # Stream mode only ever reads; the stub asks for a full file object.
            fileobj = cast(IO[bytes], reader)
            with tarfile.open(fileobj=fileobj, mode="r|", bufsize=_TAR_BUFSIZE) as tar:
                for member in _members(tar):
                    self._admit(member, reader, digest)
                    try:
                        self._extract(tar, member, digest)
                    except _Skip as skip:
                        name = _layer_name(digest)
                        log.debug("%s: skipping %r: %s", name, member.name, skip)
        except tarfile.TarError as exc:
            # No bytes at all is an empty layer, as container runtimes read it.
            if isinstance(exc, tarfile.ReadError) and reader.bytes_read == 0:
                log.debug("%s is empty", _layer_name(digest))
                return
            message = f"{_layer_name(digest)} is not a valid tar stream: {exc}"
            raise InvalidContent(message, digest=digest or None) from exc

    def _admit(
        self, member: tarfile.TarInfo, reader: _LayerReader, digest: str
    ) -> None:
        limits = self._limits
        self._entries += 1
        if self._entries > limits.max_entries:
            message = (
                f"{_layer_name(digest)} brings the image over the maxEntries cap of "
                f"{limits.max_entries} entries"
            )
            raise LimitExceeded(message, digest=digest or None)

        size = member.size
        if size < 0:
            message = f"{_layer_name(digest)} has a member with a negative size"
            raise InvalidContent(message, digest=digest or None)
        if self._unpacked + size > limits.max_unpacked_bytes:
            message = (
                f"{_layer_name(digest)} brings the image over the maxUnpackedBytes "
                f"cap of {limits.max_unpacked_bytes} bytes (member {member.name!r} "
                f"declares {size} bytes)"
            )
            raise LimitExceeded(message, digest=digest or None)

        self._unpacked += size
        reader.allowance += size + _SLACK_PER_ENTRY

    def _extract(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, digest: str
    ) -> None:
        parts = _member_parts(member.name)
        name = parts.pop()
        if name.startswith(_WHITEOUT):
            self._whiteout(parts, name)
            return
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise _Skip("device, fifo and unknown member types are not unpacked")

        parent = self._directory(parts)
        self._touch(parent)
        if member.isreg():
            self._write_file(tar, member, parent, name, digest)
        elif member.isdir():
            self._make_dir(parent, name, member.mode)
        elif member.issym():
            self._make_symlink(parent, name, member.linkname)
        else:
            self._make_hardlink(parent, name, member.linkname)

    # Resolving paths inside the root, through the map of what we created.

    def _directory(self, parts: list[str]) -> str:
        """The in-root directory a member goes into, created when missing."""
        key = "/".join(parts)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolve("", parts, create=True)
            self._resolved[key] = resolved
        return resolved

    def _resolve(
        self, base: str, parts: list[str], *, create: bool, follow_last: bool = True
    ) -> str:
        """Walk ``parts`` from directory ``base`` without ever leaving the root.

        Symlinks we created are followed (``follow_last`` decides for the final
        component), ``..`` stops at the root, and at most 40 symlinks are followed.
        With ``create`` every component must end up a directory: missing ones are
        made and anything else skips the member. Without it, missing components are
        taken literally, which is what a dangling link target needs.
        """
        nodes = self._nodes
        pending = parts[::-1]
        current = base
        hops = 0
        while pending:
            part = pending.pop()
            if part == "" or part == ".":
                continue
            if part == "..":
                current = current.rpartition("/")[0]
                continue

            path = f"{current}/{part}" if current else part
            node = nodes.get(path)
            if node is None:
                if create:
                    self._mkdir(current, part, _IMPLICIT_DIR_MODE)
            elif node[0] == _SYMLINK and (pending or follow_last):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise _Skip("too many levels of symbolic links")
                pending.extend(reversed(self._links[path].split("/")))
                continue
            elif create and node[0] != _DIR:
                raise _Skip(f"{path!r} is not a directory")
            current = path
        return current

    def _touch(self, path: str) -> None:
        """Mark path and its ancestors as holding entries of the current layer."""
        nodes = self._nodes
        layer = self._layer
        while True:
            kind, seen = nodes[path]
            if seen == layer:
                return
            nodes[path] = (kind, layer)
            if not path:
                return
            path = path.rpartition("/")[0]

    # Writing members.

    def _write_file(
        self,
        tar: tarfile.TarFile,
        member: tarfile.TarInfo,
        parent: str,
        name: str,
        digest: str,
    ) -> None:
        path = _join(parent, name)
        self._clear(path)
        mode = (member.mode & 0o777) | 0o600

        fd = os.open(self._full(path), _OPEN_FLAGS, mode)
        self._add(parent, name, _FILE)
        try:
            self._copy_data(tar, member, fd, digest)
            if mode & self._umask:
                os.fchmod(fd, mode)
            _set_mtime(fd, member.mtime)
        finally:
            os.close(fd)

    def _copy_data(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int, digest: str
    ) -> None:
        read: Callable[[int], bytes]
        if member.sparse is not None:
            read = cast(IO[bytes], tar.extractfile(member)).read
        else:
            # In stream mode the member's data is simply what follows its header.
            read = cast(IO[bytes], tar.fileobj).read

        remaining = member.size
        while remaining > 0:
            chunk = read(min(remaining, _CHUNK))
            if not chunk:
                message = (
                    f"{_layer_name(digest)} ends inside member {member.name!r}; the "
                    "stream is truncated"
                )
                raise InvalidContent(message, digest=digest or None)
            _write_all(fd, chunk)
            remaining -= len(chunk)
            self._written += len(chunk)

    def _make_dir(self, parent: str, name: str, tar_mode: int) -> None:
        path = _join(parent, name)
        mode = (tar_mode & 0o777) | 0o700
        node = self._nodes.get(path)
        if node is not None and node[0] == _DIR:
            self._nodes[path] = (_DIR, self._layer)
            os.chmod(self._full(path), mode)
            return

        self._clear(path)
        self._mkdir(parent, name, mode)
        if mode & self._umask:
            os.chmod(self._full(path), mode)

    def _make_symlink(self, parent: str, name: str, target: str) -> None:
        if not target:
            raise _Skip("symlink with an empty target")
        base = "" if target.startswith("/") else parent
        parts = target.split("/")
        resolved = self._resolve(base, parts, create=False, follow_last=False)
        text = _relative(parent, resolved)

        path = _join(parent, name)
        self._clear(path)
        os.symlink(text, self._full(path))
        self._add(parent, name, _SYMLINK)
        self._links[path] = text

    def _make_hardlink(self, parent: str, name: str, target: str) -> None:
        source = self._resolve("", target.split("/"), create=False, follow_last=False)
        path = _join(parent, name)
        if source == path:
            raise _Skip("hard link to itself")
        if not self._is_file(source):
            raise _Skip(f"hard link target {target!r} is not a file from this image")

        self._clear(path)
        if not self._is_file(source):
            raise _Skip(f"hard link target {target!r} was replaced by the link")
        os.link(self._full(source), self._full(path), follow_symlinks=False)
        self._add(parent, name, _HARDLINK)

    # Whiteouts and removal, keeping the map in step with the disk.

    def _whiteout(self, parts: list[str], name: str) -> None:
        parent = self._resolve("", parts, create=False)
        node = self._nodes.get(parent)
        if node is None or node[0] != _DIR:
            return

        if name == _OPAQUE:
            for child in list(self._children[parent]):
                self._remove_lower(_join(parent, child))
            return
        hidden = name[len(_WHITEOUT) :]
        if hidden in ("", ".", ".."):
            raise _Skip("whiteout without a name")
        path = _join(parent, hidden)
        if path in self._nodes:
            self._remove_lower(path)

    def _remove_lower(self, path: str) -> None:
        """Remove what lower layers put at path, keeping the current layer's entries."""
        pending = [path]
        while pending:
            path = pending.pop()
            kind, layer = self._nodes[path]
            if layer < self._layer:
                self._remove(path)
            elif kind == _DIR:
                pending.extend(_join(path, child) for child in self._children[path])

    def _clear(self, path: str) -> None:
        if path in self._nodes:
            self._remove(path)

    def _remove(self, path: str) -> None:
        """Delete path (a whole subtree for a directory) from disk and from the map."""
        subtree = [path]
        index = 0
        while index < len(subtree):
            children = self._children.get(subtree[index])
            if children:
                subtree.extend(_join(subtree[index], child) for child in children)
            index += 1

        top_kind = self._nodes[path][0]
        for doomed in reversed(subtree):
            kind, _ = self._nodes.pop(doomed)
            if kind == _DIR:
                os.rmdir(self._full(doomed))
                del self._children[doomed]
            else:
                os.unlink(self._full(doomed))
                self._links.pop(doomed, None)
        parent, _, name = path.rpartition("/")
        self._children[parent].discard(name)

        if top_kind == _DIR or top_kind == _SYMLINK:
            self._resolved.clear()

    def _mkdir(self, parent: str, name: str, mode: int) -> None:
        os.mkdir(self._full(_join(parent, name)), mode)
        self._add(parent, name, _DIR)

    def _add(self, parent: str, name: str, kind: str) -> None:
        path = _join(parent, name)
        self._nodes[path] = (kind, self._layer)
        self._children[parent].add(name)
        if kind == _DIR:
            self._children[path] = set()

    def _is_file(self, path: str) -> bool:
        node = self._nodes.get(path)
        return node is not None and node[0] in (_FILE, _HARDLINK)

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a tar opened in stream mode, one header at a time."""
    while True:
        member = tar.next()
        if member is None:
            return
        # tarfile keeps every header it has read, which we never look at again;
        # the attribute is missing from the stubs.
        tar.members.clear()  # type: ignore[attr-defined]
        yield member


def _member_parts(name: str) -> list[str]:
    """A member name as in-root components, without empty, ``.`` or ``/`` parts."""
    parts = [part for part in name.split("/") if part and part != "."]
    if not parts:
        raise _Skip("empty name")
    if ".." in parts:
        raise _Skip("name with a '..' component")
    return parts


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _relative(start: str, target: str) -> str:
    """The relative path from directory start to target, both in-root paths."""
    start_parts = start.split("/") if start else []
    target_parts = target.split("/") if target else []
    common = 0
    for mine, theirs in zip(start_parts, target_parts):
        if mine != theirs:
            break
        common += 1
    ups = [".."] * (len(start_parts) - common)
    return "/".join(ups + target_parts[common:]) or "."


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]


def _set_mtime(fd: int, mtime: float) -> None:
    try:
        os.utime(fd, (mtime, mtime))
    except (OverflowError, ValueError):
        log.debug("ignoring out-of-range mtime %r", mtime)


def _process_umask() -> int:
    """The process umask, read from /proc rather than set and restored.

    Setting it, even briefly, would change the modes of files other threads create.
    When it cannot be read, every mode is applied explicitly.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777


def _layer_name(digest: str) -> str:
    return f"layer {digest}" if digest else "layer"
