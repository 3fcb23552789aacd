"""uvicorn in a thread of the service, and the bound on request bodies.

The signals stay flexingest's (``cli.py``): uvicorn's own handlers are never installed
(:meth:`_Server.capture_signals`). The socket is bound before the thread starts, so that an
address in use is an error at start, and port 0 picks a free port. On stop, uvicorn stops
accepting connections and answers the requests in flight (up to the grace time).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Iterator

from ..exceptions import FlexingestError

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # bytes of a request body
#: bytes of an oversized body read (and thrown away) before the 413, so that the client, still
#: sending, reads the answer: a connection closed on unread bytes is reset, and the answer lost
DRAIN = 16 * MAX_BODY


async def _drain(receive: Any, budget: int = DRAIN) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body"):
            return


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is answered 413 before it is parsed, whether it
    says its length (Content-Length) or not (chunked): the bytes are counted as they arrive, and
    no more than ``limit`` of them are kept."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                if int(value) <= DRAIN:
                    await _drain(receive)
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    from fastapi import HTTPException

                    if message.get("more_body"):
                        await _drain(receive)
                    raise HTTPException(413, self._why())  # FastAPI answers it while it reads the body
            return message

        await self.app(scope, counted, send)

    def _why(self) -> str:
        return f"the request body is larger than {self.limit // 1024} KiB"

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        await JSONResponse({"detail": self._why()}, status_code=413, headers={"Connection": "close"})(
            scope, receive, send)


def _server_class() -> type:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # flexingest's signal handling stays the one of its command line

    return _Server


class HttpServer:
    """One uvicorn server on ``host:port``, in a daemon thread."""

    def __init__(self, app: Any, host: str, port: int, *, grace: float, access_log: bool = False) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(128)
        except OSError as exc:
            self.sock.close()
            raise FlexingestError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=access_log, lifespan="off", server_header=False,
                                proxy_headers=False, timeout_graceful_shutdown=max(1, int(grace)),
                                timeout_keep_alive=5)
        self.server = _server_class()(config)
        self._thread = threading.Thread(target=self._run, name="flexingest-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException:  # noqa: BLE001 - SystemExit from uvicorn included: said, never raised in a thread
            log.exception("the HTTP interface stopped unexpectedly")

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise FlexingestError(f"the HTTP interface did not start on {self.url}")

    def stop(self, timeout: float) -> None:
        """Stop accepting connections; answer those in flight (up to ``timeout``), then end."""
        self.server.should_exit = True
        self._thread.join(timeout + 2)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(2)
        with contextlib.suppress(OSError):
            self.sock.close()
