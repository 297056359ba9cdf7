"""Tests for blobserve.oci.unpack: layers built in memory, unpacked into tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Iterator

import pytest
import zstandard

from blobserve.errors import InvalidContent, LimitExceeded
from blobserve.oci.blobs import VerifyingReader
from blobserve.oci.types import Descriptor, Limits
from blobserve.oci.unpack import Unpacker, decompressor_for

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
TAR = "application/vnd.oci.image.layer.v1.tar"
NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"

MTIME = 1_600_000_000
CANARY = b"do not touch\n"

Member = tuple[tarfile.TarInfo, bytes]


# Building layers.


def file(name: str, data: bytes = b"", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = MTIME
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, b""


def symlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def hardlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, b""


def special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, b""


def whiteout(name: str) -> Member:
    head, _, tail = name.rpartition("/")
    return file(f"{head}/.wh.{tail}" if head else f".wh.{tail}")


def opaque(directory_name: str) -> Member:
    return file(f"{directory_name}/.wh..wh..opq")


def tar_bytes(*members: Member) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def compress(raw: bytes, media_type: str) -> bytes:
    if media_type.endswith("gzip"):
        return gzip.compress(raw)
    if media_type.endswith("zstd"):
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def layer(*members: Member, media_type: str = GZIP) -> bytes:
    return compress(tar_bytes(*members), media_type)


def descriptor(blob: bytes, media_type: str = GZIP) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return Descriptor(media_type, digest, len(blob))


# Reading results.


def tree(root: Path) -> dict[str, str]:
    """Every path under root: 'dir', 'link -> text' or the file's contents."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "link -> " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = path.read_bytes().decode()
    return found


def assert_contained(root: Path) -> None:
    """No symlink under root resolves outside it, and nothing is a device or fifo."""
    real_root = os.path.realpath(root)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            resolved = os.path.realpath(path)
            assert os.path.commonpath([real_root, resolved]) == real_root, path
            mode = os.lstat(path).st_mode
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)
            assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)


class Sandbox:
    """An empty root to unpack into, next to an 'outside' directory with a canary."""

    def __init__(self, tmp_path: Path, limits: Limits = Limits()) -> None:
        self.root = tmp_path / "root"
        self.outside = tmp_path / "outside"
        self.root.mkdir()
        self.outside.mkdir()
        self.canary = self.outside / "canary"
        self.canary.write_bytes(CANARY)
        self.unpacker = Unpacker(str(self.root), limits)

    def apply(self, blob: bytes, media_type: str = GZIP, digest: str = "") -> None:
        self.unpacker.apply(io.BytesIO(blob), media_type, digest)

    def apply_layers(self, *layers: bytes) -> None:
        for number, blob in enumerate(layers):
            self.apply(blob, digest=f"layer-{number}")

    def assert_outside_untouched(self) -> None:
        assert sorted(os.listdir(self.outside)) == ["canary"]
        assert self.canary.read_bytes() == CANARY
        assert os.stat(self.canary).st_nlink == 1
        assert_contained(self.root)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path)
    yield sandbox
    sandbox.assert_outside_untouched()


# Round trips.


def test_round_trip_keeps_contents_modes_links_and_mtimes(box: Sandbox) -> None:
    box.apply(
        layer(
            directory("app", 0o750),
            file("app/run.sh", b"#!/bin/sh\n", 0o755),
            file("app/secret", b"s3cret", 0o640),
            file("app/readonly", b"ro", 0o400),
            directory("app/locked", 0o500),
            file("app/locked/inner", b"inner"),
            file("deep/implicit/parents.txt", b"made for me"),
            symlink("app/current", "run.sh"),
            symlink("app/abs", "/app/secret"),
            hardlink("app/secret-again", "app/secret"),
            file("app/empty"),
        )
    )

    root = box.root
    assert tree(root) == {
        "app": "dir",
        "app/run.sh": "#!/bin/sh\n",
        "app/secret": "s3cret",
        "app/readonly": "ro",
        "app/locked": "dir",
        "app/locked/inner": "inner",
        "deep": "dir",
        "deep/implicit": "dir",
        "deep/implicit/parents.txt": "made for me",
        "app/current": "link -> run.sh",
        "app/abs": "link -> secret",
        "app/secret-again": "s3cret",
        "app/empty": "",
    }

    def mode(name: str) -> int:
        return stat.S_IMODE(os.lstat(root / name).st_mode)

    assert mode("app") == 0o750
    assert mode("app/run.sh") == 0o755
    assert mode("app/secret") == 0o640
    assert mode("app/readonly") == 0o600
    assert mode("app/locked") == 0o700
    assert mode("deep/implicit") == 0o755
    assert os.stat(root / "app/run.sh").st_mtime == MTIME
    same = os.stat(root / "app/secret"), os.stat(root / "app/secret-again")
    assert same[0].st_ino == same[1].st_ino
    assert (root / "app/abs").read_bytes() == b"s3cret"

    assert box.unpacker.entries == 11
    assert box.unpacker.bytes_written == len(b"#!/bin/sh\ns3cretroinnermade for me")


