"""Prometheus metrics, safe for gunicorn's multiprocess mode.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before anything
imports prometheus_client, so every process writes its samples to that directory
and the master's scrape server adds them up. Anywhere else the metrics simply live
in the process.
"""

from __future__ import annotations

import os
import time

from flask import Flask, g, request
from flask.wrappers import Response
from prometheus_client import Counter, Gauge, Histogram

from .oci.sources import UnpackResult
from .workers import PullEvents

SERVER_REQUESTS = Counter(
    "http_server_requests_total", "HTTP requests served.", ["method", "code"]
)
SERVER_DURATION = Histogram(
    "http_server_requests_duration_seconds",
    "Time to answer an HTTP request, until the response starts.",
    ["method", "code"],
)
CLIENT_REQUESTS = Counter(
    "http_client_requests_total",
    "HTTP requests made to registries and token endpoints.",
    ["method", "code"],
)
CLIENT_DURATION = Histogram(
    "http_client_requests_duration_seconds",
    "Time until a registry or token endpoint answered (headers only).",
    ["method", "code"],
)
CACHE_HITS = Counter("blobserve_cache_hits_total", "Requests whose tree was ready.")
CACHE_MISSES = Counter(
    "blobserve_cache_misses_total", "Requests that had to wait for a pull."
)
PULLED_BYTES = Counter(
    "blobserve_pulled_bytes_total", "Compressed layer bytes read from image sources."
)
UNPACK_DURATION = Histogram(
    "blobserve_unpack_duration_seconds",
    "Time to pull and unpack one image.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
PULL_FAILURES = Counter(
    "blobserve_pull_failures_total", "Pulls that failed, by reason.", ["reason"]
)
PULLS_IN_FLIGHT = Gauge(
    "blobserve_pulls_in_flight", "Pulls running now.", multiprocess_mode="livesum"
)
EVICTIONS = Counter("blobserve_evictions_total", "Trees evicted from the blob space.")
SPACE_TREES = Gauge(
    "blobserve_space_trees",
    "Trees published in the blob space.",
    multiprocess_mode="mostrecent",
)
SPACE_BYTES = Gauge(
    "blobserve_space_bytes",
    "Bytes held by trees in the blob space.",
    multiprocess_mode="mostrecent",
)


def observe_client(method: str, code: str, seconds: float) -> None:
    """Record one request to a registry (an Observer for the registry client)."""
    CLIENT_REQUESTS.labels(method, code).inc()
    CLIENT_DURATION.labels(method, code).observe(seconds)


class MetricEvents(PullEvents):
    """The puller's events, counted."""

    def cache_hit(self) -> None:
        CACHE_HITS.inc()

    def cache_miss(self) -> None:
        CACHE_MISSES.inc()

    def pull_started(self) -> None:
        PULLS_IN_FLIGHT.inc()

    def pull_finished(self, result: UnpackResult | None, error: str | None) -> None:
        PULLS_IN_FLIGHT.dec()
        if result is not None:
            PULLED_BYTES.inc(result.pulled)
            UNPACK_DURATION.observe(result.seconds)
        if error is not None:
            PULL_FAILURES.labels(error).inc()

    def space_changed(self, trees: int, space_bytes: int, evicted: int) -> None:
        SPACE_TREES.set(trees)
        SPACE_BYTES.set(space_bytes)
        if evicted:
            EVICTIONS.inc(evicted)


def init_app(app: Flask) -> None:
    """Count every response, 404, 405 and 500 included, by method and code."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        # A CLI run inside the pod inherits the variable; the directory may be new.
        os.makedirs(directory, exist_ok=True)
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        GunicornPrometheusMetrics(app, export_defaults=False)

    @app.before_request
    def start_timer() -> None:
        g.blobserve_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        started = g.get("blobserve_started", time.perf_counter())
        code = str(response.status_code)
        SERVER_REQUESTS.labels(request.method, code).inc()
        SERVER_DURATION.labels(request.method, code).observe(
            time.perf_counter() - started
        )
        return response
