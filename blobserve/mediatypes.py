"""Media types of the files a web bundle holds, the same on every host."""

from __future__ import annotations

import mimetypes
import os

# The types a web bundle needs, independent of the host's /etc/mime.types.
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".htm": "text/html",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/vnd.microsoft.icon",
    ".map": "application/json",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".xml": "application/xml",
}


def content_type(name: str) -> str:
    """The media type for a file name (Werkzeug adds a charset to text types)."""
    extension = os.path.splitext(name)[1].lower()
    mimetype = CONTENT_TYPES.get(extension) or mimetypes.guess_type(name)[0]
    return mimetype or "application/octet-stream"
