"""The service's JSON configuration file: its schema, its defaults and its errors.

The file keeps the shape of the Go blobserve service's config, so an operator can bring
theirs unchanged; our own settings sit beside the Go ones inside "blobserve". Each
setting is declared once, as a marshmallow field whose metadata carries its help text;
describe_settings() walks those declarations for the README's configuration table.

Every schema refuses unknown keys. Loading yields frozen dataclasses, and any problem
becomes one ConfigError whose single-line message names the file and each field path.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from .errors import BlobserveError, InvalidReference
from .oci.reference import normalize_name
from .oci.types import Limits

DEFAULT_PORT = 32224
DEFAULT_TIMEOUT = 5.0
DEFAULT_TAG_TTL = 60.0
DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_PREFETCH_WORKERS = 2
DEFAULT_BLOB_SPACE_BYTES = 1024**3
OCI_LAYOUT_FILE = "oci-layout"

_DEFAULT_LIMITS = Limits()

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:\d+\.?\d*|\.\d+)"
_UNIT = "(?:" + "|".join(sorted(_DURATION_UNITS, key=len, reverse=True)) + ")"
_DURATION = re.compile(rf"[-+]?(?:{_NUMBER}{_UNIT})+")
_DURATION_PART = re.compile(rf"({_NUMBER})({_UNIT})")

_PREPULL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@?sha256:[a-f0-9]{64}")
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
_IPV4_LIKE = re.compile(r"[0-9.]+")

# The directory a relative layout path is resolved against while one file loads; a
# context variable keeps concurrent loads (in tests, say) from seeing each other's.
_BASE_DIR: ContextVar[str] = ContextVar("blobserve_config_base_dir")

# What marshmallow passes a field's _deserialize as the object being loaded.
_Given = Mapping[str, Any] | None


class ConfigError(BlobserveError):
    """A configuration file that cannot be read, parsed or validated.

    It carries the file's path and the problems, each one line of the form
    "field.path: what is wrong" without a final full stop; the message joins them
    with "; " after the file name, as one sentence.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        lines = tuple(_one_line(problem) for problem in problems)
        label = path or "(built-in)"
        message = f"config {label}: " + "; ".join(lines) + "."
        super().__init__(message)
        self.path = path
        self.problems = lines

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problems))


def _one_line(problem: str) -> str:
    """A problem on one line, without the full stop a joined message would repeat."""
    return " ".join(problem.split()).removesuffix(".")


@dataclass(frozen=True)
class Replacement:
    """A text substitution made in one file of an image when it is unpacked."""

    path: str
    search: str
    replacement: str


@dataclass(frozen=True)
class InlineStatic:
    """A substitution made in index.html when a request sends inline variables."""

    search: str
    replacement: str


@dataclass(frozen=True)
class RepoConfig:
    """What the service does for one allowed repository."""

    prepull: tuple[str, ...] = ()
    workdir: str = "/"
    replacements: tuple[Replacement, ...] = ()
    inline_static: tuple[InlineStatic, ...] = ()


@dataclass(frozen=True)
class BlobSpaceConfig:
    """Where unpacked images are kept and how much room they may take."""

    location: str
    max_size_bytes: int


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; durations are in seconds."""

    path: str
    port: int
    timeout: float
    repos: dict[str, RepoConfig]
    allow_any_repo: bool
    blob_space: BlobSpaceConfig
    insecure_registries: tuple[str, ...]
    tag_ttl: float
    platform: str
    prefetch_workers: int
    limits: Limits
    layouts: dict[str, str]
    json_logs: bool
    docker_auth: str | None
    prometheus_addr: str | None
    readiness_probe_addr: str | None

    def repo(self, name: str) -> RepoConfig | None:
        """The settings of a repository, or None if it is not listed under repos.

        The name is normalised first, so "alpine" finds "docker.io/library/alpine".
        Raises InvalidReference if name is not a valid repository name.
        """
        repo = self.repos.get(name)
        if repo is None:
            repo = self.repos.get(normalize_name(name))
        return repo

    @property
    def platform_os(self) -> str:
        """The operating system part of platform, such as "linux"."""
        return self.platform.split("/")[0]

    @property
    def platform_arch(self) -> str:
        """The architecture part of platform, such as "amd64"."""
        return self.platform.split("/")[1]

    @property
    def platform_variant(self) -> str | None:
        """The variant part of platform, such as "v8", or None if it has none."""
        parts = self.platform.split("/")
        return parts[2] if len(parts) > 2 else None


def parse_duration(text: str) -> float:
    """Return the seconds in a Go duration string: "250ms", "5s", "1m30s", "1.5h".

    The units are those of Go's time.ParseDuration (ns, us, µs, ms, s, m, h), with an
    optional sign; "0" alone is zero. Raises ValueError for anything else.
    """
    if text in ("0", "+0", "-0"):
        return 0.0
    if _DURATION.fullmatch(text) is None:
        message = f"{text!r} is not a duration such as 300ms, 5s, 1m30s or 2h"
        raise ValueError(message)

    parts = _DURATION_PART.findall(text)
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    return -seconds if text.startswith("-") else seconds


def format_duration(seconds: float) -> str:
    """Write seconds as a duration string that parse_duration reads back."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds * 1000:g}ms"


