"""Tests for blobserve.oci.reference: parsing image references and request paths."""

from __future__ import annotations

import dataclasses

import pytest

from blobserve.errors import InvalidReference, MissingTag
from blobserve.oci.reference import (
    Reference,
    normalize_name,
    parse_reference,
    split_request_path,
)

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
OTHER_DIGEST = f"sha256:{'f' * 64}"
HUB = "docker.io"

# The longest name allowed is 255 characters, registry included.
LONGEST_PATH = "a" * (255 - len("reg.example/"))


VALID_REFERENCES = [
    ("alpine:3.19", HUB, "library/alpine", "3.19", None),
    ("library/alpine:3", HUB, "library/alpine", "3", None),
    ("docker.io/alpine:latest", HUB, "library/alpine", "latest", None),
    ("docker.io/library/alpine:3", HUB, "library/alpine", "3", None),
    ("index.docker.io/library/alpine:3", HUB, "library/alpine", "3", None),
    ("index.docker.io/alpine:3", HUB, "library/alpine", "3", None),
    ("gitpod/workspace-full:2024", HUB, "gitpod/workspace-full", "2024", None),
    ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "v1", None),
    ("reg.example:5000/ide/code:c1", "reg.example:5000", "ide/code", "c1", None),
    ("registry.example/a:v1", "registry.example", "a", "v1", None),
    ("localhost:5000/a:v1", "localhost:5000", "a", "v1", None),
    ("localhost/a:v1", "localhost", "a", "v1", None),
    ("[::1]:5000/a:v1", "[::1]:5000", "a", "v1", None),
    ("[::1]/a:v1", "[::1]", "a", "v1", None),
    ("[2001:db8::1]:443/x/y:z", "[2001:db8::1]:443", "x/y", "z", None),
    ("eu.gcr.io/a/b/c/d:v1", "eu.gcr.io", "a/b/c/d", "v1", None),
    ("my-reg.example/team/app:1", "my-reg.example", "team/app", "1", None),
    ("Registry.Example:5000/a:v1", "Registry.Example:5000", "a", "v1", None),
    ("reg:1/a:v", "reg:1", "a", "v", None),
    ("reg:65535/a:v", "reg:65535", "a", "v", None),
    (f"reg.example/a@{DIGEST}", "reg.example", "a", None, DIGEST),
    (f"reg.example/a:v1@{DIGEST}", "reg.example", "a", "v1", DIGEST),
    (f"alpine@{DIGEST}", HUB, "library/alpine", None, DIGEST),
    ("a__b/c-d/e---f.g_h:V_1.0-rc", HUB, "a__b/c-d/e---f.g_h", "V_1.0-rc", None),
    ("a0/9z:_x", HUB, "a0/9z", "_x", None),
    ("a:" + "x" * 128, HUB, "library/a", "x" * 128, None),
    (f"reg.example/{LONGEST_PATH}:v", "reg.example", LONGEST_PATH, "v", None),
    # Docker reads a lone "host:port" as a Docker Hub name with a tag.
    ("localhost:5000", HUB, "library/localhost", "5000", None),
]

