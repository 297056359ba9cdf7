"""Tests for blobserve.config: loading, defaults, errors and the settings list."""

from __future__ import annotations

import copy
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pytest

from blobserve.config import (
    BlobserveSchema,
    BlobSpaceConfig,
    BlobSpaceSchema,
    Config,
    ConfigError,
    ConfigSchema,
    InlineStatic,
    InlineStaticSchema,
    LimitsSchema,
    RepoConfig,
    Replacement,
    ReplacementSchema,
    RepoSchema,
    describe_settings,
    load_config,
    parse_config,
    parse_duration,
)
from blobserve.errors import BlobserveError
from blobserve.oci.types import Limits

DIGEST = "sha256:" + "ab" * 32

SAMPLE: dict[str, Any] = {
    "blobserve": {
        "port": 32224,
        "timeout": "5s",
        "repos": {
            "registry.example/ide/code": {
                "prePull": ["1.4.2"],
                "workdir": "/ide",
                "replacements": [
                    {"path": "/ide/product.json", "search": "x", "replacement": "y"}
                ],
                "inlineStatic": [{"search": "{{BASE}}", "replacement": "${ide}"}],
            }
        },
        "allowAnyRepo": False,
        "blobSpace": {"location": "/mnt/cache/blobserve", "maxSizeBytes": 1073741824},
        "insecureRegistries": ["127.0.0.1:5000"],
        "tagTTL": "60s",
        "platform": "linux/amd64",
        "prefetchWorkers": 2,
        "limits": {
            "maxLayerBytes": 2147483648,
            "maxUnpackedBytes": 8589934592,
            "maxEntries": 500000,
        },
        "layouts": {"demo.local/blobserve/demo": "demo/layout"},
        "jsonLogs": False,
    },
    "dockerAuth": "/mnt/pull-secret/pull-secret.json",
    "pprofAddr": ":6060",
    "prometheusAddr": "127.0.0.1:9500",
    "readinessProbeAddr": ":8086",
}

GO_ONLY: dict[str, Any] = {
    "blobserve": {
        "port": 4000,
        "timeout": "1m30s",
        "repos": {
            "eu.gcr.io/gitpod-core-dev/build/ide/code": {
                "prePull": [],
                "workdir": "/ide",
                "inlineStatic": [{"search": "${ide}", "replacement": "${ide}"}],
            },
            "alpine": {"prePull": ["3.19", "@" + DIGEST]},
        },
        "allowAnyRepo": True,
        "blobSpace": {"location": "/mnt/cache/blobserve"},
    },
    "dockerAuth": "",
    "pprofAddr": "localhost:6060",
    "prometheusAddr": "",
    "readinessProbeAddr": "0.0.0.0:8086",
}


def write_config(directory: Path, data: Any, name: str = "blobserve.json") -> str:
    """Write data as JSON into directory and return the file's path."""
    path = directory / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def make_layout(directory: Path) -> Path:
    """Create a minimal OCI image layout directory (only what config checks)."""
    directory.mkdir(parents=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return directory


def error_for(tmp_path: Path, data: Any) -> tuple[str, str]:
    """Load data from a file that must fail; return (file path, error message)."""
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return path, str(caught.value)


def with_blobserve(**settings: Any) -> dict[str, Any]:
    """A config whose "blobserve" object holds only the given settings."""
    return {"blobserve": settings}


def with_repo(repo: dict[str, Any], name: str = "web/site") -> dict[str, Any]:
    """A config with one repository entry."""
    return with_blobserve(repos={name: repo})


def test_sample_loads_into_dataclasses(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "demo" / "layout")
    path = write_config(tmp_path, SAMPLE)

    config = load_config(path)

    expected = Config(
        path=path,
        port=32224,
        timeout=5.0,
        repos={
            "registry.example/ide/code": RepoConfig(
                prepull=("1.4.2",),
                workdir="/ide",
                replacements=(Replacement("/ide/product.json", "x", "y"),),
                inline_static=(InlineStatic("{{BASE}}", "${ide}"),),
            )
        },
        allow_any_repo=False,
        blob_space=BlobSpaceConfig("/mnt/cache/blobserve", 1073741824),
        insecure_registries=("127.0.0.1:5000",),
        tag_ttl=60.0,
        platform="linux/amd64",
        prefetch_workers=2,
        limits=Limits(2147483648, 8589934592, 500000),
        layouts={"demo.local/blobserve/demo": str(layout)},
        json_logs=False,
        docker_auth="/mnt/pull-secret/pull-secret.json",
        prometheus_addr="127.0.0.1:9500",
        readiness_probe_addr=":8086",
    )
    assert config == expected
    assert os.path.isabs(config.layouts["demo.local/blobserve/demo"])


def test_go_service_config_loads_as_is(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, GO_ONLY))

    assert config.port == 4000
    assert config.timeout == 90.0
    assert config.allow_any_repo is True
    assert config.blob_space == BlobSpaceConfig("/mnt/cache/blobserve", 1024**3)
    assert config.docker_auth is None
    assert config.prometheus_addr is None
    assert config.readiness_probe_addr == "0.0.0.0:8086"
    assert set(config.repos) == {
        "eu.gcr.io/gitpod-core-dev/build/ide/code",
        "docker.io/library/alpine",
    }
    assert config.repos["docker.io/library/alpine"] == RepoConfig(
        prepull=("3.19", "@" + DIGEST)
    )


