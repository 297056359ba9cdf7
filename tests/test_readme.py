"""The README agrees with the code it documents."""

from __future__ import annotations

from pathlib import Path

from blobserve.config import describe_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_table_names_every_setting() -> None:
    text = README.read_text()
    missing = [key for key, *_ in describe_settings() if f"| `{key}` |" not in text]
    assert missing == []


def test_readme_opens_with_the_run_and_test_commands() -> None:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```")]
    assert block[0].startswith("pip install . && gunicorn -c gunicorn.conf.py")
    assert block[1].startswith("bash tests/run.sh")
