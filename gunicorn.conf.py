"""gunicorn settings and hooks for blobserve.

Start from the repository root:
    BLOBSERVE_CONFIG=<file> gunicorn -c gunicorn.conf.py blobserve.wsgi:app
Command-line flags (--bind, --workers, --threads) override what is set here.
"""

import os
import shutil
import sys
import tempfile

# Multiprocess metrics need their directory in the environment before anything
# imports prometheus_client; each master gets its own, wiped in on_starting.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(tempfile.gettempdir(), f"blobserve-metrics.{os.getpid()}"),
)

from blobserve import config_path  # noqa: E402
from blobserve.config import ConfigError, load_config  # noqa: E402
from blobserve.logs import logging_config  # noqa: E402

try:
    _config = load_config(config_path())
except ConfigError as _error:
    sys.stderr.write(f"{_error}\n")
    sys.exit(1)


def _listen_address(text: str) -> str:
    host, _, port = text.rpartition(":")
    return f"{host or '0.0.0.0'}:{port}"


bind = [f"0.0.0.0:{_config.port}"]
if _config.readiness_probe_addr:
    bind.append(_listen_address(_config.readiness_probe_addr))

worker_class = "gthread"
workers = max(2, os.cpu_count() or 1)
threads = 8
preload_app = False
timeout = 120
graceful_timeout = 30
keepalive = 5
control_socket_disable = True

accesslog = "-"
access_log_format = '%(p)s %(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(f)s" "%(a)s"'
logconfig_dict = logging_config(_config.json_logs)


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    # A --bind on the command line replaces the list above; keep the probe listener.
    if _config.readiness_probe_addr:
        probe = _listen_address(_config.readiness_probe_addr)
        if probe not in server.cfg.bind:
            server.cfg.set("bind", [*server.cfg.bind, probe])


def when_ready(server):
    if _config.prometheus_addr:
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        host, _, port = _config.prometheus_addr.rpartition(":")
        GunicornPrometheusMetrics.start_http_server_when_ready(
            int(port), host or "0.0.0.0"
        )
        server.log.info("metrics on http://%s/metrics", _config.prometheus_addr)
    for address in server.cfg.bind:
        host, _, port = address.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        server.log.info("blobserve is serving on http://%s:%s/", host, port)
    if not os.environ.get("BLOBSERVE_CONFIG"):
        host, _, port = server.cfg.bind[0].rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        demo = f"http://{host}:{port}/demo.local/blobserve/demo:latest/"
        print(f"blobserve demo: open {demo}", flush=True)


def post_worker_init(worker):
    service = worker.wsgi.extensions.get("blobserve")
    if service is not None:
        service.start()


def worker_exit(server, worker):
    # Stop unpack children now rather than holding the exit until they finish; the
    # next builder of those images removes what they left in tmp/.
    service = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("blobserve")
    if service is not None:
        service.puller.shutdown()


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    if _metrics_dir.startswith(
        os.path.join(tempfile.gettempdir(), "blobserve-metrics.")
    ):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