INVALID_REFERENCES = [
    ("alpine", MissingTag, "needs a tag"),
    ("reg:5000/a/b", MissingTag, "needs a tag"),
    ("docker.io/library/alpine", MissingTag, "'docker.io/library/alpine'"),
    ("Alpine:3", InvalidReference, "must be lower case"),
    ("library/Alpine:3", InvalidReference, "'library/Alpine' in reference"),
    ("reg.example/Team/app:1", InvalidReference, "must be lower case"),
    ("a" * 247 + ":v", InvalidReference, "at most 255"),
    (f"reg.example/{LONGEST_PATH}b:v", InvalidReference, "256 characters"),
    ("a//b:v1", InvalidReference, "empty, '.' or '..'"),
    ("a/b/:v1", InvalidReference, "empty, '.' or '..'"),
    ("/a:v1", InvalidReference, "empty, '.' or '..'"),
    ("reg.example/../b:v1", InvalidReference, "'..' path component"),
    ("reg.example/a/./b:v1", InvalidReference, "'.'"),
    ("a:v1\r\nX-Forged: 1", InvalidReference, "'a:v1\\r\\nX-Forged: 1'"),
    ("a:v1\n", InvalidReference, "control character"),
    ("a\x00:v1", InvalidReference, "'a\\x00:v1'"),
    ("a b:v1", InvalidReference, "whitespace"),
    ("a:v1\t", InvalidReference, "whitespace"),
    ("a:v\u2028", InvalidReference, "\\u2028"),
    ("reg:0/a:v1", InvalidReference, "port 0"),
    ("reg:65536/a:v1", InvalidReference, "port 65536"),
    ("reg:/a:v1", InvalidReference, "'reg:' in reference"),
    ("[::1/a:v1", InvalidReference, "not a valid host[:port]"),
    ("[::g]:5000/a:v1", InvalidReference, "not a valid host[:port]"),
    ("[1:2:3]:5000/a:v1", InvalidReference, "IPv6"),
    ("reg_bad.example/a:v1", InvalidReference, "'reg_bad.example'"),
    ("-reg.example/a:v1", InvalidReference, "not a valid host[:port]"),
    ("a@sha512:" + "ab" * 64, InvalidReference, "only sha256"),
    (f"a@blake3:{HEX}", InvalidReference, "'blake3' in reference"),
    (f"a@sha256:{HEX[:63]}", InvalidReference, "64 lower-case hex"),
    (f"a@sha256:{HEX}0", InvalidReference, "64 lower-case hex"),
    (f"a@sha256:{HEX.upper()}", InvalidReference, "malformed"),
    ("a@sha256:" + "g" * 64, InvalidReference, "malformed"),
    ("a@", InvalidReference, "not of the form"),
    (f"a@{HEX}", InvalidReference, "not of the form"),
    (f"a:v1@{DIGEST}@x", InvalidReference, "malformed"),
    ("a:", InvalidReference, "tag '' in reference"),
    ("a:-v1", InvalidReference, "tag '-v1'"),
    ("a:v+1", InvalidReference, "must start with"),
    ("a:" + "x" * 129, InvalidReference, "at most 128"),
    ("a:v1:v2", InvalidReference, "path component 'a:v1'"),
    (":v1", InvalidReference, "no repository name"),
    ("", InvalidReference, "no repository name"),
    ("a_/b:v1", InvalidReference, "path component 'a_'"),
    ("a..b:v1", InvalidReference, "path component 'a..b'"),
    ("a___b:v1", InvalidReference, "path component 'a___b'"),
    ("a-/b:v1", InvalidReference, "path component 'a-'"),
    ("caf\u00e9:v1", InvalidReference, "path component"),
]


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"), VALID_REFERENCES
)
def test_parse_reference_valid(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    reference = parse_reference(text)

    assert reference == Reference(registry, repository, tag, digest)
    assert reference.pinned is (digest is not None)
    assert parse_reference(str(reference)) == reference


@pytest.mark.parametrize(("text", "error", "fragment"), INVALID_REFERENCES)
def test_parse_reference_invalid(
    text: str, error: type[InvalidReference], fragment: str
) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)

    assert type(caught.value) is error
    message = str(caught.value)
    assert fragment in message
    assert not any(char in message for char in "\r\n\x00\u2028")


def test_invalid_reference_message_is_bounded() -> None:
    text = "a\n" * 10_000 + ":v1"

    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)

    message = str(caught.value)
    assert len(message) < 300
    assert "\n" not in message


def test_reference_properties() -> None:
    hub = Reference(HUB, "library/alpine", "3", None)
    local = Reference("127.0.0.1:5000", "a/b", "v1", DIGEST)

    assert hub.name == "docker.io/library/alpine"
    assert hub.api_host == "registry-1.docker.io"
    assert str(hub) == "docker.io/library/alpine:3"
    assert not hub.pinned
    assert local.name == "127.0.0.1:5000/a/b"
    assert local.api_host == "127.0.0.1:5000"
    assert str(local) == f"127.0.0.1:5000/a/b:v1@{DIGEST}"
    assert local.pinned


def test_reference_with_digest() -> None:
    reference = parse_reference(f"reg.example/a:v1@{DIGEST}")

    pinned = reference.with_digest(OTHER_DIGEST)

    assert pinned == Reference("reg.example", "a", "v1", OTHER_DIGEST)
    assert reference.digest == DIGEST
    with pytest.raises(InvalidReference, match="only sha256"):
        reference.with_digest(f"sha512:{HEX}{HEX}")
    with pytest.raises(InvalidReference, match="malformed"):
        reference.with_digest("sha256:abc")


def test_reference_is_frozen() -> None:
    reference = parse_reference("alpine:3")

    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.tag = "4"  # type: ignore[misc]


