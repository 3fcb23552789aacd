"""Reliability (issue 5, item 12): no secret value ever reaches a log, an error, status or a record.

One pipeline carries every kind of secret flexingest knows: S3 keys and a session token,
an inline GCS service-account key, an Azure account key, SAS token and connection string,
and webhook header tokens. Every credential is wrong (moto checks signatures, Azurite
checks keys), the steps fail with the secrets in their own error messages (a python step,
a command, a webhook server that echoes the headers it refused), and every command runs at
-vv, in text and JSON logs. Then every byte the user can see — stdout, stderr, the state
file, the records written — is searched for every secret.
"""

from __future__ import annotations

import http.server
import json
import secrets as random_secrets
import sqlite3
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from conftest import Result, run_flexingest
from servers import AZURITE_ACCOUNT, Server, free_port

# ----------------------------------------------------------------------------- the secrets

S3_SECRET = "s3-SECRET-" + random_secrets.token_hex(12)
S3_SESSION_TOKEN = "s3-SESSION-TOKEN-" + random_secrets.token_hex(12)
S3_UNKNOWN_KEY_ID = "AKIAUNKNOWN" + random_secrets.token_hex(5).upper()
AZ_WRONG_KEY = "QVpLRVktV1JPTkct" + random_secrets.token_hex(16) + "=="
AZ_SAS_SIG = "SASSIG" + random_secrets.token_hex(12)
AZ_SAS = f"?sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2031-01-01T00:00:00Z&sig={AZ_SAS_SIG}"
AZ_CONN_KEY = "Q09OTktFWS1XUk9ORy0" + random_secrets.token_hex(16) + "=="
GCS_KEY_BODY = "MIIEvFAKEPRIVATEKEY" + random_secrets.token_hex(48)
GCS_KEY_ID = random_secrets.token_hex(20)
GCS_SERVICE_ACCOUNT = json.dumps({
    "type": "service_account", "project_id": "flexingest-test", "private_key_id": GCS_KEY_ID,
    "private_key": f"-----BEGIN PRIVATE KEY-----\n{GCS_KEY_BODY}\n-----END PRIVATE KEY-----\n",
    "client_email": "reader@flexingest-test.iam.gserviceaccount.com", "client_id": "1234567890",
    "token_uri": f"http://127.0.0.1:{free_port()}/token"})
HOOK_TOKEN = "hook-TOKEN-" + random_secrets.token_hex(12)
HOOK_API_KEY = "hook-APIKEY-" + random_secrets.token_hex(12)

ENV = {"S3_SECRET": S3_SECRET, "S3_SESSION_TOKEN": S3_SESSION_TOKEN, "AZ_WRONG_KEY": AZ_WRONG_KEY,
       "AZ_SAS": AZ_SAS, "HOOK_TOKEN": HOOK_TOKEN, "HOOK_API_KEY": HOOK_API_KEY}


def every_secret(moto_key_id: str, azure_connection_string: str) -> dict[str, str]:
    """Each secret value as the pipeline gives it (and the SAS signature, the part that grants access)."""
    return {
        "s3 access key id (moto's real one)": moto_key_id, "s3 unknown access key id": S3_UNKNOWN_KEY_ID,
        "s3 secret": S3_SECRET, "s3 session token": S3_SESSION_TOKEN,
        "azure account key": AZ_WRONG_KEY, "azure sas token": AZ_SAS, "azure sas signature": AZ_SAS_SIG,
        "azure connection string": azure_connection_string, "azure connection string's key": AZ_CONN_KEY,
        "gcs service account json": GCS_SERVICE_ACCOUNT, "webhook token": HOOK_TOKEN, "webhook api key": HOOK_API_KEY,
    }


#: The secrets inside an inline service-account key, which are secrets on their own.
GCS_KEY_PARTS = {"gcs private key": GCS_KEY_BODY, "gcs private key id": GCS_KEY_ID}