def test_go_null_repos_means_none(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, with_blobserve(repos=None)))

    assert config.repos == {}


@pytest.mark.parametrize("data", [{}, {"blobserve": {}}])
def test_defaults(tmp_path: Path, data: dict[str, Any]) -> None:
    path = write_config(tmp_path, data)

    config = load_config(path)

    assert config.path == path
    assert config.port == 32224
    assert config.timeout == 5.0
    assert config.repos == {}
    assert config.allow_any_repo is False
    assert config.blob_space == BlobSpaceConfig(
        os.path.join(tempfile.gettempdir(), "blobserve"), 1024**3
    )
    assert config.insecure_registries == ()
    assert config.tag_ttl == 60.0
    assert config.platform == "linux/amd64"
    assert config.prefetch_workers == 2
    assert config.limits == Limits()
    assert config.layouts == {}
    assert config.json_logs is False
    assert config.docker_auth is None
    assert config.prometheus_addr is None
    assert config.readiness_probe_addr is None


def test_repo_defaults_and_lookup_by_normalised_name() -> None:
    config = parse_config(with_repo({}, name="alpine"))

    assert config.path == ""
    assert config.repo("alpine") == RepoConfig((), "/", (), ())
    assert config.repo("docker.io/library/alpine") is config.repos[
        "docker.io/library/alpine"
    ]
    assert config.repo("docker.io/library/busybox") is None


@pytest.mark.parametrize(
    "platform, parts",
    [
        ("linux/amd64", ("linux", "amd64", None)),
        ("linux/arm64/v8", ("linux", "arm64", "v8")),
        ("windows/amd64", ("windows", "amd64", None)),
    ],
)
def test_platform_parts(platform: str, parts: tuple[str, str, str | None]) -> None:
    config = parse_config(with_blobserve(platform=platform))

    assert (config.platform_os, config.platform_arch, config.platform_variant) == parts


