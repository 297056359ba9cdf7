"""The WSGI entry point: `gunicorn -c gunicorn.conf.py blobserve.wsgi:app`."""

from __future__ import annotations

import sys

from . import create_app
from .config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
