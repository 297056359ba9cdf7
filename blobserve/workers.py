"""The prefetch pool: makes sure image trees exist, one pull per image at a time.

Each serving process has a thread pool (`prefetchWorkers` threads, started on first
use, so a fork never inherits it). A pull is one future, shared by every request,
CLI call and start-up pre-pull that wants the same reference; a caller may stop
waiting and the pull goes on. The CPU-heavy part, unpacking, runs in a small pool
of child processes (one per unpack), so a pull never holds the GIL of a process
serving requests.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from .cache import BlobSpace, tree_key
from .errors import BlobserveError, NotFound, PullInterrupted, PullPending
from .logs import TEXT_FORMAT, JsonFormatter
from .oci.reference import Reference, parse_reference
from .oci.registry import Observer
from .oci.sources import Sources, SourceSpec, UnpackResult, unpack_image
from .oci.types import Limits, ResolvedImage

log = logging.getLogger(__name__)

Replacements = tuple[tuple[str, str, str], ...]

# How long a reference the source does not have is answered 404 without asking it
# again, so a flood of requests for a missing tag does not reach the registry.
MISSING_TTL = 5.0


@dataclass(frozen=True)
class Tree:
    """A published image tree and how it was reached."""

    reference: Reference
    image: ResolvedImage
    key: str
    root: str


class PullEvents:
    """Hooks for metrics; the defaults do nothing."""

    def cache_hit(self) -> None: ...

    def cache_miss(self) -> None: ...

    def pull_started(self) -> None: ...

    def pull_finished(self, result: UnpackResult | None, error: str | None) -> None: ...

    def space_changed(self, trees: int, space_bytes: int, evicted: int) -> None: ...


@dataclass(frozen=True)
class PullerSettings:
    """What the puller needs from the configuration."""

    spec: SourceSpec
    limits: Limits
    tag_ttl: float
    workers: int = 2
    isolate: bool = True
    json_logs: bool = False


class Puller:
    """Resolves references and builds their trees in the blob space."""

    def __init__(
        self,
        space: BlobSpace,
        settings: PullerSettings,
        replacements_for: Callable[[Reference], Replacements] = lambda ref: (),
        events: PullEvents | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.space = space
        self.settings = settings
        self.sources = Sources(settings.spec, observe)
        self._replacements_for = replacements_for
        self._events = events or PullEvents()
        self._resolved: dict[str, tuple[ResolvedImage, float]] = {}
        self._missing: dict[str, tuple[str, float]] = {}
        self._futures: dict[str, Future[Tree]] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._children: set[subprocess.Popen[bytes]] = set()
        self._pid = os.getpid()

    # -- public API ------------------------------------------------------------

    def get(self, ref: Reference, timeout: float | None) -> Tree:
        """The tree of an image, pulling it if needed and waiting at most timeout.

        Raises PullPending when the timeout passes (the pull goes on), or the
        pull's own error.
        """
        tree = self.cached(ref)
        if tree is not None:
            self._events.cache_hit()
            return tree
        missing = self._missing.get(str(ref))
        if missing is not None and missing[1] > time.monotonic():
            raise NotFound(missing[0], reference=str(ref))

        self._events.cache_miss()
        future = self.submit(ref)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            message = f"{ref} is still being pulled; try again shortly"
            raise PullPending(message, reference=str(ref)) from None

    def cached(self, ref: Reference) -> Tree | None:
        """The published tree of ref, if its resolution is trusted; no network."""
        resolution = self._fresh_resolution(ref)
        if resolution is None:
            return None
        key = tree_key(resolution, _fingerprint(self._replacements_for(ref)))
        root = self.space.lookup(key)
        if root is None:
            return None
        return Tree(ref, resolution, key, root)

    def submit(self, ref: Reference) -> Future[Tree]:
        """The one future that pulls ref in this process, started if none runs."""
        name = str(ref)
        with self._lock:
            future = self._futures.get(name)
            if future is not None:
                return future
            future = self._thread_pool().submit(self._pull, ref)
            self._futures[name] = future
        future.add_done_callback(lambda done: self._forget(name, done))
        return future

    def submit_task(self, task: Callable[[], object]) -> Future[object]:
        """Run a housekeeping task on the pool (errors are logged, not raised)."""

        def run() -> object:
            try:
                return task()
            except (BlobserveError, OSError):
                log.exception("background task %s failed", task)
                return None

        return self._thread_pool().submit(run)

    def shutdown(self) -> None:
        """Stop the pools; running pulls are abandoned."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            children = list(self._children)
        for child in children:
            child.kill()

    # -- resolving -------------------------------------------------------------

    def _fresh_resolution(self, ref: Reference) -> ResolvedImage | None:
        """The resolution of ref that is still trusted: this process's, or a newer
        one another process stored; None when there is none."""
        name = str(ref)
        entry = self._resolved.get(name)
        if entry is None or not self._trusted(ref, entry):
            stored = self.space.load_resolution(name)
            if stored is not None and (entry is None or stored[1] > entry[1]):
                entry = self._resolved[name] = stored
        if entry is None or not self._trusted(ref, entry):
            return None
        return entry[0]

    def _trusted(self, ref: Reference, entry: tuple[ResolvedImage, float]) -> bool:
        return ref.pinned or time.time() - entry[1] < self.settings.tag_ttl

    def resolve(self, ref: Reference) -> ResolvedImage:
        """A fresh resolution of ref: cached, or asked of its source and stored.

        When a tag's source fails and an older resolution exists, the older one is
        used with a warning rather than failing the request, and trusted for
        another tagTTL in this process, so an outage does not slow every request.
        """
        fresh = self._fresh_resolution(ref)
        if fresh is not None:
            return fresh
        try:
            image = self.sources.for_ref(ref).resolve(ref)
        except NotFound as exc:
            self._remember_missing(str(ref), exc.message)
            raise
        except BlobserveError as exc:
            stale = self._resolved.get(str(ref))
            if stale is None or exc.status < 500:
                raise
            log.warning("%s: serving the resolution from before: %s", ref, exc)
            with self._lock:
                self._resolved[str(ref)] = (stale[0], time.time())
            return stale[0]

        self.space.store_resolution(str(ref), image)
        with self._lock:
            self._resolved[str(ref)] = (image, time.time())
        return image

    def _remember_missing(self, name: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._missing) >= 1024:
                self._missing = {
                    key: entry for key, entry in self._missing.items() if entry[1] > now
                }
            self._missing[name] = (message, now + MISSING_TTL)

    # -- pulling ---------------------------------------------------------------

    def pull(
        self, ref: Reference, progress: Callable[[int], None] | None = None
    ) -> Tree:
        """Pull ref in the calling thread and process, reporting bytes read.

        For callers that serve no requests (the CLI): no pool, no child process.
        """
        return self._pull(ref, inline=True, progress=progress)

    def _pull(
        self,
        ref: Reference,
        inline: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Tree:
        image = self.resolve(ref)
        replacements = self._replacements_for(ref)
        key = tree_key(image, _fingerprint(replacements))

        def fill(dest: str) -> tuple[int, int]:
            return self._unpack(ref, image, dest, replacements, inline, progress)

        with self._key_lock(key):
            root = self.space.lookup(key)
            if root is None:
                root = self.space.build(key, str(ref), image, fill)
                self.collect_garbage(keep=key)
        return Tree(ref, image, key, root)

    def collect_garbage(self, keep: str | None = None) -> None:
        """Evict what no longer fits in the blob space and report its size."""
        collection = self.space.collect_garbage(keep)
        if collection is not None:
            self._events.space_changed(
                collection.trees, collection.bytes, len(collection.evicted)
            )

    def _unpack(
        self,
        ref: Reference,
        image: ResolvedImage,
        dest: str,
        replacements: Replacements,
        inline: bool,
        progress: Callable[[int], None] | None,
    ) -> tuple[int, int]:
        self._events.pull_started()
        result = None
        error = None
        try:
            if inline or not self.settings.isolate:
                result = unpack_image(
                    self.sources,
                    ref,
                    image,
                    dest,
                    self.settings.limits,
                    replacements,
                    progress,
                )
            else:
                result = self._unpack_in_child(ref, image, dest, replacements)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            self._events.pull_finished(result, error)

        log.info(
            "pulled %s (%s): %d layers, %d bytes pulled, %d bytes in %d entries, %.2fs",
            ref,
            image.manifest_digest,
            len(image.layers),
            result.pulled,
            result.bytes,
            result.entries,
            result.seconds,
        )
        return result.bytes, result.entries

    def _unpack_in_child(
        self,
        ref: Reference,
        image: ResolvedImage,
        dest: str,
        replacements: Replacements,
    ) -> UnpackResult:
        job = (
            self.settings.spec,
            str(ref),
            image,
            dest,
            self.settings.limits,
            replacements,
            self.settings.json_logs,
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "blobserve.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        with self._lock:
            self._children.add(child)
        try:
            output, _ = child.communicate(pickle.dumps(job))
        finally:
            with self._lock:
                self._children.discard(child)

        if child.returncode != 0 or not output:
            message = (
                f"{ref}: the unpacking process died (exit status {child.returncode})"
            )
            raise PullInterrupted(message, reference=str(ref))
        succeeded, payload = pickle.loads(output)
        if not succeeded:
            raise payload
        result: UnpackResult = payload
        return result

    # -- plumbing ----------------------------------------------------------------

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _forget(self, name: str, future: Future[Tree]) -> None:
        with self._lock:
            if self._futures.get(name) is future:
                del self._futures[name]

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._threads is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._threads = ThreadPoolExecutor(
                self.settings.workers, thread_name_prefix="blobserve-pull"
            )
        return self._threads


def _fingerprint(replacements: Replacements) -> str:
    return "\n".join("\0".join(edit) for edit in replacements)


def _child_main() -> int:
    """Run one unpack job read from stdin; write (succeeded, result or error) out.

    The job runs in its own process so that the GIL it holds while unpacking is
    not the serving process's; it dies with the thread that started it.
    """
    _die_with_parent()
    job = pickle.load(sys.stdin.buffer)
    spec, reference, image, dest, limits, replacements, json_logs = job
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    from .metrics import observe_client

    sources = Sources(spec, observe_client)
    try:
        ref = parse_reference(reference)
        result: tuple[bool, object] = (
            True,
            unpack_image(sources, ref, image, dest, limits, replacements),
        )
    except BlobserveError as exc:
        result = (False, exc)
    except OSError as exc:
        result = (False, BlobserveError(f"{reference}: unpacking failed: {exc}"))
    sys.stdout.buffer.write(pickle.dumps(result))
    return 0


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the thread that started it ends."""
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl is not available; an unpack may outlive its parent")


if __name__ == "__main__":
    sys.exit(_child_main())
