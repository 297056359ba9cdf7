"""Shared blob space and prefetch pool, through a real gunicorn and a real registry.

Many workers asking for one cold image pull each layer once; a killed unpacking
process leaves nothing behind; eviction never takes a file from under a reader;
and unpacking runs outside the serving worker's GIL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from imagebuilder import ImageSpec, build_layer
from registries import ImageFactory, Registry, build_and_push, unique_repo
from servers import Gunicorn, registry_config, repo_name, tree_bytes, wait_for

StartServer = Callable[..., Gunicorn]

LARGE_FILES = 20_000


def layer_files(seed: int, count: int, size: int) -> dict[str, bytes]:
    """``count`` files of ``size`` random bytes under www/, reproducible by seed."""
    rng = random.Random(seed)
    return {f"www/l{seed}-{i}.bin": rng.randbytes(size) for i in range(count)}


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.exists() else []


@pytest.fixture(scope="module")
def large_image(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """An image of LARGE_FILES small files in one layer, built once; its reference."""
    files = {
        f"www/d{i // 1000}/f{i}.js": f"// file {i}\n" * 20 for i in range(LARGE_FILES)
    }
    layout = tmp_path_factory.mktemp("large-image")
    reference, _ = build_and_push(
        registry, ImageSpec([build_layer(files)]), layout, unique_repo("large")
    )
    return reference


# --- one pull per image, however many ask ---------------------------------------------


def test_concurrent_first_requests_share_one_pull(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    layers = [layer_files(seed, 3, 40_000) for seed in (1, 2, 3)]
    reference, built = image_factory(ImageSpec([build_layer(f) for f in layers]))
    config = registry_config(registry, {repo_name(reference): {}}, timeout="60s")
    server = gunicorn_factory(config, workers=4, threads=8)
    server.wait_for_workers()
    wanted = [(name, data) for files in layers for name, data in files.items()]
    registry.clear_log()

    def fetch(index: int) -> tuple[int, bool]:
        name, data = wanted[index % len(wanted)]
        response = server.get(f"/{reference}/{name}")
        return response.status_code, response.content == data

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(fetch, range(64)))

    assert results == [(200, True)] * 64
    assert [registry.blob_gets(layer) for layer in built.layers] == [1, 1, 1]
    assert len(listing(server.blob_space / "trees")) == 1
    assert listing(server.blob_space / "tmp") == []


# --- a killed unpacking process -------------------------------------------------------


def test_killed_unpack_fails_cleanly_and_leaves_nothing(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    first, second = {"www/one.txt": "first layer"}, {"www/two.txt": "second layer"}
    spec = ImageSpec([build_layer(first), build_layer(second)])
    reference, built = image_factory(spec)
    config = registry_config(registry, {repo_name(reference): {}}, timeout="30s")
    server = gunicorn_factory(config)
    space = server.blob_space
    # The child stalls on the second layer's blob, with the first one unpacked.
    registry.add_fault(f"/blobs/{built.layers[1]}", delay=5.0)

    published: list[str] = []
    watching = threading.Event()
    watcher = threading.Thread(target=_watch_trees, args=(space, published, watching))
    watcher.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.get, f"/{reference}/www/one.txt")
            child = wait_for(_one(server.unpack_children), 20, "the unpacking child")
            unpacked = "tmp/*/fs/www/one.txt"
            wait_for(lambda: list(space.glob(unpacked)), 20, "the first layer unpacked")
            os.kill(child, signal.SIGKILL)
            failed = pending.result(timeout=30)
    finally:
        watching.set()
        watcher.join()

    assert 500 <= failed.status_code < 600
    assert failed.headers["Content-Type"].startswith("text/plain")
    assert "\n" not in failed.text.strip() and "Traceback" not in failed.text
    assert published == []
    assert listing(space / "tmp") == []

    again = server.get(f"/{reference}/www/two.txt")
    assert again.status_code == 200
    assert again.text == "second layer"
    assert listing(space / "tmp") == []
    (tree,) = listing(space / "trees")
    assert (space / "trees" / tree / "meta.json").exists()
    assert (space / "trees" / tree / "fs/www/one.txt").read_text() == "first layer"


def _one(find: Callable[[], list[int]]) -> Callable[[], int | None]:
    def probe() -> int | None:
        found = find()
        return found[0] if len(found) == 1 else None

    return probe


def _watch_trees(space: Path, seen: list[str], stop: threading.Event) -> None:
    """Record every name that appears in trees/ until stop is set."""
    while not stop.is_set():
        for name in listing(space / "trees"):
            if name not in seen:
                seen.append(name)
        time.sleep(0.005)


# --- eviction under readers -----------------------------------------------------------


@dataclass
class Readings:
    """What reader threads saw while images were pulled and evicted."""

    statuses: Counter[int]
    wrong: list[str]
    most_bytes: int


def test_eviction_never_takes_a_file_from_a_reader(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    tree_size = 4 * 30_000
    limit = 2 * tree_size + tree_size // 2
    images = []
    for seed in range(10, 15):
        files = layer_files(seed, 4, 30_000)
        images.append((image_factory(files)[0], files))
    repos: dict[str, dict[str, Any]] = {repo_name(ref): {} for ref, _ in images}
    space_config = {"maxSizeBytes": limit}
    config = registry_config(registry, repos, timeout="20s", blobSpace=space_config)
    server = gunicorn_factory(config, threads=8)

    readings = _read_while_pulling(server, images)

    assert readings.wrong == []
    assert readings.statuses[404] == 0, readings.statuses
    assert set(readings.statuses) <= {200, 503}, readings.statuses
    assert readings.most_bytes <= limit + tree_size
    held = _references_held(server.blob_space)
    evicted = [(ref, files) for ref, files in images if ref not in held]
    assert evicted, f"all of {len(images)} images still fit"
    reference, files = evicted[0]
    name, data = next(iter(files.items()))
    back = server.get(f"/{reference}/{name}")
    assert back.status_code == 200 and back.content == data


def _references_held(space: Path) -> set[str]:
    """The references whose trees are published, from their meta.json."""
    held = set()
    for meta in space.glob("trees/*/meta.json"):
        held.add(json.loads(meta.read_text())["reference"])
    return held


def _read_while_pulling(
    server: Gunicorn, images: list[tuple[str, dict[str, bytes]]]
) -> Readings:
    """Pull images one by one while 4 threads read files of those already pulled."""
    readings = Readings(Counter(), [], 0)
    available: list[tuple[str, dict[str, bytes]]] = []
    stop = threading.Event()

    def read(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            reference, files = rng.choice(available)
            name = rng.choice(sorted(files))
            try:
                response = server.get(f"/{reference}/{name}")
            except requests.RequestException as exc:
                readings.wrong.append(f"{reference}/{name}: {exc}")
                continue
            readings.statuses[response.status_code] += 1
            if response.status_code == 200 and response.content != files[name]:
                readings.wrong.append(f"{reference}/{name}")
            if response.status_code == 503 and "Retry-After" not in response.headers:
                readings.wrong.append(f"503 without Retry-After: {response.text}")

    def measure() -> None:
        while not stop.is_set():
            total = tree_bytes(server.blob_space)
            readings.most_bytes = max(readings.most_bytes, total)
            time.sleep(0.01)

    first = images[0]
    assert server.get(f"/{first[0]}/{next(iter(first[1]))}").status_code == 200
    available.append(first)
    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    threads.append(threading.Thread(target=measure))
    for thread in threads:
        thread.start()
    try:
        for reference, files in images[1:]:
            response = server.get(f"/{reference}/{next(iter(files))}")
            assert response.status_code == 200, response.text
            available.append((reference, files))
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return readings


# --- the GIL --------------------------------------------------------------------------


def test_cached_requests_stay_fast_while_a_large_image_unpacks(
    registry: Registry,
    image_factory: ImageFactory,
    gunicorn_factory: StartServer,
    large_image: str,
) -> None:
    small, _ = image_factory({"www/small.txt": "small"})
    repos: dict[str, dict[str, Any]] = {
        repo_name(small): {},
        repo_name(large_image): {},
    }
    config = registry_config(registry, repos, timeout="120s")
    server = gunicorn_factory(config, workers=1, threads=4)
    path = f"/{small}/www/small.txt"
    assert server.get(path).text == "small"

    idle = [_latency(server, path) for _ in range(200)]
    with ThreadPoolExecutor(1) as pool:
        cold = pool.submit(server.get, f"/{large_image}/www/d0/f0.js")
        unpacking = "tmp/*/fs/www/d0/f0.js"
        wait_for(lambda: list(server.blob_space.glob(unpacking)), 60, "the unpack")
        during = []
        for _ in range(200):
            latency = _latency(server, path)
            if not cold.done():
                during.append(latency)
        assert cold.result(timeout=120).status_code == 200

    idle_p50, idle_p95 = _percentiles(idle)
    busy_p50, busy_p95 = _percentiles(during)
    print(
        f"\ncached small file, 1 worker x 4 threads: idle p50 {idle_p50 * 1e3:.1f} ms"
        f" p95 {idle_p95 * 1e3:.1f} ms; during a {LARGE_FILES}-file unpack"
        f" ({len(during)} samples) p50 {busy_p50 * 1e3:.1f} ms"
        f" p95 {busy_p95 * 1e3:.1f} ms"
    )
    assert len(during) >= 100, "the unpack ended too soon: make the image larger"
    assert busy_p95 < 10 * idle_p95 + 0.020


def _latency(server: Gunicorn, path: str) -> float:
    started = time.perf_counter()
    response = server.get(path)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    return elapsed


def _percentiles(samples: list[float]) -> tuple[float, float]:
    """The 50th and 95th percentiles of a list of latencies."""
    cuts = statistics.quantiles(samples, n=20)
    return statistics.median(samples), cuts[18]
