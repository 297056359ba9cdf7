"""The HTTP surface: files out of image trees, cache warm-up and health probes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re

from flask import Blueprint, Response, current_app, request, send_file
from werkzeug.exceptions import HTTPException

from .config import InlineStatic, RepoConfig
from .errors import BlobserveError, InvalidReference, NotAllowed, NotFound
from .mediatypes import content_type
from .oci.reference import Reference, split_request_path
from .service import Service
from .workers import Tree

log = logging.getLogger(__name__)

bp = Blueprint("blobserve", __name__)

SERVED_METHODS = ("GET", "HEAD")
# Other methods are routed too, so that they get a plain 405 from this module.
ROUTED_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
IMMUTABLE = "public, max-age=31536000, immutable"
INLINE_VARS_HEADER = "X-BlobServe-InlineVars"

_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def service() -> Service:
    """This process's Service, as create_app registered it."""
    found: Service = current_app.extensions["blobserve"]
    return found


# -- health -------------------------------------------------------------------


@bp.route("/live", methods=SERVED_METHODS)
def live() -> Response:
    return _text("ok", 200)


@bp.route("/ready", methods=SERVED_METHODS)
def ready() -> Response:
    problem = service().readiness.problem()
    if problem is not None:
        return _text(f"not ready: {problem}", 503)
    return _text("ready", 200)


# -- files ----------------------------------------------------------------------


@bp.route("/", defaults={"path": ""}, methods=ROUTED_METHODS)
@bp.route("/<path:path>", methods=ROUTED_METHODS)
def serve(path: str) -> Response:
    """Serve `/<reference>/<path inside the image>`."""
    if request.method not in SERVED_METHODS:
        response = _text(f"method {request.method} is not allowed", 405)
        response.headers["Allow"] = ", ".join(SERVED_METHODS)
        return response
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return _text("WebSocket upgrades are not served here", 400)

    ref, inner = split_request_path(request.path)
    repo = _check_allowed(ref)
    if request.method == "HEAD" and inner == "":
        return _warm(ref)

    tree = service().puller.get(ref, service().config.timeout)
    if ref.pinned:
        text = request.path[1 : len(request.path) - len(inner)].strip("/")
        workdir = repo.workdir if repo is not None else "/"
        service().link_for_front(text, tree, workdir)
    try:
        return _send(tree, repo, inner)
    except _TreeVanished:
        log.info("%s: tree %s was evicted while serving; rebuilding", ref, tree.key)
        tree = service().puller.get(ref, service().config.timeout)
        return _send(tree, repo, inner)


def _check_allowed(ref: Reference) -> RepoConfig | None:
    config = service().config
    repo = config.repo(ref.name)
    if repo is None and not config.allow_any_repo:
        raise NotAllowed(f"repository {ref.name} is not served here")
    return repo


def _warm(ref: Reference) -> Response:
    tree = service().puller.get(ref, service().config.timeout)
    response = _text("", 200)
    response.headers["ETag"] = f'"{tree.key}"'
    response.headers["X-BlobServe-Digest"] = tree.image.manifest_digest
    return response


class _TreeVanished(Exception):
    """The tree was evicted between finding it and opening the file."""


def _send(tree: Tree, repo: RepoConfig | None, inner: str) -> Response:
    path = _locate(tree, repo.workdir if repo is not None else "/", inner)
    name = os.path.basename(path)
    inline = repo.inline_static if repo is not None else ()
    variables = request.headers.get(INLINE_VARS_HEADER)

    if name == "index.html" and inline and variables:
        return _send_inlined(tree, path, inline, variables)

    try:
        response = send_file(
            path,
            mimetype=content_type(name),
            etag=tree.key,
            conditional=True,
            max_age=_max_age(tree),
        )
    except FileNotFoundError:
        raise _TreeVanished() from None
    _set_cache_headers(response, tree)
    return response


def _locate(tree: Tree, workdir: str, inner: str) -> str:
    """The real path of the requested file inside the tree's workdir, or NotFound."""
    parts = inner.split("/")
    if any(part in (".", "..") or "\\" in part for part in parts):
        raise NotFound(f"{inner!r} is not a valid path")

    base = service().served_root(tree, workdir)
    if base is None:
        raise _TreeVanished()
    candidate = os.path.realpath(os.path.join(base, inner))
    if os.path.isdir(candidate):
        candidate = os.path.realpath(os.path.join(candidate, "index.html"))

    inside = candidate == base or candidate.startswith(base + os.sep)
    if not inside or not os.path.isfile(candidate):
        if not os.path.isdir(tree.root):
            raise _TreeVanished()
        raise NotFound(f"{inner or '/'} is not in {tree.reference}")
    return candidate


def _send_inlined(
    tree: Tree, path: str, inline: tuple[InlineStatic, ...], variables: str
) -> Response:
    try:
        values = json.loads(variables)
        if not isinstance(values, dict):
            raise ValueError
    except ValueError:
        raise InvalidReference(f"{INLINE_VARS_HEADER} is not a JSON object") from None

    try:
        with open(path, "rb") as handle:
            content = handle.read().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise _TreeVanished() from None
    for edit in inline:
        replacement = _VAR.sub(
            lambda m: str(values.get(m.group(1), "")), edit.replacement
        )
        content = content.replace(edit.search, replacement)

    body = content.encode("utf-8", errors="surrogateescape")
    etag = tree.key + "-" + hashlib.sha256(variables.encode()).hexdigest()[:16]
    response = send_file(
        io.BytesIO(body),
        mimetype=content_type("index.html"),
        etag=etag,
        conditional=True,
        download_name="index.html",
        max_age=0,
    )
    response.headers.pop("Content-Disposition", None)
    response.headers["Cache-Control"] = "no-cache"
    response.headers.pop("Expires", None)
    return response


def _max_age(tree: Tree) -> int:
    if tree.reference.pinned:
        return 31536000
    return int(service().config.tag_ttl)


def _set_cache_headers(response: Response, tree: Tree) -> None:
    if tree.reference.pinned:
        response.headers["Cache-Control"] = IMMUTABLE
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Access-Control-Allow-Origin"] = "*"


# -- errors ---------------------------------------------------------------------


@bp.app_errorhandler(BlobserveError)
def blobserve_error(error: BlobserveError) -> Response:
    response = _text(error.message, error.status)
    if error.status == 503:
        log.debug("%s %s: %s", request.method, request.path, error)
        response.headers["Retry-After"] = "2"
    elif error.status >= 500:
        log.warning("%s %s: %s", request.method, request.path, error)
    return response


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    response = _text(error.description or error.name, error.code or 500)
    for name, value in error.get_headers():
        if name == "Content-Range":
            response.headers[name] = value
    if error.code == 405:
        response.headers["Allow"] = ", ".join(SERVED_METHODS)
    return response


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.path)
    return _text("internal error; the server log has the details", 500)


def _text(message: str, status: int) -> Response:
    line = " ".join(message.split("\n")).replace("\r", " ")
    body = f"{line}\n" if line else ""
    response = Response(body, status=status, mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response