def _default_blob_space() -> BlobSpaceConfig:
    """The blob space used when the file has no blobSpace: a temporary directory."""
    location = os.path.join(tempfile.gettempdir(), "blobserve")
    return BlobSpaceConfig(location, DEFAULT_BLOB_SPACE_BYTES)


def _check_absolute(value: str) -> None:
    """Refuse a path inside an image that does not start at its root."""
    if not value.startswith("/"):
        message = f"{value!r} is not an absolute path: start it with '/'."
        raise ValidationError(message)


def _check_prepull(value: str) -> None:
    """Refuse a prePull entry that is neither a tag nor a sha256 digest."""
    if _PREPULL.fullmatch(value) is None:
        message = (
            f"{value!r} is neither a tag nor a digest: give a tag such as 1.4.2 or "
            f"@sha256:<64 hex digits>."
        )
        raise ValidationError(message)


def _check_platform(value: str) -> None:
    """Refuse a platform that is not os/arch or os/arch/variant."""
    if _PLATFORM.fullmatch(value) is None:
        message = (
            f"{value!r} is not a platform: give os/arch or os/arch/variant, such as "
            f"linux/amd64 or linux/arm64/v8."
        )
        raise ValidationError(message)


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Split "host[:port]" or "[ipv6][:port]"; the port is None when absent."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("the IPv6 address has no closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("only ':port' may follow ']'")
        _check_ipv6(host)
        return f"[{host}]", rest[1:] if rest else None

    host, colon, port = text.partition(":")
    if ":" in port:
        raise ValueError("an IPv6 address must be written in brackets, as [::1]")
    return host, port if colon else None


def _check_ipv6(host: str) -> None:
    """Refuse a bracketed host that is not an IPv6 address."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv6 address") from None


def _check_host(host: str) -> None:
    """Refuse a host that is not a hostname, an IPv4 or a bracketed IPv6 address."""
    if host.startswith("["):
        return
    if _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        return
    if len(host) > 253 or _HOSTNAME.fullmatch(host) is None:
        raise ValueError(f"{host!r} is not a host name")


def _check_port(port: str) -> None:
    """Refuse a port that is not a number from 1 to 65535."""
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")


def _check_address(text: str, *, host_required: bool, port_required: bool) -> None:
    """Check "host:port" text; raise ValidationError saying what is wrong."""
    try:
        host, port = _split_host_port(text)
        if host:
            _check_host(host)
        elif host_required:
            raise ValueError("the host is missing")
        if port is not None:
            _check_port(port)
        elif port_required:
            raise ValueError("a port is missing (write host:port or :port)")
    except ValueError as exc:
        message = f"{text!r} is not a valid address: {exc}."
        raise ValidationError(message) from None


class _StrictInteger(fields.Integer):
    """A JSON integer; true, false, 1.5 and "5" are refused."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _StrictBoolean(fields.Field[bool]):
    """A JSON true or false; unlike fields.Boolean, no strings or numbers."""

    type_name = "boolean"

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a boolean: write true or false.")
        return value


