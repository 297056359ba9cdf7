"""Checks that the test infrastructure does what the other tests rely on.

Registries are read here with plain ``requests``, independently of the helpers
under test, and every digest is recomputed from the bytes received.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
import zstandard

import imagebuilder as ib
from registries import (
    MANIFEST_ACCEPT,
    ImageFactory,
    MissingTool,
    Registry,
    RegistryClient,
    RegistryError,
    TokenServer,
    push,
    require_tool,
    unique_repo,
)

SITE = {"index.html": "<h1>hello</h1>", "js/app.js": "console.log(1)"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: member for member in tar.getmembers()}


def get_manifest(
    host: str,
    repo: str,
    ref: str,
    *,
    accept: str = MANIFEST_ACCEPT,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> requests.Response:
    url = f"http://{host}/v2/{repo}/manifests/{ref}"
    headers = {"Accept": accept, **(headers or {})}
    return requests.get(url, headers=headers, auth=auth, timeout=10)


def split_reference(reference: str) -> tuple[str, str, str]:
    host, _, rest = reference.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


# --- imagebuilder ---------------------------------------------------------------------


def test_layer_holds_every_kind_of_entry() -> None:
    spec: ib.Spec = {
        "www": ib.Dir(),
        "www/index.html": "hi",
        "www/run.sh": ib.File(b"#!/bin/sh\n", 0o4755),
        "www/link": ib.Symlink("/etc/passwd"),
        "www/hard": ib.Hardlink("www/index.html"),
        "www/old.txt": ib.Whiteout(),
        "cache": ib.Opaque(),
        "../escape": "x",
        "pipe": ib.Device("fifo"),
    }
    media_type, data = ib.build_layer(spec, "tar")

    members = tar_members(data)
    assert media_type == ib.OCI_LAYER_TAR
    assert members["www"].isdir()
    assert members["www/run.sh"].mode == 0o4755
    assert members["www/link"].issym() and members["www/link"].linkname == "/etc/passwd"
    assert members["www/hard"].islnk()
    assert members["www/hard"].linkname == "www/index.html"
    assert "www/.wh.old.txt" in members
    assert "cache/.wh..wh..opq" in members
    assert "../escape" in members
    assert members["pipe"].isfifo()


def test_compressions_and_multi_frame_streams() -> None:
    tar = ib.build_tar(SITE)

    gz_type, gz_data = ib.build_layer(SITE, "gzip", parts=3)
    zs_type, zs_data = ib.build_layer(SITE, "zstd", parts=2)

    assert gz_type == ib.OCI_LAYER_GZIP and gzip.decompress(gz_data) == tar
    assert gz_data.count(b"\x1f\x8b\x08") >= 3
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(zs_data), read_across_frames=True
    )
    assert zs_type == ib.OCI_LAYER_ZSTD and reader.read() == tar
    assert ib.build_tar(SITE) == tar, "tars must be reproducible"


def test_layout_is_a_valid_oci_layout(tmp_path: Path) -> None:
    images: dict[str, ib.ImageSpec | ib.IndexSpec] = {
        "site": ib.simple_image(SITE, config={"WorkingDir": "/www"}),
        "multi": ib.two_platform_index({"arch": "amd64"}, {"arch": "arm64"}, "zstd"),
    }
    built = ib.build_layout(tmp_path, images)

    index = json.loads((tmp_path / "index.json").read_text())
    names = {m["annotations"][ib.REF_NAME]: m for m in index["manifests"]}
    assert json.loads((tmp_path / "oci-layout").read_text())["imageLayoutVersion"]
    assert names["site"]["digest"] == built["site"].digest
    assert names["multi"]["mediaType"] == ib.OCI_INDEX
    for blob in (tmp_path / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name

    site = built["site"]
    assert isinstance(site, ib.BuiltImage)
    config = json.loads(ib.read_blob(tmp_path, site.config))
    layer = ib.read_blob(tmp_path, site.layers[0])
    assert config["rootfs"]["diff_ids"] == [sha256(gzip.decompress(layer))]
    assert config["config"]["WorkingDir"] == "/www"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")

    multi = built["multi"]
    assert isinstance(multi, ib.BuiltIndex)
    assert set(multi.images) == {"linux/amd64", "linux/arm64/v8"}
    assert len(set(multi.layers)) == 2


def test_raw_layers_keep_their_bytes(tmp_path: Path) -> None:
    hostile = ib.raw_layer(b"not gzip at all")

    built = ib.build_layout(tmp_path, {"bad": ib.ImageSpec(layers=[hostile])})["bad"]

    assert isinstance(built, ib.BuiltImage)
    assert ib.read_blob(tmp_path, built.layers[0]) == b"not gzip at all"
    assert built.diff_ids == [sha256(b"not gzip at all")]


# --- anonymous registry, counting and faults ------------------------------------------


def test_anonymous_round_trip(registry: Registry, image_factory: ImageFactory) -> None:
    reference, built = image_factory(SITE)
    host, repo, tag = split_reference(reference)

    manifest = get_manifest(host, repo, tag)
    layer = requests.get(f"http://{host}/v2/{repo}/blobs/{built.layers[0]}", timeout=10)

    assert host == registry.url
    assert manifest.headers["Content-Type"] == ib.OCI_MANIFEST
    assert sha256(manifest.content) == built.digest
    assert manifest.headers["Docker-Content-Digest"] == built.digest
    assert sha256(layer.content) == built.layers[0]
    assert set(tar_members(gzip.decompress(layer.content))) == set(SITE)


def test_requests_and_blob_gets_are_counted(
    registry: Registry, image_factory: ImageFactory
) -> None:
    reference, built = image_factory(SITE)
    host, repo, tag = split_reference(reference)
    blob_url = f"http://{host}/v2/{repo}/blobs/{built.layers[0]}"
    registry.clear_log()

    get_manifest(host, repo, tag)
    requests.get(blob_url, timeout=10)
    requests.get(blob_url, headers={"Range": "bytes=0-3"}, timeout=10)
    requests.head(blob_url, timeout=10)
    requests.get(f"http://{host}/v2/{repo}/blobs/sha256:{'0' * 64}", timeout=10)

    assert registry.blob_gets(built.layers[0]) == 2
    assert registry.manifest_gets(tag) == 1
    assert registry.requests()[0].path == f"/v2/{repo}/manifests/{tag}"
    assert [(r.method, r.status) for r in registry.requests()] == [
        ("GET", 200), ("GET", 200), ("GET", 206), ("HEAD", 200), ("GET", 404),
    ]  # fmt: skip (one request per pair reads better)
    registry.clear_log()
    assert registry.requests() == []


def test_faults_are_injected_then_used_up(
    registry: Registry, image_factory: ImageFactory
) -> None:
    reference, built = image_factory(SITE)
    host, repo, _ = split_reference(reference)
    blob_url = f"http://{host}/v2/{repo}/blobs/{built.layers[0]}"
    registry.clear_log()

    registry.add_fault("/blobs/", status=503, times=2)
    statuses = [requests.get(blob_url, timeout=10).status_code for _ in range(3)]
    registry.add_fault("/blobs/", drop=True)
    with pytest.raises(requests.ConnectionError):
        requests.get(blob_url, timeout=10)
    registry.add_fault("/blobs/", delay=0.3)
    started = time.monotonic()
    delayed = requests.get(blob_url, timeout=10)

    assert statuses == [503, 503, 200]
    assert time.monotonic() - started >= 0.3 and delayed.status_code == 200
    assert registry.blob_gets(built.layers[0]) == 2


def test_uploads_through_the_proxy(registry: Registry) -> None:
    client = RegistryClient(registry, direct=False)
    repo = unique_repo()
    registry.clear_log()

    digest = client.upload_blob(repo, b"payload" * 10_000)

    assert client.get_blob(repo, digest) == b"payload" * 10_000
    methods = [r.method for r in registry.requests()]
    assert methods == ["POST", "PUT", "GET"]


def test_chunked_upload_through_the_proxy(registry: Registry) -> None:
    repo = unique_repo()
    parts = [b"first part ", b"second part"]
    started = requests.post(f"http://{registry.url}/v2/{repo}/blobs/uploads/")
    location = started.headers["Location"]

    digest = sha256(b"".join(parts))
    finished = requests.put(f"{location}&digest={digest}", data=iter(parts))

    assert location.startswith(f"http://{registry.url}/")
    assert finished.status_code == 201
    assert RegistryClient(registry).get_blob(repo, digest) == b"".join(parts)


def test_restart_keeps_port_and_storage(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry") as running:
        client = RegistryClient(running, direct=False)
        digest = client.upload_blob("r/a", b"kept")
        url, direct_url = running.url, running.direct_url

        pid = running.pid
        running.restart()

        assert running.pid != pid
        assert (running.url, running.direct_url) == (url, direct_url)
        assert client.get_blob("r/a", digest) == b"kept"
        assert running.blob_path(digest).read_bytes() == b"kept"


def test_failed_start_stops_everything(tmp_path: Path) -> None:
    with TokenServer(tmp_path / "token") as server:
        server.cert_path.unlink()
        broken = Registry(tmp_path / "registry", token_server=server)

        with pytest.raises(RegistryError, match="docker-registry exited") as error:
            broken.start()

    assert "token-cert.pem" in str(error.value)
    assert not broken.running and broken.pid is None


def test_registry_does_not_outlive_a_killed_test_run(tmp_path: Path) -> None:
    script = (
        "import sys, time, registries\n"
        "running = registries.Registry(registries.Path(sys.argv[1]))\n"
        "running.start()\n"
        "print(running.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    command = [sys.executable, "-c", script, str(tmp_path)]
    here = Path(__file__).parent
    child = subprocess.Popen(command, cwd=here, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        registry_pid = int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and process_alive(registry_pid):
        time.sleep(0.05)
    survived = process_alive(registry_pid)
    if survived:
        os.kill(registry_pid, signal.SIGTERM)
    assert not survived, "the registry outlived the process that started it"


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_missing_tool_says_what_to_install() -> None:
    with pytest.raises(MissingTool, match="apt-get install"):
        require_tool("no-such-tool-for-blobserve")


# --- media types ----------------------------------------------------------------------


def test_index_push_is_an_index(image_factory: ImageFactory) -> None:
    image = ib.two_platform_index({"arch.txt": "amd64"}, {"arch.txt": "arm64"})
    reference, built = image_factory(image)
    host, repo, tag = split_reference(reference)

    index = get_manifest(host, repo, tag)

    assert isinstance(built, ib.BuiltIndex)
    assert index.headers["Content-Type"] == ib.OCI_INDEX
    assert sha256(index.content) == built.digest
    platforms = {m["platform"]["architecture"]: m for m in index.json()["manifests"]}
    arm = get_manifest(host, repo, platforms["arm64"]["digest"]).json()
    arm_layer = requests.get(
        f"http://{host}/v2/{repo}/blobs/{arm['layers'][0]['digest']}", timeout=10
    )
    assert gzip.decompress(arm_layer.content).find(b"arm64") > 0
    assert built.images["linux/arm64/v8"].layers == [arm["layers"][0]["digest"]]


def test_docker_schema2_push(image_factory: ImageFactory) -> None:
    reference, built = image_factory(SITE, format="v2s2")
    host, repo, tag = split_reference(reference)

    manifest = get_manifest(host, repo, tag)
    oci_only = get_manifest(host, repo, tag, accept=ib.OCI_MANIFEST)

    assert manifest.headers["Content-Type"] == ib.DOCKER_MANIFEST
    assert sha256(manifest.content) == built.digest
    document = manifest.json()
    assert document["config"]["mediaType"] == ib.DOCKER_CONFIG
    assert document["layers"][0]["mediaType"] == ib.DOCKER_LAYER_GZIP
    # distribution 2.8 answers a client that does not accept schema 2 with a
    # converted, signed schema 1 manifest of another digest.
    assert oci_only.headers["Content-Type"].startswith(
        "application/vnd.docker.distribution.manifest.v1"
    )


def test_docker_manifest_list_push(image_factory: ImageFactory) -> None:
    image = ib.two_platform_index({"arch.txt": "amd64"}, {"arch.txt": "arm64"})
    reference, built = image_factory(image, format="v2s2")
    host, repo, tag = split_reference(reference)

    listing = get_manifest(host, repo, tag)

    assert listing.headers["Content-Type"] == ib.DOCKER_LIST
    assert isinstance(built, ib.BuiltIndex) and sha256(listing.content) == built.digest
    for entry in listing.json()["manifests"]:
        assert entry["mediaType"] == ib.DOCKER_MANIFEST
        child = get_manifest(host, repo, entry["digest"])
        assert child.headers["Content-Type"] == ib.DOCKER_MANIFEST


def test_oci_manifest_needs_oci_accept(image_factory: ImageFactory) -> None:
    reference, _ = image_factory(SITE)
    host, repo, tag = split_reference(reference)

    answer = get_manifest(host, repo, tag, accept=ib.DOCKER_MANIFEST)

    assert answer.status_code == 404
    assert answer.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_hostile_layers_and_manifests_are_stored_as_given(
    registry: Registry, image_factory: ImageFactory
) -> None:
    image = ib.ImageSpec(layers=[ib.raw_layer(b"\x1f\x8b not really", "x/unknown")])
    reference, built = image_factory(image)
    host, repo, _ = split_reference(reference)
    client = RegistryClient(registry)
    assert isinstance(built, ib.BuiltImage)

    manifest = json.loads(client.get_manifest(repo, built.digest).content)
    manifest["layers"][0]["digest"] = built.config
    digest = client.put_manifest(repo, "forged", manifest, ib.OCI_MANIFEST)

    assert client.get_blob(repo, built.layers[0]) == b"\x1f\x8b not really"
    assert manifest["layers"][0]["mediaType"] == "x/unknown"
    assert sha256(get_manifest(host, repo, "forged").content) == digest


# --- Basic auth -----------------------------------------------------------------------


def test_basic_round_trip(auth_registry: Registry, image_factory: ImageFactory) -> None:
    reference, built = image_factory(SITE, registry=auth_registry)
    host, repo, tag = split_reference(reference)
    creds = auth_registry.creds
    assert creds is not None

    anonymous = get_manifest(host, repo, tag)
    manifest = get_manifest(host, repo, tag, auth=creds)
    layer = requests.get(
        f"http://{host}/v2/{repo}/blobs/{built.layers[0]}", auth=creds, timeout=10
    )

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert sha256(manifest.content) == built.digest
    assert sha256(layer.content) == built.layers[0]
    assert auth_registry.blob_gets(built.layers[0]) >= 1


def test_basic_password_change_applies_live(auth_registry: Registry) -> None:
    user, old = auth_registry.user, auth_registry.password
    assert user and old
    url = f"http://{auth_registry.url}/v2/"

    auth_registry.set_password(user, "changed-" + old)
    try:
        with_old = requests.get(url, auth=(user, old), timeout=10).status_code
        with_new = requests.get(url, auth=(user, "changed-" + old), timeout=10)
    finally:
        auth_registry.set_password(user, old)

    assert with_old == 401
    assert with_new.status_code == 200
    assert requests.get(url, auth=(user, old), timeout=10).status_code == 200


# --- token auth -----------------------------------------------------------------------


def fetch_token(challenge: str, creds: tuple[str, str] | None) -> requests.Response:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    query = {"service": params["service"], "scope": params["scope"]}
    return requests.get(params["realm"], params=query, auth=creds, timeout=10)


def test_token_round_trip(
    token_registry: Registry, image_factory: ImageFactory
) -> None:
    reference, built = image_factory(SITE, registry=token_registry, repo=unique_repo())
    host, repo, tag = split_reference(reference)
    creds = (token_registry.user or "", token_registry.password or "")
    server = token_registry.token_server
    assert server is not None
    server.clear()

    challenge = get_manifest(host, repo, tag)
    answer = fetch_token(challenge.headers["WWW-Authenticate"], creds)
    bearer = {"Authorization": f"Bearer {answer.json()['token']}"}
    manifest = get_manifest(host, repo, tag, headers=bearer)
    layer = requests.get(
        f"http://{host}/v2/{repo}/blobs/{built.layers[0]}", headers=bearer, timeout=10
    )

    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert answer.json()["expires_in"] == server.lifetime
    assert sha256(manifest.content) == built.digest
    assert sha256(layer.content) == built.layers[0]
    assert server.count == 1
    assert server.requests()[0].user == creds[0]
    assert server.requests()[0].granted[0]["actions"] == ["pull"]


def test_token_scopes_are_honoured(
    token_registry: Registry, image_factory: ImageFactory
) -> None:
    private, _ = image_factory(SITE, registry=token_registry, repo=unique_repo("team"))
    public, _ = image_factory(SITE, registry=token_registry, repo=unique_repo("public"))
    server = token_registry.token_server
    assert server is not None
    results = {}

    for name, reference in (("private", private), ("public", public)):
        host, repo, tag = split_reference(reference)
        challenge = get_manifest(host, repo, tag).headers["WWW-Authenticate"]
        token = fetch_token(challenge, None).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        results[name] = get_manifest(host, repo, tag, headers=bearer).status_code
    wrong = fetch_token(challenge, ("blobserve", "wrong password"))

    assert results == {"private": 401, "public": 200}
    assert wrong.status_code == 401
    assert server.requests()[-1].status == 401


def test_token_expires_when_announced(
    token_registry: Registry, image_factory: ImageFactory
) -> None:
    repo = unique_repo("public")
    reference, _ = image_factory(SITE, registry=token_registry, repo=repo)
    host, repo, tag = split_reference(reference)
    server = token_registry.token_server
    assert server is not None
    challenge = get_manifest(host, repo, tag).headers["WWW-Authenticate"]

    server.lifetime = 1
    try:
        answer = fetch_token(challenge, None).json()
    finally:
        server.lifetime = 300
    bearer = {"Authorization": f"Bearer {answer['token']}"}
    fresh = get_manifest(host, repo, tag, headers=bearer).status_code
    time.sleep(2.1)
    expired = get_manifest(host, repo, tag, headers=bearer)

    assert answer["expires_in"] == 1
    assert fresh == 200
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


def test_push_to_token_registry_uses_credentials(
    token_registry: Registry, tmp_path: Path
) -> None:
    ib.build_layout(tmp_path, {"v1": ib.simple_image(SITE)})
    server = token_registry.token_server
    assert server is not None
    server.clear()

    pushed = push(tmp_path, "v1", token_registry, unique_repo(), "v2")

    assert pushed.reference.endswith(":v2") and pushed.by_digest.endswith(pushed.digest)
    assert server.count >= 1
    assert {r.user for r in server.requests()} == {token_registry.user}