def test_durations_accept_numbers_of_seconds() -> None:
    config = parse_config(with_blobserve(timeout=2.5, tagTTL=0))

    assert config.timeout == 2.5
    assert config.tag_ttl == 0.0


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param({"extra": 1}, "extra: Unknown field.", id="unknown-top-level"),
        pytest.param(
            with_blobserve(prot=1), "blobserve.prot: Unknown field.", id="unknown-key"
        ),
        pytest.param(
            with_repo({"typo": 1}),
            'blobserve.repos["web/site"].typo: Unknown field.',
            id="unknown-in-repo",
        ),
        pytest.param(
            with_repo(
                {"replacements": [{"path": "/a", "search": "x", "replacement": "y"}]}
                | {"inlineStatic": [{"search": "x", "replacement": "y", "z": 0}]}
            ),
            'blobserve.repos["web/site"].inlineStatic[0].z: Unknown field.',
            id="unknown-in-inline-static",
        ),
        pytest.param(
            with_repo(
                {
                    "replacements": [
                        {"path": "/a", "search": "x", "replacement": "y"},
                        {"path": "/b", "search": "x", "replacement": "y", "c": 1},
                    ]
                }
            ),
            'blobserve.repos["web/site"].replacements[1].c: Unknown field.',
            id="unknown-in-replacement",
        ),
        pytest.param(
            with_repo({"replacements": [{"path": "/ide/a.json", "replacement": "y"}]}),
            'blobserve.repos["web/site"].replacements[0].search: '
            "Missing data for required field.",
            id="missing-search",
        ),
        pytest.param(
            with_repo(
                {"replacements": [{"path": "a", "search": "x", "replacement": ""}]}
            ),
            'blobserve.repos["web/site"].replacements[0].path: ',
            id="relative-replacement-path",
        ),
        pytest.param(
            with_blobserve(timeout="5 seconds"),
            "blobserve.timeout: '5 seconds' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            with_blobserve(tagTTL="1d"),
            "blobserve.tagTTL: '1d' is not a duration",
            id="bad-duration-unit",
        ),
        pytest.param(
            with_blobserve(timeout=True),
            "blobserve.timeout: Not a duration",
            id="boolean-duration",
        ),
        pytest.param(
            with_blobserve(timeout="-1s"),
            "blobserve.timeout: '-1s' is out of range: the duration must be more than",
            id="negative-timeout",
        ),
        pytest.param(
            with_blobserve(timeout=0),
            "blobserve.timeout: 0 is out of range",
            id="zero-timeout",
        ),
        pytest.param(
            with_blobserve(tagTTL=-5),
            "blobserve.tagTTL: -5 is out of range: the duration must be zero or more.",
            id="negative-tag-ttl",
        ),
        pytest.param(
            with_repo({"workdir": "ide"}),
            "blobserve.repos[\"web/site\"].workdir: 'ide' is not an absolute path",
            id="relative-workdir",
        ),
        pytest.param(
            with_repo({}, name="Web/Site"),
            'blobserve.repos["Web/Site"]: Not a valid repository name: ',
            id="upper-case-repo-key",
        ),
        pytest.param(
            with_repo({}, name="web/site:1.0"),
            'blobserve.repos["web/site:1.0"]: Not a valid repository name: ',
            id="repo-key-with-tag",
        ),
        pytest.param(
            with_blobserve(repos={"alpine": {}, "docker.io/library/alpine": {}}),
            "blobserve.repos: Keys 'alpine' and 'docker.io/library/alpine' name the "
            "same repository",
            id="duplicate-repo",
        ),
        pytest.param(
            with_repo({"prePull": ["1.0:beta"]}),
            "blobserve.repos[\"web/site\"].prePull[0]: '1.0:beta' is neither a tag",
            id="bad-prepull",
        ),
        pytest.param(
            with_repo({"prePull": ["sha256:abc"]}),
            'blobserve.repos["web/site"].prePull[0]: ',
            id="short-digest-prepull",
        ),
        pytest.param(
            with_blobserve(insecureRegistries=["registry:99999"]),
            "blobserve.insecureRegistries[0]: 'registry:99999' is not a valid address: "
            "port '99999' is not a number from 1 to 65535.",
            id="insecure-registry-port",
        ),
        pytest.param(
            with_blobserve(insecureRegistries=["localhost:5000", "bad_host"]),
            "blobserve.insecureRegistries[1]: 'bad_host' is not a valid address",
            id="insecure-registry-host",
        ),
        pytest.param(
            with_blobserve(insecureRegistries=["::1"]),
            "blobserve.insecureRegistries[0]: '::1' is not a valid address: an IPv6",
            id="insecure-registry-bare-ipv6",
        ),
        pytest.param(
            with_blobserve(insecureRegistries=["[::g]:5000"]),
            "blobserve.insecureRegistries[0]: '[::g]:5000' is not a valid address",
            id="insecure-registry-bad-ipv6",
        ),
        pytest.param(
            with_blobserve(insecureRegistries=["300.1.1.1"]),
            "blobserve.insecureRegistries[0]: '300.1.1.1' is not a valid address",
            id="insecure-registry-bad-ipv4",
        ),
        pytest.param(
            with_blobserve(platform="linux"),
            "blobserve.platform: 'linux' is not a platform",
            id="bad-platform",
        ),
        pytest.param(
            with_blobserve(prefetchWorkers=0),
            "blobserve.prefetchWorkers: ",
            id="no-prefetch-workers",
        ),
        pytest.param(
            with_blobserve(prefetchWorkers=65),
            "blobserve.prefetchWorkers: ",
            id="too-many-prefetch-workers",
        ),
        pytest.param(
            with_blobserve(port="32224"),
            "blobserve.port: Not a valid integer.",
            id="port-as-string",
        ),
        pytest.param(
            with_blobserve(port=True),
            "blobserve.port: Not a valid integer.",
            id="port-as-boolean",
        ),
        pytest.param(
            with_blobserve(port=70000),
            "blobserve.port: ",
            id="port-out-of-range",
        ),
        pytest.param(
            with_blobserve(allowAnyRepo="yes"),
            "blobserve.allowAnyRepo: Not a boolean",
            id="string-boolean",
        ),
        pytest.param(
            with_blobserve(blobSpace={"maxSizeBytes": 10}),
            "blobserve.blobSpace.location: Missing data for required field.",
            id="blob-space-without-location",
        ),
        pytest.param(
            with_blobserve(blobSpace={"location": "/c", "maxSizeBytes": 0}),
            "blobserve.blobSpace.maxSizeBytes: ",
            id="empty-blob-space",
        ),
        pytest.param(
            with_blobserve(limits={"maxEntries": 0}),
            "blobserve.limits.maxEntries: ",
            id="zero-limit",
        ),
        pytest.param(
            with_blobserve(limits={"maxFiles": 10}),
            "blobserve.limits.maxFiles: Unknown field.",
            id="unknown-limit",
        ),
        pytest.param(
            {"prometheusAddr": "localhost"},
            "prometheusAddr: 'localhost' is not a valid address: a port is missing",
            id="address-without-port",
        ),
        pytest.param(
            {"readinessProbeAddr": ":0"},
            "readinessProbeAddr: ':0' is not a valid address: port '0'",
            id="address-port-zero",
        ),
        pytest.param(
            {"dockerAuth": 5},
            "dockerAuth: Not a valid string.",
            id="docker-auth-not-a-string",
        ),
    ],
)
def test_error_names_file_and_field(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    path, message = error_for(tmp_path, data)

    assert message.startswith(f"config {path}: ")
    assert expected in message
    assert "\n" not in message


def test_several_problems_on_one_line(tmp_path: Path) -> None:
    data = with_blobserve(port=0, platform="x", repos={"web/site": {"workdir": "w"}})

    path, message = error_for(tmp_path, data)

    assert message.startswith(f"config {path}: ")
    assert "\n" not in message
    problems = message[len(f"config {path}: ") :].split("; ")
    assert len(problems) == 3
    assert sorted(problem.split(": ")[0] for problem in problems) == [
        "blobserve.platform",
        "blobserve.port",
        'blobserve.repos["web/site"].workdir',
    ]


def test_config_error_carries_path_and_problems(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"extra": 1})

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert isinstance(caught.value, BlobserveError)
    assert caught.value.path == path
    assert caught.value.problems == ("extra: Unknown field",)
    copied = pickle.loads(pickle.dumps(caught.value))
    assert (copied.path, copied.problems) == (path, caught.value.problems)
    assert str(copied) == str(caught.value)


