"""Benchmark: blobserve's layer unpacking against ``curl | tar -xzf -``.

The layer is the npm tarball of monaco-editor 0.57.0 (a tar.gz of 1,918 files, so
usable as a gzip layer as it is), fetched once with ``npm pack`` into a cache
directory. A second case is one large file in a single-member layer, generated
locally. Both are served by ``python -m http.server`` on 127.0.0.1, started here and
stopped by pid at the end. For each case and run, in alternation:

(a) ``curl -s URL | tar -xzf - -C <fresh dir>``
(b) requests streaming URL -> VerifyingReader -> Unpacker.apply into a fresh dir

and the best of the runs is reported. Usage::

    python bench/unpack.py [--runs 3] [--dir /tmp] [--cache DIR] [--no-large]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
from isal import igzip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blobserve.oci.blobs import VerifyingReader  # noqa: E402 (path set just above)
from blobserve.oci.types import Descriptor, Limits  # noqa: E402
from blobserve.oci.unpack import Unpacker  # noqa: E402

PACKAGE = "monaco-editor@0.57.0"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LARGE_FILE_BYTES = 512 << 20
MB = 1_000_000


@dataclass
class Case:
    """One layer served over loopback, and what unpacking it produced."""

    name: str
    path: Path
    descriptor: Descriptor
    curl_times: list[float] = field(default_factory=list)
    blobserve_times: list[float] = field(default_factory=list)
    curl_tree: dict[str, int] = field(default_factory=dict)
    blobserve_tree: dict[str, int] = field(default_factory=dict)


def main() -> None:
    """Fetch or build the layers, serve them, time both unpackers, print a table."""
    args = parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    layers = {"monaco-editor": fetch_monaco(args.cache)}
    if not args.no_large:
        layers["one large file"] = build_large_layer(args.cache)
    cases = [Case(name, path, describe(path)) for name, path in layers.items()]

    with LoopbackServer(args.cache) as base_url:
        for case in cases:
            url = f"{base_url}/{case.path.name}"
            with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
                for run in range(args.runs):
                    base = Path(scratch, str(run))
                    # Alternate who goes first, so neither always meets a warm or
                    # a busy file system.
                    methods = ["curl", "blobserve"]
                    for method in methods if run % 2 == 0 else methods[::-1]:
                        run_method(case, method, url, base / method)

    report(cases, args.runs, args.dir)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per method")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the fresh extraction directories are made",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "blobserve-bench",
        help="where the downloaded and generated layers are kept",
    )
    parser.add_argument("--no-large", action="store_true", help="skip the large file")
    return parser.parse_args()


# Layers.


def fetch_monaco(cache: Path) -> Path:
    """The monaco-editor tarball, downloaded with npm on first use."""
    path = cache / "monaco.tgz"
    if path.exists():
        return path

    result = subprocess.run(
        ["npm", "pack", PACKAGE, "--pack-destination", str(cache), "--silent"],
        check=True,
        capture_output=True,
        text=True,
    )
    packed = cache / result.stdout.strip().splitlines()[-1]
    packed.rename(path)
    return path


def build_large_layer(cache: Path) -> Path:
    """A gzip layer holding one file of text-like content, built on first use."""
    path = cache / "large.tgz"
    if path.exists():
        return path

    # isal ships without type hints.
    monaco = (cache / "monaco.tgz").read_bytes()
    sample = igzip.decompress(monaco)  # type: ignore[no-untyped-call]
    info = tarfile.TarInfo("large/blob.js")
    info.size = LARGE_FILE_BYTES
    info.mtime = int(time.time())
    partial = path.with_suffix(".partial")
    compressed = igzip.open(  # type: ignore[no-untyped-call]
        partial, "wb", compresslevel=1
    )
    with compressed:
        with tarfile.open(fileobj=compressed, mode="w|") as tar:
            content = io.BufferedReader(RepeatingReader(sample, LARGE_FILE_BYTES))
            tar.addfile(info, content)
    partial.rename(path)
    return path


class RepeatingReader(io.RawIOBase):
    """Reads ``total`` bytes by cycling through ``sample``."""

    def __init__(self, sample: bytes, total: int) -> None:
        self._sample = memoryview(sample)
        self._left = total
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self._left, len(self._sample) - self._offset)
        buffer[:size] = self._sample[self._offset : self._offset + size]
        self._offset = (self._offset + size) % len(self._sample)
        self._left -= size
        return size


def describe(path: Path) -> Descriptor:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Descriptor(GZIP_LAYER, f"sha256:{digest}", path.stat().st_size)


# Serving over loopback.


class LoopbackServer:
    """``python -m http.server`` on a free loopback port, stopped by pid on exit."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        port = free_port()
        command = [sys.executable, "-m", "http.server", str(port)]
        command += ["--bind", "127.0.0.1", "--directory", str(self._directory)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(port, self._process)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("http.server exited before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"http.server did not listen on port {port} within 10 s")


# The two ways of unpacking.


Unpack = Callable[[str, Case, str], None]


def run_method(case: Case, method: str, url: str, dest: Path) -> None:
    if method == "curl":
        seconds, case.curl_tree = timed(dest, curl_tar, url, case)
        case.curl_times.append(seconds)
    else:
        seconds, case.blobserve_tree = timed(dest, blobserve, url, case)
        case.blobserve_times.append(seconds)


def timed(
    dest: Path, unpack: Unpack, url: str, case: Case
) -> tuple[float, dict[str, int]]:
    """Seconds one unpack into the new directory dest took, and the files it made.

    The trees are removed only after all runs of a case: ext4 scans the inodes it
    freed in the last half minute each time it allocates one, so deleting a tree
    between runs would slow file creation for whichever method comes next.
    """
    dest.mkdir(parents=True)
    started = time.perf_counter()
    unpack(url, case, str(dest))
    seconds = time.perf_counter() - started
    return seconds, file_sizes(str(dest))


def curl_tar(url: str, case: Case, dest: str) -> None:
    pipeline = f"curl -sSf {shlex.quote(url)} | tar -xzf - -C {shlex.quote(dest)}"
    subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True)


def blobserve(url: str, case: Case, dest: str) -> None:
    with requests.get(url, stream=True, timeout=30) as response:
        response.raise_for_status()
        reader = VerifyingReader(response.raw, case.descriptor)
        unpacker = Unpacker(dest, Limits())
        unpacker.apply(reader, case.descriptor.media_type, case.descriptor.digest)


def file_sizes(root: str) -> dict[str, int]:
    """Each regular file under root, by relative path, with its size."""
    sizes = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            if not os.path.islink(path):
                sizes[os.path.relpath(path, root)] = os.path.getsize(path)
    return sizes


# Reporting.


def report(cases: list[Case], runs: int, base: Path) -> None:
    print(f"best of {runs} runs, extracting under {base}, served from 127.0.0.1")
    for case in cases:
        curl = min(case.curl_times)
        ours = min(case.blobserve_times)
        compressed = case.descriptor.size / MB
        unpacked = sum(case.blobserve_tree.values()) / MB
        same = "identical" if case.curl_tree == case.blobserve_tree else "DIFFERENT"
        print()
        print(
            f"{case.name}: {compressed:.2f} MB gzip, {len(case.blobserve_tree)} "
            f"files, {unpacked:.1f} MB unpacked; file trees {same}"
        )
        curl_runs = runs_text(case.curl_times)
        our_runs = runs_text(case.blobserve_times)
        print(f"  curl | tar -xzf -   {curl:6.3f} s   {curl_runs}")
        print(f"  blobserve Unpacker  {ours:6.3f} s   {our_runs}")
        print(f"  ratio curl/blobserve {curl / ours:.2f}x")
        print(
            f"  blobserve: {compressed / ours:.0f} MB/s compressed in, "
            f"{unpacked / ours:.0f} MB/s written"
        )


def runs_text(times: list[float]) -> str:
    return "(" + ", ".join(f"{seconds:.3f}" for seconds in times) + ")"


if __name__ == "__main__":
    main()
