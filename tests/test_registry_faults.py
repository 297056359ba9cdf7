"""Registry behaviour a real registry cannot be made to show, through `responses`."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import requests
import responses

from blobserve.errors import (
    InvalidContent,
    NotFound,
    Unauthorized,
    UpstreamFailed,
    UpstreamTimeout,
)
from blobserve.oci.reference import parse_reference
from blobserve.oci.registry import ClientOptions, RegistryClient
from blobserve.oci.types import DOCKER_MANIFEST, Descriptor

HOST = "registry.test"
BASE = f"https://{HOST}/v2/team/app"
REF = parse_reference(f"{HOST}/team/app:v1")
BLOB = b"layer bytes " * 1000
LAYER = Descriptor(
    "application/vnd.oci.image.layer.v1.tar",
    "sha256:" + hashlib.sha256(BLOB).hexdigest(),
    len(BLOB),
)


def manifest() -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "x", "digest": "sha256:" + "c" * 64, "size": 2},
            "layers": [
                {
                    "mediaType": LAYER.media_type,
                    "digest": LAYER.digest,
                    "size": LAYER.size,
                }
            ],
        }
    ).encode()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(sleeps: Sleeps | None = None, **options) -> RegistryClient:
    return RegistryClient(
        ClientOptions(**options), sleep=Sleeps() if sleeps is None else sleeps
    )


@responses.activate
def test_429_waits_for_retry_after() -> None:
    responses.get(f"{BASE}/manifests/v1", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/manifests/v1", body=manifest())
    sleeps = Sleeps()

    image = client(sleeps).resolve(REF)

    assert sleeps == [7.0]
    assert image.layers == (LAYER,)


@responses.activate
def test_retry_after_is_capped() -> None:
    responses.get(f"{BASE}/manifests/v1", status=503, headers={"Retry-After": "9999"})
    responses.get(f"{BASE}/manifests/v1", body=manifest())
    sleeps = Sleeps()

    client(sleeps, max_retry_after=30).resolve(REF)

    assert sleeps == [30]


@responses.activate
def test_503_then_success() -> None:
    responses.get(f"{BASE}/manifests/v1", status=503)
    responses.get(f"{BASE}/manifests/v1", status=502)
    responses.get(f"{BASE}/manifests/v1", body=manifest())
    sleeps = Sleeps()

    client(sleeps).resolve(REF)

    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.1


@responses.activate
def test_persistent_5xx_gives_up_after_bounded_retries() -> None:
    for _ in range(4):
        responses.get(f"{BASE}/manifests/v1", status=500)
    sleeps = Sleeps()

    with pytest.raises(UpstreamFailed) as caught:
        client(sleeps, retries=3).resolve(REF)

    assert len(sleeps) == 3
    assert caught.value.upstream_status == 500
    assert "answered 500" in str(caught.value)


@responses.activate
def test_connect_timeout_becomes_upstream_timeout() -> None:
    error = requests.exceptions.ConnectTimeout("slow")
    for _ in range(2):
        responses.get(f"{BASE}/manifests/v1", body=error)

    with pytest.raises(UpstreamTimeout):
        client(retries=1).resolve(REF)


@responses.activate
def test_404_is_not_found_without_retries() -> None:
    responses.get(f"{BASE}/manifests/v1", status=404)
    sleeps = Sleeps()

    with pytest.raises(NotFound):
        client(sleeps).resolve(REF)
    assert sleeps == []


@responses.activate
def test_malformed_manifest_is_invalid_content() -> None:
    responses.get(f"{BASE}/manifests/v1", body=b"<html>oops</html>")

    with pytest.raises(InvalidContent, match="not valid JSON"):
        client().resolve(REF)


@responses.activate
def test_oversized_manifest_is_refused() -> None:
    big = b" " * (4 * 1024 * 1024 + 1)
    responses.get(f"{BASE}/manifests/v1", body=big)

    with pytest.raises(InvalidContent, match="4 MiB"):
        client().resolve(REF)


@responses.activate
def test_header_digest_mismatch_is_refused() -> None:
    responses.get(
        f"{BASE}/manifests/v1",
        body=manifest(),
        headers={"Docker-Content-Digest": "sha256:" + "0" * 64},
    )

    with pytest.raises(InvalidContent, match="refusing"):
        client().resolve(REF)


class BreakingRaw(io.RawIOBase):
    """Serves data, then fails like a reset connection after `cut` bytes."""

    def __init__(self, data: bytes, cut: int) -> None:
        self._data = io.BytesIO(data)
        self._cut = cut

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._data.tell() >= self._cut:
            raise ConnectionResetError(104, "Connection reset by peer")
        chunk = self._data.read(min(len(buffer), self._cut - self._data.tell()))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@responses.activate
def test_connection_reset_mid_blob_resumes_with_a_range() -> None:
    url = f"{BASE}/blobs/{LAYER.digest}"
    ranges = []

    def first(request):
        return (
            200,
            {"Content-Length": str(len(BLOB))},
            io.BufferedReader(BreakingRaw(BLOB, 5000)),
        )

    responses.add_callback(responses.GET, url, callback=first)

    def rest(request):
        ranges.append(request.headers.get("Range"))
        start = int(request.headers["Range"].split("=")[1].rstrip("-"))
        return (206, {}, BLOB[start:])

    responses.add_callback(responses.GET, url, callback=rest)

    stream = client().open_blob(REF, LAYER)
    data = b"".join(iter(lambda: stream.read(4096), b""))

    assert data == BLOB
    assert len(ranges) == 1
    assert 0 < int(ranges[0].split("=")[1].rstrip("-")) <= 5000


@responses.activate
def test_blob_with_other_bytes_is_refused() -> None:
    tampered = BLOB[:-1] + b"?"
    responses.get(f"{BASE}/blobs/{LAYER.digest}", body=tampered)

    stream = client().open_blob(REF, LAYER)
    with pytest.raises(InvalidContent, match="has digest"):
        stream.drain()


@responses.activate
def test_token_rejected_after_expiry_is_fetched_again() -> None:
    realm = "https://auth.test/token"
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}
    tokens = iter(["first", "second"])
    valid: list[str] = []
    scopes: list[str] = []
    seen: list[str] = []

    def token(request):
        valid[:] = [next(tokens)]
        scopes.append(request.params.get("scope"))
        return (200, {}, json.dumps({"token": valid[0], "expires_in": 300}))

    def manifests(request):
        sent = request.headers.get("Authorization", "")
        seen.append(sent)
        if valid and sent == f"Bearer {valid[0]}":
            return (200, {}, manifest())
        return (401, challenge, "")

    responses.add_callback(responses.GET, realm, callback=token)
    responses.add_callback(responses.GET, f"{BASE}/manifests/v1", callback=manifests)

    registry = client()
    registry.resolve(REF)
    valid[:] = ["expired-by-the-server"]
    registry.resolve(REF)

    assert scopes == ["repository:team/app:pull"] * 2
    assert seen == ["", "Bearer first", "Bearer first", "Bearer second"]


@responses.activate
def test_basic_challenge_without_credentials_is_unauthorized() -> None:
    responses.get(
        f"{BASE}/manifests/v1",
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="registry"'},
    )

    with pytest.raises(Unauthorized, match="no credentials"):
        client().resolve(REF)
