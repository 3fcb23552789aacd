from __future__ import annotations

import os
import pathlib  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
from servers import (  # noqa: E402
    PUBSUB_PROJECT,
    Server,
    pubsub_request,
    start_azurite,
    start_azurite_queue,
    start_fake_gcs,
    start_moto,
    start_pubsub_emulator,
)
from stores import KINDS, Store, make_store  # noqa: E402

# ============================================================================================
# Emulators and stores (tests/servers.py, tests/stores.py)
#
# One server per backend per pytest process (each xdist worker starts its own, on free
# ports), started only when a test asks for it. `store` gives every test a fresh bucket on
# every backend; `new_store(kind)` makes more when a test needs several.
# ============================================================================================

_SERVER_FIXTURES = {"s3": "s3_server", "gcs": "gcs_server", "azure_blob": "azure_server"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Server]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_with_auth() -> Iterator[tuple[Server, str, str]]:
    """moto checking signatures, with a bucket "guarded" and one IAM user's (key id, secret)."""
    import json

    import botocore.session

    server = start_moto(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    session = botocore.session.get_session()
    kw = {"endpoint_url": server.url, "region_name": "us-east-1",
          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    session.create_client("s3", **kw).create_bucket(Bucket="guarded")
    iam = session.create_client("iam", **kw)
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    yield server, key["AccessKeyId"], key["SecretAccessKey"]
    server.stop()


def slow_hook(folder: pathlib.Path, seconds: float) -> str:
    """A ``python`` step (``module:function``, written into ``folder``) that sleeps, then passes the record on."""
    module = f"slow_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        f"import time\ndef wait(record):\n    time.sleep({seconds})\n    return record\n")
    return f"{module}:wait"


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Server]:
    server = start_fake_gcs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_server() -> Iterator[Server]:
    server = start_azurite()
    yield server
    server.stop()


# Servers for bucket events (tests/test_events.py): moto's s3_server also serves SQS, SNS and
# EventBridge; Pub/Sub is the Google Cloud CLI's emulator, fed by a fake-gcs-server of its own
# (its notifications are global to the server, so it holds only the event tests' buckets).
GCS_EVENTS_TOPIC = "gcs-events"


@pytest.fixture(scope="session")
def pubsub_server() -> Iterator[Server]:
    server = start_pubsub_emulator()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_events_server(pubsub_server: Server) -> Iterator[Server]:
    """fake-gcs-server publishing every finalize and delete to GCS_EVENTS_TOPIC on pubsub_server."""
    pubsub_request(pubsub_server, "PUT", f"/v1/projects/{PUBSUB_PROJECT}/topics/{GCS_EVENTS_TOPIC}")
    server = start_fake_gcs(pubsub=pubsub_server, topic=GCS_EVENTS_TOPIC)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_queue_server() -> Iterator[Server]:
    server = start_azurite_queue()
    yield server
    server.stop()


def _server_for(request: pytest.FixtureRequest, kind: str) -> Server | None:
    fixture = _SERVER_FIXTURES.get(kind)
    return None if fixture is None else request.getfixturevalue(fixture)


@pytest.fixture(params=KINDS, ids=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Store:
    """A fresh, empty bucket / container / folder on the parametrized backend."""
    kind: str = request.param
    return make_store(kind, _server_for(request, kind), tmp_path)


@pytest.fixture
def new_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Callable[[str], Store]:
    """Factory: ``new_store(kind)`` returns another fresh store of that kind on each call."""

    def factory(kind: str) -> Store:
        return make_store(kind, _server_for(request, kind), tmp_path)

    return factory


# ============================================================================================
# Pipelines and the command line
#
# `write_pipeline(...)` writes a pipeline file from Python data; `cli(...)` runs a command
# in-process (fast); `flexingest(...)` runs it as a subprocess (signals, kill -9, locks).
# ============================================================================================

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

FLEXINGEST = str(pathlib.Path(sys.executable).parent / "flexingest")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def connector_for(store: Store, name: str = "docs", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": store.kind, "config": {**store.connector_config(), **extra}}


@pytest.fixture
def write_pipeline(tmp_path: pathlib.Path) -> Callable[..., pathlib.Path]:
    """``write_pipeline(connectors, steps=..., syncs=..., name=...)`` -> the file's path."""

    def write(connectors: list[dict[str, Any]] | dict[str, Any], *, steps: list[Any] | None = None,
              syncs: list[dict[str, Any]] | None = None, name: str = "pipeline.yaml",
              **top: Any) -> pathlib.Path:
        data: dict[str, Any] = {"version": 1, **top,
                                "connectors": connectors if isinstance(connectors, list) else [connectors]}
        if steps is not None:
            data["steps"] = steps
        if syncs is not None:
            data["syncs"] = syncs
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return path

    return write


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run a flexingest command in this process: ``cli("run", path, "--once")``."""
    from flexingest.cli import cli as command

    def invoke(*args: Any, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        out = CliRunner().invoke(command, [str(a) for a in args], input=input, env=env, catch_exceptions=False)
        return Result(out.exit_code, out.stdout, out.stderr)

    return invoke


def run_flexingest(*args: Any, timeout: float = 120, env: dict[str, str] | None = None,
                   cwd: pathlib.Path | None = None) -> Result:
    """Run flexingest as a subprocess, the way cron or systemd would."""
    proc = subprocess.run([FLEXINGEST, *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def peak_rss_mb_of(argv: list[str]) -> tuple[float, Result]:
    """Run a command and return the peak resident memory of it (its own, in MB)."""
    code = ("import resource, subprocess, sys, json\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
            "print(json.dumps({'peak': peak, 'code': p.returncode, 'out': p.stdout, 'err': p.stderr}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600)
    data = json.loads(proc.stdout)
    return data["peak"], Result(data["code"], data["out"], data["err"])


def children_of(pid: int) -> list[tuple[int, str]]:
    """The live processes whose parent is ``pid``: (pid, command name)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1: stat.rindex(")")]
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append((int(entry), comm))
    return found
