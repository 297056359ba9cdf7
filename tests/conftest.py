"""Fixtures shared by the tests: real registries, a blob space and an image factory.

The logic lives in ``imagebuilder.py`` and ``registries.py``; these fixtures only
start, hand out and stop. A registry that fails to start stops what it had started
before the error reaches pytest.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder import Built, ImageSpec, IndexSpec, Spec
from registries import (
    ImageFactory,
    Registry,
    TokenServer,
    build_and_push,
    unique_repo,
)
from servers import Gunicorn


SESSION_REGISTRIES = pytest.StashKey[list[Registry]]()


def _remember(request: pytest.FixtureRequest, running: Registry) -> None:
    request.config.stash.setdefault(SESSION_REGISTRIES, []).append(running)


@pytest.fixture(scope="session")
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """An anonymous docker-registry, reached at ``registry.url``."""
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        _remember(request, running)
        yield running


@pytest.fixture(scope="session")
def auth_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A docker-registry asking for htpasswd Basic auth (``.user``, ``.password``)."""
    users = {"blobserve": secrets.token_urlsafe(12)}
    with Registry(tmp_path_factory.mktemp("auth-registry"), users=users) as running:
        _remember(request, running)
        yield running


@pytest.fixture(scope="session")
def token_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A docker-registry asking for bearer tokens from ``.token_server``.

    ``.user``/``.password`` may do anything; anyone may pull ``public/*``.
    """
    root = tmp_path_factory.mktemp("token-registry")
    users = {"blobserve": secrets.token_urlsafe(12)}
    with TokenServer(root / "token-server", users=users) as server:
        with Registry(root / "registry", token_server=server) as running:
            _remember(request, running)
            yield running


@pytest.fixture
def blob_space(tmp_path: Path) -> Path:
    """An empty directory for one test's blob space."""
    path = tmp_path / "blob-space"
    path.mkdir()
    return path


@pytest.fixture
def image_factory(request: pytest.FixtureRequest, tmp_path: Path) -> ImageFactory:
    """Build an image and push it in one call; returns ``(reference, digests)``.

    ``image_factory(image, *, registry=None, repo=None, tag="latest", format=None)``
    takes an ``ImageSpec``, an ``IndexSpec`` (pushed whole) or a mapping of paths to
    contents (one gzip layer). It pushes to the anonymous ``registry`` fixture
    unless given another, into a fresh repository unless given ``repo``.
    """
    layouts = itertools.count()

    def make(
        image: ImageSpec | IndexSpec | Spec,
        *,
        registry: Registry | None = None,
        repo: str | None = None,
        tag: str = "latest",
        format: str | None = None,
    ) -> tuple[str, Built]:
        target = registry or request.getfixturevalue("registry")
        layout = tmp_path / f"layout-{next(layouts)}"
        return build_and_push(
            target, image, layout, repo or unique_repo(), tag, format=format
        )

    return make


@pytest.fixture
def gunicorn_factory(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start blobserve under gunicorn: ``gunicorn_factory(config, workers=2, ...)``.

    Takes the arguments of ``servers.Gunicorn`` after ``tmp_path`` and returns the
    running server; every server started is stopped when the test ends.
    """
    started: list[Gunicorn] = []

    def start(config: dict[str, Any] | None, **kwargs: Any) -> Gunicorn:
        server = Gunicorn(config, tmp_path, **kwargs)
        started.append(server)
        server.start()
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(autouse=True)
def _no_faults_outlive_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Faults injected into a session-wide registry end with the test that made them."""
    yield
    for running in request.config.stash.get(SESSION_REGISTRIES, []):
        if running.running:
            running.clear_faults()
