"""A real gunicorn serving blobserve, for end-to-end tests, and ways to watch it.

``Gunicorn`` writes a config file, starts ``python -m gunicorn -c gunicorn.conf.py
blobserve.wsgi:app`` from the repository root on a free 127.0.0.1 port, with its own
blob space and Prometheus multiprocess directory, and waits until ``/live``
answers. It stops the master by its pid, SIGTERM first and SIGKILL if it lingers,
also when the test that started it failed. Process trees are read from /proc.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

from registries import Registry, _with_parent_death_signal, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 60.0
UNPACK_MODULE = "blobserve.workers"

_instances = itertools.count()
T = TypeVar("T")


class ServerError(RuntimeError):
    """gunicorn did not start, or did not stop; the message ends with its log."""


# --- waiting and /proc ----------------------------------------------------------------


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something true, and return that.

    A requests Response is false when its status is 400 or more: return its text
    or a flag instead. Raises ``TimeoutError`` naming ``what`` once ``timeout``
    seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def parent_pid(pid: int) -> int | None:
    """The parent of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the fields follow the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1])


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, found by reading /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent_pid(int(entry)) == pid:
            children.append(int(entry))
    return sorted(children)


def command_line(pid: int) -> list[str]:
    """The arguments a process was started with; empty when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- configs and requests -------------------------------------------------------------


def repo_name(reference: str) -> str:
    """The repository of a reference by tag: ``host:port/repo`` of ``...:tag``."""
    return reference.rpartition(":")[0]


def registry_config(
    registry: Registry, repos: Mapping[str, Mapping[str, Any]], **settings: Any
) -> dict[str, Any]:
    """A config serving ``repos`` (name to repo settings) from a test registry.

    Keyword arguments are further keys of the "blobserve" object, by their JSON
    names (``timeout="1s"``, ``tagTTL="1s"``).
    """
    blobserve = {
        "insecureRegistries": [registry.url],
        "repos": {name: dict(repo) for name, repo in repos.items()},
        **settings,
    }
    return {"blobserve": blobserve}


def raw_request(
    url: str, method: str, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send a request with the path exactly as given (no dot-segment removal).

    Returns the status, the headers (names lower-cased) and the body.
    """
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
        found = {name.lower(): value for name, value in response.getheaders()}
        return response.status, found, body
    finally:
        connection.close()


