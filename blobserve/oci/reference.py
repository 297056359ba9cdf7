"""Image references, parsed the way Docker and distribution/reference read them.

Pure parsing: nothing here touches the network or the file system. Every failure is an
InvalidReference (or MissingTag, its 404 subclass) whose message is one line and shows
the offending value escaped, so a CR or LF in a request can not forge a log line.

Deliberate differences from distribution/reference:

- a reference without a tag or digest is refused instead of meaning ":latest";
- digests other than sha256 are refused, because blobs are verified with sha256 only;
- port numbers must lie in 1-65535 and a bracketed IPv6 host must be a real address;
- a first component with upper-case letters is read as part of the repository (and so
  refused), never as a registry host.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, replace

from ..errors import InvalidReference, MissingTag

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"

NAME_MAX = 255
_QUOTE_MAX = 200

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(
    rf"(?P<host>\[[a-fA-F0-9:]+\]|{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*)"
    r"(?::(?P<port>[0-9]+))?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")
_LINE_BREAKS = ("\x00", "\r", "\n")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: where the image lives and which version is meant."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The canonical repository name, registry included, as allow-lists hold it."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the registry API for this reference."""
        if self.registry == DOCKER_HUB:
            return DOCKER_HUB_API
        return self.registry

    @property
    def pinned(self) -> bool:
        """Whether the reference names a digest, which then wins over any tag."""
        return self.digest is not None

    def with_digest(self, digest: str) -> Reference:
        """Return a copy pinned to digest; raise InvalidReference if it is malformed."""
        _check_digest(digest, str(self))
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse "[registry/]repository[:tag][@digest]" into a canonical Reference.

    A name without a registry is a Docker Hub name; a one-component Docker Hub name
    gets "library/" in front. When both a tag and a digest are given both are kept and
    the digest is what gets fetched.

    Raises MissingTag if there is neither a tag nor a digest, and InvalidReference for
    anything else the distribution grammar (narrowed as the module notes say) refuses.
    """
    _refuse_unsafe(text, "reference")

    remainder, digest = _split_digest(text)
    name, tag = _split_tag(remainder)
    if digest is not None:
        _check_digest(digest, text)
    if tag is not None:
        _check_tag(tag, text)
    registry, repository = _split_name(name, text)

    if tag is None and digest is None:
        message = (
            f"reference {_quote(text)} needs a tag (name:tag) or a digest "
            f"(name@sha256:...)"
        )
        raise MissingTag(message, reference=text)
    return Reference(registry, repository, tag, digest)


@functools.lru_cache(maxsize=1024)
def normalize_name(text: str) -> str:
    """Return the canonical "registry/repository" name for a name without a version.

    "alpine" becomes "docker.io/library/alpine"; "index.docker.io" becomes
    "docker.io". Raises InvalidReference if text carries a tag or a digest or is not a
    valid repository name.
    """
    _refuse_unsafe(text, "repository name")

    remainder, digest = _split_digest(text)
    name, tag = _split_tag(remainder)
    if digest is not None or tag is not None:
        message = (
            f"repository name {_quote(text)} carries a tag or digest; give the name "
            f"alone"
        )
        raise InvalidReference(message, reference=text)

    registry, repository = _split_name(name, text)
    return f"{registry}/{repository}"


def split_request_path(path: str) -> tuple[Reference, str]:
    """Split "/[registry/]repository:tag/path/in/image" into a reference and a path.

    The reference ends at the first component, after a registry component, that
    carries ":" (a tag) or "@" (a digest); what follows is the path inside the image,
    without a leading "/" and keeping a trailing one ("" when nothing follows). The
    first component counts as a registry when Docker would read it as one and it is a
    valid host[:port]. The path inside the image is only checked for NUL, CR and LF.

    Raises MissingTag if no component carries a tag or digest, and InvalidReference if
    the reference is invalid or the path holds NUL, CR or LF.
    """
    if any(char in path for char in _LINE_BREAKS):
        message = f"request path {_quote(path)} contains NUL, CR or LF"
        raise InvalidReference(message, reference=path)

    parts = path.removeprefix("/").split("/")
    start = 1 if len(parts) > 1 and _could_be_registry(parts[0]) else 0
    for index in range(start, len(parts)):
        if ":" in parts[index] or "@" in parts[index]:
            reference = parse_reference("/".join(parts[: index + 1]))
            return reference, "/".join(parts[index + 1 :]).lstrip("/")

    raise MissingTag(_missing_tag_in_path(path, parts, start), reference=path)


def _missing_tag_in_path(path: str, parts: list[str], start: int) -> str:
    """The message for a request path in which no component names a version."""
    message = (
        f"request path {_quote(path)} has no component with a ':tag' or '@digest'; "
        f"the image reference needs one"
    )
    if start == 1 and ":" in parts[0]:
        message += (
            f" ({_quote(parts[0])} was read as a registry; write a Docker Hub image "
            f"in full, as docker.io/library/NAME:TAG)"
        )
    return message


def _refuse_unsafe(text: str, what: str) -> None:
    """Refuse whitespace and control or other unprintable characters anywhere."""
    if any(char.isspace() or not char.isprintable() for char in text):
        message = f"{what} {_quote(text)} contains whitespace or a control character"
        raise InvalidReference(message, reference=text)


def _split_digest(text: str) -> tuple[str, str | None]:
    """Split "name@digest" at its first "@"; the digest is None if there is none."""
    name, at, digest = text.partition("@")
    if not at:
        return text, None
    return name, digest


def _split_tag(name: str) -> tuple[str, str | None]:
    """Split "name:tag" at a ":" after the last "/" (an earlier one is a port)."""
    head, colon, tail = name.rpartition(":")
    if not colon or "/" in tail:
        return name, None
    return head, tail


def _split_name(name: str, text: str) -> tuple[str, str]:
    """Split and check "[registry/]repository"; return the canonical pair."""
    if not name:
        message = f"reference {_quote(text)} has no repository name"
        raise InvalidReference(message, reference=text)

    first, slash, rest = name.partition("/")
    if slash and _looks_like_registry(first):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == _LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = _OFFICIAL_PREFIX + repository

    _check_length(f"{registry}/{repository}", text)
    _check_registry(registry, text)
    _check_repository(repository, text)
    return registry, repository


def _looks_like_registry(component: str) -> bool:
    """Docker's test: a first component with "." or ":", or "localhost", is a host."""
    return "." in component or ":" in component or component == "localhost"


