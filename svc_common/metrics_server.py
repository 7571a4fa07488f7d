"""The Prometheus ``/metrics`` HTTP endpoint, on its own port, beside the gRPC server.

It serves from a daemon thread (prometheus-client's WSGI server), so a scrape never waits for
the event loop and a busy event loop never makes a scrape time out.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    """A running endpoint. ``port`` is the bound port (useful when started on port 0)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port. Blocking: call it from a thread or at exit."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (any path answers). ``port`` 0 picks
    a free port. Raises OSError when the port is taken, which should stop the service."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound_port = int(server.server_port)
    logger.info("metrics endpoint listening", extra={"host": host, "port": bound_port})
    return MetricsServer(host=host, port=bound_port, _server=server, _thread=thread)
