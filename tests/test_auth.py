"""CredentialStore with RegistryClient against real registries that ask for auth.

Credentials come the ways a Kubernetes deployment gives them: a Docker config.json
mounted from a Secret (swapped atomically through a ``..data`` symlink when the
Secret changes), or a ``docker-credential-*`` helper found on PATH.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blobserve.errors import BlobserveError, Unauthorized
from blobserve.oci.auth import CredentialStore
from blobserve.oci.reference import parse_reference
from blobserve.oci.registry import ClientOptions
from blobserve.oci.sources import Sources, SourceSpec, unpack_image
from blobserve.oci.types import Limits, ResolvedImage
from registries import ImageFactory, Registry, unique_repo

HELPER_NAME = "testhelper"


def site() -> dict[str, str]:
    """Files whose bytes no other test pushes."""
    return {"www/index.html": f"<p>{uuid.uuid4().hex}</p>\n"}


def config_json(server: str, user: str, password: str) -> bytes:
    """A Docker config.json with one login in the base64 ``auth`` form."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {server: {"auth": token}}}).encode()


def sources_for(registry: Registry, docker_auth: Path | None) -> Sources:
    """Sources reaching the plain-HTTP registry with credentials from docker_auth."""
    options = ClientOptions(insecure_registries=(registry.url,))
    auth = str(docker_auth) if docker_auth is not None else None
    return Sources(SourceSpec(options=options, docker_auth=auth))


class Puller:
    """Pulls one reference again and again into fresh directories."""

    def __init__(self, sources: Sources, reference: str, workdir: Path) -> None:
        self.sources = sources
        self.ref = parse_reference(reference)
        self._workdir = workdir
        self._numbers = itertools.count()

    def __call__(self) -> ResolvedImage:
        """Resolve and unpack the image; return what was resolved."""
        image = self.sources.for_ref(self.ref).resolve(self.ref)

        dest = self._workdir / f"pull-{next(self._numbers)}"
        dest.mkdir(parents=True)
        unpack_image(self.sources, self.ref, image, str(dest), Limits())
        return image