ALL_TYPES = [GZIP, DOCKER_GZIP, ZSTD, TAR, NONDIST_GZIP, NONDIST_ZSTD, NONDIST_TAR]


@pytest.mark.parametrize("media_type", ALL_TYPES)
def test_every_layer_media_type_unpacks(box: Sandbox, media_type: str) -> None:
    blob = layer(file("etc/os-release", b"ID=test\n"), media_type=media_type)

    box.apply(blob, media_type)

    assert (box.root / "etc/os-release").read_bytes() == b"ID=test\n"


def test_unknown_media_type_is_named(box: Sandbox) -> None:
    weird = "application/vnd.example.layer.v1.tar+lz4"

    with pytest.raises(InvalidContent, match="vnd.example.layer.v1.tar\\+lz4"):
        box.apply(layer(file("a")), weird)
    with pytest.raises(InvalidContent, match="lz4"):
        decompressor_for(weird, io.BytesIO())


def test_zstd_with_two_frames_reads_both(box: Sandbox) -> None:
    raw = tar_bytes(file("first", b"1" * 5000), file("second", b"2" * 5000))
    half = len(raw) // 2
    compressor = zstandard.ZstdCompressor()
    blob = compressor.compress(raw[:half]) + compressor.compress(raw[half:])

    box.apply(blob, ZSTD)

    assert tree(box.root) == {"first": "1" * 5000, "second": "2" * 5000}


def test_gzip_with_two_members_reads_both(box: Sandbox) -> None:
    raw = tar_bytes(file("first", b"1" * 5000), file("second", b"2" * 5000))
    half = len(raw) // 2
    blob = gzip.compress(raw[:half]) + gzip.compress(raw[half:])

    box.apply(blob)

    assert tree(box.root) == {"first": "1" * 5000, "second": "2" * 5000}


# Layers on top of each other.


def test_four_layers_with_whiteouts_and_opaque_directories(box: Sandbox) -> None:
    base = layer(
        directory("etc"),
        file("etc/a", b"a1"),
        file("etc/b", b"b1"),
        file("usr/bin/tool", b"tool"),
        file("usr/bin/more/helper", b"helper"),
        file("var/cache/x/deep", b"deep"),
        file("var/cache/y", b"y"),
        file("opt/app/old", b"old"),
        file("opt/app/sub/keep", b"lower"),
        file("srv/data", b"data"),
    )
    second = layer(
        whiteout("etc/b"),
        whiteout("usr/bin"),
        file("etc/c", b"c2"),
        opaque("var/cache"),
        file("var/cache/new", b"new"),
        whiteout("etc/never-existed"),
    )
    # The current layer's own entries survive an opaque marker that comes after them.
    third = layer(
        file("opt/app/fresh", b"fresh"),
        file("opt/app/sub/added", b"added"),
        opaque("opt/app"),
        file("usr/bin/tool2", b"tool2"),
        file("etc/a", b"a3"),
    )
    fourth = layer(
        whiteout("srv"),
        directory("etc/c"),
        file("etc/c/inside", b"c4"),
        whiteout("opt/app/sub/added"),
    )

    box.apply_layers(base, second, third, fourth)

    assert tree(box.root) == {
        "etc": "dir",
        "etc/a": "a3",
        "etc/c": "dir",
        "etc/c/inside": "c4",
        "usr": "dir",
        "usr/bin": "dir",
        "usr/bin/tool2": "tool2",
        "var": "dir",
        "var/cache": "dir",
        "var/cache/new": "new",
        "opt": "dir",
        "opt/app": "dir",
        "opt/app/fresh": "fresh",
        "opt/app/sub": "dir",
    }


