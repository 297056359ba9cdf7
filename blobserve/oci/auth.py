"""Registry credentials: Docker config.json, credential helpers and bearer tokens."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 10.0
HELPER_CACHE_SECONDS = 60.0
TOKEN_EXPIRY_MARGIN = 10.0
DEFAULT_TOKEN_SECONDS = 60.0


@dataclass(frozen=True)
class Credentials:
    """A username and secret for one registry. The secret never appears in repr."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic_header(self) -> str:
        """The value of an Authorization header for Basic authentication."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate header."""

    scheme: str
    params: dict[str, str]


def registry_key(server: str) -> str:
    """Normalise a config.json server entry to the registry host we use."""
    host = re.sub(r"^[a-z]+://", "", server.strip()).split("/")[0].lower()
    return "docker.io" if host in DOCKER_HUB_KEYS else host


def parse_challenge(header: str) -> Challenge | None:
    """Parse `Bearer realm="...",service="..."` or `Basic realm="..."`."""
    match = re.match(r"\s*([A-Za-z]+)\s*(.*)$", header or "")
    if not match:
        return None
    params = {
        key.lower(): value
        for key, value in re.findall(r'([A-Za-z_]+)\s*=\s*"([^"]*)"', match.group(2))
    }
    return Challenge(match.group(1).lower(), params)


class CredentialStore:
    """Credentials from a Docker config.json, re-read when the file changes.

    The file is checked with stat (which follows symlinks), so a Kubernetes Secret
    whose `..data` link is swapped is picked up on the next call. A file that cannot
    be read or parsed keeps the last good credentials and logs one error.
    `credHelpers` and `credsStore` run `docker-credential-<name> get`.
    """

    def __init__(
        self,
        path: str | None,
        *,
        run_helper: Callable[[str, str], Credentials | None] | None = None,
    ) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._auths: dict[str, Credentials] = {}
        self._helpers: dict[str, str] = {}
        self._store: str | None = None
        self._helper_cache: dict[str, tuple[float, Credentials | None]] = {}
        self._run_helper = run_helper or run_credential_helper
        self._reported: tuple[int, int, int] | None = None

    def get(self, registry: str) -> Credentials | None:
        """The credentials for a registry host, or None for anonymous access."""
        key = registry_key(registry)
        with self._lock:
            self._reload_if_changed()
            helper = self._helpers.get(key)
            if helper is None and key not in self._auths:
                helper = self._store
            if helper is None:
                return self._auths.get(key)
        return self._from_helper(helper, key)

    def _reload_if_changed(self) -> None:
        if not self._path:
            return
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            self._report_once((0, 0, 0), "cannot read %s: %s", self._path, exc)
            return
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return

        try:
            with open(self._path, "rb") as handle:
                data = json.load(handle)
            auths, helpers, store = _parse_docker_config(data)
        except (OSError, ValueError) as exc:
            self._report_once(signature, "ignoring %s: %s", self._path, exc)
            return

        self._signature = signature
        self._auths, self._helpers, self._store = auths, helpers, store
        self._helper_cache.clear()
        log.info(
            "loaded registry credentials for %d registries from %s",
            len(auths) + len(helpers),
            self._path,
        )

    def _report_once(self, signature: tuple[int, int, int], *args: object) -> None:
        if self._reported != signature:
            self._reported = signature
            log.error(*args)

    def _from_helper(self, helper: str, key: str) -> Credentials | None:
        now = time.monotonic()
        cached = self._helper_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        server = "https://index.docker.io/v1/" if key == "docker.io" else key
        credentials = self._run_helper(helper, server)
        self._helper_cache[key] = (now + HELPER_CACHE_SECONDS, credentials)
        return credentials


def run_credential_helper(helper: str, server: str) -> Credentials | None:
    """Ask `docker-credential-<helper> get` for a server's credentials."""
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("credential helper %s failed for %s: %s", program, server, exc)
        return None

    if done.returncode != 0:
        reason = done.stdout.decode(errors="replace").strip()[:200]
        log.warning(
            "credential helper %s has nothing for %s: %s", program, server, reason
        )
        return None
    try:
        answer = json.loads(done.stdout)
        return Credentials(str(answer["Username"]), str(answer["Secret"]))
    except (ValueError, KeyError, TypeError):
        log.error(
            "credential helper %s gave an unreadable answer for %s", program, server
        )
        return None


def _parse_docker_config(
    data: object,
) -> tuple[dict[str, Credentials], dict[str, str], str | None]:
    if not isinstance(data, dict):
        raise ValueError("the top level is not a JSON object")

    auths: dict[str, Credentials] = {}
    for server, entry in (data.get("auths") or {}).items():
        credentials = _entry_credentials(server, entry)
        if credentials is not None:
            auths[registry_key(server)] = credentials

    helpers = {
        registry_key(server): str(name)
        for server, name in (data.get("credHelpers") or {}).items()
    }
    store = data.get("credsStore") or None
    return auths, helpers, str(store) if store else None


def _entry_credentials(server: str, entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        raise ValueError(f"auths entry {server!r} is not an object")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError(
                f"auths entry {server!r} has an invalid auth field"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ValueError(f"auths entry {server!r}: auth is not user:password")
        return Credentials(username, password)
    if entry.get("username") is not None:
        return Credentials(str(entry["username"]), str(entry.get("password", "")))
    if entry.get("identitytoken"):
        return Credentials("<token>", str(entry["identitytoken"]))
    return None


class TokenCache:
    """Bearer tokens per (registry, scope), kept until shortly before they expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def get(self, registry: str, scope: str) -> str | None:
        with self._lock:
            entry = self._tokens.get((registry, scope))
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def put(self, registry: str, scope: str, token: str, expires_in: float) -> None:
        lifetime = max(expires_in - TOKEN_EXPIRY_MARGIN, expires_in / 2)
        with self._lock:
            self._tokens[(registry, scope)] = (token, self._clock() + lifetime)

    def drop(self, registry: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((registry, scope), None)