class SecretMount:
    """A directory laid out as the kubelet mounts a Secret with a config.json key.

    ``config.json`` links to ``..data/config.json``; ``..data`` links to a
    timestamped directory. ``swap`` writes a new timestamped directory, renames a
    ``..data_tmp`` link over ``..data`` and removes the old directory.
    """

    def __init__(self, root: Path, content: bytes) -> None:
        self.root = root
        self._versions = itertools.count(1)
        self._current: Path | None = None
        root.mkdir()
        self.swap(content)
        os.symlink(os.path.join("..data", "config.json"), root / "config.json")

    @property
    def path(self) -> Path:
        """The path a pod would be given: ``<mount>/config.json``."""
        return self.root / "config.json"

    def swap(self, content: bytes) -> None:
        """Publish new content the way the kubelet updates a Secret volume."""
        version = self.root / f"..2024_01_01_00_00_{next(self._versions):02d}.000000001"
        version.mkdir()
        (version / "config.json").write_bytes(content)

        os.symlink(version.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")

        if self._current is not None:
            (self._current / "config.json").unlink()
            self._current.rmdir()
        self._current = version


@pytest.fixture
def changed_password(auth_registry: Registry) -> Iterator[str]:
    """A new password for the registry's user, put back when the test ends."""
    user, old = auth_registry.user or "", auth_registry.password or ""
    new = "rotated-" + uuid.uuid4().hex
    try:
        yield new
    finally:
        auth_registry.set_password(user, old)


# --- a Secret that changes ------------------------------------------------------------


def test_rotated_secret_is_picked_up_without_a_new_client(
    auth_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    changed_password: str,
) -> None:
    reference, built = image_factory(site(), registry=auth_registry)
    user, old = auth_registry.user or "", auth_registry.password or ""
    mount = SecretMount(tmp_path / "secret", config_json(auth_registry.url, user, old))
    pull = Puller(sources_for(auth_registry, mount.path), reference, tmp_path)

    first = pull()
    auth_registry.set_password(user, changed_password)
    with pytest.raises(Unauthorized) as refused:
        pull()
    mount.swap(config_json(auth_registry.url, user, changed_password))
    after_swap = pull()

    assert first.manifest_digest == after_swap.manifest_digest == built.digest
    assert refused.value.upstream_status == 401
    assert old not in str(refused.value)


def test_broken_secret_keeps_the_last_good_credentials(
    auth_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    changed_password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reference, built = image_factory(site(), registry=auth_registry)
    user, old = auth_registry.user or "", auth_registry.password or ""
    mount = SecretMount(tmp_path / "secret", config_json(auth_registry.url, user, old))
    pull = Puller(sources_for(auth_registry, mount.path), reference, tmp_path)
    auth_registry.set_password(user, changed_password)
    mount.swap(config_json(auth_registry.url, user, changed_password))
    pull()

    mount.swap(b'{"auths": {"oops"')
    with caplog.at_level(logging.INFO, logger="blobserve"):
        images = [pull() for _ in range(3)]

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [image.manifest_digest for image in images] == [built.digest] * 3
    assert len(errors) == 1
    assert str(mount.path) in errors[0].getMessage()


def test_broken_secret_at_start_means_anonymous(
    auth_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reference, _ = image_factory(site(), registry=auth_registry)
    mount = SecretMount(tmp_path / "secret", b"not json at all")
    pull = Puller(sources_for(auth_registry, mount.path), reference, tmp_path)

    with caplog.at_level(logging.INFO, logger="blobserve"):
        for _ in range(2):
            with pytest.raises(Unauthorized, match="no credentials"):
                pull()

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1


# --- credential helpers ---------------------------------------------------------------


HELPER_SCRIPT = """#!{python}
# A docker-credential helper for the tests: `get` reads a server URL on stdin.
import json
import sys

LOG, USERNAME, SECRET, FAIL = {log!r}, {username!r}, {secret!r}, {fail!r}

server = sys.stdin.read().strip()
with open(LOG, "a") as log:
    log.write(" ".join(sys.argv[1:]) + " " + server + "\\n")
if FAIL:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": USERNAME, "Secret": SECRET}}))
"""


class Helper:
    """A ``docker-credential-testhelper`` on PATH; ``calls`` lists its invocations."""

    def __init__(self, directory: Path, username: str, secret: str, fail: bool) -> None:
        self.log = directory / "helper-calls.log"
        self.log.touch()
        script = HELPER_SCRIPT.format(
            python=sys.executable,
            log=str(self.log),
            username=username,
            secret=secret,
            fail=fail,
        )
        path = directory / f"docker-credential-{HELPER_NAME}"
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    @property
    def calls(self) -> list[str]:
        """One line per invocation: its arguments and the server it was asked for."""
        return self.log.read_text().splitlines()


HelperInstaller = Callable[..., Helper]


@pytest.fixture
def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperInstaller:
    """Install the test helper into a directory put first on PATH."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")

    def install(username: str, secret: str, *, fail: bool = False) -> Helper:
        return Helper(directory, username, secret, fail)

    return install


def helper_config(path: Path, registry: Registry, key: str) -> Path:
    """Write a config.json that sends the registry to the helper through key."""
    if key == "credHelpers":
        document: dict = {"credHelpers": {registry.url: HELPER_NAME}}
    else:
        document = {"credsStore": HELPER_NAME}
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_credential_helper_is_asked_once(
    key: str,
    auth_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    install_helper: HelperInstaller,
) -> None:
    reference, built = image_factory(site(), registry=auth_registry)
    helper = install_helper(auth_registry.user or "", auth_registry.password or "")
    config = helper_config(tmp_path / "config.json", auth_registry, key)
    pull = Puller(sources_for(auth_registry, config), reference, tmp_path)

    images = [pull(), pull()]

    assert [image.manifest_digest for image in images] == [built.digest] * 2
    assert helper.calls == [f"get {auth_registry.url}"]


def test_credential_helper_that_fails_means_anonymous(
    auth_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    install_helper: HelperInstaller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reference, _ = image_factory(site(), registry=auth_registry)
    helper = install_helper("nobody", "nothing", fail=True)
    config = helper_config(tmp_path / "config.json", auth_registry, "credHelpers")
    pull = Puller(sources_for(auth_registry, config), reference, tmp_path)

    with caplog.at_level(logging.WARNING, logger="blobserve"):
        with pytest.raises(Unauthorized, match="no credentials") as caught:
            pull()

    assert auth_registry.url in str(caught.value)
    assert helper.calls == [f"get {auth_registry.url}"]
    assert any(f"docker-credential-{HELPER_NAME}" in r.getMessage()
               for r in caplog.records)


def test_missing_credential_helper_means_anonymous(
    auth_registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reference, _ = image_factory(site(), registry=auth_registry)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": f"absent-{uuid.uuid4().hex[:8]}"}))

    with pytest.raises(Unauthorized, match="no credentials"):
        Puller(sources_for(auth_registry, config), reference, tmp_path)()


# --- secrets stay out of logs and messages --------------------------------------------


def secrets_of(user: str, password: str) -> list[str]:
    """The forms in which a password could leak: as is, and inside Basic auth."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [password, basic]


def assert_nothing_leaks(texts: list[str], secrets: list[str]) -> None:
    """Fail naming the first text that holds any of the secrets."""
    assert secrets and all(secrets)
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:200]!r}"


def test_basic_credentials_never_reach_logs_or_errors(
    auth_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reference, _ = image_factory(site(), registry=auth_registry)
    user, password = auth_registry.user or "", auth_registry.password or ""
    good = tmp_path / "good.json"
    good.write_bytes(config_json(auth_registry.url, user, password))
    wrong_password = "wrong-" + uuid.uuid4().hex
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(config_json(auth_registry.url, user, wrong_password))

    with caplog.at_level(logging.DEBUG):
        Puller(sources_for(auth_registry, good), reference, tmp_path / "good")()
        with pytest.raises(BlobserveError) as refused:
            Puller(sources_for(auth_registry, wrong), reference, tmp_path / "wrong")()

    texts = [r.getMessage() for r in caplog.records] + [str(refused.value)]
    assert any("GET /v2/" in text for text in texts), "expected urllib3 debug lines"
    assert_nothing_leaks(texts, secrets_of(user, password))
    assert_nothing_leaks(texts, secrets_of(user, wrong_password))


def test_tokens_never_reach_logs_or_errors(
    token_registry: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference, _ = image_factory(site(), registry=token_registry, repo=unique_repo())
    user, password = token_registry.user or "", token_registry.password or ""
    config = tmp_path / "config.json"
    config.write_bytes(config_json(token_registry.url, user, password))
    wrong_password = "wrong-" + uuid.uuid4().hex
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(config_json(token_registry.url, user, wrong_password))
    server = token_registry.token_server
    assert server is not None
    issued: list[str] = []
    issue = server.issue

    def recording_issue(who: str | None, scopes: list[str]) -> dict:
        """Issue a token as usual and remember it."""
        answer = issue(who, scopes)
        issued.append(answer["token"])
        return answer

    monkeypatch.setattr(server, "issue", recording_issue)

    with caplog.at_level(logging.DEBUG):
        Puller(sources_for(token_registry, config), reference, tmp_path / "a")()
        with pytest.raises(Unauthorized) as anonymous:
            Puller(sources_for(token_registry, None), reference, tmp_path / "b")()
        with pytest.raises(Unauthorized, match="refused the credentials") as refused:
            Puller(sources_for(token_registry, wrong), reference, tmp_path / "c")()

    errors = [str(anonymous.value), str(refused.value)]
    texts = [r.getMessage() for r in caplog.records] + errors
    signatures = [token.rpartition(".")[2] for token in issued]
    assert len(issued) == 2
    assert_nothing_leaks(texts, secrets_of(user, password) + issued + signatures)
    assert_nothing_leaks(texts, secrets_of(user, wrong_password))


def test_credentials_repr_hides_the_password(
    auth_registry: Registry, tmp_path: Path
) -> None:
    user, password = auth_registry.user or "", auth_registry.password or ""
    config = tmp_path / "config.json"
    config.write_bytes(config_json(auth_registry.url, user, password))

    credentials = CredentialStore(str(config)).get(auth_registry.url)

    assert credentials is not None and credentials.password == password
    assert password not in repr(credentials) and user in repr(credentials)



def test_token_cache_forgets_tokens_before_they_expire() -> None:
    from blobserve.oci.auth import TokenCache

    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("r.test", "repository:a:pull", "tok", expires_in=60)

    assert cache.get("r.test", "repository:a:pull") == "tok"
    assert cache.get("r.test", "repository:b:pull") is None
    now[0] += 49
    assert cache.get("r.test", "repository:a:pull") == "tok"
    now[0] += 2
    assert cache.get("r.test", "repository:a:pull") is None