# ----------------------------------------------------------------------------- servers


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Refuses every POST with 401, echoing the request's headers (as debug endpoints do)."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = ("refused; you sent: " + "; ".join(f"{k}={v}" for k, v in self.headers.items())).encode()
        self.send_response(401)
        self.send_header("WWW-Authenticate", f"Bearer error=invalid_token, token={self.headers.get('Authorization')}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


# ----------------------------------------------------------------------------- the pipeline


LEAKY_STEP = """\
import os


def check(record):
    if record["key"] == "a.txt":
        leaked = {name: os.environ[name] for name in sorted(os.environ) if name.startswith(("S3_", "AZ_", "HOOK_"))}
        raise RuntimeError(f"cannot reach the API with {leaked!r} and {os.environ['GCS_KEY']!r}")
    return record
"""

LEAKY_COMMAND = ("import os, sys; sys.stderr.write('auth failed for ' + os.environ['HOOK_TOKEN'] + ' '"
                 " + os.environ['S3_SECRET'] + '\\n'); sys.exit(3)")


def secret_pipeline(tmp_path: Path, moto: Server, moto_key_id: str, azure: Server, gcs_url: str,
                    hook_url: str) -> tuple[Path, str]:
    files = tmp_path / "files"
    files.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (files / name).write_text(f"the contents of {name}")
    module = f"leaky_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(LEAKY_STEP)
    blob = f"{azure.url}/{AZURITE_ACCOUNT}"
    connection_string = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZ_CONN_KEY};"
                         f"BlobEndpoint={blob};")

    def s3(name: str, key_id: str) -> dict[str, Any]:
        return {"name": name, "type": "s3", "config": {
            "bucket": "guarded", "endpoint_url": moto.url, "region": "us-east-1", "aws_access_key_id": key_id,
            "aws_secret_access_key": "${S3_SECRET}", "aws_session_token": "${S3_SESSION_TOKEN}", "timeout": "10s"}}

    def azure_connector(name: str, **config: Any) -> dict[str, Any]:
        return {"name": name, "type": "azure_blob", "config": {"container": "missing-or-guarded", **config}}

    connectors = [
        s3("s3-wrong-secret", moto_key_id),
        s3("s3-unknown-key", S3_UNKNOWN_KEY_ID),
        {"name": "gcs-service-account", "type": "gcs", "config": {
            "bucket": "guarded", "endpoint_url": gcs_url, "project": "flexingest-test",
            "service_account_json": GCS_SERVICE_ACCOUNT, "timeout": "10s"}},
        azure_connector("azure-key", account_name=AZURITE_ACCOUNT, account_key="${AZ_WRONG_KEY}", account_url=blob),
        azure_connector("azure-sas", account_name=AZURITE_ACCOUNT, sas_token="${AZ_SAS}", account_url=blob),
        azure_connector("azure-connection-string", connection_string=connection_string),
        {"name": "files", "type": "local", "config": {"path": str(files)}},
    ]
    headers = {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Api-Key": "${HOOK_API_KEY}"}
    syncs = [{"name": c["name"], "connector": c["name"]} for c in connectors[:-1]] + [
        {"name": "leaky-python", "connector": "files", "steps": [
            {"python": {"callable": f"{module}:check"}}, {"write_jsonl": {"path": "out/records.jsonl"}}]},
        {"name": "leaky-command", "connector": "files", "include": ["b.txt"], "steps": [
            {"command": {"argv": [sys.executable, "-c", LEAKY_COMMAND], "timeout": "30s"}}]},
        {"name": "echoing-webhook", "connector": "files", "include": ["c.txt"], "steps": [
            {"extract_text": {}}, {"webhook": {"url": f"{hook_url}/hook", "headers": headers, "max_retries": 0}}]},
        {"name": "good-records", "connector": "files", "steps": [
            {"extract_text": {}}, {"write_jsonl": {"path": "out/good.jsonl"}}, {"write_json": {"url": "out/json"}}]},
    ]
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "connectors": connectors, "steps": ["extract_text"],
                                    "syncs": syncs}, sort_keys=False))
    return path, connection_string