def test_later_entries_replace_earlier_ones_of_another_kind(box: Sandbox) -> None:
    box.apply_layers(
        layer(
            file("was-file", b"f"),
            file("was-dir/child", b"c"),
            symlink("was-link", "target"),
            file("target", b"original target"),
            file("shared", b"shared v1"),
            hardlink("shared-link", "shared"),
        ),
        layer(
            directory("was-file"),
            file("was-dir", b"now a file"),
            file("was-link", b"now a file"),
            file("shared", b"shared v2"),
        ),
    )

    assert tree(box.root) == {
        "was-file": "dir",
        "was-dir": "now a file",
        "was-link": "now a file",
        "target": "original target",
        "shared": "shared v2",
        "shared-link": "shared v1",
    }


def test_duplicate_member_in_one_layer_keeps_the_last(box: Sandbox) -> None:
    box.apply(layer(file("x", b"first"), file("x", b"second"), file("x", b"3")))

    assert tree(box.root) == {"x": "3"}


def test_writing_through_an_in_root_symlink_follows_it(box: Sandbox) -> None:
    box.apply_layers(
        layer(directory("usr/lib"), symlink("lib", "/usr/lib")),
        layer(file("lib/libc.so", b"elf")),
    )

    assert tree(box.root) == {
        "usr": "dir",
        "usr/lib": "dir",
        "usr/lib/libc.so": "elf",
        "lib": "link -> usr/lib",
    }


def test_directory_replaced_by_a_symlink_is_followed_afterwards(box: Sandbox) -> None:
    box.apply_layers(
        layer(file("d/one", b"1"), file("e/one", b"1")),
        layer(whiteout("d"), symlink("d", "/elsewhere"), file("d/two", b"2")),
        layer(symlink("e", "d"), file("e/three", b"3")),
    )

    assert tree(box.root) == {
        "d": "link -> elsewhere",
        "e": "link -> d",
        "elsewhere": "dir",
        "elsewhere/two": "2",
        "elsewhere/three": "3",
    }


# Escapes: each is tried, and the box fixture checks 'outside' afterwards.


def test_absolute_names_are_rerooted(box: Sandbox) -> None:
    box.apply(layer(file("/etc/hostname", b"inside"), file("./etc/hosts", b"h")))

    assert tree(box.root) == {"etc": "dir", "etc/hostname": "inside", "etc/hosts": "h"}


def test_names_with_dotdot_are_skipped(box: Sandbox) -> None:
    box.apply(
        layer(
            file("../outside/pwned", b"x"),
            file("a/../../outside/pwned", b"x"),
            file("../../../../../../tmp/pwned", b"x"),
            file("kept", b"k"),
        )
    )

    assert tree(box.root) == {"kept": "k"}


def test_symlink_then_file_through_it_in_one_layer(box: Sandbox) -> None:
    box.apply(
        layer(
            symlink("escape", "../outside"),
            file("escape/pwned", b"x"),
            symlink("abs", str(box.outside)),
            file("abs/pwned", b"x"),
        )
    )

    inside = box.root / str(box.outside).lstrip("/")
    assert os.readlink(box.root / "escape") == "outside"
    assert (box.root / "outside/pwned").read_bytes() == b"x"
    assert os.readlink(box.root / "abs") == str(box.outside).lstrip("/")
    assert (inside / "pwned").read_bytes() == b"x"


def test_symlink_from_an_earlier_layer_then_file_through_it(box: Sandbox) -> None:
    box.apply_layers(
        layer(symlink("escape", str(box.outside)), symlink("up", "../../..")),
        layer(file("escape/canary", b"overwritten?"), file("up/pwned", b"x")),
    )

    assert (box.root / "pwned").read_bytes() == b"x"


def test_symlink_to_an_absolute_path_points_inside(box: Sandbox) -> None:
    box.apply(
        layer(file("etc/passwd", b"root:x:0:0"), symlink("bin/pw", "/etc/passwd"))
    )

    assert os.readlink(box.root / "bin/pw") == "../etc/passwd"
    assert (box.root / "bin/pw").read_bytes() == b"root:x:0:0"


def test_symlink_climbing_beyond_the_root_stops_at_it(box: Sandbox) -> None:
    box.apply(
        layer(
            symlink("a/b/up", "../../../../../../outside/canary"),
            file("outside/canary", b"in-root canary"),
        )
    )

    assert os.readlink(box.root / "a/b/up") == "../../outside/canary"
    assert (box.root / "a/b/up").read_bytes() == b"in-root canary"


