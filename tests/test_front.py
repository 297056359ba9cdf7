"""The nginx front from `blobserve nginx-config`, in front of a real gunicorn."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from blobserve.config import load_config
from blobserve.front import nginx_config
from registries import Registry, free_port
from servers import Gunicorn, registry_config, repo_name

SITE = {
    "www/index.html": b"<h1>front</h1>",
    "www/app.mjs": b"export const a = 1;\n",
    "www/style.css": b"h1 { color: red }\n",
    "www/code.wasm": b"\0asm\1\0\0\0",
    "www/sub/index.html": b"<p>sub</p>",
}


def from_blobserve(response: requests.Response) -> bool:
    """blobserve's ETag is the tree key; nginx's is mtime-size."""
    return "-" not in response.headers.get("ETag", "-")


class Front:
    def __init__(self, server: Gunicorn, tmp_path: Path) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{free_port()}"
        config = load_config(str(server.config_path))
        upstream = server.url.removeprefix("http://")
        listen = self.url.removeprefix("http://")
        tmp_path.mkdir(parents=True, exist_ok=True)
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"user {getpass.getuser()};\n"
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n"
            "events { worker_connections 256; }\nhttp {\n"
            f"    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
            f"    proxy_temp_path {tmp_path}/proxy;\n"
            + nginx_config(config, listen, upstream)
            + "}\n"
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise AssertionError("nginx is missing: apt-get install nginx-light")
        self.process = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait()

    def _wait(self) -> None:
        for _ in range(100):
            if self.process.poll() is not None:
                error = (
                    self.process.stderr.read().decode() if self.process.stderr else ""
                )
                raise AssertionError(f"nginx exited: {error}")
            try:
                requests.get(self.url + "/live", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("nginx did not answer within 5 s")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def front(
    registry: Registry,
    image_factory: Callable[..., Any],
    gunicorn_factory: Callable[..., Gunicorn],
    tmp_path: Path,
) -> Iterator[tuple[Front, str, str]]:
    reference, built = image_factory(SITE)
    repo = repo_name(reference)
    inline = [{"search": "front", "replacement": "${who}"}]
    config = registry_config(
        registry, {repo: {"workdir": "/www", "inlineStatic": inline}}
    )
    server = gunicorn_factory(config)
    running = Front(server, tmp_path / "nginx")
    try:
        yield running, f"/{repo}@{built.digest}", f"/{reference}"
    finally:
        running.stop()


def test_a_digest_reference_is_served_by_nginx_after_blobserve_served_it(
    front: tuple[Front, str, str],
) -> None:
    nginx, pinned, _ = front

    first = nginx.get(f"{pinned}/app.mjs")
    second = nginx.get(f"{pinned}/app.mjs")

    assert from_blobserve(first) and not from_blobserve(second)
    assert first.content == second.content == SITE["www/app.mjs"]
    for response in (first, second):
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert (
            response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        )
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_nginx_answers_like_blobserve(front: tuple[Front, str, str]) -> None:
    nginx, pinned, _ = front
    nginx.get(f"{pinned}/")

    index = nginx.get(f"{pinned}/")
    sub = nginx.get(f"{pinned}/sub")
    css = nginx.get(f"{pinned}/style.css")
    wasm = nginx.get(f"{pinned}/code.wasm")
    part = nginx.get(f"{pinned}/app.mjs", headers={"Range": "bytes=0-5"})

    assert not any(map(from_blobserve, (index, sub, css, wasm, part)))
    assert index.content == SITE["www/index.html"]
    assert sub.content == SITE["www/sub/index.html"] and sub.status_code == 200
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    assert wasm.headers["Content-Type"] == "application/wasm"
    assert part.status_code == 206 and part.content == b"export"


def test_what_nginx_cannot_answer_goes_to_blobserve(
    front: tuple[Front, str, str],
) -> None:
    nginx, pinned, tagged = front
    nginx.get(f"{pinned}/")

    by_tag = nginx.get(f"{tagged}/app.mjs")
    inline = nginx.get(f"{pinned}/", headers={"X-BlobServe-InlineVars": '{"who": "x"}'})
    missing = nginx.get(f"{pinned}/nope.js")
    post = requests.post(f"{nginx.url}{pinned}/app.mjs", timeout=30)

    assert from_blobserve(by_tag) and by_tag.headers["Cache-Control"] != "no-cache"
    assert (
        inline.content == b"<h1>x</h1>"
        and inline.headers["Cache-Control"] == "no-cache"
    )
    assert missing.status_code == 404 and missing.text.endswith("\n")
    assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"


def test_an_evicted_tree_falls_back_and_comes_back(
    front: tuple[Front, str, str],
) -> None:
    nginx, pinned, _ = front
    nginx.get(f"{pinned}/app.mjs")
    trees = nginx.server.blob_space / "trees"
    for tree in trees.iterdir():
        shutil.rmtree(tree)

    again = nginx.get(f"{pinned}/app.mjs")
    after = nginx.get(f"{pinned}/app.mjs")

    assert again.status_code == 200 and from_blobserve(again)
    assert after.content == SITE["www/app.mjs"] and not from_blobserve(after)
