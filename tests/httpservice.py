"""``flexingest run PIPELINE --http 127.0.0.1:0`` as a subprocess, for the tests of the HTTP interface.

The service picks a free port (port 0) and says its address in its log ("HTTP interface on
http://127.0.0.1:PORT"); :class:`HttpService` reads it there and gives an ``httpx`` client with
the API key. Its log goes to a file beside the pipeline, never to a pipe.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
from conftest import FLEXINGEST

KEY = "test-key-7f3c9a1e5b2d4068"  # the API key of the services the tests start
_URL = re.compile(r"HTTP interface on (http://\S+) ")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class HttpService:
    """One running service with its HTTP interface; ``stop()`` (SIGTERM) or ``kill()`` ends it."""

    def __init__(self, pipeline: Path, *args: str, keys: str | None = KEY, key: str | None = KEY,
                 env: dict[str, str] | None = None, address: str = "127.0.0.1:0") -> None:
        self.pipeline = pipeline
        self.log_path = pipeline.parent / f"service-{uuid.uuid4().hex[:8]}.log"
        environment = {k: v for k, v in os.environ.items() if k != "FLEXINGEST_API_KEYS"}
        if keys is not None:
            environment["FLEXINGEST_API_KEYS"] = keys
        environment.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([FLEXINGEST, "run", str(pipeline), "--http", address, *args],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         env=environment, cwd=pipeline.parent)
        try:
            self.url = wait_for(self._url, 30, f"the HTTP interface of {pipeline} to start")
        except AssertionError:
            self.kill()
            raise AssertionError(f"the service did not start:\n{self.log()}") from None
        self.client = httpx.Client(base_url=self.url, headers={"X-API-KEY": key} if key else {}, timeout=30)

    def _url(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.log()}")
        found = _URL.search(self.log())
        return found.group(1) if found else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the service's log", every=0.1)

    def ready(self, timeout: float = 30) -> None:
        wait_for(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, timeout, "/readyz")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the service and wait for it to exit; its exit code."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"the service did not stop within {timeout}s:\n{self.log()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