def test_dot_symlink_trick_cannot_climb(box: Sandbox) -> None:
    box.apply(
        layer(
            symlink("x", "."),
            symlink("esc", "x/../../outside"),
            file("esc/pwned", b"x"),
            symlink("deeper", "x/x/x/../../../../.."),
        )
    )

    assert os.readlink(box.root / "x") == "."
    assert os.readlink(box.root / "esc") == "outside"
    assert (box.root / "outside/pwned").read_bytes() == b"x"
    assert os.readlink(box.root / "deeper") == "."


def test_symlink_loops_are_skipped(box: Sandbox) -> None:
    box.apply(
        layer(
            symlink("ping", "pong"),
            symlink("pong", "ping"),
            file("ping/file", b"x"),
            file("after", b"still unpacked"),
        )
    )

    assert tree(box.root) == {
        "ping": "link -> pong",
        "pong": "link -> ping",
        "after": "still unpacked",
    }


def test_hard_links_outside_or_to_non_files_are_skipped(box: Sandbox) -> None:
    box.apply(
        layer(
            hardlink("passwd", "/etc/passwd"),
            hardlink("canary", "../outside/canary"),
            hardlink("canary-abs", str(box.canary)),
            directory("dir"),
            hardlink("to-dir", "dir"),
            file("real", b"r"),
            symlink("via-link", "real"),
            hardlink("to-symlink", "via-link"),
            hardlink("fine", "real"),
        )
    )

    assert tree(box.root) == {
        "dir": "dir",
        "real": "r",
        "via-link": "link -> real",
        "fine": "r",
    }


