"""Operator commands: `flask prefetch <image>...` and the `blobserve` console script."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from .errors import BlobserveError
from .front import nginx_config
from .oci.reference import parse_reference

PROGRESS_INTERVAL = 0.2


@click.command("prefetch")
@click.argument("images", nargs=-1, required=True)
@with_appcontext
def prefetch_command(images: tuple[str, ...]) -> None:
    """Pull IMAGES into the blob space; print reference, digest, bytes, seconds."""
    service = current_app.extensions["blobserve"]
    failures = []

    for text in images:
        started = time.monotonic()
        try:
            ref = parse_reference(text)
            tree = service.puller.pull(ref, _progress(text, started))
        except (BlobserveError, OSError) as exc:
            _clear_progress()
            reason = str(exc)
            if not reason.startswith(text):
                reason = f"{text}: {reason}"
            click.echo(f"failed: {reason}", err=True)
            failures.append(text)
            continue
        _clear_progress()
        info = service.space.info(tree.key)
        size = info.bytes if info is not None else 0
        seconds = time.monotonic() - started
        click.echo(f"{ref}\t{tree.image.manifest_digest}\t{size}\t{seconds:.2f}s")

    if failures:
        click.get_current_context().exit(1)


@click.command("nginx-config")
@click.option("--listen", default="8080", show_default=True, help="nginx's listen.")
@click.option(
    "--upstream", default=None, help="blobserve's address [127.0.0.1:<port>]."
)
@with_appcontext
def nginx_config_command(listen: str, upstream: str | None) -> None:
    """Print an nginx front that serves digest references from the blob space."""
    config = current_app.extensions["blobserve"].config
    click.echo(nginx_config(config, listen, upstream or f"127.0.0.1:{config.port}"))


def _progress(text: str, started: float) -> Callable[[int], None] | None:
    if not sys.stderr.isatty():
        return None
    pulled = 0
    shown = 0.0

    def report(count: int) -> None:
        nonlocal pulled, shown
        pulled += count
        now = time.monotonic()
        if now - shown >= PROGRESS_INTERVAL:
            shown = now
            line = f"{text}: {pulled / 1e6:.1f} MB pulled, {now - started:.1f}s"
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()

    return report


def _clear_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _create_app() -> Flask:
    from . import create_app
    from .config import ConfigError

    try:
        return create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def main() -> None:
    """The `blobserve` command: Flask's CLI bound to this app, no FLASK_APP needed."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cli = FlaskGroup(create_app=_create_app, add_version_option=False)
    cli.main(prog_name="blobserve")
