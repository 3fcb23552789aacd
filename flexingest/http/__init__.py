"""The HTTP interface of ``flexingest run --http HOST:PORT`` (the ``http`` extra).

- :mod:`.app`: the FastAPI application (FlexOrch's connector API, syncs, jobs, health,
  metrics, the status page ``page.html`` + ``page.js``);
- :mod:`.auth`: API keys; :mod:`.models`: the bodies; :mod:`.connector_files`: connectors
  written to and removed from ``connectors_dir``;
- :mod:`.server`: uvicorn in a thread of the service, and the bound on request bodies.

Nothing here is imported by a ``run`` without ``--http``: FastAPI, uvicorn and
prometheus-client cost nothing to the others.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..exceptions import FlexingestError

if TYPE_CHECKING:
    from ..jobs import JobWorker
    from ..runner import Service
    from .server import HttpServer

log = logging.getLogger(__name__)

NEEDED = ("fastapi", "uvicorn", "prometheus_client")


def require() -> None:
    """FlexingestError naming the ``pip install`` when a package of the ``http`` extra is missing."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise FlexingestError(f"--http needs {', '.join(missing).replace('_', '-')}: pip install 'flexingest[http]'")


@dataclass(frozen=True)
class Settings:
    """What ``--http`` and the keys say, checked."""

    host: str
    port: int
    keys: list[str]


def settings(address: str, key_file: str | None, env_keys: str | None) -> Settings:
    """``--http HOST:PORT``, the keys of ``FLEXINGEST_API_KEYS`` and ``--api-key-file``; FlexingestError
    for a bad address, an unusable key file, a missing extra, or no key on a non-loopback address."""
    from .auth import is_loopback, load_keys

    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise FlexingestError(f"--http {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    require()
    keys = load_keys(env_keys, key_file)
    if not keys and not is_loopback(host):
        raise FlexingestError(f"--http {address}: refusing to serve a non-loopback address without an API key; set "
                              "FLEXINGEST_API_KEYS or give --api-key-file (or serve 127.0.0.1 only)")
    return Settings(host, int(port), keys)


@dataclass
class Http:
    """The running interface: its server and the job worker."""

    server: HttpServer
    worker: JobWorker

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float) -> None:
        """Answer the requests in flight, then stop; let the job in flight finish (up to ``timeout``)."""
        self.server.stop(timeout)
        if not self.worker.join(timeout + 5):
            log.warning("a job is still busy after the stop; it is taken up again at the next start")


def start(service: Service, settings: Settings) -> Http:
    """Serve the HTTP interface of ``service`` (port 0: a free one) and start its job worker."""
    require()
    from prometheus_client import CollectorRegistry

    from ..jobs import JobWorker
    from .app import create_app
    from .auth import Keys
    from .server import HttpServer

    worker = JobWorker(service)
    registry = CollectorRegistry()
    app = create_app(service, Keys(settings.keys), worker, registry)
    server = HttpServer(app, settings.host, settings.port, grace=service.stop.grace,
                        access_log=logging.getLogger("flexingest").isEnabledFor(logging.DEBUG))
    server.start()
    worker.start()
    log.info("HTTP interface on %s (status page at /, API under /v1/)", server.url)
    if not settings.keys:
        log.warning("no API key configured: the HTTP interface on %s answers without authentication "
                    "(loopback only); set FLEXINGEST_API_KEYS or --api-key-file", server.url)
    return Http(server, worker)
