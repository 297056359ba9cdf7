"""One serving process's state: config, blob space, puller and readiness."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future

from .cache import BlobSpace
from .config import Config
from .errors import BlobserveError
from .oci.reference import Reference, parse_reference
from .oci.registry import ClientOptions, Observer
from .oci.sources import SourceSpec
from .workers import Puller, PullerSettings, PullEvents, Replacements, Tree

log = logging.getLogger(__name__)

REGISTRY_CHECK_INTERVAL = 10.0


def source_spec(config: Config) -> SourceSpec:
    """The picklable description of the image sources a config names."""
    options = ClientOptions(
        platform=config.platform,
        insecure_registries=config.insecure_registries,
    )
    layouts = tuple(sorted(config.layouts.items()))
    return SourceSpec(options=options, docker_auth=config.docker_auth, layouts=layouts)


def prepull_references(config: Config) -> list[Reference]:
    """The references listed under `prePull`, tags and digests alike."""
    refs = []
    for name, repo in sorted(config.repos.items()):
        for entry in repo.prepull:
            if entry.startswith("@"):
                text = f"{name}{entry}"
            elif entry.startswith("sha256:"):
                text = f"{name}@{entry}"
            else:
                text = f"{name}:{entry}"
            refs.append(parse_reference(text))
    return refs


class Service:
    """Everything a request handler needs, created once per process."""

    def __init__(
        self,
        config: Config,
        *,
        events: PullEvents | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.config = config
        self.space = BlobSpace(
            config.blob_space.location, config.blob_space.max_size_bytes
        )
        settings = PullerSettings(
            spec=source_spec(config),
            limits=config.limits,
            tag_ttl=config.tag_ttl,
            workers=config.prefetch_workers,
            json_logs=config.json_logs,
        )
        self.puller = Puller(
            self.space, settings, self.replacements_for, events, observe
        )
        self.readiness = Readiness(self)
        self._linked: set[tuple[str, str]] = set()
        self._served_roots: dict[tuple[str, str], str] = {}
        self._started = False
        self._start_lock = threading.Lock()

    def replacements_for(self, ref: Reference) -> Replacements:
        repo = self.config.repo(ref.name)
        if repo is None:
            return ()
        return tuple((r.path, r.search, r.replacement) for r in repo.replacements)

    def served_root(self, tree: Tree, workdir: str) -> str | None:
        """The real path of a tree's workdir, or None when the tree is gone.

        Trees are published under fixed paths, so the answer is kept once the
        tree has been seen.
        """
        key = (tree.root, workdir)
        found = self._served_roots.get(key)
        if found is None:
            found = os.path.realpath(os.path.join(tree.root, workdir.lstrip("/")))
            if not os.path.isdir(tree.root):
                return None
            if len(self._served_roots) >= 4096:
                self._served_roots.clear()
            self._served_roots[key] = found
        return found

    def link_for_front(self, text: str, tree: Tree, workdir: str) -> None:
        """Let a static front serve this digest reference, as the client wrote it."""
        marker = (text, tree.key)
        if marker in self._linked:
            return
        self.space.link_reference(text, tree.key, workdir)
        self._linked.add(marker)

    def start(self) -> None:
        """Start pre-pulling the configured images (once per process)."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            self._started = True
        self.readiness.start()
        self.puller.submit_task(self.puller.collect_garbage)


class Readiness:
    """Whether this process should receive traffic; cheap to ask.

    Not ready until every `prePull` image is in the blob space, nor while a
    registry in use cannot be reached. The first probe checks the registries
    itself; after that they are checked in the background, when probes come, at
    most every REGISTRY_CHECK_INTERVAL seconds, and a probe reads the last result.
    """

    def __init__(self, service: Service) -> None:
        self._service = service
        self._prepulls: dict[str, Future[Tree]] = {}
        self._registries = sorted(
            {
                parse_reference(f"{name}:probe").registry
                for name in service.config.repos
                if name not in service.config.layouts
            }
        )
        self._registry_problem: str | None = None
        self._checked: float | None = None
        self._checking = threading.Lock()

    def start(self) -> None:
        for ref in prepull_references(self._service.config):
            self._prepulls[str(ref)] = self._service.puller.submit(ref)

    def problem(self) -> str | None:
        """A one-line reason this process is not ready, or None when it is."""
        self._service.start()
        for name, future in self._prepulls.items():
            if not future.done():
                return f"pre-pulling {name}"
            error = future.exception()
            if error is not None:
                self._retry(name)
                return f"pre-pull of {name} failed: {error}"
        self._maybe_check_registries()
        return self._registry_problem

    def _retry(self, name: str) -> None:
        ref = parse_reference(name)
        self._prepulls[name] = self._service.puller.submit(ref)

    def _maybe_check_registries(self) -> None:
        if not self._registries:
            return
        checked = self._checked
        first = checked is None
        if checked is not None and time.monotonic() - checked < REGISTRY_CHECK_INTERVAL:
            return
        if not self._checking.acquire(blocking=first):
            return
        if first and self._checked is not None:
            self._checking.release()
            return

        self._checked = time.monotonic()
        if first:
            self._check_registries()
        else:
            threading.Thread(target=self._check_registries, daemon=True).start()

    def _check_registries(self) -> None:
        try:
            sources = self._service.puller.sources
            problem = None
            for registry in self._registries:
                try:
                    sources.registry.ping(registry)
                except BlobserveError as exc:
                    problem = str(exc)
            self._registry_problem = problem
        finally:
            self._checking.release()