def tree_bytes(blob_space: Path) -> int:
    """Bytes of the files in the image filesystems of published trees, on disk.

    A tree evicted while it is being counted counts in part.
    """
    total = 0
    for tree in _listdir(blob_space / "trees"):
        for top, _dirs, files in os.walk(blob_space / "trees" / tree / "fs"):
            for name in files:
                try:
                    total += os.lstat(os.path.join(top, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


# --- gunicorn -------------------------------------------------------------------------


class Gunicorn:
    """blobserve under a real gunicorn master on 127.0.0.1; a context manager.

    ``config`` is the JSON config as a dict; its ``blobserve.blobSpace.location``
    defaults to ``<tmp_path>/blob-space``. With ``config=None`` no BLOBSERVE_CONFIG
    is set, so the bundled demo config applies. Each instance keeps its config,
    logs, TMPDIR and metrics directory in a directory of its own under tmp_path.
    """

    def __init__(
        self,
        config: dict[str, Any] | None,
        tmp_path: Path,
        workers: int = 2,
        threads: int = 4,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.workers = workers
        self.threads = threads
        self.extra_args = tuple(extra_args)
        self.home = Path(tmp_path) / f"gunicorn-{next(_instances)}"
        self.home.mkdir(parents=True)
        self.metrics_dir = self.home / "metrics"
        self.config: dict[str, Any] | None = None
        self.config_path: Path | None = None
        if config is not None:
            self.config = _with_blob_space(config, Path(tmp_path))
            self.config_path = self.home / "config.json"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._outputs: list[Any] = []

    def __enter__(self) -> Gunicorn:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Gunicorn pid={self.pid} url={self.url if self.port else None}>"

    # -- what tests use ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the service."""
        if self.port is None:
            raise ServerError("gunicorn is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The master's pid, None before start and after stop."""
        return self._process.pid if self._process is not None else None

    @property
    def blob_space(self) -> Path:
        """The blob space directory of the config (not of the bundled demo)."""
        if self.config is None:
            return self.home / "tmp" / "blobserve"
        return Path(self.config["blobserve"]["blobSpace"]["location"])

    @property
    def metrics_url(self) -> str:
        """The master's scrape endpoint, from the config's prometheusAddr."""
        address = (self.config or {}).get("prometheusAddr")
        if not address:
            raise ServerError("the config has no prometheusAddr")
        return f"http://{address}/metrics"

    def worker_pids(self) -> list[int]:
        """The pids of the master's children (its workers), read from /proc."""
        return child_pids(self.pid) if self.pid is not None else []

    def wait_for_workers(self, count: int | None = None) -> list[int]:
        """Wait until ``count`` workers (default: all) exist; return their pids."""
        wanted = count if count is not None else self.workers

        def enough() -> list[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) >= wanted else None

        return wait_for(enough, START_TIMEOUT, f"{wanted} gunicorn workers")

    def unpack_children(self) -> list[int]:
        """The `python -m blobserve.workers` processes of every worker."""
        found = []
        for worker in self.worker_pids():
            for child in child_pids(worker):
                if UNPACK_MODULE in command_line(child):
                    found.append(child)
        return found

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """A GET of ``path`` on a new connection; keywords go to requests."""
        return self.request("GET", path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request on a new connection, so the workers share the load.

        The connection is closed after the answer: a kept-alive one would hold a
        stopping worker for gunicorn's keep-alive linger.
        """
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        kwargs.setdefault("allow_redirects", False)
        headers = {"Connection": "close", **(kwargs.pop("headers", None) or {})}
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def stdout(self) -> str:
        """What the processes wrote to stdout so far (access log, demo line)."""
        return self._read_output("stdout")

    def stderr(self) -> str:
        """What the processes wrote to stderr so far (the error log)."""
        return self._read_output("stderr")

    def log(self) -> str:
        """stderr then stdout, for failure messages."""
        return f"--- stderr\n{self.stderr()}--- stdout\n{self.stdout()}"

    # -- starting and stopping ---------------------------------------------------------

    def start(self) -> None:
        """Start the master and wait until /live answers; retry a taken port."""
        self._write_config()
        for attempt in range(3):
            self._launch()
            try:
                wait_for(self._live, START_TIMEOUT, "gunicorn answering /live")
                return
            except (ServerError, TimeoutError) as exc:
                port_taken = "in use" in self.stderr()
                self.stop()
                if attempt == 2 or not port_taken:
                    message = f"gunicorn did not start: {exc}\n{self.log()}"
                    raise ServerError(message) from None

    def run_to_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Start the master expecting it to exit on its own; return its status."""
        self._write_config()
        self._launch()
        assert self._process is not None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ServerError(f"gunicorn kept running\n{self.log()}") from None

    def stop(self) -> None:
        """SIGTERM the master, SIGKILL it after STOP_TIMEOUT, then any worker left."""
        process, self._process = self._process, None
        if process is None:
            return
        workers = child_pids(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._kill_orphans(workers)
        for output in self._outputs:
            output.close()
        self._outputs = []

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker of this master (refusing any other process)."""
        if pid not in self.worker_pids():
            raise ServerError(f"{pid} is not a worker of gunicorn {self.pid}")
        os.kill(pid, signal.SIGKILL)

    # -- plumbing ----------------------------------------------------------------------

    def _write_config(self) -> None:
        if self.config_path is not None:
            self.config_path.write_text(json.dumps(self.config, indent=2))

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        command += ["blobserve.wsgi:app", "--bind", f"127.0.0.1:{self.port}"]
        command += ["--workers", str(self.workers), "--threads", str(self.threads)]
        return command + list(self.extra_args)

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("BLOBSERVE_CONFIG", "PROMETHEUS_MULTIPROC_DIR")
        }
        tmpdir = self.home / "tmp"
        tmpdir.mkdir(exist_ok=True)
        env.update(
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
            TMPDIR=str(tmpdir),
            PYTHONUNBUFFERED="1",
        )
        if self.config_path is not None:
            env["BLOBSERVE_CONFIG"] = str(self.config_path)
        return env

    def _launch(self) -> None:
        self.port = free_port()
        if self.config is not None:
            self.config["blobserve"]["port"] = self.port
            self._write_config()
        self._outputs = [
            open(self.home / "stdout", "ab"),
            open(self.home / "stderr", "ab"),
        ]
        self._process = subprocess.Popen(
            _with_parent_death_signal(self._command()),
            stdout=self._outputs[0],
            stderr=self._outputs[1],
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=self._environment(),
        )

    def _live(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            code = self._process.returncode if self._process else None
            raise ServerError(f"the gunicorn master exited with status {code}")
        try:
            response = self.request("GET", "/live", timeout=1)
        except (requests.ConnectionError, requests.Timeout):
            return False
        return response.status_code == 200

    def _kill_orphans(self, workers: list[int]) -> None:
        """SIGKILL workers of ours that outlived their master (same --bind)."""
        mark = f"127.0.0.1:{self.port}"
        for pid in workers:
            if alive(pid) and mark in command_line(pid):
                os.kill(pid, signal.SIGKILL)

    def _read_output(self, name: str) -> str:
        try:
            return (self.home / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _with_blob_space(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A deep copy of config with a blob space under tmp_path unless it has one."""
    copied: dict[str, Any] = json.loads(json.dumps(config))
    settings = copied.setdefault("blobserve", {})
    space = settings.setdefault("blobSpace", {})
    space.setdefault("location", str(tmp_path / "blob-space"))
    return copied
