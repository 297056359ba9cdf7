"""The app in one process (Flask's test client) against a real registry: extraction-time
replacements, pre-pulls and logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from flask import Flask

from blobserve import create_app
from blobserve.logs import JsonFormatter
from blobserve.oci.reference import parse_reference
from registries import Registry, free_port
from servers import registry_config, repo_name

AppFactory = Callable[[dict[str, Any]], Flask]


@pytest.fixture
def app_factory(tmp_path: Path, blob_space: Path) -> Iterator[AppFactory]:
    apps: list[Flask] = []

    def make(config: dict[str, Any]) -> Flask:
        config["blobserve"].setdefault(
            "blobSpace", {"location": str(blob_space), "maxSizeBytes": 1 << 30}
        )
        path = tmp_path / f"config-{len(apps)}.json"
        path.write_text(json.dumps(config))
        app = create_app(str(path))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["blobserve"].puller.shutdown()


def test_replacements_are_applied_before_the_tree_is_published(
    registry: Registry, image_factory: Callable[..., Any], app_factory: AppFactory
) -> None:
    reference, _ = image_factory(
        {
            "ide/product.json": b'{"url": "https://upstream.example"}',
            "ide/index.html": b"<p>https://upstream.example</p>",
        }
    )
    replacements = [
        {
            "path": "/ide/product.json",
            "search": "https://upstream.example",
            "replacement": "https://mirror.example",
        }
    ]
    repo = repo_name(reference)
    app = app_factory(registry_config(registry, {repo: {"replacements": replacements}}))
    client = app.test_client()

    product = client.get(f"/{reference}/ide/product.json")
    page = client.get(f"/{reference}/ide/index.html")

    assert product.status_code == 200
    assert product.data == b'{"url": "https://mirror.example"}'
    assert page.data == b"<p>https://upstream.example</p>"


def test_other_replacements_make_another_tree(
    registry: Registry, image_factory: Callable[..., Any], app_factory: AppFactory
) -> None:
    reference, _ = image_factory({"a.txt": b"colour"})
    repo = repo_name(reference)
    plain = app_factory(registry_config(registry, {repo: {}}))
    edited = app_factory(
        registry_config(
            registry,
            {
                repo: {
                    "replacements": [
                        {"path": "/a.txt", "search": "colour", "replacement": "color"},
                    ]
                }
            },
        )
    )

    first = plain.test_client().get(f"/{reference}/a.txt")
    second = edited.test_client().get(f"/{reference}/a.txt")

    assert (first.data, second.data) == (b"colour", b"color")
    assert first.headers["ETag"] != second.headers["ETag"]


def test_a_replacement_of_a_missing_file_fails_the_pull_clearly(
    registry: Registry, image_factory: Callable[..., Any], app_factory: AppFactory
) -> None:
    reference, _ = image_factory({"a.txt": b"x"})
    repo = repo_name(reference)
    config = registry_config(
        registry,
        {
            repo: {
                "replacements": [
                    {"path": "/missing.json", "search": "x", "replacement": "y"},
                ]
            }
        },
    )
    client = app_factory(config).test_client()

    response = client.get(f"/{reference}/a.txt")

    assert response.status_code == 502
    assert "/missing.json" in response.text
    assert response.text.count("\n") == 1


def test_pre_pulls_make_the_process_ready(
    registry: Registry, image_factory: Callable[..., Any], app_factory: AppFactory
) -> None:
    reference, _ = image_factory({"a.txt": b"x"})
    repo, _, tag = reference.rpartition(":")
    app = app_factory(registry_config(registry, {repo: {"prePull": [tag]}}))
    service = app.extensions["blobserve"]

    service.start()
    for future in service.readiness._prepulls.values():
        future.result(60)

    assert service.puller.cached(parse_reference(reference)) is not None
    assert service.readiness.problem() is None


def test_json_log_lines_are_objects_with_pid_and_message() -> None:
    record = logging.LogRecord(
        "blobserve.workers", logging.INFO, __file__, 1, "pulled %s", ("r:1",), None
    )

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "pulled r:1"
    assert entry["level"] == "INFO" and entry["logger"] == "blobserve.workers"
    assert isinstance(entry["pid"], int) and entry["time"].endswith("Z")


def test_json_logs_setting_makes_every_log_line_json(
    gunicorn_factory: Callable[..., Any],
) -> None:
    demo = "demo.local/blobserve/demo"
    layout = Path(__file__).resolve().parent.parent / "blobserve" / "demo" / "layout"
    config = {
        "blobserve": {
            "repos": {demo: {"workdir": "/www"}},
            "layouts": {demo: str(layout)},
            "jsonLogs": True,
        }
    }
    server = gunicorn_factory(config)

    assert server.get(f"/{demo}:latest/app.js").status_code == 200
    assert server.get(f"/{demo}:latest/missing.js").status_code == 404
    server.stop()

    output = server.stderr() + server.stdout()
    lines = [line for line in output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    messages = " ".join(entry["message"] for entry in entries)
    assert "pulled demo.local/blobserve/demo:latest" in messages
    assert "GET /demo.local/blobserve/demo:latest/missing.js" in messages


def test_the_probe_listener_survives_a_command_line_bind(
    gunicorn_factory: Callable[..., Any],
) -> None:
    probe = free_port()
    config = {
        "blobserve": {"repos": {}},
        "readinessProbeAddr": f"127.0.0.1:{probe}",
    }
    server = gunicorn_factory(config)

    response = requests.get(f"http://127.0.0.1:{probe}/live", timeout=10)

    assert response.status_code == 200
    assert server.get("/live").status_code == 200


def test_pre_pull_entries_are_tags_or_digests(tmp_path: Path) -> None:
    from blobserve.config import parse_config
    from blobserve.service import prepull_references

    digest = "sha256:" + "a" * 64
    config = parse_config(
        {
            "blobserve": {
                "repos": {"r.test/app": {"prePull": ["v1", digest, f"@{digest}"]}}
            }
        }
    )

    assert [str(ref) for ref in prepull_references(config)] == [
        "r.test/app:v1",
        f"r.test/app@{digest}",
        f"r.test/app@{digest}",
    ]