@dataclass
class Scenario:
    folder: Path
    results: dict[str, Result]
    seen: dict[str, str]  # where -> what the user can see there
    state_bytes: bytes
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def scenario(moto_with_auth: tuple[Server, str, str], azure_server: Server, gcs_server: Server, echo_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The pipeline, run through every command at -vv, text and JSON logs."""
    moto, moto_key_id, _ = moto_with_auth
    folder = tmp_path_factory.mktemp("secrets")
    path, connection_string = secret_pipeline(folder, moto, moto_key_id, azure_server, gcs_server.url, echo_server)
    env = {**ENV, "GCS_KEY": GCS_KEY_BODY}
    commands: dict[str, list[Any]] = {
        "test": ["test", path, "-vv"],
        "run": ["run", path, "--once", "-vv"],
        "status": ["status", path, "-vv"],
        "status --json": ["status", path, "--json", "-vv"],
        "process": ["process", path, "--connector", "files", "a.txt", "b.txt", "c.txt", "--sync", "leaky-python",
                    "-vv"],
        "process json logs": ["process", path, "--connector", "files", "c.txt", "--sync", "echoing-webhook", "-vv",
                              "--log-format", "json"],
        "retry": ["retry", path, "-vv"],
        "run json logs": ["run", path, "--once", "-vv", "--log-format", "json"],
        "status json logs": ["status", path, "--json", "-vv", "--log-format", "json"],
    }
    results = {name: run_flexingest(*args, env=env, timeout=180) for name, args in commands.items()}
    seen = {f"{name}: stdout and stderr": r.stdout + "\n" + r.stderr for name, r in results.items()}
    db = sqlite3.connect(folder / ".flexingest" / "secrets.db")
    try:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            seen[f"state table {table}"] = "\n".join(repr(tuple(r)) for r in db.execute(f"SELECT * FROM {table}"))
    finally:
        db.close()
    for file in folder.rglob("*"):
        if file.is_file() and file.suffix != ".py" and file.name != path.name:
            seen[f"file {file.relative_to(folder)}"] = file.read_bytes().decode("utf-8", "replace")
    state_bytes = b"".join(f.read_bytes() for f in (folder / ".flexingest").iterdir() if f.is_file())
    return Scenario(folder, results, seen, state_bytes, every_secret(moto_key_id, connection_string))


def test_the_failures_were_really_reported(scenario: Scenario) -> None:
    """The paths that could leak were taken: wrong credentials, failing steps, debug logs."""
    r = scenario.results
    assert r["test"].code == 1
    by_name = {t["connector"]: t for t in map(json.loads, r["test"].stdout.splitlines())}
    assert set(by_name) == {"s3-wrong-secret", "s3-unknown-key", "gcs-service-account", "azure-key", "azure-sas",
                            "azure-connection-string", "files"}
    assert [n for n, t in by_name.items() if t["success"]] == ["files"]
    for name in ("s3-unknown-key", "azure-key", "azure-sas", "azure-connection-string"):
        assert "access denied" in by_name[name]["message"], (name, by_name[name])
    run = r["run"]
    assert run.code == 1
    assert "DEBUG" in run.stderr, "debug logging was on"
    for expected in ("a.txt failed: ", "raised RuntimeError: cannot reach the API with", "auth failed for",
                     "c.txt failed: webhook", "answered 401", "refused; you sent:", "**********",
                     "s3-wrong-secret: listed 0", "azure-sas: listed 0"):
        assert expected in run.stderr, f"{expected!r} not in:\n{run.stderr[-4000:]}"
    assert '"level": "debug"' in r["run json logs"].stderr
    assert r["retry"].code == 0 and "object(s) will be processed again" in r["retry"].stderr
    status = json.loads(r["status --json"].stdout)["syncs"]
    assert status["leaky-python"]["failed"] == 1 and status["echoing-webhook"]["failed"] == 1
    assert status["good-records"]["done"] == 3
    assert {"file out/good.jsonl", "file out/records.jsonl"} <= set(scenario.seen)


@pytest.mark.parametrize("connector, why", [
    ("s3-wrong-secret", "access denied"),  # a right key id, a wrong secret and a session token
    ("s3-unknown-key", "access denied"),
    ("gcs-service-account", "service_account_json"),  # a key that cannot be read: say which setting is wrong
    ("azure-key", "access denied"), ("azure-sas", "access denied"), ("azure-connection-string", "access denied"),
])
def test_failing_credentials_say_why(scenario: Scenario, connector: str, why: str) -> None:
    """`flexingest test` says why a connector failed (spec: bucket not found, access denied, unreachable)."""
    by_name = {t["connector"]: t for t in map(json.loads, scenario.results["test"].stdout.splitlines())}
    assert by_name[connector]["success"] is False
    assert why in by_name[connector]["message"], by_name[connector]["message"]


def test_no_secret_is_ever_shown_logged_or_recorded(scenario: Scenario) -> None:
    leaks = [(what, where) for where, text in scenario.seen.items()
             for what, value in scenario.secrets.items() if value in text]
    assert not leaks, f"secrets seen: {leaks}"


def test_the_state_file_bytes_hold_no_secret(scenario: Scenario) -> None:
    """Not even in free pages or the WAL: errors are masked before they are written."""
    leaks = [what for what, value in scenario.secrets.items() if value.encode() in scenario.state_bytes]
    assert not leaks, f"secrets in the state file's bytes: {leaks}"


def test_the_private_key_of_an_inline_service_account_is_masked_on_its_own(scenario: Scenario) -> None:
    """The key quoted alone (by a step here; a library could too) is as secret as the whole JSON."""
    leaks = [(what, where) for where, text in scenario.seen.items()
             for what, value in GCS_KEY_PARTS.items() if value in text]
    leaks += [(what, "state file bytes") for what, value in GCS_KEY_PARTS.items()
              if value.encode() in scenario.state_bytes]
    assert not leaks, f"secrets seen: {leaks}"


# ----------------------------------------------------------------------------- validate

BAD_SECRET = "VALIDATE-SECRET-" + random_secrets.token_hex(10)


@pytest.mark.parametrize("connector", [
    {"type": "s3", "config": {"bucket": "b", "aws_access_key_id": "AKIA1", "aws_secret_access_key": [BAD_SECRET]}},
    {"type": "s3", "config": {"bucket": "b", "aws_access_key_id": {"id": BAD_SECRET}, "aws_secret_access_key": "x"}},
    {"type": "s3", "config": {"bucket": "b", "aws_session_token": BAD_SECRET}},
    {"type": "s3", "config": {"bucket": "b", "aws_secret_acess_key": BAD_SECRET}},
    {"type": "s3", "config": {"bucket": "b", "profile": "p", "aws_access_key_id": BAD_SECRET,
                              "aws_secret_access_key": BAD_SECRET}},
    {"type": "gcs", "config": {"bucket": "b", "service_account_json": {"private_key": BAD_SECRET}}},
    {"type": "gcs", "config": {"bucket": "b", "anonymous": True, "service_account_json": BAD_SECRET}},
    {"type": "azure_blob", "config": {"container": "c", "account_key": BAD_SECRET}},
    {"type": "azure_blob", "config": {"container": "c", "account_name": "a", "account_key": BAD_SECRET,
                                      "sas_token": BAD_SECRET}},
    {"type": "azure_blob", "config": {"container": "c", "connection_string": [BAD_SECRET, 1]}},
    {"type": "azure_blob", "config": {"container": "c", "account_name": "a", "sas_token": 12345678901234567890}},
    {"type": "local", "config": {"path": "x", "account_key": BAD_SECRET}},
    {"type": "nosuchtype", "config": {"account_key": BAD_SECRET}},
], ids=["s3-secret-as-list", "s3-key-id-as-mapping", "s3-token-without-keys", "s3-misspelt-secret",
        "s3-profile-and-keys", "gcs-json-as-mapping", "gcs-anonymous-and-key", "azure-key-without-account",
        "azure-key-and-sas", "azure-connection-string-as-list", "azure-sas-as-number", "local-with-a-key",
        "unknown-type"])
def test_validate_never_echoes_a_secret(connector: dict[str, Any], write_pipeline: Callable[..., Path],
                                        cli: Callable[..., Result]) -> None:
    path = write_pipeline({"name": "c", **connector}, steps=[{"webhook": {
        "url": "http://h/x", "headers": {"Authorization": ["Bearer", BAD_SECRET]}}}])
    result = cli("validate", path, "-vv")
    assert result.code == 2
    assert f"{path}:" in result.stderr
    assert BAD_SECRET not in result.stdout + result.stderr, result.stderr
    assert "12345678901234567890" not in result.stderr
    assert "steps[0].webhook.headers.Authorization: input should be a valid string" in result.stderr
