"""Benchmark: serving cached files, blobserve against nginx and a minimal Flask app.

One image (an OCI layout built here: a 1 KiB index.html, a 100 KiB script and a
1 MiB binary) is warmed into blobserve's blob space. Then, in the same run, three
servers answer the same files from the same tree on 127.0.0.1, and ``wrk`` loads
each in turn:

- nginx (2 worker processes) with the tree as its root: the ceiling;
- a minimal Flask app (``send_from_directory``) under the same gunicorn settings as
  blobserve: what Flask itself costs;
- blobserve under gunicorn (gthread, 2 workers x 8 threads);
- blobserve behind the nginx front of `blobserve nginx-config` (a digest reference).

It prints requests per second, mean latency and the ratios. Every process started
here is stopped by its pid. Needs Debian's ``nginx-light`` (or ``nginx``) and ``wrk``::

    python bench/serve.py [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from blobserve.config import load_config  # noqa: E402
from blobserve.front import nginx_config  # noqa: E402
from imagebuilder import File, build_layout, simple_image  # noqa: E402

REPO = "bench.local/site/files"
FILES = {
    "index.html": 1 << 10,
    "app.js": 100 << 10,
    "big.bin": 1 << 20,
}
MINIMAL_APP = """
import os
from flask import Flask, send_from_directory

app = Flask(__name__)
ROOT = os.environ["BENCH_ROOT"]


@app.get("/<path:name>")
def serve(name):
    return send_from_directory(ROOT, name, max_age=60)
"""
NGINX_CONF = """
user {user};
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    include /etc/nginx/mime.types;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ expires 60s; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {seconds}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    """Requests per second and mean latency in milliseconds, of 200 answers only."""
    requests.get(url, timeout=30).raise_for_status()
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    )
    if "Non-2xx" in done.stdout:
        raise SystemExit(f"{url} answered errors under load:\n{done.stdout}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s)", done.stdout)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)]
    return rate, float(latency.group(1)) * scale


def build_image(tmp: Path) -> Path:
    files = {name: File(os.urandom(size)) for name, size in FILES.items()}
    layout = tmp / "layout"
    build_layout(layout, {"v1": simple_image(files)})
    return layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light wrk")

    tmp = Path(tempfile.mkdtemp(prefix="blobserve-bench-serve."))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        results = run(tmp, processes, args.seconds, args.connections)
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)


def run(
    tmp: Path, processes: list[subprocess.Popen[bytes]], seconds: int, connections: int
) -> dict[str, dict[str, tuple[float, float]]]:
    layout = build_image(tmp)
    config = {
        "blobserve": {
            "repos": {REPO: {}},
            "layouts": {REPO: str(layout)},
            "blobSpace": {"location": str(tmp / "space"), "maxSizeBytes": 1 << 30},
        }
    }
    (tmp / "config.json").write_text(json.dumps(config))
    env = dict(
        os.environ,
        BLOBSERVE_CONFIG=str(tmp / "config.json"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
    )
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "--workers",
        "2",
        "--threads",
        "8",
        "--access-logfile",
        "/dev/null",
    ]

    port = free_port()
    blobserve = f"http://127.0.0.1:{port}/{REPO}:v1"
    processes.append(
        subprocess.Popen(
            gunicorn + ["--bind", f"127.0.0.1:{port}", "blobserve.wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    wait_for(f"http://127.0.0.1:{port}/live", processes[-1])
    warm = requests.head(blobserve, timeout=60)
    warm.raise_for_status()
    pinned = f"/{REPO}@{warm.headers['X-BlobServe-Digest']}"
    requests.get(f"http://127.0.0.1:{port}{pinned}/index.html", timeout=30)
    tree = next((tmp / "space" / "trees").glob("*/fs"))
    front_url = start_front(tmp, processes, f"127.0.0.1:{port}")

    port = free_port()
    flask_url = f"http://127.0.0.1:{port}"
    (tmp / "minimal_app.py").write_text(MINIMAL_APP)
    processes.append(
        subprocess.Popen(
            gunicorn
            + ["--bind", f"127.0.0.1:{port}", "--chdir", str(tmp), "minimal_app:app"],
            cwd=ROOT,
            env=dict(env, BENCH_ROOT=str(tree)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    wait_for(f"{flask_url}/index.html", processes[-1])

    port = free_port()
    nginx_url = f"http://127.0.0.1:{port}"
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(user=getpass.getuser(), tmp=tmp, port=port, root=tree)
    )
    start_nginx(conf, tmp, processes, f"{nginx_url}/index.html")

    servers = {
        "nginx": nginx_url,
        "minimal Flask": flask_url,
        "blobserve": blobserve,
        "nginx front": front_url + pinned,
    }
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name in FILES:
        results[name] = {
            server: wrk(f"{base}/{name}", seconds, connections)
            for server, base in servers.items()
        }
    return results


def start_front(
    tmp: Path, processes: list[subprocess.Popen[bytes]], upstream: str
) -> str:
    """nginx with `blobserve nginx-config`'s server block, in front of blobserve."""
    port = free_port()
    config = load_config(str(tmp / "config.json"))
    conf = tmp / "front.conf"
    conf.write_text(
        f"user {getpass.getuser()};\nworker_processes 2;\n"
        f"pid {tmp}/front.pid;\nerror_log {tmp}/front-error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {tmp}/front-body;\n"
        f"proxy_temp_path {tmp}/front-proxy;\n"
        + nginx_config(config, f"127.0.0.1:{port}", upstream)
        + "}\n"
    )
    start_nginx(conf, tmp, processes, f"http://127.0.0.1:{port}/live")
    return f"http://127.0.0.1:{port}"


def start_nginx(
    conf: Path, tmp: Path, processes: list[subprocess.Popen[bytes]], probe: str
) -> None:
    """Run nginx in the foreground with conf, and wait until probe answers."""
    processes.append(
        subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    wait_for(probe, processes[-1])


def report(results: dict[str, dict[str, tuple[float, float]]]) -> None:
    print(
        f"{'file':<11} {'server':<14} {'req/s':>9} {'mean ms':>8} "
        f"{'vs nginx':>9} {'vs Flask':>9}"
    )
    for name, by_server in results.items():
        nginx_rate = by_server["nginx"][0]
        flask_rate = by_server["minimal Flask"][0]
        for server, (rate, latency) in by_server.items():
            print(
                f"{name:<11} {server:<14} {rate:>9.0f} {latency:>8.2f} "
                f"{rate / nginx_rate:>8.2f}x {rate / flask_rate:>8.2f}x"
            )


if __name__ == "__main__":
    main()
