"""The blob space: unpacked image trees on a directory shared by every worker.

On disk, under the configured location::

    trees/<key>/            one published tree; its existence means "ready"
    trees/<key>/fs/         the image's merged filesystem
    trees/<key>/meta.json   what the tree holds (image, digests, bytes, created)
    trees/<key>/used        its mtime is the last use, touched at most once a minute
    refs/<sha256>.json      a reference's resolution: manifest digest and layers
    refs-by-path/<ref>      a link to the served root of a digest reference's tree,
                            for a static front (nginx) to serve hits from
    tmp/                    trees being built and trees being deleted
    locks/<key>.lock        one flock per key; locks/gc.lock for eviction

A tree is built in `tmp/` and published with one `rename`, and evicted with one
`rename` back into `tmp/`, so a reader sees a whole tree or none. Metadata lives
inside the tree directory, so it appears and disappears with the tree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from filelock import FileLock, Timeout

from .errors import BlobserveError, PullPending
from .oci.types import Descriptor, ResolvedImage

log = logging.getLogger(__name__)

TOUCH_INTERVAL = 60.0
BUILD_LOCK_TIMEOUT = 3600.0
GC_LOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class TreeInfo:
    """What a published tree holds, as recorded in its meta.json."""

    key: str
    reference: str
    manifest_digest: str
    layers: tuple[str, ...]
    bytes: int
    entries: int
    created: float


@dataclass(frozen=True)
class Collection:
    """The outcome of one garbage collection."""

    evicted: tuple[TreeInfo, ...]
    trees: int
    bytes: int


def tree_key(image: ResolvedImage, fingerprint: str = "") -> str:
    """The content key of an image's tree: its layer digests and a fingerprint."""
    digest = hashlib.sha256()
    for layer in image.layers:
        digest.update(layer.digest.encode() + b"\n")
    digest.update(b"fingerprint:" + fingerprint.encode())
    return digest.hexdigest()


