"""A small fault-injecting HTTP/1.1 reverse proxy on loopback, for the network-fault tests.

Put it between a client (s3fs, gcsfs, adlfs) and an emulator from ``servers.py``::

    proxy = FaultProxy(server.url, flavor="s3")         # listening on proxy.url at once
    proxy.rules = [lambda r: error(503) if r.method == "GET" and r.attempt == 1 else None]
    ...                                                  # point the connector at proxy.url
    proxy.heal()                                         # no more faults; hung requests let go
    proxy.stop()

Each request is read whole, then the ``rules`` decide what happens to it: each rule is a
callable taking a :class:`Request` and returning ``None`` (no opinion) or a :class:`Fault`;
the first fault wins, no fault means pass through. Rules run one at a time under the
proxy's lock, so they may keep state; ``rules`` may be replaced while the proxy runs.

Faults: an error status with a body in the backend's own format (``error(503)`` is S3's
``SlowDown``), closing the connection without an answer (``RESET``: FIN, ``RST``: TCP
reset through SO_LINGER 0), a body cut off half-way after headers promising all of it
(``TRUNCATE``), and never answering (``HANG``) until :meth:`FaultProxy.heal` or ``stop``.

One thread per client connection, keep-alive on both sides (one upstream connection per
client connection), bodies streamed through (a truncated one is read whole first).
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "content-length", "expect"}
CHUNK = 64 * 1024
UPSTREAM_TIMEOUT = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]  # percent-decoded; a repeated parameter keeps its last value
    count: int  # 1-based: how many requests the proxy has seen, this one included
    attempt: int  # 1-based: how many times this method + path + query was seen, this one included
    at: float  # time.monotonic() when the request had been read


@dataclass(frozen=True)
class Fault:
    kind: str  # "status" | "reset" | "rst" | "truncate" | "hang"
    status: int = 0
    code: str = ""  # the backend's error code, e.g. SlowDown; "" for the default of the status

    @property
    def label(self) -> str:
        return str(self.status) if self.kind == "status" else self.kind


def error(status: int, code: str = "") -> Fault:
    return Fault("status", status, code)


RESET, RST, TRUNCATE, HANG = Fault("reset"), Fault("rst"), Fault("truncate"), Fault("hang")
Rule = Callable[[Request], "Fault | None"]

# default error codes per flavor and status
_CODES = {
    "s3": {500: "InternalError", 503: "SlowDown", 429: "SlowDown"},
    "gcs": {500: "backendError", 503: "backendError", 429: "rateLimitExceeded"},
    "azure": {500: "InternalError", 503: "ServerBusy", 429: "ServerBusy"},
}


def error_response(flavor: str, fault: Fault) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an error the way the backend would answer it."""
    code = fault.code or _CODES[flavor].get(fault.status, "InternalError")
    message = f"injected by faultproxy: {fault.status} {code}"
    if flavor == "gcs":
        body = json.dumps({"error": {"code": fault.status, "message": message,
                                     "errors": [{"reason": code, "message": message}]}}).encode()
        return [("Content-Type", "application/json; charset=UTF-8")], body
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()
    headers = [("Content-Type", "application/xml")]
    if flavor == "azure":
        headers.append(("x-ms-error-code", code))
    return headers, body


