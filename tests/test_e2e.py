"""Serve images over HTTP under gunicorn: a real registry, a real gunicorn, 2 workers.

Most tests share one server (module scope) over a handful of images pushed once;
the tests that need another configuration (a 1 s tag TTL, a 1 s timeout, no
config at all, a broken config) start their own.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from imagebuilder import Dir, ImageSpec, Spec, Symlink, Whiteout, build_layer
from registries import (
    ImageFactory,
    Registry,
    RegistryClient,
    build_and_push,
    unique_repo,
)
from servers import (
    REPO_ROOT,
    Gunicorn,
    raw_request,
    registry_config,
    repo_name,
    wait_for,
)

StartServer = Callable[..., Gunicorn]

BINARY = random.Random(7).randbytes(300_000)
INDEX = "<!doctype html><title>{{NAME}}</title><script src=app.js></script>\n"
SITE: Spec = {
    "www": Dir(),
    "www/index.html": INDEX,
    "www/app.js": "console.log('app');\n",
    "www/mod.mjs": "export const x = 1;\n",
    "www/style.css": "body { color: red }\n",
    "www/page.html": "<p>page</p>\n",
    "www/logo.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>\n",
    "www/bin.wasm": b"\0asm\1\0\0\0",
    "www/font.woff2": b"wOF2" + bytes(60),
    "www/pic.webp": b"RIFF\x10\0\0\0WEBPVP8 ",
    "www/app.js.map": '{"version":3,"sources":[]}',
    "www/data.json": '{"answer": 42}',
    "www/blob.bin": BINARY,
    "www/sub/index.html": "<p>sub</p>\n",
    "www/empty": Dir(),
    "www/empty/listed.txt": "a directory listing would show this name",
    "www/escape": Symlink("../secret.txt"),
    "www/passwd": Symlink("/etc/passwd"),
    "secret.txt": "outside the workdir",
}
CONTENT_TYPES = {
    "app.js": "text/javascript",
    "mod.mjs": "text/javascript",
    "style.css": "text/css",
    "page.html": "text/html",
    "logo.svg": "image/svg+xml",
    "bin.wasm": "application/wasm",
    "font.woff2": "font/woff2",
    "pic.webp": "image/webp",
    "app.js.map": "application/json",
    "data.json": "application/json",
}
LAYERS: list[Spec] = [
    {"www/a.txt": "first", "www/b.txt": "kept", "www/gone.txt": "deleted later"},
    {"www/a.txt": "second", "www/c.bin": BINARY[:70_000], "www/gone.txt": Whiteout()},
    {"www/d": Dir(), "www/d/e.txt": "third layer"},
]
MERGED = {
    "a.txt": b"second",
    "b.txt": b"kept",
    "c.bin": BINARY[:70_000],
    "d/e.txt": b"third layer",
}
TAG_TTL = 90
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Site:
    """The shared server and the references of the images it serves."""

    server: Gunicorn
    registry: Registry
    site: str
    site_by_digest: str
    layered: str
    warm: str


def push(registry: Registry, root: Path, spec: ImageSpec | Spec) -> tuple[str, str]:
    """Push an image to a new repository; return its references by tag and digest."""
    repo = unique_repo("e2e")
    layout = root / f"layout-{repo.replace('/', '-')}"
    reference, built = build_and_push(registry, spec, layout, repo)
    return reference, f"{repo_name(reference)}@{built.digest}"


@pytest.fixture(scope="module")
def served(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """One gunicorn (2 workers) serving a site, a layered image and a cold image."""
    root = tmp_path_factory.mktemp("e2e")
    site, site_by_digest = push(registry, root, SITE)
    layered, _ = push(registry, root, ImageSpec([build_layer(s) for s in LAYERS]))
    warm, _ = push(registry, root, {"www/index.html": "warm", "www/w.txt": "cold"})

    inline = [{"search": "{{NAME}}", "replacement": "${name}"}]
    repos: dict[str, dict[str, Any]] = {
        repo_name(site): {"workdir": "/www", "inlineStatic": inline},
        repo_name(layered): {"workdir": "/www"},
        repo_name(warm): {"workdir": "/www"},
    }
    config = registry_config(registry, repos, timeout="30s", tagTTL=f"{TAG_TTL}s")
    with Gunicorn(config, root) as server:
        server.wait_for_workers()
        yield Site(server, registry, site, site_by_digest, layered, warm)


def assert_error(response: requests.Response, status: int) -> None:
    """The status, and a one-line text/plain body without a stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    body = response.text
    assert body.strip() and "\n" not in body.strip(), body
    assert "Traceback" not in body and 'File "' not in body


