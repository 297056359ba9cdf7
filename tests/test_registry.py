"""blobserve.oci against real docker-registry processes, through the counting proxy.

Images are built with ``imagebuilder``, pushed with skopeo, then resolved and
unpacked by ``RegistryClient`` and ``unpack_image`` into temporary directories.
Repositories and file contents are unique per test, so the session registries
never serve one test's blobs to another.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import imagebuilder as ib
from blobserve.cache import BlobSpace, tree_key
from blobserve.errors import (
    InvalidContent,
    NotFound,
    Unauthorized,
    UpstreamFailed,
    UpstreamTimeout,
)
from blobserve.oci.auth import CredentialStore
from blobserve.oci.reference import parse_reference
from blobserve.oci.registry import ClientOptions, RegistryClient
from blobserve.oci.sources import Sources, SourceSpec, UnpackResult, unpack_image
from blobserve.oci.types import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Limits,
    ResolvedImage,
)
from registries import ImageFactory, Registry, free_port, unique_repo
from registries import RegistryClient as SetupClient

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


class Sleeps(list):
    """A stand-in for ``time.sleep`` that records the delays asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def site(marker: str | None = None) -> dict[str, bytes | str]:
    """A small website whose bytes no other test pushes."""
    marker = marker or uuid.uuid4().hex
    return {
        "www/index.html": f"<h1>{marker}</h1>\n",
        "www/js/app.js": f"console.log({marker!r});\n",
        "www/img/logo.bin": bytes(range(256)) * 40 + marker.encode(),
    }


def expected_files(spec: dict[str, bytes | str]) -> dict[str, bytes]:
    """The file contents a spec of plain files unpacks to."""
    return {
        path: value.encode() if isinstance(value, str) else value
        for path, value in spec.items()
    }


def files_in(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path, with its bytes."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def sources_for(
    registry: Registry,
    *,
    docker_auth: str | None = None,
    sleep: Sleeps | None = None,
    **options: Any,
) -> Sources:
    """Sources that reach the plain-HTTP registry, optionally with a sleep stub."""
    client_options = ClientOptions(insecure_registries=(registry.url,), **options)
    spec = SourceSpec(options=client_options, docker_auth=docker_auth)
    sources = Sources(spec)

    if sleep is not None:
        credentials = CredentialStore(docker_auth)
        sources.registry = RegistryClient(client_options, credentials, sleep=sleep)
    return sources


def pull(
    sources: Sources, reference: str, dest: Path
) -> tuple[ResolvedImage, UnpackResult]:
    """Resolve a reference and unpack its image into dest, which must not exist."""
    ref = parse_reference(reference)
    image = sources.for_ref(ref).resolve(ref)

    dest.mkdir(parents=True)
    result = unpack_image(sources, ref, image, str(dest), Limits())
    return image, result


def docker_config(path: Path, server: str, user: str, password: str, form: str) -> str:
    """Write a Docker config.json holding one login in the given form."""
    if form == "auth":
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        entry: dict[str, str] = {"auth": token}
    else:
        entry = {"username": user, "password": password}
    path.write_text(json.dumps({"auths": {server: entry}}))
    return str(path)


def public_image(
    token_registry: Registry, image_factory: ImageFactory
) -> tuple[str, ib.Built]:
    """Push a small image into a ``public/*`` repository anyone may pull."""
    return image_factory(site(), registry=token_registry, repo=unique_repo("public"))


def repo_of(reference: str) -> str:
    """The repository part of a ``host:port/repo:tag`` reference."""
    return parse_reference(reference).repository


# --- pulling images -------------------------------------------------------------------