class FaultProxy:
    """Listens on ``self.url`` (127.0.0.1, a free port) and forwards to ``upstream``."""

    def __init__(self, upstream: str, flavor: str = "s3") -> None:
        if flavor not in _CODES:
            raise ValueError(f"flavor must be one of {sorted(_CODES)}")
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.flavor = flavor
        self.rules: list[Rule] | Rule = []
        self.requests: collections.Counter[str] = collections.Counter()  # by method
        self.faults: collections.Counter[str] = collections.Counter()  # by Fault.label
        self.log: list[tuple[Request, str]] = []  # every request and what was done ("pass" or a label)
        self._lock = threading.Lock()
        self._attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._release = threading.Event()
        self._closing = False
        self._clients: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepting = threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True)
        self._accepting.start()

    # -- controls
    @property
    def seen(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    @property
    def injected(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    def heal(self) -> None:
        """No more faults; requests hanging now are let go (their connections closed)."""
        with self._lock:
            self.rules = []
            release, self._release = self._release, threading.Event()
        release.set()

    def stop(self) -> None:
        """Close every connection and wait for their threads (hung requests are let go)."""
        with self._lock:
            self._closing = True
            self._release.set()
        self._accepting.join()
        self._listener.close()
        with self._lock:
            clients, threads = list(self._clients), list(self._threads)
        for client in clients:  # wakes threads blocked reading a kept-alive connection
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=UPSTREAM_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections
    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                if self._closing:
                    client.close()
                    return
                self._clients.add(client)
                thread = threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True)
                self._threads.add(thread)
            thread.start()

    def _decide(self, method: str, target: str) -> tuple[Fault | None, threading.Event]:
        split = urllib.parse.urlsplit(target)
        with self._lock:
            self.requests[method] += 1
            self._attempts[(method, target)] += 1
            request = Request(method, urllib.parse.unquote(split.path), dict(urllib.parse.parse_qsl(split.query)),
                              sum(self.requests.values()), self._attempts[(method, target)], time.monotonic())
            rules = [self.rules] if callable(self.rules) else list(self.rules)
            fault = next((f for f in (rule(request) for rule in rules) if f is not None), None)
            if fault is not None:
                self.faults[fault.label] += 1
            self.log.append((request, "pass" if fault is None else fault.label))
            return fault, self._release

    def _serve(self, client: socket.socket) -> None:
        rfile = client.makefile("rb")
        upstream: http.client.HTTPConnection | None = None
        try:
            while not self._closing:
                line = rfile.readline(65537)
                if not line.strip():
                    return  # the client closed its connection (or sent nothing)
                method, target, _version = line.decode("latin-1").split(None, 2)
                headers = http.client.parse_headers(rfile)
                if headers.get("Expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(rfile, headers)
                fault, release = self._decide(method, target)
                close = headers.get("Connection", "").lower() == "close"
                if fault is None or fault.kind == "truncate":
                    upstream = upstream or http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
                    upstream, keep = self._forward(client, upstream, method, target, headers, body,
                                                   truncate=fault is not None)
                    if not keep or close:
                        return
                elif fault.kind == "status":
                    extra, payload = error_response(self.flavor, fault)
                    reason = http.client.responses.get(fault.status, "Error")
                    _send_head(client, f"HTTP/1.1 {fault.status} {reason}",
                               [*extra, ("Content-Length", str(len(payload)))])
                    client.sendall(payload)
                    if close:
                        return
                elif fault.kind == "rst":
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                elif fault.kind == "hang":
                    release.wait()
                    return
                else:  # reset: close without a word
                    return
        except (OSError, ValueError, http.client.HTTPException):
            return  # a client or upstream that went away mid-exchange
        finally:
            rfile.close()
            client.close()
            if upstream is not None:
                upstream.close()
            with self._lock:
                self._clients.discard(client)
                self._threads.discard(threading.current_thread())

    def _forward(self, client: socket.socket, upstream: http.client.HTTPConnection, method: str, target: str,
                 headers: http.client.HTTPMessage, body: bytes,
                 truncate: bool) -> tuple[http.client.HTTPConnection, bool]:
        """Relay one exchange; returns the upstream connection and whether to keep the client's."""
        for retry in (False, True):  # a kept-alive upstream connection may have been closed meanwhile
            try:
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        upstream.putheader(name, value)
                if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body or None)
                response = upstream.getresponse()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                upstream.close()
                upstream = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
                if retry:
                    raise
        out = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        status = f"HTTP/1.1 {response.status} {response.reason}"
        if method == "HEAD" or response.status in (204, 304):
            length = response.getheader("Content-Length")
            _send_head(client, status, out + ([("Content-Length", length)] if length is not None else []))
            response.read()
        elif truncate or (response.length is None and not response.chunked):
            data = response.read()
            _send_head(client, status, [*out, ("Content-Length", str(len(data)))])
            client.sendall(data[: len(data) // 2] if truncate else data)
            if truncate:
                return upstream, False
        elif response.chunked:
            _send_head(client, status, [*out, ("Transfer-Encoding", "chunked")])
            while chunk := response.read1(CHUNK):
                client.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            client.sendall(b"0\r\n\r\n")
        else:
            _send_head(client, status, [*out, ("Content-Length", str(response.length))])
            while chunk := response.read(CHUNK):
                client.sendall(chunk)
        if response.will_close:
            upstream.close()
        return upstream, True


def _read_body(rfile: object, headers: http.client.HTTPMessage) -> bytes:
    read, readline = rfile.read, rfile.readline  # type: ignore[attr-defined]
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        parts = []
        while size := int(readline(65537).split(b";")[0], 16):
            parts.append(read(size))
            readline()
        while readline(65537).strip():  # trailers
            pass
        return b"".join(parts)
    return read(int(headers.get("Content-Length") or 0)) or b""


def _send_head(client: socket.socket, status: str, headers: list[tuple[str, str]]) -> None:
    lines = [status, *(f"{k}: {v}" for k, v in headers), "", ""]
    client.sendall("\r\n".join(lines).encode("latin-1"))
