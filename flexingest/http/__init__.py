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


def start(service: Service, host: str, port: int, keys: list[str]) -> Http:
    """Serve the HTTP interface of ``service`` on ``host:port`` (port 0: a free one) and start its job worker."""
    require()
    from prometheus_client import CollectorRegistry

    from ..jobs import JobWorker
    from .app import create_app
    from .auth import Keys
    from .server import HttpServer

    worker = JobWorker(service)
    registry = CollectorRegistry()
    app = create_app(service, Keys(keys), worker, registry)
    server = HttpServer(app, host, port, grace=service.stop.grace,
                        access_log=logging.getLogger("flexingest").isEnabledFor(logging.DEBUG))
    server.start()
    worker.start()
    return Http(server, worker)
