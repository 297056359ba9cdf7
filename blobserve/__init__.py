"""blobserve: serve files straight out of OCI and Docker images."""

from __future__ import annotations

import os

from flask import Flask

DEMO_CONFIG = os.path.join(os.path.dirname(__file__), "demo", "config.json")


def config_path() -> str:
    """The config file in use: $BLOBSERVE_CONFIG, else the bundled demo config."""
    return os.environ.get("BLOBSERVE_CONFIG") or DEMO_CONFIG


def create_app(path: str | None = None) -> Flask:
    """Build the Flask app for one process from a config file.

    Raises ConfigError (naming the file and field) for a bad config.
    """
    from . import metrics
    from .cli import nginx_config_command, prefetch_command
    from .config import load_config
    from .service import Service
    from .views import bp

    config = load_config(path or config_path())
    app = Flask(__name__)
    service = Service(
        config, events=metrics.MetricEvents(), observe=metrics.observe_client
    )
    app.extensions["blobserve"] = service
    metrics.init_app(app)
    app.register_blueprint(bp)
    app.cli.add_command(prefetch_command)
    app.cli.add_command(nginx_config_command)
    app.before_request(service.start)
    return app
