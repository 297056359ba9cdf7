"""A client for the OCI distribution API on top of requests.

It resolves references to image manifests, streams blobs through a verifying reader
and translates every failure of the network or the registry into blobserve's errors.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from ..errors import (
    BlobserveError,
    InvalidContent,
    NotFound,
    Unauthorized,
    UpstreamFailed,
    UpstreamTimeout,
)
from .auth import Challenge, Credentials, CredentialStore, TokenCache, parse_challenge
from .blobs import VerifyingReader
from .manifest import (
    ACCEPT,
    ParsedManifest,
    Platform,
    parse_manifest,
    resolve_image,
)
from .reference import Reference
from .types import MAX_MANIFEST_BYTES, Descriptor, ResolvedImage

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK = 1 << 20

Observer = Callable[[str, str, float], None]
"""Called once per HTTP request: method, status code (or "error"), seconds."""


@dataclass(frozen=True)
class ClientOptions:
    """How the client talks to registries."""

    platform: str = "linux/amd64"
    insecure_registries: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    max_retry_after: float = 30.0
    user_agent: str = "blobserve"


class ObservingAdapter(HTTPAdapter):
    """An adapter that reports every request, connection errors included."""

    def __init__(self, observe: Observer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._observe = observe

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        started = time.perf_counter()
        code = "error"
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
            code = str(response.status_code)
            return response
        finally:
            self._observe(request.method or "GET", code, time.perf_counter() - started)


class RegistryClient:
    """Resolve references and stream blobs from registries; safe to share by threads."""

    def __init__(
        self,
        options: ClientOptions | None = None,
        credentials: CredentialStore | None = None,
        *,
        observe: Observer | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options or ClientOptions()
        self._platform = Platform.parse(self.options.platform)
        self._credentials = credentials or CredentialStore(None)
        self._observe = observe
        self._sleep = sleep
        self._tokens = TokenCache()
        self._schemes: dict[str, str] = {}
        self._local = threading.local()

    # -- public API ------------------------------------------------------------

    def resolve(self, ref: Reference) -> ResolvedImage:
        """Resolve a tag or digest to the configured platform's image manifest.

        Raises NotFound, Unauthorized, UpstreamFailed, UpstreamTimeout or
        InvalidContent (digest mismatch, oversized or malformed manifest, loops).
        """
        target = ref.digest or ref.tag or ""
        return resolve_image(
            str(ref),
            target,
            ref.digest,
            lambda what: self._fetch_manifest(ref, what),
            self._platform,
        )

    def open_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        *,
        max_bytes: int | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> VerifyingReader:
        """Open a blob as a stream that is checked against its descriptor.

        A connection that breaks mid-blob is resumed with a range request. Reading
        to the end raises InvalidContent if size or digest do not match.
        """
        raw = _ResumingBlob(self, ref, descriptor)
        try:
            return VerifyingReader(
                raw, descriptor, max_bytes=max_bytes, on_read=on_read
            )
        except BlobserveError:
            raw.close()
            raise

    def ping(self, registry: str) -> None:
        """Check that a registry answers its API root; raises UpstreamFailed if not."""
        url = f"{self._base_url(registry)}/v2/"
        try:
            response = self._session().get(url, timeout=self._timeouts())
        except requests.RequestException as exc:
            raise UpstreamFailed(
                f"registry {registry} cannot be reached: {exc}"
            ) from None
        response.close()
        if response.status_code not in (200, 401):
            message = f"registry {registry} answered /v2/ with {response.status_code}"
            raise UpstreamFailed(message, upstream_status=response.status_code)

    # -- manifests and blobs ---------------------------------------------------

    def _fetch_manifest(self, ref: Reference, target: str) -> ParsedManifest:
        path = f"/v2/{ref.repository}/manifests/{target}"
        response = self._request(ref, path, {"Accept": ACCEPT}, stream=True)
        with response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                message = f"{ref}: manifest is {declared} bytes, over the 4 MiB limit"
                raise InvalidContent(message, reference=str(ref))
            data = self._read_capped(response, ref)

        context = f"{ref}"
        manifest = parse_manifest(data, response.headers.get("Content-Type"), context)
        claimed = response.headers.get("Docker-Content-Digest", "")
        if claimed.startswith("sha256:") and claimed != manifest.digest:
            message = (
                f"{ref}: registry says manifest digest {claimed} but the content has "
                f"{manifest.digest}; refusing it"
            )
            raise InvalidContent(message, reference=str(ref), digest=claimed)
        return manifest

    def _read_capped(self, response: requests.Response, ref: Reference) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            for part in response.iter_content(CHUNK):
                total += len(part)
                if total > MAX_MANIFEST_BYTES:
                    message = f"{ref}: manifest is over the 4 MiB limit"
                    raise InvalidContent(message, reference=str(ref))
                parts.append(part)
        except requests.RequestException as exc:
            raise _transport_error(exc, f"{ref}: reading the manifest") from None
        return b"".join(parts)

    def get_blob(
        self, ref: Reference, descriptor: Descriptor, offset: int = 0
    ) -> requests.Response:
        """Start a GET of a blob, from ``offset`` onwards when it is not zero."""
        path = f"/v2/{ref.repository}/blobs/{descriptor.digest}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self._request(ref, path, headers, stream=True, digest=descriptor.digest)

    # -- requests, retries and authentication ----------------------------------

    def _request(
        self,
        ref: Reference,
        path: str,
        headers: Mapping[str, str],
        *,
        stream: bool,
        digest: str | None = None,
    ) -> requests.Response:
        url = f"{self._base_url(ref.registry)}{path}"
        scope = f"repository:{ref.repository}:pull"
        context = f"{ref}" + (f" blob {digest}" if digest else "")

        for authenticated in (False, True):
            sent = {**headers, **self._auth_headers(ref.registry, scope)}
            response = self._send_with_retries(url, sent, stream, context)
            if response.status_code != 401 or authenticated:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.close()
            self._authenticate(ref.registry, scope, challenge, context)

        if response.ok:
            return response
        response.close()
        if response.status_code in (401, 403):
            credentials = self._credentials.get(ref.registry)
            hint = "no credentials for it" if credentials is None else "its credentials"
            message = (
                f"{context}: registry {ref.registry} refused access "
                f"({response.status_code}) with {hint} in dockerAuth"
            )
            raise Unauthorized(
                message,
                reference=str(ref),
                digest=digest,
                upstream_status=response.status_code,
            )
        raise _status_error(response, context, str(ref), digest)

    def _send_with_retries(
        self, url: str, headers: Mapping[str, str], stream: bool, context: str
    ) -> requests.Response:
        attempt = 0
        while True:
            try:
                response = self._session().get(
                    url, headers=headers, stream=stream, timeout=self._timeouts()
                )
            except requests.RequestException as exc:
                if attempt >= self.options.retries:
                    raise _transport_error(exc, context) from None
                attempt += 1
                self._pause(attempt, None, context, str(exc))
                continue

            if (
                response.status_code in RETRY_STATUSES
                and attempt < self.options.retries
            ):
                attempt += 1
                retry_after = response.headers.get("Retry-After")
                response.close()
                self._pause(attempt, retry_after, context, str(response.status_code))
                continue
            return response

    def _pause(
        self, attempt: int, retry_after: str | None, context: str, why: str
    ) -> None:
        delay = _retry_after_seconds(retry_after)
        if delay is None:
            delay = (
                self.options.backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.25)
            )
        delay = min(delay, self.options.max_retry_after)
        log.warning("%s: %s; retry %d in %.1fs", context, why, attempt, delay)
        self._sleep(delay)

    def _auth_headers(self, registry: str, scope: str) -> dict[str, str]:
        scheme = self._schemes.get(registry)
        if scheme == "bearer":
            token = self._tokens.get(registry, scope)
            return {"Authorization": f"Bearer {token}"} if token else {}
        if scheme == "basic":
            credentials = self._credentials.get(registry)
            if credentials is not None:
                return {"Authorization": credentials.basic_header()}
        return {}

    def _authenticate(
        self, registry: str, scope: str, challenge: Challenge | None, context: str
    ) -> None:
        credentials = self._credentials.get(registry)
        if challenge is not None and challenge.scheme == "bearer":
            self._schemes[registry] = "bearer"
            self._fetch_token(registry, scope, challenge, credentials, context)
            return
        if challenge is not None and challenge.scheme == "basic" and credentials:
            self._schemes[registry] = "basic"
            return
        hint = "no credentials for it" if credentials is None else "its credentials"
        message = (
            f"{context}: registry {registry} refused access with {hint} in dockerAuth"
        )
        raise Unauthorized(message, reference=context)

    def _fetch_token(
        self,
        registry: str,
        scope: str,
        challenge: Challenge,
        credentials: Credentials | None,
        context: str,
    ) -> None:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            message = f"{context}: registry {registry} sent an unusable token realm"
            raise Unauthorized(message)
        params = {"scope": challenge.params.get("scope", scope)}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        auth = (credentials.username, credentials.password) if credentials else None

        try:
            response = self._session().get(
                realm, params=params, auth=auth, timeout=self._timeouts()
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, f"{context}: token endpoint") from None
        if response.status_code in (401, 403):
            message = (
                f"{context}: the token endpoint of {registry} refused the credentials"
            )
            raise Unauthorized(message, upstream_status=response.status_code)
        if not response.ok:
            raise _status_error(response, f"{context}: token endpoint", context, None)

        try:
            answer = response.json()
            token = answer.get("token") or answer["access_token"]
            expires_in = float(answer.get("expires_in") or 60)
        except (ValueError, KeyError, TypeError, AttributeError):
            message = f"{context}: the token endpoint of {registry} sent no token"
            raise UpstreamFailed(message) from None
        self._tokens.put(registry, params["scope"], str(token), expires_in)
        if params["scope"] != scope:
            self._tokens.put(registry, scope, str(token), expires_in)

    # -- plumbing ----------------------------------------------------------------

    def _base_url(self, registry: str) -> str:
        insecure = registry in self.options.insecure_registries
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        return f"{'http' if insecure else 'https'}://{host}"

    def _timeouts(self) -> tuple[float, float]:
        return (self.options.connect_timeout, self.options.read_timeout)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.options.user_agent
            session.trust_env = False
            if self._observe is not None:
                adapter = ObservingAdapter(self._observe)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
            self._local.session = session
        return session


class _ResumingBlob:
    """The raw bytes of a blob, re-requested from where they broke off on a failure."""

    def __init__(
        self, client: RegistryClient, ref: Reference, descriptor: Descriptor
    ) -> None:
        self._client = client
        self._ref = ref
        self._descriptor = descriptor
        self._offset = 0
        self._resumes = 0
        self._response = client.get_blob(ref, descriptor)

    def read(self, size: int = -1) -> bytes:
        while True:
            try:
                data = self._response.raw.read(size if size >= 0 else None)
            except (
                urllib3.exceptions.HTTPError,
                requests.RequestException,
                OSError,
            ) as exc:
                self._resume(exc)
                continue
            self._offset += len(data)
            return bytes(data)

    def close(self) -> None:
        self._response.close()

    def _resume(self, exc: Exception) -> None:
        context = f"{self._ref} blob {self._descriptor.digest}"
        self._response.close()
        if self._resumes >= self._client.options.retries:
            raise _transport_error(exc, context) from None
        self._resumes += 1
        log.warning(
            "%s: broke off at byte %d (%s); resuming", context, self._offset, exc
        )

        response = self._client.get_blob(self._ref, self._descriptor, self._offset)
        if response.status_code == 200 and self._offset:
            _skip(response, self._offset, context)
        self._response = response


def _skip(response: requests.Response, count: int, context: str) -> None:
    while count > 0:
        data = response.raw.read(min(count, CHUNK))
        if not data:
            raise UpstreamFailed(f"{context}: the blob ended early when resuming")
        count -= len(data)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _transport_error(exc: Exception, context: str) -> UpstreamFailed:
    timed_out = isinstance(
        exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    )
    if timed_out:
        return UpstreamTimeout(f"{context}: the registry timed out ({_reason(exc)})")
    return UpstreamFailed(f"{context}: the registry cannot be reached ({_reason(exc)})")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, without the pool's preamble."""
    for _ in range(8):
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
    text = str(exc)
    return text.split("): ", 1)[1] if "): " in text else text


def _status_error(
    response: requests.Response, context: str, reference: str, digest: str | None
) -> BlobserveError:
    status = response.status_code
    if status == 404:
        cls: type[BlobserveError] = NotFound
        message = f"{context}: not found in the registry"
    elif status in (401, 403):
        cls = Unauthorized
        message = f"{context}: the registry refused access ({status})"
    else:
        cls = UpstreamFailed
        message = f"{context}: the registry answered {status}"
    return cls(message, reference=reference, digest=digest, upstream_status=status)