class _Duration(fields.Field[float]):
    """A Go duration string or a number of seconds, loaded as seconds (a float)."""

    type_name = "duration"

    def __init__(self, *, allow_zero: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_zero = allow_zero

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> float:
        seconds = self._seconds(value)

        if seconds < 0 or (seconds == 0 and not self.allow_zero):
            least = "zero or more" if self.allow_zero else "more than zero"
            message = f"{value!r} is out of range: the duration must be {least}."
            raise ValidationError(message)
        return seconds

    def _seconds(self, value: Any) -> float:
        """Read a duration string or a finite number of seconds."""
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError as exc:
                raise ValidationError(f"{exc}.") from None

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        message = 'Not a duration: give a string such as "5s" or a number of seconds.'
        raise ValidationError(message)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else format_duration(value)


class _RepositoryName(fields.String):
    """A repository name without tag or digest, loaded in its canonical form."""

    type_name = "repository name"

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalize_name(text)
        except InvalidReference as exc:
            raise ValidationError(f"Not a valid repository name: {exc}.") from None


class _LayoutDirectory(fields.String):
    """An OCI image layout directory, relative paths resolved against the file's."""

    type_name = "directory path"

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text:
            raise ValidationError("The layout directory path is empty.")

        base_dir = _BASE_DIR.get(os.getcwd())
        directory = os.path.normpath(os.path.join(base_dir, text))
        if not os.path.isdir(directory):
            message = f"Layout directory {directory} does not exist."
            raise ValidationError(message)
        if not os.path.isfile(os.path.join(directory, OCI_LAYOUT_FILE)):
            message = (
                f"{directory} is not an OCI image layout: it has no "
                f"{OCI_LAYOUT_FILE} file."
            )
            raise ValidationError(message)
        return directory


class _Address(fields.Field[str | None]):
    """A listen address, "host:port" or ":port"; an empty string means none."""

    type_name = "host:port"

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> str | None:
        text = _string(value)
        if not text:
            return None
        _check_address(text, host_required=False, port_required=True)
        return text


class _Registry(fields.String):
    """A registry host, "host[:port]" with a hostname, IPv4 or [IPv6] host."""

    type_name = "host[:port]"

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        _check_address(text, host_required=True, port_required=False)
        return text


class _OptionalPath(fields.Field[str | None]):
    """A file path that may be absent; an empty string means none."""

    type_name = "file path"

    def _deserialize(
        self, value: Any, attr: str | None, data: _Given, **kwargs: Any
    ) -> str | None:
        return _string(value) or None


def _string(value: Any) -> str:
    """Return value if it is a string; raise ValidationError otherwise."""
    if not isinstance(value, str):
        raise ValidationError("Not a valid string.")
    return value


class ReplacementSchema(Schema):
    """One entry of a repository's "replacements"."""

    class Meta:
        unknown = RAISE

    path = fields.String(
        required=True,
        validate=_check_absolute,
        metadata={"help": "Absolute path, inside the image, of the file to rewrite."},
    )
    search = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"help": "Text to find in that file; every occurrence is replaced."},
    )
    replacement = fields.String(
        required=True,
        metadata={"help": "Text put in place of each occurrence."},
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Replacement:
        return Replacement(**data)


class InlineStaticSchema(Schema):
    """One entry of a repository's "inlineStatic"."""

    class Meta:
        unknown = RAISE

    search = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"help": "Text to find in index.html when inline variables are sent."},
    )
    replacement = fields.String(
        required=True,
        metadata={
            "help": (
                "Text put in its place; ${name} stands for the variable 'name' of the "
                "X-BlobServe-InlineVars request header."
            )
        },
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> InlineStatic:
        return InlineStatic(**data)


class RepoSchema(Schema):
    """The settings of one repository under "repos"."""

    class Meta:
        unknown = RAISE

    prepull = fields.List(
        fields.String(validate=_check_prepull),
        data_key="prePull",
        load_default=list,
        metadata={
            "help": (
                "Tags or @sha256 digests of this repository to pull at start; the "
                "service is not ready until they are."
            )
        },
    )
    workdir = fields.String(
        load_default="/",
        validate=_check_absolute,
        metadata={"help": "Absolute directory inside the image that is served as /."},
    )
    replacements = fields.List(
        fields.Nested(ReplacementSchema),
        load_default=list,
        metadata={"help": "Text substitutions made in files as an image is unpacked."},
    )
    inline_static = fields.List(
        fields.Nested(InlineStaticSchema),
        data_key="inlineStatic",
        load_default=list,
        metadata={
            "help": (
                "Substitutions made in index.html responses to requests that send "
                "X-BlobServe-InlineVars; such responses are not cached."
            )
        },
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> RepoConfig:
        return RepoConfig(
            prepull=tuple(data["prepull"]),
            workdir=data["workdir"],
            replacements=tuple(data["replacements"]),
            inline_static=tuple(data["inline_static"]),
        )


class BlobSpaceSchema(Schema):
    """The "blobSpace" object: the shared cache of unpacked images."""

    class Meta:
        unknown = RAISE

    location = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"help": "Directory holding unpacked images, shared by all workers."},
    )
    max_size_bytes = _StrictInteger(
        data_key="maxSizeBytes",
        load_default=DEFAULT_BLOB_SPACE_BYTES,
        validate=validate.Range(min=1),
        metadata={
            "help": "Size in bytes above which least recently used images are evicted."
        },
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> BlobSpaceConfig:
        return BlobSpaceConfig(**data)


class LimitsSchema(Schema):
    """The "limits" object: caps that apply to each image."""

    class Meta:
        unknown = RAISE

    max_layer_bytes = _StrictInteger(
        data_key="maxLayerBytes",
        load_default=_DEFAULT_LIMITS.max_layer_bytes,
        validate=validate.Range(min=1),
        metadata={"help": "Largest compressed layer, in bytes, that is downloaded."},
    )
    max_unpacked_bytes = _StrictInteger(
        data_key="maxUnpackedBytes",
        load_default=_DEFAULT_LIMITS.max_unpacked_bytes,
        validate=validate.Range(min=1),
        metadata={"help": "Most bytes of files that one image may unpack to."},
    )
    max_entries = _StrictInteger(
        data_key="maxEntries",
        load_default=_DEFAULT_LIMITS.max_entries,
        validate=validate.Range(min=1),
        metadata={"help": "Most tar entries, over all its layers, one image may hold."},
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Limits:
        return Limits(**data)


class BlobserveSchema(Schema):
    """The "blobserve" object: the Go service's settings and our own."""

    class Meta:
        unknown = RAISE

    port = _StrictInteger(
        load_default=DEFAULT_PORT,
        validate=validate.Range(min=1, max=65535),
        metadata={"help": "TCP port the service listens on."},
    )
    timeout = _Duration(
        allow_zero=False,
        load_default=DEFAULT_TIMEOUT,
        metadata={
            "help": (
                "How long a request waits for an image being pulled before it is "
                "answered 503 with Retry-After (the pull goes on). A Go duration "
                "string or a number of seconds; more than zero."
            )
        },
    )
    repos = fields.Dict(
        keys=_RepositoryName(),
        values=fields.Nested(RepoSchema),
        allow_none=True,
        load_default=dict,
        metadata={
            "help": (
                "Repositories the service serves, by name (normalised, so 'alpine' "
                "means docker.io/library/alpine), with their settings; null means none."
            )
        },
    )
    allow_any_repo = _StrictBoolean(
        data_key="allowAnyRepo",
        load_default=False,
        metadata={"help": "Serve repositories that are not listed under repos too."},
    )
    blob_space = fields.Nested(
        BlobSpaceSchema,
        data_key="blobSpace",
        load_default=_default_blob_space,
        metadata={
            "help": (
                "The cache of unpacked images. When absent: <system temp "
                "dir>/blobserve, at most 1 GiB."
            )
        },
    )
    insecure_registries = fields.List(
        _Registry(),
        data_key="insecureRegistries",
        load_default=list,
        metadata={
            "help": (
                "Registries, as host[:port], reached over plain HTTP instead of HTTPS."
            )
        },
    )
    tag_ttl = _Duration(
        allow_zero=True,
        data_key="tagTTL",
        load_default=DEFAULT_TAG_TTL,
        metadata={
            "help": (
                "How long a tag's resolution to a manifest is trusted before it is "
                "asked again, and the max-age of responses for tags. A Go duration "
                "string or a number of seconds; 0 asks every time."
            )
        },
    )
    platform = fields.String(
        load_default=DEFAULT_PLATFORM,
        validate=_check_platform,
        metadata={
            "help": "Entry of a multi-platform image to serve: os/arch[/variant]."
        },
    )
    prefetch_workers = _StrictInteger(
        data_key="prefetchWorkers",
        load_default=DEFAULT_PREFETCH_WORKERS,
        validate=validate.Range(min=1, max=64),
        metadata={"help": "Threads in each worker's pull pool, from 1 to 64."},
    )
    limits = fields.Nested(
        LimitsSchema,
        load_default=Limits,
        metadata={"help": "Caps on each image, so a huge or hostile one fails early."},
    )
    layouts = fields.Dict(
        keys=_RepositoryName(),
        values=_LayoutDirectory(),
        load_default=dict,
        metadata={
            "help": (
                "Repositories served from a local OCI image layout directory instead "
                "of a registry; a relative path is relative to the config file's "
                "directory."
            )
        },
    )
    json_logs = _StrictBoolean(
        data_key="jsonLogs",
        load_default=False,
        metadata={"help": "Write log records as JSON objects, one a line."},
    )

    @validates_schema(pass_original=True)
    def _check_duplicates(
        self, data: dict[str, Any], original: Any, **kwargs: Any
    ) -> None:
        for key in ("repos", "layouts"):
            names = original.get(key) if isinstance(original, dict) else None
            if isinstance(names, dict):
                _check_distinct_names(names, key)

    @post_load
    def _fill(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data["repos"] is None:
            data["repos"] = {}
        data["insecure_registries"] = tuple(data["insecure_registries"])
        return data


def _default_settings() -> dict[str, Any]:
    """The "blobserve" settings of a file without that key: every default."""
    settings: dict[str, Any] = BlobserveSchema().load({})
    return settings


def _check_distinct_names(names: Mapping[str, Any], field_name: str) -> None:
    """Refuse two keys that normalise to the same repository name."""
    seen: dict[str, str] = {}
    for key in names:
        name = normalize_name(key)
        if name in seen:
            message = (
                f"Keys {seen[name]!r} and {key!r} name the same repository, {name}: "
                f"keep one."
            )
            raise ValidationError(message, field_name=field_name)
        seen[name] = key


class ConfigSchema(Schema):
    """The whole file: "blobserve" and the Go service's top-level keys."""

    class Meta:
        unknown = RAISE

    blobserve = fields.Nested(
        BlobserveSchema,
        load_default=_default_settings,
        metadata={"help": "The service's settings; when absent, all take defaults."},
    )
    docker_auth = _OptionalPath(
        data_key="dockerAuth",
        allow_none=True,
        load_default=None,
        metadata={
            "help": (
                "Path of a Docker config JSON with registry credentials. It need not "
                "exist at start (a Kubernetes secret may be mounted later). Absent or "
                "empty: anonymous pulls."
            )
        },
    )
    pprof_addr = fields.String(
        data_key="pprofAddr",
        allow_none=True,
        load_default=None,
        metadata={
            "help": "Accepted for compatibility with the Go service's config; ignored."
        },
    )
    prometheus_addr = _Address(
        data_key="prometheusAddr",
        allow_none=True,
        load_default=None,
        metadata={
            "help": (
                "Address, host:port or :port, of the Prometheus metrics endpoint. "
                "Absent or empty: none."
            )
        },
    )
    readiness_probe_addr = _Address(
        data_key="readinessProbeAddr",
        allow_none=True,
        load_default=None,
        metadata={
            "help": (
                "Address, host:port or :port, of a listener for the readiness and "
                "liveness probes. Absent or empty: none."
            )
        },
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Config:
        return Config(
            path="",
            **data["blobserve"],
            docker_auth=data["docker_auth"],
            prometheus_addr=data["prometheus_addr"],
            readiness_probe_addr=data["readiness_probe_addr"],
        )


def load_config(path: str) -> Config:
    """Read and validate the JSON config file at path.

    Raises ConfigError, naming the file, if it cannot be read, is not a JSON object or
    breaks the schema; the message lists every problem with its field path.
    """
    data = _read_json(path)
    return parse_config(data, path)


def parse_config(data: Any, path: str = "") -> Config:
    """Validate already decoded JSON as the config found in path ("" for built-in).

    Relative layout paths are resolved against path's directory, or the current one
    when path is "". Raises ConfigError listing every problem.
    """
    if not isinstance(data, dict):
        problem = f"the top level must be a JSON object, not {_json_type(data)}"
        raise ConfigError(path, [problem])

    schema = ConfigSchema()
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    token = _BASE_DIR.set(base_dir)
    try:
        config: Config = schema.load(data)
    except ValidationError as exc:
        raise ConfigError(path, _flatten_schema(schema, exc.messages, "")) from exc
    finally:
        _BASE_DIR.reset(token)

    return replace(config, path=path)


def _read_json(path: str) -> Any:
    """Decode the file at path as JSON, or raise ConfigError saying why not."""
    try:
        with open(path, encoding="utf-8-sig") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        problem = f"the file is not UTF-8 text (byte {exc.start})"
        raise ConfigError(path, [problem]) from exc

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = (
            f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        )
        raise ConfigError(path, [problem]) from exc


def _json_type(value: Any) -> str:
    """Name the JSON type of a decoded value, for messages."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def _flatten_schema(schema: Schema, messages: Any, prefix: str) -> list[str]:
    """Turn a schema's nested error dict into "path: message" lines."""
    if not isinstance(messages, dict):
        return _lines(prefix, messages)

    by_key = {field.data_key or name: field for name, field in schema.fields.items()}
    problems: list[str] = []
    for key, inner in messages.items():
        if key == "_schema":
            problems += _lines(prefix, inner)
        else:
            path = f"{prefix}.{key}" if prefix else str(key)
            problems += _flatten_field(by_key.get(key), inner, path)
    return problems


def _flatten_field(
    field: fields.Field[Any] | None, messages: Any, path: str
) -> list[str]:
    """Flatten the errors of one field, following its shape to name list items."""
    if not isinstance(messages, dict):
        return _lines(path, messages)

    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        return _flatten_schema(field.schema, messages, path)
    if isinstance(field, fields.List):
        problems: list[str] = []
        for index, inner in messages.items():
            problems += _flatten_field(field.inner, inner, f"{path}[{index}]")
        return problems
    if isinstance(field, fields.Dict):
        return _flatten_entries(field, messages, path)
    return _lines(path, messages)


def _flatten_entries(
    field: fields.Dict, messages: dict[Any, Any], path: str
) -> list[str]:
    """Flatten a map's errors, which marshmallow files under each key's key/value."""
    problems: list[str] = []
    for entry, parts in messages.items():
        entry_path = f"{path}[{json.dumps(entry)}]"
        if not isinstance(parts, dict):
            problems += _lines(entry_path, parts)
            continue
        problems += _lines(entry_path, parts.get("key", []))
        if "value" in parts:
            problems += _flatten_field(field.value_field, parts["value"], entry_path)
    return problems


def _lines(path: str, messages: Any) -> list[str]:
    """One "path: message" line per message, whatever shape the messages have."""
    if isinstance(messages, dict):
        problems: list[str] = []
        for key, inner in messages.items():
            problems += _lines(f"{path}.{key}" if path else str(key), inner)
        return problems
    if isinstance(messages, (list, tuple)):
        return [line for message in messages for line in _lines(path, message)]
    return [f"{path}: {messages}" if path else str(messages)]


def describe_settings() -> list[tuple[str, str, str, str]]:
    """Every setting as (key path, type, default, help), walked from the schemas.

    Key paths are dotted from the top of the file; "<name>" stands for a repository
    name and "[]" for any list item. The default is JSON text, "required" for a key
    that must be given, or "{}" for an object whose keys all have defaults.
    """
    return list(_describe_schema(ConfigSchema(), ""))


def _describe_schema(
    schema: Schema, prefix: str
) -> Iterator[tuple[str, str, str, str]]:
    """Yield the rows for a schema's fields and, below each, its children."""
    for name, field in schema.fields.items():
        key = field.data_key or name
        path = f"{prefix}.{key}" if prefix else key
        yield path, _type_name(field), _default_text(field), field.metadata["help"]
        yield from _describe_children(field, path)


def _describe_children(
    field: fields.Field[Any], path: str
) -> Iterator[tuple[str, str, str, str]]:
    """Yield the rows of the keys inside an object, list item or map value."""
    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        yield from _describe_schema(field.schema, path)
    elif isinstance(field, fields.List):
        yield from _describe_children(field.inner, f"{path}[]")
    elif isinstance(field, fields.Dict) and field.value_field is not None:
        yield from _describe_children(field.value_field, f"{path}.<name>")


def _type_name(field: fields.Field[Any]) -> str:
    """A reader's name for the type of value a field takes."""
    if isinstance(field, fields.Nested):
        return "object"
    if isinstance(field, fields.List):
        return f"list of {_type_name(field.inner)}"
    if isinstance(field, fields.Dict):
        key = _type_name(field.key_field) if field.key_field else "string"
        value = _type_name(field.value_field) if field.value_field else "any"
        return f"map of {key} to {value}"

    declared = getattr(field, "type_name", None)
    if isinstance(declared, str):
        return declared
    if isinstance(field, fields.Integer):
        return "integer"
    return "string"


def _default_text(field: fields.Field[Any]) -> str:
    """The default of a field as the JSON one would write for it."""
    if field.required:
        return "required"

    default = field.load_default
    value = default() if callable(default) else default
    if value is None:
        return "null"
    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        if not any(child.required for child in field.schema.fields.values()):
            return "{}"
    return json.dumps(field.serialize("value", {"value": value}))
