"""Operate it: Prometheus metrics from every worker, dead workers, and /ready.

The scrape endpoint runs in the gunicorn master and adds up the files every worker
(and every unpacking child) writes to the multiprocess directory. Counts are
compared as differences between two scrapes, so the /live probes gunicorn's start
sent are left out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from registries import (
    ImageFactory,
    Registry,
    build_and_push,
    free_port,
    unique_repo,
)
from servers import Gunicorn, parent_pid, registry_config, repo_name, wait_for

StartServer = Callable[..., Gunicorn]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SITE = {"www/index.html": "<p>metrics</p>", "www/app.js": "count()"}


def scrape(server: Gunicorn) -> Samples:
    """Every sample the master's endpoint exposes, by name and sorted labels."""
    response = requests.get(server.metrics_url, timeout=10)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def by_labels(samples: Samples, name: str) -> Counter[tuple[str, str]]:
    """The values of a method/code-labelled counter, by (method, code)."""
    found: Counter[tuple[str, str]] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name and value:
            found[dict(labels)["method"], dict(labels)["code"]] = int(value)
    return found


def value(samples: Samples, name: str) -> float | None:
    """The value of an unlabelled sample, None when it is not exposed."""
    return samples.get((name, ()))


def served_by_pid(metrics_dir: Path) -> Counter[int]:
    """Requests each process counted, read from its own multiprocess file."""
    served: Counter[int] = Counter()
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        for key, count, _timestamp, _position in MmapedDict.read_all_values_from_file(
            str(path)
        ):
            if json.loads(key)[1] == "http_server_requests_total":
                served[pid] += int(count)
    return served


def metrics_config(registry: Registry, repos: dict, **settings: object) -> dict:
    config = registry_config(registry, repos, **settings)
    config["prometheusAddr"] = f"127.0.0.1:{free_port()}"
    return config


def start_scraped(start: StartServer, config: dict) -> Gunicorn:
    """A 2-worker server whose scrape endpoint answers."""
    server = start(config)
    server.wait_for_workers()
    wait_for(lambda: _scrapes(server), 20, "the metrics endpoint")
    return server


def _scrapes(server: Gunicorn) -> bool:
    try:
        return requests.get(server.metrics_url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


# --- counts ---------------------------------------------------------------------------


def test_requests_of_both_workers_are_counted_exactly(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    reference, _ = image_factory(SITE)
    config = metrics_config(registry, {repo_name(reference): {"workdir": "/www"}})
    registry.clear_log()
    server = start_scraped(gunicorn_factory, config)
    workers = set(server.worker_pids())
    before = scrape(server)

    sent = _send_until_both_workers_served(server, reference, workers)

    after = scrape(server)
    counted = by_labels(after, "http_server_requests_total")
    counted.subtract(by_labels(before, "http_server_requests_total"))
    assert +counted == sent
    registry_calls = Counter((r.method, str(r.status)) for r in registry.requests())
    assert by_labels(after, "http_client_requests_total") == registry_calls
    assert value(after, "blobserve_cache_misses_total")
    assert value(after, "blobserve_cache_hits_total")
    assert value(after, "blobserve_pulled_bytes_total")
    assert value(after, "blobserve_unpack_duration_seconds_count") == 1
    assert value(after, "blobserve_pulls_in_flight") == 0


def _send_until_both_workers_served(
    server: Gunicorn, reference: str, workers: set[int]
) -> Counter[tuple[str, str]]:
    """Send batches of 200s, 404s and 405s on many connections until every worker
    has counted some; return what was sent, by (method, code)."""
    batch = [("GET", "app.js")] * 20 + [("GET", "none.js")] * 10
    batch += [("POST", "app.js")] * 5
    sent: Counter[tuple[str, str]] = Counter()

    def send(request: tuple[str, str]) -> tuple[str, str]:
        method, name = request
        response = server.request(method, f"/{reference}/{name}")
        return method, str(response.status_code)

    assert send(("GET", "index.html")) == ("GET", "200")
    sent["GET", "200"] += 1
    for _ in range(20):
        with ThreadPoolExecutor(16) as pool:
            sent.update(pool.map(send, batch))
        served = served_by_pid(server.metrics_dir)
        if all(served[pid] for pid in workers):
            break
    assert all(served[pid] for pid in workers), f"served by {served}, workers {workers}"
    assert set(sent) == {("GET", "200"), ("GET", "404"), ("POST", "405")}
    return sent


# --- a worker dies --------------------------------------------------------------------


def test_a_killed_worker_keeps_its_counts_and_drops_its_live_gauges(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    reference, built = image_factory(SITE)
    repos = {repo_name(reference): {"workdir": "/www"}}
    config = metrics_config(registry, repos, timeout="1s")
    server = start_scraped(gunicorn_factory, config)
    registry.add_fault(f"/blobs/{built.layers[0]}", delay=8.0)

    assert server.get(f"/{reference}/app.js").status_code == 503
    child = wait_for(lambda: server.unpack_children(), 20, "the unpacking child")[0]
    worker = parent_pid(child)
    assert worker is not None
    before = scrape(server)
    assert value(before, "blobserve_pulls_in_flight") == 1
    live_file = server.metrics_dir / f"gauge_livesum_{worker}.db"
    assert live_file.exists()

    server.kill_worker(worker)
    wait_for(lambda: not live_file.exists(), 20, "the dead worker's live gauge file")
    after = scrape(server)

    assert value(after, "blobserve_pulls_in_flight") == 0
    for key, count in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, 0) >= count, key


# --- readiness ------------------------------------------------------------------------


def test_ready_waits_for_pre_pulled_images(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    reference, built = image_factory(SITE)
    repos = {repo_name(reference): {"prePull": ["latest"], "workdir": "/www"}}
    registry.add_fault(f"/blobs/{built.layers[0]}", delay=4.0)
    server = gunicorn_factory(registry_config(registry, repos))

    first = server.get("/ready")

    assert first.status_code == 503
    assert first.text.startswith("not ready: pre-pulling")
    wait_for(lambda: server.get("/ready").status_code == 200, 30, "/ready", 0.2)
    assert any(server.blob_space.glob("trees/*/fs/www/app.js"))


def test_ready_fails_when_the_registry_goes_away(
    gunicorn_factory: StartServer, tmp_path: Path
) -> None:
    with Registry(tmp_path / "private-registry") as private:
        repo = unique_repo("ready")
        reference, _ = build_and_push(private, SITE, tmp_path / "layout", repo)
        repos = {repo_name(reference): {"prePull": ["latest"]}}
        server = gunicorn_factory(registry_config(private, repos))
        wait_for(lambda: server.get("/ready").status_code == 200, 30, "/ready", 0.2)

        private_url = private.url
        private.stop()

        def refused() -> str | None:
            response = server.get("/ready")
            return response.text if response.status_code == 503 else None

        answer = wait_for(refused, 40, "/ready refusing", 0.2)
    assert answer.startswith(f"not ready: registry {private_url} ")
    assert "\n" not in answer.strip()
