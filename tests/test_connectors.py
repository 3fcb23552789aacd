"""`flexingest test`: one bounded request per connector, against real protocol servers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import Result, connector_for, run_flexingest
from servers import free_port
from stores import Store

OK = "Connection established successfully."


def results(out: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_test_succeeds_on_every_backend(store: Store, write_pipeline: Callable[..., Path],
                                        cli: Callable[..., Result]) -> None:
    store.put("a.txt", b"hello")
    path = write_pipeline(connector_for(store), steps=["extract_text"])
    out = cli("test", path)
    assert out.code == 0, out.stderr
    assert results(out) == [{"connector": "docs", "success": True, "message": OK}]


def test_missing_bucket(store: Store, write_pipeline: Callable[..., Path], cli: Callable[..., Result]) -> None:
    key = "path" if store.kind == "local" else "container" if store.kind == "azure_blob" else "bucket"
    missing = store.connector_config()[key] + ("/nope" if store.kind == "local" else "-missing")
    path = write_pipeline(connector_for(store, **{key: missing}), steps=["extract_text"])
    out = cli("test", path)
    assert out.code == 1
    [r] = results(out)
    assert r["success"] is False
    assert "not found" in r["message"]
    assert missing.rsplit("/", 1)[-1] in r["message"]



@pytest.mark.parametrize("kind", ["s3", "gcs", "azure_blob"])
def test_unreachable_endpoint_answers_within_15_seconds(kind: str, new_store: Callable[[str], Store],
                                                        write_pipeline: Callable[..., Path]) -> None:
    store = new_store(kind)
    closed = f"http://127.0.0.1:{free_port()}"
    key = "account_url" if kind == "azure_blob" else "endpoint_url"
    value = f"{closed}/devstoreaccount1" if kind == "azure_blob" else closed
    path = write_pipeline(connector_for(store, **{key: value}), steps=["extract_text"])
    started = time.monotonic()
    out = run_flexingest("test", path, timeout=60)
    elapsed = time.monotonic() - started
    assert out.code == 1, out.stderr
    [r] = results(out)
    assert r["success"] is False
    assert "unreachable" in r["message"], r["message"]
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_wrong_azure_key_is_access_denied_and_not_printed(new_store: Callable[[str], Store],
                                                          write_pipeline: Callable[..., Path],
                                                          cli: Callable[..., Result]) -> None:
    store = new_store("azure_blob")
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleQ=="
    path = write_pipeline(connector_for(store, account_key=wrong), steps=["extract_text"])
    out = cli("test", path, "-v")
    assert out.code == 1
    [r] = results(out)
    assert r["success"] is False
    assert "access denied" in r["message"]
    assert wrong not in out.stdout + out.stderr


def test_s3_credentials_checked_by_the_server(moto_with_auth: Any, write_pipeline: Callable[..., Path],
                                              cli: Callable[..., Result]) -> None:
    server, key_id, secret = moto_with_auth
    wrong_secret = "not-the-secret-value-0123456789"

    def connector(name: str, key: str, sec: str) -> dict[str, Any]:
        return {"name": name, "type": "s3", "config": {
            "bucket": "guarded", "endpoint_url": server.url, "region": "us-east-1",
            "aws_access_key_id": key, "aws_secret_access_key": sec}}

    path = write_pipeline([connector("good", key_id, secret), connector("bad-secret", key_id, wrong_secret),
                           connector("unknown-key", "AKIAUNKNOWNKEY000000", wrong_secret)],
                          steps=["extract_text"])
    out = cli("test", path, "-v")
    assert out.code == 1
    by_name = {r["connector"]: r for r in results(out)}
    assert by_name["good"] == {"connector": "good", "success": True, "message": OK}
    for name in ("bad-secret", "unknown-key"):
        assert by_name[name]["success"] is False
        assert "access denied" in by_name[name]["message"]
    everything = out.stdout + out.stderr
    assert secret not in everything and wrong_secret not in everything

    only = cli("test", path, "good")
    assert only.code == 0
    assert [r["connector"] for r in results(only)] == ["good"]


def test_test_exits_2_on_an_invalid_file(write_pipeline: Callable[..., Path], cli: Callable[..., Result]) -> None:
    path = write_pipeline({"name": "x", "type": "local", "config": {"path": "."}}, steps=["nope"])
    out = cli("test", path)
    assert out.code == 2
    assert "unknown step 'nope'" in out.stderr
    assert out.stdout == ""


def test_test_unknown_connector_name(write_pipeline: Callable[..., Path], cli: Callable[..., Result],
                                     tmp_path: Path) -> None:
    path = write_pipeline({"name": "x", "type": "local", "config": {"path": str(tmp_path)}}, steps=["extract_text"])
    out = cli("test", path, "y")
    assert out.code == 2
    assert "unknown connector 'y' (known: x)" in out.stderr


def test_s3_role_arn_is_assumed_through_sts(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                            cli: Callable[..., Result]) -> None:
    from fsspec.asyn import sync

    from flexingest.connectors import open_connector
    from flexingest.loader import load_pipeline

    store = new_store("s3")
    store.put("a.txt", b"x")
    path = write_pipeline(connector_for(store, role_arn="arn:aws:iam::123456789012:role/reader"),
                          steps=["extract_text"])
    assert cli("test", path).code == 0
    storage = open_connector(load_pipeline(path).connectors[0], path.parent)
    assert [o.key for page in storage.iter_pages() for o in page] == ["a.txt"]
    credentials = sync(storage.fs.loop, storage.fs.session.get_credentials)
    frozen = sync(storage.fs.loop, credentials.get_frozen_credentials)
    assert frozen.access_key.startswith("ASIA"), "temporary credentials from AssumeRole, not the static key"
    assert frozen.access_key != "testing" and frozen.token