def test_single_gzip_layer_unpacks_byte_for_byte(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files)
    assert isinstance(built, ib.BuiltImage)
    registry.clear_log()

    image, result = pull(sources_for(registry), reference, tmp_path / "fs")

    assert image.manifest_digest == built.digest
    assert image.media_type == OCI_MANIFEST
    assert [layer.digest for layer in image.layers] == built.layers
    assert files_in(tmp_path / "fs") == expected_files(files)
    assert result.pulled == image.size
    assert registry.blob_gets(built.layers[0]) == 1
    assert registry.manifest_gets("latest") == 1


def test_whiteouts_and_opaque_directory_merge_four_layers(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    layers = [
        ib.build_layer({
            "etc/a.conf": "a1", "etc/b.conf": "b1", "www/keep.html": "k1",
            "www/old/x.html": "x", "www/old/sub/y.html": "y", "var/log/app.log": "l",
        }),
        ib.build_layer({"etc/a.conf": ib.Whiteout(), "www/keep.html": "k2"}),
        ib.build_layer({"www/old": ib.Opaque(), "www/old/new.html": "n"}, "zstd"),
        ib.build_layer({"var/log": ib.Whiteout(), "etc/a.conf": "a4", "id": marker}),
    ]
    reference, built = image_factory(ib.ImageSpec(layers=layers))
    assert isinstance(built, ib.BuiltImage)
    registry.clear_log()

    pull(sources_for(registry), reference, tmp_path / "fs")

    assert files_in(tmp_path / "fs") == {
        "etc/a.conf": b"a4",
        "etc/b.conf": b"b1",
        "www/keep.html": b"k2",
        "www/old/new.html": b"n",
        "id": marker.encode(),
    }
    assert (tmp_path / "fs" / "var").is_dir()
    assert not (tmp_path / "fs" / "www" / "old" / "sub").exists()
    assert [registry.blob_gets(digest) for digest in built.layers] == [1, 1, 1, 1]


@pytest.mark.parametrize("compression", ["zstd", "tar"])
def test_zstd_and_plain_tar_layers(
    compression: str, registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(ib.simple_image(files, compression))

    image, _ = pull(sources_for(registry), reference, tmp_path / "fs")

    assert image.layers[0].media_type == ib.COMPRESSIONS[compression]
    assert image.manifest_digest == built.digest
    assert files_in(tmp_path / "fs") == expected_files(files)


def test_docker_schema2_manifest_is_accepted(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files, format="v2s2")

    image, _ = pull(sources_for(registry), reference, tmp_path / "fs")

    assert image.media_type == DOCKER_MANIFEST
    assert image.manifest_digest == built.digest
    assert image.layers[0].media_type == DOCKER_LAYER_GZIP
    assert files_in(tmp_path / "fs") == expected_files(files)


# --- platforms ------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["oci", "v2s2"])
def test_index_picks_the_configured_platform(
    format: str, registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    amd64, arm64 = site("amd64-" + uuid.uuid4().hex), site("arm64-" + uuid.uuid4().hex)
    reference, built = image_factory(ib.two_platform_index(amd64, arm64), format=format)
    assert isinstance(built, ib.BuiltIndex)
    expected_index = ib.OCI_INDEX if format == "oci" else ib.DOCKER_LIST
    assert built.media_type == expected_index

    default, _ = pull(sources_for(registry), reference, tmp_path / "amd64")
    arm, _ = pull(
        sources_for(registry, platform="linux/arm64"), reference, tmp_path / "arm64"
    )

    assert default.manifest_digest == built.images["linux/amd64"].digest
    assert arm.manifest_digest == built.images["linux/arm64/v8"].digest
    assert files_in(tmp_path / "amd64") == expected_files(amd64)
    assert files_in(tmp_path / "arm64") == expected_files(arm64)


def test_platform_missing_from_the_index_is_not_found(
    registry: Registry, image_factory: ImageFactory
) -> None:
    reference, built = image_factory(ib.two_platform_index(site(), site()))
    sources = sources_for(registry, platform="linux/s390x")

    with pytest.raises(NotFound, match="linux/s390x") as caught:
        sources.registry.resolve(parse_reference(reference))

    assert caught.value.digest == built.digest


# --- digest references ----------------------------------------------------------------


def test_digest_reference_resolves(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files, tag="v1")
    by_digest = f"{registry.url}/{repo_of(reference)}@{built.digest}"
    registry.clear_log()

    image, _ = pull(sources_for(registry), by_digest, tmp_path / "fs")

    assert image.manifest_digest == built.digest
    assert registry.manifest_gets(built.digest) == 1
    assert registry.manifest_gets("v1") == 0
    assert files_in(tmp_path / "fs") == expected_files(files)


def test_digest_wins_over_the_tag_beside_it(
    registry: Registry, image_factory: ImageFactory
) -> None:
    repo = unique_repo()
    image_factory(site(), repo=repo, tag="v1")
    _, second = image_factory(site(), repo=repo, tag="v2")
    ref = parse_reference(f"{registry.url}/{repo}:v1@{second.digest}")

    image = sources_for(registry).registry.resolve(ref)

    assert image.manifest_digest == second.digest


def test_digest_unknown_to_the_repository_is_not_found(
    registry: Registry, image_factory: ImageFactory
) -> None:
    reference, _ = image_factory(site())
    _, elsewhere = image_factory(site())
    ref = parse_reference(f"{registry.url}/{repo_of(reference)}@{elsewhere.digest}")

    with pytest.raises(NotFound) as caught:
        sources_for(registry).registry.resolve(ref)

    assert caught.value.upstream_status == 404
    assert elsewhere.digest in str(caught.value)


def test_manifest_whose_content_differs_from_its_digest_is_refused(
    registry: Registry, image_factory: ImageFactory
) -> None:
    reference, built = image_factory(site())
    stored = registry.blob_path(built.digest)
    manifest = json.loads(stored.read_bytes())
    manifest["annotations"] = {"swapped": "yes"}
    stored.write_bytes(json.dumps(manifest).encode())
    ref = parse_reference(f"{registry.url}/{repo_of(reference)}@{built.digest}")

    with pytest.raises(InvalidContent, match="refusing it") as caught:
        sources_for(registry).registry.resolve(ref)

    assert caught.value.digest == built.digest


# --- authentication -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["auth", "username"])
def test_basic_auth_with_docker_config(
    form: str, auth_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files, registry=auth_registry)
    user, password = auth_registry.user or "", auth_registry.password or ""
    config = docker_config(
        tmp_path / "config.json", auth_registry.url, user, password, form
    )

    image, _ = pull(
        sources_for(auth_registry, docker_auth=config), reference, tmp_path / "fs"
    )

    assert image.manifest_digest == built.digest
    assert files_in(tmp_path / "fs") == expected_files(files)


def test_basic_auth_config_key_may_be_a_url(
    auth_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reference, built = image_factory(site(), registry=auth_registry)
    server = f"http://{auth_registry.url}/v2/"
    user, password = auth_registry.user or "", auth_registry.password or ""
    config = docker_config(tmp_path / "config.json", server, user, password, "auth")

    image = sources_for(auth_registry, docker_auth=config).registry.resolve(
        parse_reference(reference)
    )

    assert image.manifest_digest == built.digest


def test_basic_auth_without_credentials_is_unauthorized(
    auth_registry: Registry, image_factory: ImageFactory
) -> None:
    reference, _ = image_factory(site(), registry=auth_registry)

    with pytest.raises(Unauthorized) as caught:
        sources_for(auth_registry).registry.resolve(parse_reference(reference))

    message = str(caught.value)
    assert auth_registry.url in message
    assert "no credentials" in message


def test_basic_auth_with_a_wrong_password_is_unauthorized(
    auth_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reference, _ = image_factory(site(), registry=auth_registry)
    user = auth_registry.user or ""
    config = docker_config(
        tmp_path / "config.json", auth_registry.url, user, "not-the-password", "auth"
    )
    sources = sources_for(auth_registry, docker_auth=config)

    with pytest.raises(Unauthorized) as caught:
        sources.registry.resolve(parse_reference(reference))

    assert caught.value.upstream_status == 401
    assert "not-the-password" not in str(caught.value)


def test_token_registry_anonymous_pull_of_public_repository(
    token_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(
        files, registry=token_registry, repo=unique_repo("public")
    )

    image, _ = pull(sources_for(token_registry), reference, tmp_path / "fs")

    assert image.manifest_digest == built.digest
    assert files_in(tmp_path / "fs") == expected_files(files)


def test_token_registry_private_repository_needs_credentials(
    token_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files, registry=token_registry)
    user, password = token_registry.user or "", token_registry.password or ""
    config = docker_config(
        tmp_path / "config.json", token_registry.url, user, password, "auth"
    )
    server = token_registry.token_server
    assert server is not None
    server.clear()

    with pytest.raises(Unauthorized):
        sources_for(token_registry).registry.resolve(parse_reference(reference))
    anonymous = server.requests()
    image, _ = pull(
        sources_for(token_registry, docker_auth=config), reference, tmp_path / "fs"
    )

    assert [(r.user, r.granted) for r in anonymous] == [(None, [])]
    assert server.requests()[-1].user == user
    assert image.manifest_digest == built.digest
    assert files_in(tmp_path / "fs") == expected_files(files)


def test_tokens_are_cached_per_scope(
    token_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    first, _ = public_image(token_registry, image_factory)
    second, _ = public_image(token_registry, image_factory)
    server = token_registry.token_server
    assert server is not None
    sources = sources_for(token_registry)
    server.clear()
    counts = []

    for number, reference in enumerate([first, first, second, first]):
        pull(sources, reference, tmp_path / f"fs-{number}")
        counts.append(server.count)

    assert counts == [1, 1, 2, 2]
    scopes = [r.scopes for r in server.requests()]
    assert scopes == [
        [f"repository:{repo_of(first)}:pull"],
        [f"repository:{repo_of(second)}:pull"],
    ]


def test_expired_tokens_are_replaced(
    token_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    honest, _ = public_image(token_registry, image_factory)
    lied, _ = public_image(token_registry, image_factory)
    server = token_registry.token_server
    assert server is not None
    sources = sources_for(token_registry)
    monkeypatch.setattr(server, "lifetime", 1)
    issue = server.issue

    def announce_five_minutes(user: str | None, scopes: list[str]) -> dict:
        """Issue a one-second token but claim it lasts five minutes."""
        return {**issue(user, scopes), "expires_in": 300}

    # One token the client knows to be short-lived, and one it believes good for
    # five minutes: the first it drops from its cache, the second it sends and has
    # refused. Seen from the registry both cost one 401 and one new token.
    pull(sources, honest, tmp_path / "honest-1")
    monkeypatch.setattr(server, "issue", announce_five_minutes)
    pull(sources, lied, tmp_path / "lied-1")
    server.clear()

    # The registry refuses both tokens from lifetime + 1 seconds on.
    time.sleep(server.lifetime + 1.2)
    pull(sources, honest, tmp_path / "honest-2")
    after_honest = server.count
    token_registry.clear_log()
    pull(sources, lied, tmp_path / "lied-2")

    assert after_honest == 1
    assert server.count == 2
    refused = [r for r in token_registry.requests() if r.status == 401]
    assert len(refused) == 1


# --- content that does not match ------------------------------------------------------


def test_tampered_blob_is_refused_and_nothing_is_published(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path, blob_space: Path
) -> None:
    original = b"genuine " * 512 + uuid.uuid4().hex.encode()
    reference, built = image_factory(ib.simple_image({"page.html": original}, "tar"))
    stored = registry.blob_path(built.layers[0])
    layer = stored.read_bytes()
    stored.write_bytes(layer.replace(b"genuine ", b"tampered"))
    assert stored.stat().st_size == len(layer)

    sources = sources_for(registry)
    ref = parse_reference(reference)
    image = sources.registry.resolve(ref)
    space = BlobSpace(str(blob_space), 1 << 30)
    key = tree_key(image)

    def fill(dest: str) -> tuple[int, int]:
        result = unpack_image(sources, ref, image, dest, Limits())
        return result.bytes, result.entries

    with pytest.raises(InvalidContent, match="has digest") as caught:
        space.build(key, reference, image, fill)

    assert caught.value.digest == built.layers[0]
    assert space.lookup(key) is None
    assert space.trees() == []
    assert os.listdir(blob_space / "tmp") == []


def test_tampered_blob_fails_only_at_the_end_of_the_stream(
    registry: Registry, image_factory: ImageFactory
) -> None:
    reference, built = image_factory(ib.simple_image({"a": uuid.uuid4().hex}, "tar"))
    stored = registry.blob_path(built.layers[0])
    layer = bytearray(stored.read_bytes())
    layer[-1] ^= 0xFF
    stored.write_bytes(bytes(layer))
    client = sources_for(registry).registry
    ref = parse_reference(reference)
    descriptor = client.resolve(ref).layers[0]
    received = bytearray()

    stream = client.open_blob(ref, descriptor)
    with pytest.raises(InvalidContent):
        while chunk := stream.read(4096):
            received += chunk
    stream.close()

    assert bytes(received) == bytes(layer)


def plant_manifest(registry: Registry, repo: str, tag: str, document: dict) -> str:
    """Store a manifest under a tag directly in the registry's storage.

    The test registry refuses a PUT of a manifest whose layers carry ``urls`` (it
    has no ``validation.manifests.urls.allow`` list), but serves one it finds in
    storage; this writes the blob and the links docker-registry 2.8 reads.
    """
    data = json.dumps(document).encode()
    digest = ib.sha256_digest(data)
    blob = registry.blob_path(digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)

    hex_digest = digest.removeprefix("sha256:")
    repositories = registry.storage / "docker" / "registry" / "v2" / "repositories"
    manifests = repositories / repo / "_manifests"
    links = [
        manifests / "revisions" / "sha256" / hex_digest / "link",
        manifests / "tags" / tag / "current" / "link",
        manifests / "tags" / tag / "index" / "sha256" / hex_digest / "link",
    ]
    for link in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)
    return digest


@pytest.mark.parametrize(
    ("manifest_type", "config_type", "layer_type"),
    [
        (OCI_MANIFEST, ib.OCI_CONFIG, NONDISTRIBUTABLE_GZIP),
        (OCI_MANIFEST, ib.OCI_CONFIG, ib.OCI_LAYER_GZIP),
        (DOCKER_MANIFEST, ib.DOCKER_CONFIG, DOCKER_FOREIGN_GZIP),
    ],
)
def test_foreign_layer_is_refused(
    manifest_type: str, config_type: str, layer_type: str, registry: Registry
) -> None:
    repo = unique_repo()
    config = json.dumps({"os": "linux", "architecture": "amd64", "id": repo}).encode()
    config_digest = SetupClient(registry).upload_blob(repo, config)
    foreign = "sha256:" + "f" * 64
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": config_type,
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [{
            "mediaType": layer_type,
            "digest": foreign,
            "size": 1234,
            "urls": ["https://layers.example.com/base.tar.gz"],
        }],
    }
    digest = plant_manifest(registry, repo, "latest", manifest)
    ref = parse_reference(f"{registry.url}/{repo}:latest")
    registry.clear_log()

    with pytest.raises(InvalidContent, match="foreign layer") as caught:
        sources_for(registry).registry.resolve(ref)

    assert caught.value.digest == foreign
    assert registry.manifest_gets("latest") == 1
    assert digest in str(caught.value)
    assert registry.blob_gets(foreign) == 0


# --- an unreliable registry -----------------------------------------------------------


def test_503_twice_then_served(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files)
    assert isinstance(built, ib.BuiltImage)
    repo = repo_of(reference)
    registry.add_fault(f"/v2/{repo}/manifests/", status=503, times=2)
    registry.add_fault(f"/blobs/{built.layers[0]}", status=503, times=2)
    registry.clear_log()
    sleeps = Sleeps()

    image, _ = pull(sources_for(registry, sleep=sleeps), reference, tmp_path / "fs")

    assert image.manifest_digest == built.digest
    assert files_in(tmp_path / "fs") == expected_files(files)
    assert [r.status for r in registry.requests()] == [503, 503, 200, 503, 503, 200]
    assert len(sleeps) == 4


def test_dropped_blob_connection_is_retried(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    files = site()
    reference, built = image_factory(files)
    assert isinstance(built, ib.BuiltImage)
    registry.add_fault(f"/blobs/{built.layers[0]}", drop=True, times=1)
    registry.clear_log()
    sleeps = Sleeps()

    pull(sources_for(registry, sleep=sleeps), reference, tmp_path / "fs")

    assert files_in(tmp_path / "fs") == expected_files(files)
    assert registry.blob_gets(built.layers[0]) == 1
    assert len(sleeps) == 1


def test_blob_connection_always_dropped_fails_after_bounded_retries(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reference, built = image_factory(site())
    assert isinstance(built, ib.BuiltImage)
    sleeps = Sleeps()
    sources = sources_for(registry, sleep=sleeps, retries=2)
    registry.add_fault(f"/blobs/{built.layers[0]}", drop=True, times=None)

    try:
        with pytest.raises(UpstreamFailed, match="cannot be reached") as caught:
            pull(sources, reference, tmp_path / "fs")
    finally:
        registry.clear_faults()

    assert not isinstance(caught.value, UpstreamTimeout)
    assert built.layers[0] in str(caught.value)
    assert len(sleeps) == 2


def test_registry_dying_mid_blob_is_resumed_with_a_range(
    tmp_path: Path, image_factory: ImageFactory
) -> None:
    # A private registry, because this test restarts it. The counting proxy relays
    # a body cut short by the dying registry as if it were complete and keeps the
    # connection open, so the client notices through its read timeout.
    payload = os.urandom(20 << 20)
    with Registry(tmp_path / "registry") as registry:
        image = ib.simple_image({"big.bin": payload}, "tar")
        reference, built = image_factory(image, registry=registry)
        assert isinstance(built, ib.BuiltImage)
        sources = sources_for(registry, read_timeout=1.0)
        ref = parse_reference(reference)
        resolved = sources.registry.resolve(ref)
        registry.clear_log()
        received = [0]

        def restart_once(count: int) -> None:
            """Restart the registry process after the first mebibyte arrived."""
            before = received[0]
            received[0] += count
            if before < (1 << 20) <= received[0]:
                registry.restart()

        dest = tmp_path / "fs"
        dest.mkdir()
        unpack_image(sources, ref, resolved, str(dest), Limits(), progress=restart_once)
        statuses = [r.status for r in registry.requests()]

    assert (dest / "big.bin").read_bytes() == payload
    assert statuses[0] == 200 and 206 in statuses
    assert received[0] == resolved.size


def test_registry_down_fails_after_bounded_retries() -> None:
    host = f"127.0.0.1:{free_port()}"
    ref = parse_reference(f"{host}/team/app:v1")
    sleeps = Sleeps()
    options = ClientOptions(insecure_registries=(host,), retries=3)
    client = RegistryClient(options, sleep=sleeps)

    with pytest.raises(UpstreamFailed, match="cannot be reached") as caught:
        client.resolve(ref)
    with pytest.raises(UpstreamFailed):
        client.ping(host)

    assert str(ref) in str(caught.value)
    assert len(sleeps) == 3

