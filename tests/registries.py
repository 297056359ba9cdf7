"""Real docker-registry processes for integration tests, and ways to fill them.

``Registry`` runs distribution's ``docker-registry`` on 127.0.0.1 behind a small
counting proxy, anonymous, with htpasswd Basic auth, or with token auth issued by a
``TokenServer`` in this process. ``push`` copies an OCI layout into it with skopeo;
``RegistryClient`` speaks the distribution API directly for setup and inspection.

Everything listens on 127.0.0.1 on a port the kernel picked; every process started
here is stopped by its pid when its owner stops.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import http.client
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from imagebuilder import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Built,
    BuiltImage,
    BuiltIndex,
    ImageSpec,
    IndexSpec,
    Spec,
    build_layout,
    simple_image,
)

logger = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
REGISTRY_LEEWAY = 60
START_TIMEOUT = 20.0
_HOP_HEADERS = {
    "connection",
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_TOOLS = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "htpasswd": "apache2-utils",
    "openssl": "openssl",
}

Creds = tuple[str, str]


class MissingTool(RuntimeError):
    """A program the tests need is not installed; the message says what to install."""


class RegistryError(RuntimeError):
    """A test registry or token server failed to start or answer."""


def require_tool(name: str) -> str:
    """Return the path of a program, or raise ``MissingTool`` naming its package."""
    path = shutil.which(name)
    if path is None:
        package = _TOOLS.get(name, name)
        message = f"{name} is not installed: run `apt-get install {package}`"
        raise MissingTool(message)
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve_in_thread(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Run ``server`` in a daemon thread and return the thread."""
    def serve() -> None:
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    return thread


class _QuietServer(ThreadingHTTPServer):
    """A threaded HTTP server that does not print a client hanging up to stderr."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address)


# --- the counting proxy ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request the registry answered: method, path without query, status."""

    method: str
    path: str
    status: int


@dataclass
class Fault:
    """A failure the proxy injects into matching requests.

    ``pattern`` is searched in the request path. The fault waits ``delay`` seconds,
    then answers ``status`` itself, or drops the connection when ``drop`` is set, or
    else forwards the request. It applies ``times`` times (``None``: forever).
    """

    pattern: str
    method: str | None = "GET"
    status: int | None = None
    delay: float = 0.0
    drop: bool = False
    times: int | None = 1

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        if self.method is not None and self.method != method:
            return False
        return re.search(self.pattern, path) is not None