def test_devices_fifos_and_special_bits(box: Sandbox) -> None:
    box.apply(
        layer(
            special("dev/null", tarfile.CHRTYPE),
            special("dev/sda", tarfile.BLKTYPE),
            special("run/fifo", tarfile.FIFOTYPE),
            file("bin/su", b"su", 0o4755),
            file("bin/wall", b"wall", 0o2755),
            directory("tmp", 0o1777),
        )
    )

    root = box.root
    assert tree(root) == {
        "bin": "dir",
        "bin/su": "su",
        "bin/wall": "wall",
        "tmp": "dir",
    }
    assert stat.S_IMODE(os.stat(root / "bin/su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "bin/wall").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o777


# Broken and hostile streams.


def test_tampered_tar_fails_its_digest_after_unpacking(box: Sandbox) -> None:
    genuine = layer(file("app.js", b"console.log(1)\n" * 100), media_type=TAR)
    tampered = genuine.replace(b"log(1)", b"log(2)", 1)
    meta = descriptor(genuine, TAR)
    reader = VerifyingReader(io.BytesIO(tampered), meta)

    with pytest.raises(InvalidContent, match="has digest"):
        box.unpacker.apply(reader, TAR, meta.digest)


@pytest.mark.parametrize("media_type", [GZIP, ZSTD])
def test_tampered_compressed_blob_is_invalid(box: Sandbox, media_type: str) -> None:
    genuine = layer(file("app.js", os.urandom(3000)), media_type=media_type)
    middle = len(genuine) // 2
    flipped = bytes([genuine[middle] ^ 0x01])
    tampered = genuine[:middle] + flipped + genuine[middle + 1 :]
    meta = descriptor(genuine, media_type)
    reader = VerifyingReader(io.BytesIO(tampered), meta)

    with pytest.raises(InvalidContent):
        box.unpacker.apply(reader, media_type, meta.digest)


@pytest.mark.parametrize("media_type", [GZIP, ZSTD, TAR])
def test_empty_layer_is_accepted(box: Sandbox, media_type: str) -> None:
    box.apply(compress(b"", media_type), media_type)
    box.apply(layer(media_type=media_type), media_type)

    assert tree(box.root) == {}


def test_genuine_blob_is_read_to_its_end_and_verified(box: Sandbox) -> None:
    raw = tar_bytes(file("a", b"a")) + bytes(4096)
    meta = descriptor(raw, TAR)
    reader = VerifyingReader(io.BytesIO(raw), meta)

    box.unpacker.apply(reader, TAR, meta.digest)

    assert reader.bytes_read == len(raw)
    assert reader.read(1) == b""


@pytest.mark.parametrize("media_type", [GZIP, ZSTD, TAR])
def test_truncated_stream_is_invalid_content(box: Sandbox, media_type: str) -> None:
    raw = tar_bytes(file("big", os.urandom(200_000)), file("after", b"x"))
    blob = compress(raw, media_type)

    with pytest.raises(InvalidContent, match="sha256:feed") as caught:
        box.apply(blob[: len(blob) // 2], media_type, "sha256:feed")
    assert not isinstance(caught.value, LimitExceeded)


def test_garbage_is_invalid_content(box: Sandbox) -> None:
    for media_type in (GZIP, ZSTD, TAR):
        with pytest.raises(InvalidContent, match="sha256:junk"):
            box.apply(os.urandom(4096), media_type, "sha256:junk")


def test_member_declaring_ten_gigabytes_stops_before_writing(box: Sandbox) -> None:
    info, _ = file("huge.bin")
    info.size = 10 * 1024**3
    header = info.tobuf(tarfile.PAX_FORMAT)
    blob = gzip.compress(header + bytes(1 << 20))

    with pytest.raises(LimitExceeded, match="maxUnpackedBytes") as caught:
        box.apply(blob, GZIP, "sha256:bomb")

    assert "sha256:bomb" in str(caught.value)
    assert not (box.root / "huge.bin").exists()


class CountingStream(io.RawIOBase):
    """A read-only stream over chunks produced on demand, counting what was read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.consumed += size
        return size


def zeros_gzip_members(gigabytes: int) -> tuple[Iterator[bytes], int]:
    """Gzip members of 1 MiB of zeros each, enough for the given gigabytes."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    count = gigabytes * 1024
    return iter([member] * count), len(member) * count


def test_gzip_bomb_of_zeros_after_the_tar_stops_at_the_cap(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, Limits(max_unpacked_bytes=64 << 20))
    head = gzip.compress(tar_bytes(file("innocent", b"hello")))
    bomb, bomb_size = zeros_gzip_members(gigabytes=20)
    stream = CountingStream(iter([head, *bomb]))

    with pytest.raises(LimitExceeded, match="maxUnpackedBytes") as caught:
        box.unpacker.apply(stream, GZIP, "sha256:zeros")

    assert "sha256:zeros" in str(caught.value)
    assert stream.consumed < bomb_size / 1000
    box.assert_outside_untouched()


def test_zstd_bomb_in_a_pax_header_stops_at_the_cap(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 50 * 1024**3
    compressor = zstandard.ZstdCompressor()
    frame = compressor.compress(bytes(8 << 20))
    head = compressor.compress(pax.tobuf(tarfile.GNU_FORMAT))
    stream = CountingStream(iter([head] + [frame] * 6400))

    with pytest.raises(LimitExceeded, match="maxUnpackedBytes"):
        box.unpacker.apply(stream, ZSTD, "sha256:pax")

    assert stream.consumed < len(frame) * 10


def test_unpacked_bytes_cap_counts_across_layers(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, Limits(max_unpacked_bytes=10_000))
    box.apply(layer(file("a", bytes(6_000))))

    with pytest.raises(LimitExceeded, match="maxUnpackedBytes"):
        box.apply(layer(file("b", bytes(6_000))), digest="sha256:second")
    assert not (box.root / "b").exists()


def test_entry_cap(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, Limits(max_entries=5))
    box.apply(layer(*(file(f"f{n}") for n in range(3))))

    with pytest.raises(LimitExceeded, match="maxEntries") as caught:
        box.apply(layer(*(file(f"g{n}") for n in range(3))), digest="sha256:many")

    assert "sha256:many" in str(caught.value)
    assert box.unpacker.entries == 6


class FailingStream(io.RawIOBase):
    """A blob stream whose connection drops after the first read."""

    def __init__(self, first: bytes) -> None:
        self._first: bytes | None = first

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._first is None:
            raise ConnectionResetError(104, "connection reset by peer")
        size = min(len(buffer), len(self._first))
        buffer[:size] = self._first[:size]
        self._first = self._first[size:] or None
        return size


@pytest.mark.parametrize("media_type", [GZIP, ZSTD, TAR])
def test_failure_of_the_blob_stream_itself_is_not_called_corrupt(
    box: Sandbox, media_type: str
) -> None:
    blob = layer(file("big", os.urandom(300_000)), media_type=media_type)
    stream = FailingStream(blob[:1000])

    with pytest.raises(ConnectionResetError):
        box.unpacker.apply(stream, media_type, "sha256:flaky")
