"""The blob space on a real directory: publish, leftovers of dead builders, eviction."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from blobserve.cache import BlobSpace, tree_key
from blobserve.oci.types import Descriptor, ResolvedImage


def image(*layers: str) -> ResolvedImage:
    descriptors = tuple(
        Descriptor("application/vnd.oci.image.layer.v1.tar", f"sha256:{d * 64}", 1)
        for d in layers
    )
    config = Descriptor(
        "application/vnd.oci.image.config.v1+json", "sha256:" + "c" * 64, 2
    )
    return ResolvedImage("r.test/a:1", "sha256:" + "9" * 64, "m", config, descriptors)


def writer(size: int, name: str = "file"):
    def fill(dest: str) -> tuple[int, int]:
        with open(os.path.join(dest, name), "wb") as handle:
            handle.write(b"x" * size)
        return size, 1

    return fill


def test_key_depends_on_layers_and_fingerprint() -> None:
    assert tree_key(image("a", "b")) == tree_key(image("a", "b"))
    assert tree_key(image("a", "b")) != tree_key(image("b", "a"))
    assert tree_key(image("a")) != tree_key(image("a"), "path\0x\0y")


def test_build_publishes_whole_tree_with_metadata(tmp_path) -> None:
    space = BlobSpace(str(tmp_path), 1 << 20)
    key = tree_key(image("a"))

    root = space.build(key, "r.test/a:1", image("a"), writer(10))

    assert open(os.path.join(root, "file"), "rb").read() == b"x" * 10
    assert space.lookup(key) == root
    info = space.info(key)
    assert info is not None and info.bytes == 10 and info.reference == "r.test/a:1"
    assert os.listdir(tmp_path / "tmp") == []


def test_failed_build_publishes_nothing_and_cleans_up(tmp_path) -> None:
    space = BlobSpace(str(tmp_path), 1 << 20)
    key = tree_key(image("a"))

    def broken(dest: str) -> tuple[int, int]:
        open(os.path.join(dest, "half"), "wb").close()
        raise RuntimeError("layer broke")

    with pytest.raises(RuntimeError):
        space.build(key, "r.test/a:1", image("a"), broken)
    assert space.lookup(key) is None
    assert os.listdir(tmp_path / "tmp") == []


def test_second_build_reuses_the_tree(tmp_path) -> None:
    space = BlobSpace(str(tmp_path), 1 << 20)
    key = tree_key(image("a"))
    space.build(key, "r.test/a:1", image("a"), writer(10))

    def never(dest: str) -> tuple[int, int]:
        raise AssertionError("built twice")

    assert space.build(key, "r.test/a:1", image("a"), never) == space.root(key)


def _slow_builder(location: str, key: str, started) -> None:
    space = BlobSpace(location, 1 << 20)

    def fill(dest: str) -> tuple[int, int]:
        open(os.path.join(dest, "partial"), "wb").close()
        started.set()
        time.sleep(60)
        return 0, 0

    space.build(key, "r.test/a:1", image("a"), fill)


def test_builder_killed_mid_build_leaves_nothing_ready(tmp_path) -> None:
    key = tree_key(image("a"))
    started = multiprocessing.Event()
    builder = multiprocessing.Process(
        target=_slow_builder, args=(str(tmp_path), key, started)
    )
    builder.start()
    try:
        assert started.wait(30), "the builder never started"
        assert os.listdir(tmp_path / "tmp"), "the builder has a staging directory"
        os.kill(builder.pid, signal.SIGKILL)
    finally:
        builder.join(10)

    space = BlobSpace(str(tmp_path), 1 << 20)
    assert space.lookup(key) is None
    root = space.build(key, "r.test/a:1", image("a"), writer(5))
    assert os.listdir(root) == ["file"]
    assert os.listdir(tmp_path / "tmp") == []


def test_eviction_keeps_total_under_limit_and_spares_newest(tmp_path) -> None:
    space = BlobSpace(str(tmp_path), 250)
    keys = []
    for number, layer in enumerate("abcd"):
        key = tree_key(image(layer))
        keys.append(key)
        space.build(key, f"r.test/a:{number}", image(layer), writer(100))
        used = os.path.join(space.tree_dir(key), "used")
        os.utime(used, (1000 + number, 1000 + number))
        collection = space.collect_garbage(keep=key)
        assert collection is not None

    assert space.total_bytes() <= 250
    assert [space.lookup(k) is not None for k in keys] == [False, False, True, True]
    assert collection.trees == 2 and collection.bytes == 200


def test_eviction_prefers_least_recently_used(tmp_path) -> None:
    space = BlobSpace(str(tmp_path), 150)
    old, new = tree_key(image("a")), tree_key(image("b"))
    space.build(old, "r.test/a:old", image("a"), writer(100))
    space.build(new, "r.test/a:new", image("b"), writer(100))
    os.utime(os.path.join(space.tree_dir(new), "used"), (10, 10))

    space.collect_garbage()

    assert space.lookup(old) is not None
    assert space.lookup(new) is None


def test_readers_never_see_part_of_an_evicted_tree(tmp_path) -> None:
    """While a tree stays published at its path, every one of its files opens."""
    space = BlobSpace(str(tmp_path), 1)
    files = [f"f{n}" for n in range(50)]

    def fill(dest: str) -> tuple[int, int]:
        for name in files:
            with open(os.path.join(dest, name), "wb") as handle:
                handle.write(b"y" * 10)
        return 500, len(files)

    stop = threading.Event()
    partial = []

    def reader(key: str) -> None:
        while not stop.is_set():
            try:
                before = os.stat(space.tree_dir(key)).st_ino
            except FileNotFoundError:
                continue
            opened = 0
            for name in files:
                try:
                    with open(os.path.join(space.root(key), name), "rb") as handle:
                        assert handle.read() == b"y" * 10
                    opened += 1
                except FileNotFoundError:
                    pass
            try:
                after = os.stat(space.tree_dir(key)).st_ino
            except FileNotFoundError:
                continue
            if before == after and opened != len(files):
                partial.append(opened)

    keys = [tree_key(image(x)) for x in "abc"]
    threads = [threading.Thread(target=reader, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            for key, layer in zip(keys, "abc"):
                space.build(key, "r.test/a:1", image(layer), fill)
                space.collect_garbage(keep=key)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert partial == []


def test_resolutions_round_trip(tmp_path) -> None:
    space = BlobSpace(str(tmp_path), 1)
    assert space.load_resolution("r.test/a:1") is None

    space.store_resolution("r.test/a:1", image("a", "b"))

    loaded = space.load_resolution("r.test/a:1")
    assert loaded is not None
    assert loaded[0] == image("a", "b")
    assert abs(loaded[1] - time.time()) < 60