class _ProxyServer(_QuietServer):
    """Shared state of the proxy: upstream port, request records, faults."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.records: list[Request] = []
        self.faults: list[Fault] = []

    def record(self, method: str, path: str, status: int) -> None:
        """Remember one answered request."""
        with self.lock:
            self.records.append(Request(method, urlsplit(path).path, status))

    def take_fault(self, method: str, path: str) -> Fault | None:
        """Return the first fault matching a request, using up one of its times."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one request to the registry and streams the answer back."""

    protocol_version = "HTTP/1.1"
    timeout = 120
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("proxy: " + format, *args)

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes | None:
        """Read the request body, undoing chunked transfer encoding."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(self) -> None:
        body = self._read_body()
        fault = self.server.take_fault(self.command, self.path)
        if fault is not None and self._apply(fault):
            return

        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.server.upstream_port, timeout=120
        )
        try:
            response = self._send_upstream(upstream, body)
        except (ConnectionError, TimeoutError, http.client.HTTPException):
            upstream.close()
            self._reply_error(502, "the registry process did not answer")
            return

        try:
            self.server.record(self.command, self.path, response.status)
            self._relay(response)
        except (ConnectionError, TimeoutError, http.client.HTTPException):
            self.close_connection = True
        finally:
            upstream.close()

    def _apply(self, fault: Fault) -> bool:
        """Carry out a fault; return True when it answered the request itself."""
        time.sleep(fault.delay)
        if fault.drop:
            self.server.record(self.command, self.path, 0)
            self.close_connection = True
            return True
        if fault.status is None:
            return False

        self._reply_error(fault.status, "fault injected by the test")
        return True

    def _reply_error(self, status: int, message: str) -> None:
        """Answer with a distribution-style error body, and record it."""
        self.server.record(self.command, self.path, status)
        errors = [{"code": "TEST_PROXY", "message": message}]
        body = json.dumps({"errors": errors}).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_upstream(
        self, upstream: http.client.HTTPConnection, body: bytes | None
    ) -> http.client.HTTPResponse:
        """Send the client's request, Host header included, to the registry."""
        upstream.putrequest(
            self.command, self.path, skip_host=True, skip_accept_encoding=True
        )
        for key, value in self.headers.items():
            if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                upstream.putheader(key, value)
        if body is not None:
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body)
        return upstream.getresponse()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Stream the registry's answer to the client, re-chunking if unsized."""
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304)
        chunked = not bodiless and response.getheader("Content-Length") is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodiless:
            return

        while chunk := response.read(65536):
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.wfile.write(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 that records every request and injects faults.

    A request is recorded once the registry's status is known and before any byte
    of the answer reaches the client, so a client that got its answer always finds
    its request counted.
    """

    def __init__(self, upstream_port: int) -> None:
        self._server = _ProxyServer(upstream_port)
        self._thread = _serve_in_thread(self._server, "registry-proxy")

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self._server.server_address[1]

    def records(self) -> list[Request]:
        """Every request answered since the last ``clear``, oldest first."""
        with self._server.lock:
            return list(self._server.records)

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        with self._server.lock:
            self._server.records.clear()

    def add_fault(self, fault: Fault) -> None:
        """Inject ``fault`` into the requests that match it."""
        with self._server.lock:
            self._server.faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every fault not yet used up."""
        with self._server.lock:
            self._server.faults.clear()

    def stop(self) -> None:
        """Stop listening; requests being served finish in their daemon threads."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- the token server -----------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint and what it was granted."""

    user: str | None
    scopes: list[str]
    granted: list[dict[str, Any]]
    status: int


def _b64url(data: bytes) -> str:
    """Encode as unpadded base64url, as JWTs are."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parse_scopes(values: list[str]) -> list[tuple[str, str, list[str]]]:
    """Split ``repository:name:pull,push`` scopes into (type, name, actions)."""
    scopes = []
    for value in values:
        for scope in value.split():
            head, _, actions = scope.rpartition(":")
            kind, _, name = head.partition(":")
            if kind and name:
                scopes.append((kind, name, [a for a in actions.split(",") if a]))
    return scopes


class TokenServer:
    """A Docker token server issuing RS256 JWTs that docker-registry 2.8 accepts.

    Tokens carry the signing certificate in an ``x5c`` header; the registry trusts
    it through ``rootcertbundle``. Users in ``users`` (name to password) may use
    Basic credentials on the endpoint and get every action they ask for; anyone,
    anonymous included, may pull repositories matching a pattern in ``public``.
    Replace ``policy`` to grant otherwise. Wrong credentials get 401; so does an
    anonymous request when ``anonymous`` is False.

    ``lifetime`` is the ``expires_in`` announced. docker-registry accepts a token
    until ``exp`` plus 60 seconds of leeway, so with ``exact_expiry`` (the default)
    ``exp`` is set 60 seconds early: the registry refuses the token between
    ``lifetime`` and ``lifetime + 1`` seconds after it was issued (``exp`` is in
    whole seconds, rounded up so that no token dies before its announced end).
    """

    service = "blobserve-test-registry"
    issuer = "blobserve-test-token-server"

    def __init__(
        self,
        root: Path,
        *,
        users: Mapping[str, str] | None = None,
        public: tuple[str, ...] = ("public/*",),
        anonymous: bool = True,
        lifetime: int = 300,
        exact_expiry: bool = True,
    ) -> None:
        self.root = Path(root)
        self.users = dict(users or {})
        self.public = public
        self.anonymous = anonymous
        self.lifetime = lifetime
        self.exact_expiry = exact_expiry
        self.policy: Callable[[str | None, str, str], bool] = self._default_policy
        self.key_path = self.root / "token-key.pem"
        self.cert_path = self.root / "token-cert.pem"
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._x5c = ""

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def realm(self) -> str:
        """The token endpoint URL."""
        if self._server is None:
            raise RegistryError("the token server is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    @property
    def creds(self) -> Creds | None:
        """The first user's name and password, if there is a user."""
        return next(iter(self.users.items()), None)

    def start(self) -> None:
        """Make the signing key and certificate, then start serving tokens."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_certificate()
        handler = type("TokenHandler", (_TokenHandler,), {"token_server": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = _serve_in_thread(self._server, "token-server")

    def stop(self) -> None:
        """Stop serving tokens."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def requests(self) -> list[TokenRequest]:
        """Every token request served since the last ``clear``, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        """How many token requests were served since the last ``clear``."""
        with self._lock:
            return len(self._requests)

    def clear(self) -> None:
        """Forget the token requests recorded so far."""
        with self._lock:
            self._requests.clear()

    def _make_certificate(self) -> None:
        """Create an RSA key and a self-signed certificate with openssl."""
        openssl = require_tool("openssl")
        command = [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "7", "-subj", "/CN=blobserve test token server",
            "-keyout", str(self.key_path), "-out", str(self.cert_path),
        ]  # fmt: skip (each flag beside its value)
        subprocess.run(command, check=True, capture_output=True)
        certificate = ssl.PEM_cert_to_DER_cert(self.cert_path.read_text())
        self._x5c = base64.b64encode(certificate).decode()

    def _default_policy(self, user: str | None, repository: str, action: str) -> bool:
        """Users may do anything; anyone may pull a public repository."""
        if user is not None:
            return True
        public = any(fnmatch.fnmatchcase(repository, p) for p in self.public)
        return action == "pull" and public

    def issue(self, user: str | None, scope_values: list[str]) -> dict[str, Any]:
        """Grant what the policy allows of the requested scopes; return the answer."""
        access = []
        for kind, name, actions in _parse_scopes(scope_values):
            allowed = [a for a in actions if self.policy(user, name, a)]
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})

        now = time.time()
        shift = REGISTRY_LEEWAY if self.exact_expiry else 0
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "iat": int(now),
            "nbf": int(now),
            "exp": math.ceil(now) + self.lifetime - shift,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = self._sign(claims)

        with self._lock:
            self._requests.append(TokenRequest(user, scope_values, access, 200))
        issued_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now)))
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": issued_at,
        }

    def refuse(self, user: str | None, scope_values: list[str]) -> None:
        """Record a request that was refused for its credentials."""
        with self._lock:
            self._requests.append(TokenRequest(user, scope_values, [], 401))

    def _sign(self, claims: dict[str, Any]) -> str:
        """Return a compact RS256 JWT of ``claims``, signed by openssl."""
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self._x5c]}
        encoded = [_b64url(json.dumps(part).encode()) for part in (header, claims)]
        signing_input = ".".join(encoded).encode()
        openssl = require_tool("openssl")
        command = [openssl, "dgst", "-sha256", "-sign", str(self.key_path)]
        result = subprocess.run(command, input=signing_input, capture_output=True)
        if result.returncode != 0:
            message = f"openssl could not sign a token: {result.stderr.decode()}"
            raise RegistryError(message)
        return signing_input.decode() + "." + _b64url(result.stdout)


class _TokenHandler(BaseHTTPRequestHandler):
    """Answers ``GET /token?service=...&scope=...`` for a ``TokenServer``."""

    protocol_version = "HTTP/1.1"
    token_server: TokenServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("token server: " + format, *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        scopes = parse_qs(url.query).get("scope", [])
        if url.path != "/token":
            self._answer(404, {"details": "not found"})
            return

        user, known = self._user()
        server = self.token_server
        if not known or (user is None and not server.anonymous):
            server.refuse(user, scopes)
            self._answer(401, {"details": "authentication required"})
            return
        self._answer(200, server.issue(user, scopes))

    def _user(self) -> tuple[str | None, bool]:
        """Return the Basic user, and whether the credentials are acceptable."""
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None, True
        try:
            decoded = base64.b64decode(header[6:].strip()).decode()
        except (ValueError, UnicodeDecodeError):
            return None, False
        user, _, password = decoded.partition(":")
        return user, self.token_server.users.get(user) == password

    def _answer(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="token"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# --- the registry ---------------------------------------------------------------------


def _with_parent_death_signal(command: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig TERM`` so the process ends if pytest is killed.

    The signal follows the thread that started the process: start registries from
    a thread that lives as long as they should (pytest's main thread does).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


class Registry:
    """A docker-registry process on 127.0.0.1 with filesystem storage under ``root``.

    Anonymous by default; with ``users`` (name to password) it asks for htpasswd
    Basic auth; with ``token_server`` it asks for bearer tokens from it. Clients
    reach it at ``url`` through a ``CountingProxy``; ``direct_url`` bypasses the
    proxy and is what ``push`` uses, so setup traffic is not counted.
    """

    def __init__(
        self,
        root: Path,
        *,
        users: Mapping[str, str] | None = None,
        token_server: TokenServer | None = None,
    ) -> None:
        if users is not None and token_server is not None:
            raise ValueError("a registry uses either htpasswd users or a token server")
        self.root = Path(root)
        self.storage = self.root / "storage"
        self.config_path = self.root / "config.yml"
        self.log_path = self.root / "registry.log"
        self.htpasswd_path = self.root / "htpasswd"
        self.users = dict(users) if users is not None else None
        self.token_server = token_server
        self.direct_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._proxy: CountingProxy | None = None

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Registry {self.auth} at {self.root}>"

    @property
    def pid(self) -> int | None:
        """The pid of the registry process, None when it is not running."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the registry process and its proxy are up."""
        return self._proxy is not None and self.pid is not None

    @property
    def auth(self) -> str:
        """``"anonymous"``, ``"basic"`` or ``"token"``."""
        if self.token_server is not None:
            return "token"
        return "basic" if self.users is not None else "anonymous"

    @property
    def url(self) -> str:
        """``127.0.0.1:PORT`` of the counting proxy, the address tests should use."""
        if self._proxy is None:
            raise RegistryError("the registry is not running")
        return f"127.0.0.1:{self._proxy.port}"

    @property
    def direct_url(self) -> str:
        """``127.0.0.1:PORT`` of the registry process itself."""
        if self.direct_port is None:
            raise RegistryError("the registry is not running")
        return f"127.0.0.1:{self.direct_port}"

    @property
    def creds(self) -> Creds | None:
        """Credentials that may push and pull: the first user, if any."""
        if self.token_server is not None:
            return self.token_server.creds
        return next(iter(self.users.items()), None) if self.users else None

    @property
    def user(self) -> str | None:
        """The name in ``creds``."""
        return self.creds[0] if self.creds else None

    @property
    def password(self) -> str | None:
        """The password in ``creds``."""
        return self.creds[1] if self.creds else None

    def start(self) -> None:
        """Start the registry and its proxy; on failure stop whatever started."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.storage.mkdir(exist_ok=True)
            if self.users is not None:
                self._write_htpasswd()
            self._launch(keep_port=False)
            self._proxy = CountingProxy(self.direct_port or 0)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the proxy and the registry process."""
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop()
        self._terminate()

    def restart(self) -> None:
        """Restart the registry process on the same port, keeping storage and proxy."""
        self._terminate()
        try:
            self._launch(keep_port=True)
        except BaseException:
            self.stop()
            raise

    def set_password(self, user: str, password: str) -> None:
        """Add a user or change a password by rewriting the htpasswd file.

        docker-registry 2.8 re-reads the file when its modification time changes, so
        the change applies to the next request without a restart.
        """
        if self.users is None:
            raise RegistryError("this registry does not use htpasswd")
        self.users[user] = password
        self._write_htpasswd()

    def requests(self) -> list[Request]:
        """Requests answered through ``url`` since ``clear_log``, oldest first."""
        return self._require_proxy().records()

    def clear_log(self) -> None:
        """Forget the requests recorded so far."""
        self._require_proxy().clear()

    def blob_gets(self, digest: str) -> int:
        """How many GETs of the blob ``digest`` answered 200 or 206, in any repo."""
        pattern = re.compile(r"/v2/.+/blobs/" + re.escape(digest))
        return sum(
            1
            for r in self.requests()
            if r.method == "GET"
            and r.status in (200, 206)
            and pattern.fullmatch(r.path)
        )

    def manifest_gets(self, reference: str) -> int:
        """How many GETs of a manifest by tag or digest answered 200."""
        pattern = re.compile(r"/v2/.+/manifests/" + re.escape(reference))
        return sum(
            1
            for r in self.requests()
            if r.method == "GET" and r.status == 200 and pattern.fullmatch(r.path)
        )

    def add_fault(self, pattern: str, **kwargs: Any) -> Fault:
        """Inject a ``Fault(pattern, **kwargs)`` into requests through ``url``."""
        fault = Fault(pattern, **kwargs)
        self._require_proxy().add_fault(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault not yet used up."""
        self._require_proxy().clear_faults()

    def blob_path(self, digest: str) -> Path:
        """The file holding a blob in storage, to corrupt or delete it."""
        hex_digest = digest.removeprefix("sha256:")
        blobs = self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
        return blobs / hex_digest[:2] / hex_digest / "data"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the registry process wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def _require_proxy(self) -> CountingProxy:
        if self._proxy is None:
            raise RegistryError("the registry is not running")
        return self._proxy

    def _write_htpasswd(self) -> None:
        """Write bcrypt entries for ``users`` with ``htpasswd -Bbn``, atomically."""
        htpasswd = require_tool("htpasswd")
        lines = []
        for user, password in (self.users or {}).items():
            command = [htpasswd, "-Bbn", user, password]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            lines.append(result.stdout.strip())

        temporary = self.htpasswd_path.with_suffix(".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        os.replace(temporary, self.htpasswd_path)

    def _config(self) -> dict[str, Any]:
        """The registry configuration; JSON is valid YAML, so no YAML library."""
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.direct_url,
                "secret": secrets.token_hex(16),
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.users is not None:
            htpasswd = {"realm": "blobserve-test", "path": str(self.htpasswd_path)}
            config["auth"] = {"htpasswd": htpasswd}
        if self.token_server is not None:
            server = self.token_server
            config["auth"] = {
                "token": {
                    "realm": server.realm,
                    "service": server.service,
                    "issuer": server.issuer,
                    "rootcertbundle": str(server.cert_path),
                }
            }
        return config

    def _launch(self, *, keep_port: bool) -> None:
        """Start the process and wait for it; retry on a port taken meanwhile."""
        binary = require_tool("docker-registry")
        attempts = 1 if keep_port else 3
        for attempt in range(1, attempts + 1):
            if not keep_port:
                self.direct_port = free_port()
            self.config_path.write_text(json.dumps(self._config(), indent=2))

            command = [binary, "serve", str(self.config_path)]
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    _with_parent_death_signal(command),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.root,
                )
            try:
                self._wait_ready()
                return
            except RegistryError:
                self._terminate()
                port_taken = "address already in use" in self.log_tail()
                if attempt == attempts or not port_taken:
                    raise

    def _wait_ready(self) -> None:
        """Wait until ``GET /v2/`` answers, or raise with the end of the log."""
        url = f"http://{self.direct_url}/v2/"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                message = f"docker-registry exited ({code}); log:\n{self.log_tail()}"
                raise RegistryError(message)
            try:
                response = requests.get(url, timeout=1)
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.05)
                continue
            if "Docker-Distribution-Api-Version" in response.headers:
                time.sleep(0.05)
                if self._process.poll() is None:
                    return

        message = (
            f"docker-registry did not answer GET {url} within {START_TIMEOUT} s;"
            f" log:\n{self.log_tail()}"
        )
        raise RegistryError(message)

    def _terminate(self) -> None:
        """Stop the registry process by its pid, killing it if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- talking to a registry ------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` header into its scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class RegistryClient:
    """A small distribution API client for test setup and inspection.

    It answers a 401 once per request: with Basic credentials for a Basic challenge,
    or with a token fetched from the challenge's realm for a Bearer one. Talks to
    ``direct_url`` unless told otherwise, so its traffic is not counted.
    """

    def __init__(
        self, registry: Registry, creds: Creds | None = None, *, direct: bool = True
    ) -> None:
        self.host = registry.direct_url if direct else registry.url
        self.creds = creds if creds is not None else registry.creds
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request to ``/v2/...``, authenticating if challenged."""
        url = f"http://{self.host}{path}"
        kwargs.setdefault("timeout", 30)
        response = self.session.request(method, url, **kwargs)
        if response.status_code != 401:
            return response

        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            return self.session.request(method, url, auth=self.creds, **kwargs)
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = f"Bearer {self._token(params)}"
        return self.session.request(method, url, headers=headers, **kwargs)

    def _token(self, params: dict[str, str]) -> str:
        """Fetch a token for the challenge's service and scope."""
        query = {"service": params.get("service", "")}
        if "scope" in params:
            query["scope"] = params["scope"]
        response = self.session.get(
            params["realm"], params=query, auth=self.creds, timeout=30
        )
        response.raise_for_status()
        document = response.json()
        return str(document.get("token") or document["access_token"])

    def get_manifest(self, repo: str, reference: str) -> requests.Response:
        """GET a manifest accepting OCI and Docker manifests and indexes."""
        headers = {"Accept": MANIFEST_ACCEPT}
        path = f"/v2/{repo}/manifests/{reference}"
        response = self.request("GET", path, headers=headers)
        response.raise_for_status()
        return response

    def get_blob(self, repo: str, digest: str) -> bytes:
        """GET a blob and check its digest."""
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}")
        response.raise_for_status()
        actual = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if actual != digest:
            raise RegistryError(f"blob {digest} of {repo} arrived as {actual}")
        return response.content

    def upload_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` monolithically as a blob and return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        started.raise_for_status()
        location = urlsplit(started.headers["Location"])
        path = location.path + ("?" + location.query if location.query else "")
        separator = "&" if location.query else "?"

        headers = {"Content-Type": "application/octet-stream"}
        finished = self.request(
            "PUT", f"{path}{separator}digest={digest}", data=data, headers=headers
        )
        finished.raise_for_status()
        return digest

    def put_manifest(
        self,
        repo: str,
        reference: str,
        document: bytes | dict[str, Any],
        media_type: str,
    ) -> str:
        """PUT a manifest or index (bytes are sent as they are); return its digest."""
        if isinstance(document, bytes):
            data = document
        else:
            data = json.dumps(document).encode()
        headers = {"Content-Type": media_type}
        path = f"/v2/{repo}/manifests/{reference}"
        response = self.request("PUT", path, data=data, headers=headers)
        if response.status_code >= 400:
            message = f"PUT {path} answered {response.status_code}: {response.text}"
            raise RegistryError(message)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def inspect(self, repo: str, reference: str) -> Built:
        """Describe an image or index in the registry with the same digests
        ``build_layout`` returns."""
        response = self.get_manifest(repo, reference)
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        document = response.json()
        media_type = document.get("mediaType") or response.headers["Content-Type"]
        if media_type not in INDEX_TYPES:
            return self._inspect_image(repo, digest, len(response.content), document)

        images = {}
        for entry in document["manifests"]:
            child = self.get_manifest(repo, entry["digest"])
            digest_size = entry["digest"], entry["size"]
            built = self._inspect_image(repo, *digest_size, child.json())
            images[built.platform] = built
        return BuiltIndex(digest, len(response.content), media_type, images)

    def _inspect_image(
        self, repo: str, digest: str, size: int, manifest: dict[str, Any]
    ) -> BuiltImage:
        """Describe one image manifest, reading its config for diff IDs and platform."""
        config_digest = manifest["config"]["digest"]
        config = json.loads(self.get_blob(repo, config_digest))
        parts = [config.get("os", ""), config.get("architecture", "")]
        if config.get("variant"):
            parts.append(config["variant"])
        return BuiltImage(
            digest=digest,
            size=size,
            media_type=manifest["mediaType"],
            config=config_digest,
            layers=[layer["digest"] for layer in manifest["layers"]],
            diff_ids=list(config["rootfs"]["diff_ids"]),
            platform="/".join(parts),
        )


@dataclass(frozen=True)
class Pushed:
    """Where ``push`` put an image: ``name`` is ``host:port/repo``."""

    name: str
    tag: str
    digest: str

    @property
    def reference(self) -> str:
        """The image reference by tag."""
        return f"{self.name}:{self.tag}"

    @property
    def by_digest(self) -> str:
        """The image reference by digest."""
        return f"{self.name}@{self.digest}"


def push(
    layout_dir: str | os.PathLike[str],
    src_tag: str,
    registry: Registry,
    repo: str,
    dest_tag: str | None = None,
    *,
    format: str | None = None,
    all_platforms: bool = False,
    creds: Creds | None = None,
) -> Pushed:
    """Copy ``oci:<layout_dir>:<src_tag>`` into ``registry`` as ``repo:dest_tag``.

    ``format`` is ``"oci"`` (the default; digests are preserved) or ``"v2s2"`` for
    Docker schema 2, which skopeo 1.9 also applies to an index: with
    ``all_platforms`` an OCI index becomes a Docker manifest list. ``creds``
    default to the registry's. Raises ``RegistryError`` with skopeo's output.
    """
    skopeo = require_tool("skopeo")
    format = format or "oci"
    if format not in ("oci", "v2s2"):
        raise ValueError(f"format must be 'oci' or 'v2s2', not {format!r}")
    dest_tag = dest_tag or src_tag
    creds = creds if creds is not None else registry.creds
    digest_file = Path(layout_dir) / f".pushed-{uuid.uuid4().hex}"

    command = [skopeo, "--insecure-policy", "copy", "--quiet"]
    command += ["--dest-tls-verify=false", "--digestfile", str(digest_file)]
    command += ["--format", format]
    command += ["--all"] if all_platforms else []
    command += ["--preserve-digests"] if format == "oci" else []
    command += [f"--dest-creds={creds[0]}:{creds[1]}"] if creds else ["--dest-no-creds"]
    command += [f"oci:{layout_dir}:{src_tag}"]
    command += [f"docker://{registry.direct_url}/{repo}:{dest_tag}"]

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        message = f"skopeo could not push {repo}:{dest_tag}: {result.stderr.strip()}"
        raise RegistryError(message)
    digest = digest_file.read_text().strip()
    digest_file.unlink()
    return Pushed(f"{registry.url}/{repo}", dest_tag, digest)


def build_and_push(
    registry: Registry,
    image: ImageSpec | IndexSpec | Spec,
    layout_dir: Path,
    repo: str,
    tag: str = "latest",
    *,
    format: str | None = None,
) -> tuple[str, Built]:
    """Build an image (or a one-layer image of a file spec), push it, describe it.

    Returns the reference by tag and the digests as the registry holds them: those
    of the layout for OCI, those skopeo produced for Docker schema 2.
    """
    spec = image if isinstance(image, (ImageSpec, IndexSpec)) else simple_image(image)
    built = build_layout(layout_dir, {tag: spec})[tag]

    is_index = isinstance(spec, IndexSpec)
    pushed = push(
        layout_dir, tag, registry, repo, format=format, all_platforms=is_index
    )
    if (format or "oci") == "v2s2":
        built = RegistryClient(registry).inspect(repo, pushed.digest)
    elif pushed.digest != built.digest:
        message = f"skopeo changed the digest of {repo}:{tag} to {pushed.digest}"
        raise RegistryError(message)
    return pushed.reference, built


def unique_repo(prefix: str = "test") -> str:
    """A repository name no other test uses."""
    return f"{prefix}/img-{uuid.uuid4().hex[:12]}"


ImageFactory = Callable[..., tuple[str, Built]]