# --- files, types and headers ---------------------------------------------------------


def test_files_of_a_single_layer_image_byte_for_byte(served: Site) -> None:
    for name in ("app.js", "blob.bin", "data.json", "bin.wasm"):
        response = served.server.get(f"/{served.site}/{name}")

        assert response.status_code == 200
        expected = SITE[f"www/{name}"]
        expected = expected.encode() if isinstance(expected, str) else expected
        assert response.content == expected


def test_files_of_a_multi_layer_image_are_the_merged_filesystem(served: Site) -> None:
    for name, expected in MERGED.items():
        response = served.server.get(f"/{served.layered}/{name}")
        assert response.status_code == 200
        assert response.content == expected

    assert_error(served.server.get(f"/{served.layered}/gone.txt"), 404)


@pytest.mark.parametrize("name", sorted(CONTENT_TYPES))
def test_content_type_of_web_assets(served: Site, name: str) -> None:
    response = served.server.get(f"/{served.site}/{name}")

    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == CONTENT_TYPES[name]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_digest_reference_is_immutable(served: Site) -> None:
    response = served.server.get(f"/{served.site_by_digest}/app.js")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == IMMUTABLE
    assert response.headers["ETag"]


def test_tag_reference_may_be_cached_for_the_tag_ttl(served: Site) -> None:
    response = served.server.get(f"/{served.site}/app.js")

    assert response.status_code == 200
    directives = {d.strip() for d in response.headers["Cache-Control"].split(",")}
    assert directives == {"public", f"max-age={TAG_TTL}"}


def test_etag_answers_not_modified(served: Site) -> None:
    first = served.server.get(f"/{served.site}/style.css")
    etag = first.headers["ETag"]

    again = served.server.get(
        f"/{served.site}/style.css", headers={"If-None-Match": etag}
    )

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == etag


def test_single_range_is_partial_content(served: Site) -> None:
    response = served.server.get(
        f"/{served.site}/blob.bin", headers={"Range": "bytes=1000-1999"}
    )

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(BINARY)}"
    assert response.content == BINARY[1000:2000]


# --- the served root ------------------------------------------------------------------


def test_workdir_is_the_root_and_directories_serve_index_html(served: Site) -> None:
    for path in ("/", "/sub/", "/sub"):
        response = served.server.get(f"/{served.site}{path}")

        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith("text/html")
    assert served.server.get(f"/{served.site}/").text == INDEX
    assert served.server.get(f"/{served.site}/sub").text == "<p>sub</p>\n"


def test_a_directory_without_index_html_is_not_listed(served: Site) -> None:
    response = served.server.get(f"/{served.site}/empty/")

    assert_error(response, 404)
    assert "listed.txt" not in response.text


def test_inline_vars_fill_index_html_and_are_not_cached(served: Site) -> None:
    variables = json.dumps({"name": "Ada"})

    response = served.server.get(
        f"/{served.site}/", headers={"X-BlobServe-InlineVars": variables}
    )

    assert response.status_code == 200
    assert response.text == INDEX.replace("{{NAME}}", "Ada")
    assert response.headers["Cache-Control"] == "no-cache"
    plain = served.server.get(f"/{served.site}/index.html")
    assert plain.text == INDEX


def test_the_command_line_bind_replaces_the_configured_one(served: Site) -> None:
    stderr = served.server.stderr()

    assert f"Listening at: {served.server.url} (" in stderr
    assert "0.0.0.0" not in stderr


# --- warm-up --------------------------------------------------------------------------


def test_head_warms_the_cache_so_a_get_needs_no_registry(served: Site) -> None:
    warmed = served.server.request("HEAD", f"/{served.warm}")
    assert warmed.status_code == 200

    served.registry.clear_log()
    response = served.server.get(f"/{served.warm}/w.txt")

    assert response.status_code == 200
    assert response.text == "cold"
    assert served.registry.requests() == []


# --- refusals -------------------------------------------------------------------------


def test_repository_outside_the_allow_list_is_refused_offline(served: Site) -> None:
    served.registry.clear_log()

    response = served.server.get(f"/{served.registry.url}/not/listed:latest/app.js")

    assert_error(response, 403)
    assert served.registry.requests() == []


def test_missing_file_and_missing_tag_are_not_found(served: Site) -> None:
    served.registry.clear_log()
    untagged = repo_name(served.site)

    assert_error(served.server.get(f"/{served.site}/nothing.js"), 404)
    assert_error(served.server.get(f"/{untagged}/app.js"), 404)
    assert all("/manifests/" not in r.path for r in served.registry.requests())