class BlobSpace:
    """Published trees, their build locks, eviction and cached resolutions."""

    def __init__(self, location: str, max_size_bytes: int) -> None:
        self.location = os.path.abspath(location)
        self.max_size_bytes = max_size_bytes
        self._trees = os.path.join(self.location, "trees")
        self._refs = os.path.join(self.location, "refs")
        self._tmp = os.path.join(self.location, "tmp")
        self._locks = os.path.join(self.location, "locks")
        self._links = os.path.join(self.location, "refs-by-path")
        for path in (self._trees, self._refs, self._tmp, self._locks, self._links):
            os.makedirs(path, exist_ok=True)
        self._touched: dict[str, float] = {}
        self._touch_lock = threading.Lock()

    # -- trees -----------------------------------------------------------------

    def tree_dir(self, key: str) -> str:
        """Where the tree for key is (or would be) published."""
        return os.path.join(self._trees, key)

    def root(self, key: str) -> str:
        """The image filesystem of the tree for key."""
        return os.path.join(self._trees, key, "fs")

    def lookup(self, key: str) -> str | None:
        """The filesystem root of a published tree, marking it used; else None."""
        root = self.root(key)
        if not os.path.isdir(root):
            return None
        self.touch(key)
        return root

    def touch(self, key: str) -> None:
        """Record a use of the tree, at most once a minute per process."""
        now = time.monotonic()
        with self._touch_lock:
            if now - self._touched.get(key, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
                return
            self._touched[key] = now
        try:
            os.utime(os.path.join(self._trees, key, "used"))
        except FileNotFoundError:
            with self._touch_lock:
                self._touched.pop(key, None)

    def build(
        self,
        key: str,
        reference: str,
        image: ResolvedImage,
        fill: Callable[[str], tuple[int, int]],
        *,
        lock_timeout: float = BUILD_LOCK_TIMEOUT,
    ) -> str:
        """Make sure the tree for key is published, building it if needed.

        ``fill(fs_dir)`` unpacks the image into an empty directory and returns
        (bytes, entries). It runs under the key's file lock, in a private
        temporary directory that is renamed into place only when it succeeded;
        whatever it raises propagates and nothing is published. Returns the root.
        """
        root = self.lookup(key)
        if root is not None:
            return root

        lock = FileLock(os.path.join(self._locks, f"{key}.lock"), timeout=lock_timeout)
        try:
            with lock:
                root = self.lookup(key)
                if root is None:
                    root = self._build_locked(key, reference, image, fill)
        except Timeout:
            message = f"{reference}: another process has been building it too long"
            raise PullPending(message, reference=reference) from None
        return root

    def _build_locked(
        self,
        key: str,
        reference: str,
        image: ResolvedImage,
        fill: Callable[[str], tuple[int, int]],
    ) -> str:
        self._remove_leftovers(f"{key}.")
        staging = os.path.join(self._tmp, f"{key}.{os.getpid()}.{secrets.token_hex(4)}")
        os.mkdir(staging)
        try:
            os.mkdir(os.path.join(staging, "fs"))
            size, entries = fill(os.path.join(staging, "fs"))
            info = TreeInfo(
                key=key,
                reference=reference,
                manifest_digest=image.manifest_digest,
                layers=tuple(layer.digest for layer in image.layers),
                bytes=size,
                entries=entries,
                created=time.time(),
            )
            _write_json(os.path.join(staging, "meta.json"), asdict(info))
            open(os.path.join(staging, "used"), "wb").close()
            os.rename(staging, self.tree_dir(key))
        except BaseException:
            _remove_tree(staging)
            raise
        return self.root(key)

    def _remove_leftovers(self, prefix: str) -> None:
        for name in os.listdir(self._tmp):
            if name.startswith(prefix):
                log.info("removing %s left by a builder that died", name)
                _remove_tree(os.path.join(self._tmp, name))

    # -- links for a static front ----------------------------------------------

    def link_reference(self, reference: str, key: str, workdir: str) -> None:
        """Point `refs-by-path/<reference>` at the served root of the tree for key.

        A static server (nginx) in front can then answer `/<reference>/<path>`
        straight from disk. The link is replaced atomically; a link whose tree was
        evicted dangles until the tree is rebuilt, and the front falls back.
        """
        link = os.path.join(self._links, reference)
        if not link.startswith(self._links + os.sep) or ".." in reference.split("/"):
            raise ValueError(f"{reference!r} cannot name a link")
        served = os.path.join(self.root(key), workdir.strip("/"))
        target = os.path.relpath(served.rstrip("/"), os.path.dirname(link))
        try:
            if os.readlink(link) == target:
                return
        except OSError:
            pass

        os.makedirs(os.path.dirname(link), exist_ok=True)
        temporary = f"{link}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        os.symlink(target, temporary)
        os.replace(temporary, link)

    # -- accounting and eviction -----------------------------------------------

    def trees(self) -> list[TreeInfo]:
        """Every published tree, from the metadata recorded when it was built."""
        infos = []
        for key in os.listdir(self._trees):
            info = self.info(key)
            if info is not None:
                infos.append(info)
        return infos

    def info(self, key: str) -> TreeInfo | None:
        """The metadata of a published tree, or None if it is not there."""
        try:
            with open(os.path.join(self._trees, key, "meta.json"), "rb") as handle:
                data = json.load(handle)
            data["layers"] = tuple(data["layers"])
            return TreeInfo(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def total_bytes(self) -> int:
        """The bytes held by published trees, as accounted when they were built."""
        return sum(info.bytes for info in self.trees())

    def collect_garbage(self, keep: str | None = None) -> Collection | None:
        """Evict least recently used trees until the total fits.

        One process collects at a time; the others wait their turn, so every
        publish is followed by a collection that sees it. None when the lock could
        not be had within GC_LOCK_TIMEOUT. ``keep`` is never evicted. Trees are
        renamed into tmp/ before they are deleted, so no reader ever sees part of
        a tree.
        """
        lock = FileLock(os.path.join(self._locks, "gc.lock"), timeout=GC_LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            return None
        try:
            self._remove_leftovers("evicted.")
            return self._evict(keep)
        finally:
            lock.release()

    def _evict(self, keep: str | None) -> Collection:
        infos = self.trees()
        total = sum(info.bytes for info in infos)
        evicted: list[TreeInfo] = []
        for info in sorted(infos, key=self._last_used):
            if total <= self.max_size_bytes:
                break
            if info.key == keep:
                continue
            started = time.perf_counter()
            doomed = os.path.join(
                self._tmp, f"evicted.{info.key}.{secrets.token_hex(4)}"
            )
            try:
                os.rename(self.tree_dir(info.key), doomed)
            except FileNotFoundError:
                continue
            _remove_tree(doomed)
            total -= info.bytes
            evicted.append(info)
            log.info(
                "evicted %s (%s): %d bytes in %.2fs; blob space now %d of %d bytes",
                info.reference,
                info.manifest_digest,
                info.bytes,
                time.perf_counter() - started,
                total,
                self.max_size_bytes,
            )
        return Collection(tuple(evicted), len(infos) - len(evicted), total)

    def _last_used(self, info: TreeInfo) -> float:
        try:
            return os.stat(os.path.join(self._trees, info.key, "used")).st_mtime
        except OSError:
            return 0.0

    # -- resolutions -----------------------------------------------------------

    def load_resolution(self, reference: str) -> tuple[ResolvedImage, float] | None:
        """A cached resolution of a reference and when it was made, or None."""
        try:
            with open(self._ref_path(reference), "rb") as handle:
                data = json.load(handle)
            image = _image_from_json(data["image"])
            return image, float(data["resolved"])
        except (OSError, ValueError, TypeError, KeyError, BlobserveError):
            return None

    def store_resolution(self, reference: str, image: ResolvedImage) -> None:
        """Record a reference's resolution, atomically."""
        data = {"reference": reference, "resolved": time.time(), "image": asdict(image)}
        _write_json(self._ref_path(reference), data)

    def _ref_path(self, reference: str) -> str:
        name = hashlib.sha256(reference.encode()).hexdigest()
        return os.path.join(self._refs, f"{name}.json")


def _image_from_json(data: dict[str, Any]) -> ResolvedImage:
    return ResolvedImage(
        reference=data["reference"],
        manifest_digest=data["manifest_digest"],
        media_type=data["media_type"],
        config=_descriptor(data["config"]),
        layers=tuple(_descriptor(layer) for layer in data["layers"]),
    )


def _descriptor(data: dict[str, Any]) -> Descriptor:
    return Descriptor(
        media_type=data["media_type"],
        digest=data["digest"],
        size=data["size"],
        urls=tuple(data.get("urls") or ()),
        platform=data.get("platform"),
    )


def _write_json(path: str, data: Any) -> None:
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def _remove_tree(path: str) -> None:
    """Delete a directory tree, making unwritable directories writable first."""

    def retry_writable(function: Any, failed: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        function(failed)

    try:
        shutil.rmtree(path, onerror=retry_writable)
    except FileNotFoundError:
        pass