REQUEST_PATHS = [
    ("/127.0.0.1:5000/a/b:v1/x/y.js", "127.0.0.1:5000/a/b:v1", "x/y.js"),
    ("127.0.0.1:5000/a/b:v1/x/y.js", "127.0.0.1:5000/a/b:v1", "x/y.js"),
    (f"/reg:5000/a@{DIGEST}/index.html", f"reg:5000/a@{DIGEST}", "index.html"),
    (f"/reg:5000/a:v1@{DIGEST}/index.html", f"reg:5000/a:v1@{DIGEST}", "index.html"),
    ("/r.example/a:v1/sub/", "r.example/a:v1", "sub/"),
    ("/r.example/a:v1/", "r.example/a:v1", ""),
    ("/r.example/a:v1", "r.example/a:v1", ""),
    ("/r.example/a:v1//x", "r.example/a:v1", "x"),
    ("/localhost:5000/ide/code:c1/out/a.js", "localhost:5000/ide/code:c1", "out/a.js"),
    ("/localhost/a:v1/x", "localhost/a:v1", "x"),
    ("/[::1]:5000/a:v1/x", "[::1]:5000/a:v1", "x"),
    ("/eu.gcr.io/a/b/c/d:v1/e/f", "eu.gcr.io/a/b/c/d:v1", "e/f"),
    ("/alpine:3.19/index.html", "docker.io/library/alpine:3.19", "index.html"),
    ("/library/alpine:3/index.html", "docker.io/library/alpine:3", "index.html"),
    (f"/alpine@{DIGEST}/x", f"docker.io/library/alpine@{DIGEST}", "x"),
    ("/docker.io/library/node:20/a/b", "docker.io/library/node:20", "a/b"),
    ("/alpine:3", "docker.io/library/alpine:3", ""),
    ("/reg.example/a:v1/d:e/f", "reg.example/a:v1", "d:e/f"),
    ("/reg.example/a:v1/img@2x.png", "reg.example/a:v1", "img@2x.png"),
    ("/reg.example/a:v1/my file.txt", "reg.example/a:v1", "my file.txt"),
    ("/reg.example/a:v1/../etc/passwd", "reg.example/a:v1", "../etc/passwd"),
]

INVALID_REQUEST_PATHS = [
    ("/reg.example/a/b/index.html", MissingTag, "no component with a ':tag'"),
    ("/reg.example/a/b", MissingTag, "no component with a ':tag'"),
    ("/alpine/index.html", MissingTag, "'/alpine/index.html'"),
    ("/", MissingTag, "needs one"),
    ("", MissingTag, "needs one"),
    ("/node:20/index.html", MissingTag, "'node:20' was read as a registry"),
    ("/reg.example/a:v1/x\r\ny", InvalidReference, "'/reg.example/a:v1/x\\r\\ny'"),
    ("/reg.example/a:v1/x\x00", InvalidReference, "NUL, CR or LF"),
    ("/reg.example/A:v1/x", InvalidReference, "must be lower case"),
    ("/reg.example/a:v 1/x", InvalidReference, "whitespace"),
    ("/reg.example/a@sha512:" + "ab" * 64 + "/x", InvalidReference, "only sha256"),
    ("/reg:99999/a:v1/x", InvalidReference, "port 99999"),
    ("//reg.example/a:v1/x", InvalidReference, "empty, '.' or '..'"),
    ("/reg.example/../a:v1/x", InvalidReference, "'..' path component"),
]


@pytest.mark.parametrize(("path", "reference", "rest"), REQUEST_PATHS)
def test_split_request_path(path: str, reference: str, rest: str) -> None:
    parsed, inner = split_request_path(path)

    assert parsed == parse_reference(reference)
    assert inner == rest


@pytest.mark.parametrize(("path", "error", "fragment"), INVALID_REQUEST_PATHS)
def test_split_request_path_invalid(
    path: str, error: type[InvalidReference], fragment: str
) -> None:
    with pytest.raises(InvalidReference) as caught:
        split_request_path(path)

    assert type(caught.value) is error
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_split_request_path_example_from_the_api() -> None:
    reference, rest = split_request_path("/127.0.0.1:5000/a/b:v1/x/y.js")

    assert reference == Reference("127.0.0.1:5000", "a/b", "v1", None)
    assert rest == "x/y.js"


NAMES = [
    ("alpine", "docker.io/library/alpine"),
    ("library/alpine", "docker.io/library/alpine"),
    ("docker.io/alpine", "docker.io/library/alpine"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine"),
    ("gitpod/workspace-full", "docker.io/gitpod/workspace-full"),
    ("registry.example:5000/ide/code", "registry.example:5000/ide/code"),
    ("localhost:5000/a", "localhost:5000/a"),
    ("localhost/a", "localhost/a"),
    ("[::1]:5000/a/b", "[::1]:5000/a/b"),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c"),
]

INVALID_NAMES = [
    ("alpine:3", "carries a tag or digest"),
    (f"alpine@{DIGEST}", "carries a tag or digest"),
    (f"reg.example/a:v1@{DIGEST}", "carries a tag or digest"),
    ("localhost:5000", "carries a tag or digest"),
    ("Alpine", "must be lower case"),
    ("a//b", "empty, '.' or '..'"),
    ("reg.example/..", "'..' path component"),
    ("", "no repository name"),
    ("a\nb", "'a\\nb'"),
    ("reg:0/a", "port 0"),
    ("a" * 256, "at most 255"),
]


@pytest.mark.parametrize(("text", "name"), NAMES)
def test_normalize_name(text: str, name: str) -> None:
    assert normalize_name(text) == name


@pytest.mark.parametrize(("text", "fragment"), INVALID_NAMES)
def test_normalize_name_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        normalize_name(text)

    assert type(caught.value) is InvalidReference
    assert fragment in str(caught.value)