def test_other_methods_are_not_allowed(served: Site) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = served.server.request(method, f"/{served.site}/app.js", data=b"x")

        assert_error(response, 405)
        assert response.headers["Allow"] == "GET, HEAD"


def test_websocket_upgrade_is_refused(served: Site) -> None:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }

    status, found, body = raw_request(
        served.server.url, "GET", f"/{served.site}/app.js", headers
    )

    assert status == 400
    assert found["content-type"].startswith("text/plain")
    assert "upgrade" not in found.get("connection", "").lower()
    assert b"console.log" not in body


@pytest.mark.parametrize(
    "inner",
    [
        "../secret.txt",
        "sub/../../secret.txt",
        "%2e%2e/secret.txt",
        "..%2fsecret.txt",
        "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "escape",
        "passwd",
    ],
)
def test_paths_never_leave_the_workdir(served: Site, inner: str) -> None:
    status, found, body = raw_request(
        served.server.url, "GET", f"/{served.site}/{inner}"
    )

    assert status == 404, body
    assert found["content-type"].startswith("text/plain")
    assert b"outside the workdir" not in body and b"root:" not in body


# --- its own servers ------------------------------------------------------------------


def test_a_moved_tag_is_seen_after_the_tag_ttl_and_not_before(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    repo = unique_repo("e2e-moving")
    old, old_built = image_factory({"f.txt": "old"}, repo=repo, tag="latest")
    image_factory({"f.txt": "new"}, repo=repo, tag="next")
    config = registry_config(registry, {repo_name(old): {}}, tagTTL="1s")
    server = gunicorn_factory(config)
    path = f"/{old}/f.txt"
    # Pull the tree by digest first, so resolving the tag below is quick and the
    # tag's one-second freshness starts just before the move.
    assert server.get(f"/{repo_name(old)}@{old_built.digest}/f.txt").text == "old"
    assert server.get(path).text == "old"

    client = RegistryClient(registry)
    moved = client.get_manifest(repo, "next")
    client.put_manifest(repo, "latest", moved.content, moved.headers["Content-Type"])
    right_after = server.get(path)

    assert right_after.status_code == 200
    assert right_after.text == "old"
    wait_for(lambda: server.get(path).text == "new", 15, "the moved tag served")


def test_a_slow_pull_answers_503_and_goes_on(
    registry: Registry, image_factory: ImageFactory, gunicorn_factory: StartServer
) -> None:
    reference, built = image_factory({"slow.txt": "worth the wait"})
    layer = built.layers[0]
    config = registry_config(registry, {repo_name(reference): {}}, timeout="1s")
    server = gunicorn_factory(config)
    registry.clear_log()
    registry.add_fault(f"/blobs/{layer}", delay=3.0)

    first = server.get(f"/{reference}/slow.txt")

    assert_error(first, 503)
    assert first.headers["Retry-After"]

    def served() -> str | None:
        response = server.get(f"/{reference}/slow.txt")
        return response.text if response.status_code == 200 else None

    assert wait_for(served, 20, "the pull finished", 0.2) == "worth the wait"
    assert registry.blob_gets(layer) == 1


def test_readme_demo_runs_without_a_config(tmp_path: Path) -> None:
    site = REPO_ROOT / "blobserve" / "demo" / "site" / "www"
    base = "/demo.local/blobserve/demo:latest/"

    with Gunicorn(None, tmp_path) as server:
        index = server.get(base)
        names = ("style.css", "app.js", "logo.svg")
        assets = {name: server.get(base + name) for name in names}
        announced = f"open {server.url}{base}"
        wait_for(lambda: announced in server.stdout(), 5, "the demo URL line")

    assert index.status_code == 200
    assert index.headers["Content-Type"].startswith("text/html")
    assert list(server.blob_space.glob("trees/*/fs/www/index.html"))
    for name, response in assets.items():
        assert name in index.text
        assert response.status_code == 200, name
        assert response.content == (site / name).read_bytes()


def test_a_bad_config_stops_gunicorn_naming_file_and_field(tmp_path: Path) -> None:
    server = Gunicorn({"blobserve": {"timeout": "soon"}}, tmp_path)

    status = server.run_to_exit()

    stderr = server.stderr()
    assert status == 1, server.log()
    assert str(server.config_path) in stderr
    assert re.search(r"blobserve\.timeout: .*soon", stderr), stderr
    assert "Traceback" not in server.log()
