"""The puller in process against a real registry: shared resolutions, tag expiry,
one pull per image, and serving around a failing registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blobserve.cache import BlobSpace
from blobserve.errors import NotFound
from blobserve.oci.reference import parse_reference
from blobserve.oci.registry import ClientOptions
from blobserve.oci.sources import SourceSpec
from blobserve.oci.types import Limits
from blobserve.workers import Puller, PullerSettings
from registries import Registry

PullerFactory = Callable[..., Puller]


@pytest.fixture
def puller_factory(registry: Registry, blob_space: Path) -> Iterator[PullerFactory]:
    made: list[Puller] = []

    def make(tag_ttl: float = 60.0, isolate: bool = False) -> Puller:
        options = ClientOptions(
            insecure_registries=(registry.url,), retries=1, backoff=0
        )
        settings = PullerSettings(
            spec=SourceSpec(options=options),
            limits=Limits(),
            tag_ttl=tag_ttl,
            isolate=isolate,
        )
        puller = Puller(BlobSpace(str(blob_space), 1 << 30), settings)
        made.append(puller)
        return puller

    yield make
    for puller in made:
        puller.shutdown()


def test_a_second_process_reuses_resolution_and_tree(
    registry: Registry, image_factory: Callable[..., Any], puller_factory: PullerFactory
) -> None:
    reference, built = image_factory({"a.txt": b"a"})
    ref = parse_reference(reference)
    first, second = puller_factory(), puller_factory()
    first.get(ref, 60)
    registry.clear_log()

    tree = second.get(ref, 60)

    assert (Path(tree.root) / "a.txt").read_bytes() == b"a"
    assert registry.requests() == []


def test_an_expired_tag_is_resolved_once_for_all_processes(
    registry: Registry, image_factory: Callable[..., Any], puller_factory: PullerFactory
) -> None:
    reference, _ = image_factory({"a.txt": b"a"})
    ref = parse_reference(reference)
    first, second = puller_factory(tag_ttl=0.5), puller_factory(tag_ttl=0.5)
    first.get(ref, 60)
    second.get(ref, 60)
    time.sleep(0.6)
    registry.clear_log()

    first.get(ref, 60)
    second.get(ref, 60)

    assert registry.manifest_gets("latest") == 1


def test_concurrent_callers_share_one_pull(
    registry: Registry, image_factory: Callable[..., Any], puller_factory: PullerFactory
) -> None:
    reference, built = image_factory({"a.txt": b"a" * 100_000})
    ref = parse_reference(reference)
    registry.add_fault(f"/blobs/{built.layers[0]}", delay=0.5)
    puller = puller_factory(isolate=True)

    with ThreadPoolExecutor(16) as pool:
        trees = list(pool.map(lambda _: puller.get(ref, 60), range(16)))

    assert len({tree.key for tree in trees}) == 1
    assert registry.blob_gets(built.layers[0]) == 1


def test_a_failing_registry_serves_the_last_resolution(
    registry: Registry, image_factory: Callable[..., Any], puller_factory: PullerFactory
) -> None:
    reference, _ = image_factory({"a.txt": b"a"})
    ref = parse_reference(reference)
    puller = puller_factory(tag_ttl=0.2)
    before = puller.get(ref, 60)
    time.sleep(0.3)
    registry.add_fault("/manifests/latest", status=503, times=2)
    try:
        after = puller.get(ref, 60)
        registry.clear_log()
        again = puller.get(ref, 60)
    finally:
        registry.clear_faults()

    assert after.key == again.key == before.key
    assert (Path(after.root) / "a.txt").read_bytes() == b"a"
    assert registry.requests() == []


def test_a_missing_tag_is_not_asked_again_at_once(
    registry: Registry, image_factory: Callable[..., Any], puller_factory: PullerFactory
) -> None:
    reference, _ = image_factory({"a.txt": b"a"})
    missing = parse_reference(reference.rpartition(":")[0] + ":no-such-tag")
    puller = puller_factory()
    registry.clear_log()

    for _ in range(5):
        with pytest.raises(NotFound):
            puller.get(missing, 60)

    manifests = [r for r in registry.requests() if "/manifests/" in r.path]
    assert len(manifests) == 1