def test_missing_layout_directory(tmp_path: Path) -> None:
    data = with_blobserve(layouts={"demo.local/blobserve/demo": "missing"})

    path, message = error_for(tmp_path, data)

    expected = (
        f'blobserve.layouts["demo.local/blobserve/demo"]: Layout directory '
        f"{tmp_path / 'missing'} does not exist."
    )
    assert message == f"config {path}: {expected}"


def test_layout_directory_without_oci_layout_file(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    data = with_blobserve(layouts={"demo.local/x": "plain"})

    _, message = error_for(tmp_path, data)

    assert 'blobserve.layouts["demo.local/x"]: ' in message
    assert "has no oci-layout file" in message


def test_layout_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_layout(tmp_path / "conf" / "layout")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    layouts = {"demo": "layout", "other": str(tmp_path / "conf" / "layout")}
    data = with_blobserve(layouts=layouts)
    (tmp_path / "conf" / "c.json").write_text(json.dumps(data))

    config = load_config(os.path.join("..", "conf", "c.json"))

    assert config.layouts == {
        "docker.io/library/demo": str(tmp_path / "conf" / "layout"),
        "docker.io/library/other": str(tmp_path / "conf" / "layout"),
    }


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "blobserve": {\n    "port": 1,\n  }\n}\n')

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))

    message = str(caught.value)
    assert message.startswith(f"config {path}: not valid JSON at line 4, column 3: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    "text, kind",
    [("[1, 2]", "an array"), ('"x"', "a string"), ("null", "null"), ("3", "a number")],
)
def test_top_level_must_be_an_object(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "list.json"
    path.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))

    expected = f"config {path}: the top level must be a JSON object, not {kind}."
    assert str(caught.value) == expected


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"config {path}: cannot read the file: No such file or directory."
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))

    assert str(caught.value).startswith(f"config {tmp_path}: cannot read the file: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"dockerAuth": "caf\xe9"}')

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))

    assert str(caught.value).startswith(f"config {path}: the file is not UTF-8 text")


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0", 0.0),
        ("5s", 5.0),
        ("300ms", 0.3),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1h2m3s", 3723.0),
        ("1h0.5m", 3630.0),
        ("10us", 1e-5),
        ("10\u00b5s", 1e-5),
        ("10\u03bcs", 1e-5),
        ("1500ns", 1.5e-6),
        ("+5s", 5.0),
        ("-1m", -60.0),
        ("1ms1ns", 0.001000001),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "text", ["", "5", "s", "1d", "1 s", "1S", "1.5.s", "5s ", "--1s", "1m-30s", "h1"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


ALL_SCHEMAS = (
    ConfigSchema,
    BlobserveSchema,
    RepoSchema,
    ReplacementSchema,
    InlineStaticSchema,
    BlobSpaceSchema,
    LimitsSchema,
)


def sample_key_paths(data: Any, prefix: str = "") -> set[str]:
    """The key paths of a config document, in describe_settings' notation."""
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            in_map = prefix.endswith(("blobserve.repos", "blobserve.layouts"))
            if in_map:
                path = f"{prefix}.<name>"
            else:
                path = f"{prefix}.{key}" if prefix else key
                paths.add(path)
            paths |= sample_key_paths(value, path)
    elif isinstance(data, list):
        for item in data:
            paths |= sample_key_paths(item, f"{prefix}[]")
    return paths


def test_describe_settings_covers_every_schema_field() -> None:
    rows = describe_settings()
    keys = [row[0] for row in rows]
    last_parts = {key.rsplit(".", 1)[-1] for key in keys}

    for schema_class in ALL_SCHEMAS:
        for name, field in schema_class().fields.items():
            assert (field.data_key or name) in last_parts, (schema_class, name)
    assert len(keys) == len(set(keys))
    assert sample_key_paths(SAMPLE) <= set(keys)
    assert sample_key_paths(GO_ONLY) <= set(keys)


def test_describe_settings_rows_are_complete() -> None:
    rows = {row[0]: row[1:] for row in describe_settings()}

    for key, (kind, default, help_text) in rows.items():
        assert kind and default and help_text.strip(), key
    assert rows["blobserve.port"][:2] == ("integer", "32224")
    assert rows["blobserve.timeout"][:2] == ("duration", '"5s"')
    assert rows["blobserve.tagTTL"][:2] == ("duration", '"60s"')
    assert rows["blobserve.repos.<name>.workdir"][1] == '"/"'
    assert rows["blobserve.repos.<name>.replacements[].search"][1] == "required"
    assert rows["blobserve.limits.maxEntries"][1] == str(Limits().max_entries)
    assert "ignored" in rows["pprofAddr"][2]
    assert "temp" in rows["blobserve.blobSpace"][2]


def test_describe_settings_defaults_load_back() -> None:
    """The defaults shown, written into a file, give the same config as no file."""
    data: dict[str, Any] = {}
    for key, _, default, _ in describe_settings():
        if "<name>" in key or "[]" in key or default in ("required", "null"):
            continue
        *parents, last = key.split(".")
        target = data
        for parent in parents:
            target = target.setdefault(parent, {})
        target.setdefault(last, json.loads(default))

    assert parse_config(copy.deepcopy(data)) == parse_config({})
