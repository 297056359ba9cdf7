"""`flask --app blobserve.wsgi prefetch` and the `blobserve prefetch` console script.

Both run as real processes with nothing in their environment but BLOBSERVE_CONFIG,
PATH and HOME, from a directory outside the repository; what they pull is then
served by gunicorn without a single registry request.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sysconfig
from pathlib import Path
from typing import Any, Callable

import pytest

from imagebuilder import ImageSpec, build_layer
from registries import ImageFactory, Registry, unique_repo
from servers import Gunicorn, registry_config, repo_name

StartServer = Callable[..., Gunicorn]

SCRIPTS = Path(sysconfig.get_path("scripts"))
COMMANDS = {
    "flask": ["flask", "--app", "blobserve.wsgi", "prefetch"],
    "blobserve": ["blobserve", "prefetch"],
}
CLI_TIMEOUT = 120


def run_cli(
    command: str, images: list[str], config: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run one of COMMANDS with only BLOBSERVE_CONFIG, PATH and HOME set."""
    program, *arguments = COMMANDS[command]
    executable = SCRIPTS / program
    if not executable.exists():
        message = f"{executable} is missing: run `pip install -e .` in the repository"
        raise AssertionError(message)
    env = {
        "BLOBSERVE_CONFIG": str(config),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(cwd)),
    }
    return subprocess.run(
        [str(executable), *arguments, *images],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_prefetch_prints_one_line_per_image_then_gunicorn_needs_no_registry(
    command: str,
    registry: Registry,
    image_factory: ImageFactory,
    gunicorn_factory: StartServer,
    blob_space: Path,
    tmp_path: Path,
) -> None:
    site = {"www/index.html": "<p>prefetched</p>", "www/app.js": "run()"}
    first, first_built = image_factory(site)
    layers = [build_layer({"a.txt": "a" * 1000}), build_layer({"b.txt": "b" * 500})]
    second, second_built = image_factory(ImageSpec(layers))
    repos = {repo_name(first): {"workdir": "/www"}, repo_name(second): {}}
    config = registry_config(registry, repos, blobSpace={"location": str(blob_space)})
    config_path = write_config(tmp_path / "config.json", config)

    result = run_cli(command, [first, second], config_path, tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    expected = [(first, first_built.digest, 22), (second, second_built.digest, 1500)]
    for line, (reference, digest, size) in zip(lines, expected):
        fields = line.split("\t")
        assert fields[:3] == [reference, digest, str(size)], line
        assert re.fullmatch(r"\d+\.\d\ds", fields[3]), line

    server = gunicorn_factory(config)
    registry.clear_log()
    response = server.get(f"/{first}/app.js")
    assert response.status_code == 200 and response.text == "run()"
    assert server.get(f"/{second}/b.txt").text == "b" * 500
    assert registry.requests() == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_prefetch_of_a_missing_image_fails_with_one_line(
    command: str, registry: Registry, blob_space: Path, tmp_path: Path
) -> None:
    missing = f"{registry.url}/{unique_repo('missing')}:latest"
    repos: dict[str, dict[str, Any]] = {repo_name(missing): {}}
    config = registry_config(registry, repos, blobSpace={"location": str(blob_space)})
    config_path = write_config(tmp_path / "config.json", config)

    result = run_cli(command, [missing], config_path, tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    reasons = [line for line in result.stderr.splitlines() if missing in line]
    assert len(reasons) == 1, result.stderr
    assert "failed" in reasons[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_prefetch_with_a_bad_config_names_the_field(
    command: str, registry: Registry, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "bad.json", {"blobserve": {"port": "http"}})

    image = f"{registry.url}/any/image:latest"

    result = run_cli(command, [image], config_path, tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert str(config_path) in result.stderr
    assert "blobserve.port" in result.stderr


def test_prefetch_on_a_terminal_shows_progress(
    registry: Registry, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reference, built = image_factory({"big.bin": os.urandom(4 << 20)})
    repos = {repo_name(reference): {}}
    config = write_config(tmp_path / "config.json", registry_config(registry, repos))
    env = {"BLOBSERVE_CONFIG": str(config), "PATH": os.environ.get("PATH", "/bin")}
    command = [str(SCRIPTS / "blobserve"), "prefetch", reference]

    parent, child = pty.openpty()
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=child, stderr=child, stdin=child
    )
    os.close(child)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(parent, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(CLI_TIMEOUT) == 0
    finally:
        process.kill()
        process.wait()
        os.close(parent)

    text = output.decode(errors="replace")
    assert re.search(r"\d+\.\d MB pulled, \d+\.\ds", text), text
    assert built.digest in text