def _could_be_registry(component: str) -> bool:
    """Whether a first request-path component is to be read as a registry."""
    if not _looks_like_registry(component) or "@" in component:
        return False
    return _REGISTRY.fullmatch(component) is not None


def _check_length(name: str, text: str) -> None:
    """Refuse a canonical name longer than the distribution limit."""
    if len(name) > NAME_MAX:
        message = (
            f"repository name in reference {_quote(text)} is {len(name)} characters "
            f"long; at most {NAME_MAX} are allowed"
        )
        raise InvalidReference(message, reference=text)


def _check_registry(registry: str, text: str) -> None:
    """Refuse a registry that is not host[:port] with a port in 1-65535."""
    match = _REGISTRY.fullmatch(registry)
    if match is None:
        message = (
            f"registry {_quote(registry)} in reference {_quote(text)} is not a valid "
            f"host[:port]"
        )
        raise InvalidReference(message, reference=text)

    host, port = match["host"], match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        message = (
            f"registry {_quote(registry)} in reference {_quote(text)} has port {port}; "
            f"ports run from 1 to 65535"
        )
        raise InvalidReference(message, reference=text)
    if host.startswith("[") and not _is_ipv6(host[1:-1]):
        message = (
            f"registry {_quote(registry)} in reference {_quote(text)} is not a valid "
            f"bracketed IPv6 address"
        )
        raise InvalidReference(message, reference=text)


def _is_ipv6(text: str) -> bool:
    """Whether text is an IPv6 address."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _check_repository(repository: str, text: str) -> None:
    """Refuse a repository path that breaks the distribution path grammar."""
    for component in repository.split("/"):
        if component in ("", ".", ".."):
            message = (
                f"repository {_quote(repository)} in reference {_quote(text)} has an "
                f"empty, '.' or '..' path component"
            )
            raise InvalidReference(message, reference=text)
        if component != component.lower():
            message = (
                f"repository {_quote(repository)} in reference {_quote(text)} must be "
                f"lower case"
            )
            raise InvalidReference(message, reference=text)
        if _PATH_COMPONENT.fullmatch(component) is None:
            message = (
                f"path component {_quote(component)} in reference {_quote(text)} must "
                f"be lower-case letters and digits joined by '.', '_', '__' or '-'"
            )
            raise InvalidReference(message, reference=text)


def _check_tag(tag: str, text: str) -> None:
    """Refuse a tag outside [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}."""
    if len(tag) > 128:
        message = (
            f"tag {_quote(tag)} in reference {_quote(text)} is {len(tag)} characters "
            f"long; at most 128 are allowed"
        )
        raise InvalidReference(message, reference=text)
    if _TAG.fullmatch(tag) is None:
        message = (
            f"tag {_quote(tag)} in reference {_quote(text)} must start with a letter, "
            f"digit or '_' and hold only letters, digits, '_', '.' and '-'"
        )
        raise InvalidReference(message, reference=text)


def _check_digest(digest: str, text: str) -> None:
    """Refuse a digest that is not sha256 followed by 64 lower-case hex digits."""
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not algorithm:
        message = (
            f"digest {_quote(digest)} in reference {_quote(text)} is not of the form "
            f"sha256:<64 hex digits>"
        )
        raise InvalidReference(message, reference=text)
    if algorithm != "sha256":
        message = (
            f"digest algorithm {_quote(algorithm)} in reference {_quote(text)} is not "
            f"supported; only sha256 is"
        )
        raise InvalidReference(message, reference=text)
    if _SHA256_HEX.fullmatch(encoded) is None:
        message = (
            f"digest {_quote(digest)} in reference {_quote(text)} is malformed; sha256 "
            f"needs exactly 64 lower-case hex digits"
        )
        raise InvalidReference(message, reference=text)


def _quote(text: str) -> str:
    """Show a value escaped and on one line, cut short if it is very long."""
    shown = repr(text)
    if len(shown) > _QUOTE_MAX:
        return f"{shown[:_QUOTE_MAX]}..."
    return shown
