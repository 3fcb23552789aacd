"""S3 and Azure sources read through obstore (flexingest/connectors/objectstore.py), against the real
emulators: credentials (profiles, assumed roles, connection strings, SAS), version tokens that
match what the fsspec storages recorded before, errors mapped by type, secrets kept out of
messages, and a pass that never imports s3fs, adlfs or aiohttp.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import Result, connector_for, run_flexingest
from faultproxy import HANG, RESET, RST, TRUNCATE, Fault, FaultProxy, error
from servers import AZURITE_ACCOUNT, AZURITE_KEY, Server, free_port
from stores import Store

from flexingest import connectors
from flexingest.connectors import Storage, open_connector
from flexingest.exceptions import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    FlexingestError,
    ObjectGone,
    TransientStorageError,
)
from flexingest.loader import load_pipeline
from flexingest.objects import ObjectInfo

OK = "Connection established successfully."


def opened(write_pipeline: Callable[..., Path], connector: dict[str, Any], name: str = "p.yaml") -> Storage:
    path = write_pipeline(connector, steps=[], name=name)
    return open_connector(load_pipeline(path).connectors[0], path.parent)


def listed(storage: Storage, prefix: str = "") -> list[ObjectInfo]:
    return [o for page in storage.iter_pages(prefix) for o in page]


def fsspec_storage(storage: Storage) -> Storage:
    """The same connector through the fsspec storage that flexingest used before obstore."""
    from flexingest.connectors.azure_blob import AzureBlobStorage
    from flexingest.connectors.s3 import S3Storage

    base = {"s3": S3Storage, "azure_blob": AzureBlobStorage}[storage.connector.type]
    return base(storage.connector, storage.base_dir)


# --------------------------------------------------------------------------- version tokens


@pytest.mark.parametrize("kind", ["s3", "azure_blob"])
def test_versions_are_those_the_fsspec_storage_recorded(kind: str, new_store: Callable[[str], Store],
                                                        write_pipeline: Callable[..., Path], cli: Callable[..., Result],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A state written by the fsspec storages is read by obstore's without reprocessing anything."""
    store = new_store(kind)
    store.put_many({f"docs/{i:02d}.txt": f"doc {i}".encode() for i in range(12)} | {"docs/empty.txt": b"",
                                                                                   "docs/br[1] #~%.txt": b"odd"})
    storage = opened(write_pipeline, connector_for(store), name="probe.yaml")
    assert type(storage).__name__.startswith("Obstore"), type(storage)
    before = fsspec_storage(storage)
    assert sorted(listed(storage)) == sorted(listed(before))
    for info in listed(before):
        assert storage.read_versioned(info.key) == before.read_versioned(info.key) == (
            store.read(info.key), info.version)
        assert storage.info(info.key).version == info.version
        assert '"' not in info.version

    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(tmp_path / "out")}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    with monkeypatch.context() as patch:  # the first pass as flexingest did it before obstore
        patch.setattr(importlib.import_module(connectors.CONNECTORS[kind]), "STORAGE", type(before))
        first = cli("run", path, "--once")
    assert first.code == 0 and "new 14" in first.stderr, first.stderr
    again = cli("run", path, "--once")
    assert again.code == 0, again.stderr
    assert "listed 14, new 0, changed 0, retried 0, done 0" in again.stderr


def test_a_pass_over_s3_and_azure_imports_no_fsspec_backend(new_store: Callable[[str], Store],
                                                             write_pipeline: Callable[..., Path],
                                                             tmp_path: Path) -> None:
    s3, azure = new_store("s3"), new_store("azure_blob")
    s3.put("a.txt", b"s3 object")
    azure.put("b.txt", b"azure object")
    (tmp_path / "modules.py").write_text(
        "import sys\n"
        "def seen(record):\n"
        "    record['metadata']['loaded'] = sorted(m for m in ('s3fs', 'aiohttp', 'aiobotocore', 'adlfs',\n"
        "        'azure.storage.blob', 'botocore') if m in sys.modules)\n"
        "    return record\n")
    out = tmp_path / "out.jsonl"
    copies = tmp_path / "copies"
    path = write_pipeline([connector_for(s3, name="s3"), connector_for(azure, name="az")],
                          steps=[{"copy": {"url": str(copies)}}, {"python": {"callable": "modules:seen"}},
                                 {"write_jsonl": {"path": str(out)}}],
                          syncs=[{"name": "s3", "connector": "s3"}, {"name": "az", "connector": "az"}])
    result = run_flexingest("run", path, "--once")
    assert result.code == 0, result.stderr
    assert (copies / "a.txt").read_bytes() == b"s3 object" and (copies / "b.txt").read_bytes() == b"azure object"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in records) == ["a.txt", "b.txt"]
    for r in records:
        assert r["metadata"]["loaded"] == [], f"{r['connector']}: imported {r['metadata']['loaded']}"


# --------------------------------------------------------------------------- AWS credentials


def aws_env(tmp_path: Path, config: str) -> dict[str, str]:
    """A HOME of its own with a shared config file, and no AWS variables from this machine."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True, exist_ok=True)
    (home / ".aws" / "config").write_text(config)
    return {"HOME": str(home), "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def test_s3_profile_from_the_shared_config_file_checked_by_the_server(
        moto_with_auth: tuple[Server, str, str], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    server, key_id, secret = moto_with_auth
    env = aws_env(tmp_path, f"[profile reader]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
                            "region = us-east-1\n"
                            f"[profile wrong]\naws_access_key_id = {key_id}\naws_secret_access_key = not-{secret}\n")

    def connector(name: str, profile: str) -> dict[str, Any]:
        return {"name": name, "type": "s3", "config": {"bucket": "guarded", "endpoint_url": server.url,
                                                       "profile": profile}}

    path = write_pipeline([connector("good", "reader"), connector("bad", "wrong")], steps=[])
    out = run_flexingest("test", path, "-vv", env=env)
    assert out.code == 1, out.stderr
    answers = {a["connector"]: a for a in map(json.loads, out.stdout.splitlines())}
    assert answers["good"] == {"connector": "good", "success": True, "message": OK}
    assert answers["bad"]["success"] is False and "access denied" in answers["bad"]["message"]
    assert secret not in out.stdout + out.stderr


def test_s3_role_from_a_profile_and_role_arn_are_assumed_through_sts(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store("s3")
    store.put("a.txt", b"through a role")
    assert store.server is not None
    env = aws_env(tmp_path, "[profile base]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
                            "[profile reader]\nrole_arn = arn:aws:iam::123456789012:role/reader\n"
                            "source_profile = base\nregion = us-east-1\n")
    env["AWS_ENDPOINT_URL_STS"] = store.server.url  # the role is assumed through moto's STS
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    for extra in ({"profile": "reader"}, {"role_arn": "arn:aws:iam::123456789012:role/reader"}):
        config = {k: v for k, v in connector_for(store)["config"].items() if not k.startswith("aws_")} | extra
        if "role_arn" in extra:
            config |= {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        storage = opened(write_pipeline, {"name": "docs", "type": "s3", "config": config})
        assert [o.key for o in listed(storage)] == ["a.txt"]
        assert storage.read_versioned("a.txt")[0] == b"through a role"
        credentials = storage.store.credential_provider()  # type: ignore[attr-defined]
        assert credentials["access_key_id"].startswith("ASIA"), f"{extra}: temporary credentials of the role"
        assert credentials["token"] and credentials["expires_at"] is not None
        path = write_pipeline({"name": "docs", "type": "s3", "config": config}, steps=[{"copy": {"url": str(out)}}],
                              syncs=[{"name": "docs", "connector": "docs"}], name="run.yaml")
        result = run_flexingest("run", path, "--once", env=env)
        assert result.code == 0, result.stderr
        assert (out / "a.txt").read_bytes() == b"through a role"
        (path.parent / ".flexingest" / "run.db").unlink()


# --------------------------------------------------------------------------- Azure credentials


def sas_for(store: Store, **permissions: bool) -> str:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(AZURITE_ACCOUNT, store.bucket, account_key=AZURITE_KEY,
                                  permission=ContainerSasPermissions(**permissions),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))


def test_azure_connection_strings_with_a_key_and_with_a_sas(new_store: Callable[[str], Store],
                                                            write_pipeline: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    store = new_store("azure_blob")
    assert store.server is not None
    store.put_many({"docs/a.txt": b"alpha", "docs/b.txt": b"beta"})
    endpoint = f"{store.server.url}/{AZURITE_ACCOUNT}"
    sas = sas_for(store, read=True, list=True)
    strings = {
        "key": f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
               f"BlobEndpoint={endpoint};",
        "sas": f"BlobEndpoint={endpoint};SharedAccessSignature={sas}",
    }
    expected = {o.key: o.version for o in listed(fsspec_storage(opened(write_pipeline, connector_for(store))))}
    for label, text in strings.items():
        connector = {"name": "docs", "type": "azure_blob", "config": {"container": store.bucket,
                                                                       "connection_string": text}}
        storage = opened(write_pipeline, connector, name=f"{label}.yaml")
        assert {o.key: o.version for o in listed(storage)} == expected, label
        out = tmp_path / f"out-{label}"
        path = write_pipeline(connector, steps=[{"copy": {"url": str(out)}}],
                              syncs=[{"name": "docs", "connector": "docs"}], name=f"run-{label}.yaml")
        result = run_flexingest("run", path, "--once", "-vv")
        assert result.code == 0, result.stderr
        assert (out / "docs" / "a.txt").read_bytes() == b"alpha" and (out / "docs" / "b.txt").read_bytes() == b"beta"
        assert AZURITE_KEY not in result.stderr and sas.split("sig=")[1] not in result.stderr


def test_azure_sas_token_and_account_url_without_an_account_name(new_store: Callable[[str], Store],
                                                                 write_pipeline: Callable[..., Path]) -> None:
    store = new_store("azure_blob")
    assert store.server is not None
    store.put("a.txt", b"alpha")
    config = {"container": store.bucket, "account_url": f"{store.server.url}/{AZURITE_ACCOUNT}",
              "sas_token": "?" + sas_for(store, read=True, list=True)}
    storage = opened(write_pipeline, {"name": "docs", "type": "azure_blob", "config": config})
    assert [o.key for o in listed(storage)] == ["a.txt"]
    assert storage.read_versioned("a.txt")[0] == b"alpha"


def test_a_sas_that_does_not_allow_listing_is_denied_and_never_shown(new_store: Callable[[str], Store],
                                                                     write_pipeline: Callable[..., Path]) -> None:
    store = new_store("azure_blob")
    assert store.server is not None
    store.put("a.txt", b"alpha")
    sas = sas_for(store, read=True)  # no list permission
    forged = sas.replace("sig=", "sig=AAAA")
    connectors_ = [{"name": name, "type": "azure_blob", "config": {
        "container": store.bucket, "account_url": f"{store.server.url}/{AZURITE_ACCOUNT}",
        "account_name": AZURITE_ACCOUNT, "sas_token": token}} for name, token in (("no-list", sas),
                                                                                ("forged", forged))]
    path = write_pipeline(connectors_, steps=[])
    out = run_flexingest("test", path, "-vv")
    assert out.code == 1
    for answer in map(json.loads, out.stdout.splitlines()):
        assert answer["success"] is False and "access denied" in answer["message"], answer
    everything = out.stdout + out.stderr
    for token in (sas, forged):
        assert token.split("sig=")[1].split("&")[0] not in everything
    storage = opened(write_pipeline, connectors_[1], name="forged.yaml")
    with pytest.raises(AccessDenied) as denied:
        storage.read_versioned("a.txt")
    assert forged.split("sig=")[1].split("&")[0] not in str(denied.value)


# --------------------------------------------------------------------------- errors, by type


@pytest.mark.parametrize("kind", ["s3", "azure_blob"])
def test_missing_objects_and_buckets(kind: str, new_store: Callable[[str], Store],
                                     write_pipeline: Callable[..., Path]) -> None:
    """obstore's NotFoundError: a gone object when reading, a missing bucket when listing or
    when the service says so (NoSuchBucket, ContainerNotFound)."""
    store = new_store(kind)
    storage = opened(write_pipeline, connector_for(store))
    for read in (storage.read_versioned, storage.info, storage.stream_versioned, storage.open_versioned):
        with pytest.raises(ObjectGone):
            read("never-written.txt")
    field = "container" if kind == "azure_blob" else "bucket"
    missing = opened(write_pipeline, connector_for(store, **{field: store.bucket + "-missing"}), name="m.yaml")
    with pytest.raises(BucketNotFound):
        listed(missing)
    with pytest.raises(BucketNotFound):
        missing.read_versioned("a.txt")


def test_wrong_credentials_are_access_denied(moto_with_auth: tuple[Server, str, str],
                                             new_store: Callable[[str], Store],
                                             write_pipeline: Callable[..., Path]) -> None:
    """PermissionDeniedError and 403 answers (moto checking signatures, Azurite's wrong key)."""
    server, key_id, secret = moto_with_auth
    s3 = opened(write_pipeline, {"name": "s3", "type": "s3", "config": {
        "bucket": "guarded", "endpoint_url": server.url, "region": "us-east-1", "aws_access_key_id": key_id,
        "aws_secret_access_key": "not-" + secret}}, name="s3.yaml")
    azure = opened(write_pipeline, connector_for(new_store("azure_blob"),
                                                 account_key="V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleQ=="),
                   name="az.yaml")
    for storage in (s3, azure):
        with pytest.raises(AccessDenied) as listing:
            listed(storage)
        with pytest.raises(AccessDenied) as reading:
            storage.read_versioned("a.txt")
        for exc in (listing.value, reading.value):
            assert "not-" + secret not in str(exc) and "HTTP 403" in str(exc)


FAULTS: list[tuple[str, Fault, type[FlexingestError], bool]] = [
    ("500", error(500), TransientStorageError, False),
    ("503 SlowDown", error(503), TransientStorageError, False),
    ("429", error(429), TransientStorageError, False),
    ("401", error(401, "InvalidAccessKeyId"), AccessDenied, False),
    ("403", error(403, "AccessDenied"), AccessDenied, False),
    ("reset", RESET, TransientStorageError, False),
    ("rst", RST, TransientStorageError, False),
    ("truncated body", TRUNCATE, TransientStorageError, False),
    ("hung server", HANG, TransientStorageError, True),
]


@pytest.mark.parametrize("kind", ["s3", "azure_blob"])
def test_faults_map_to_flexingest_errors(kind: str, new_store: Callable[[str], Store],
                                         write_pipeline: Callable[..., Path]) -> None:
    """Every fault of the proxy, on a read and on a listing, after the client's own retries."""
    store = new_store(kind)
    assert store.server is not None
    store.put("a.txt", b"x" * 50_000)
    proxy = FaultProxy(store.server.url, "azure" if kind == "azure_blob" else "s3")
    try:
        field = "account_url" if kind == "azure_blob" else "endpoint_url"
        config = connector_for(store, timeout="2s")
        config["config"][field] = config["config"][field].replace(store.server.url, proxy.url)
        storage = opened(write_pipeline, config)
        for label, fault, expected, clients_retried in FAULTS:
            for what, call in (("read", lambda: storage.read_versioned("a.txt")), ("list", lambda: listed(storage))):
                if fault is TRUNCATE and what == "list":
                    continue
                proxy.rules = [lambda r, f=fault: f]
                started = time.monotonic()
                with pytest.raises(FlexingestError) as caught:
                    call()
                assert type(caught.value) is expected, f"{label} {what}: {caught.value!r}"
                assert getattr(caught.value, "clients_retried", False) is clients_retried or expected is AccessDenied
                assert time.monotonic() - started < 30, f"{label} {what} took too long"
                if fault is HANG:
                    assert "timed out" in str(caught.value), str(caught.value)
                    proxy.heal()
        proxy.heal()
        assert storage.read_versioned("a.txt")[0] == b"x" * 50_000
    finally:
        proxy.stop()


def test_an_endpoint_that_refuses_connections_is_unreachable(new_store: Callable[[str], Store],
                                                             write_pipeline: Callable[..., Path]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    s3 = opened(write_pipeline, connector_for(new_store("s3"), endpoint_url=closed, timeout="2s"), name="s3.yaml")
    azure = opened(write_pipeline, connector_for(new_store("azure_blob"), account_url=f"{closed}/{AZURITE_ACCOUNT}",
                                                 timeout="2s"), name="az.yaml")
    for storage in (s3, azure):
        for call in (listed, lambda s: s.read_versioned("a.txt")):
            with pytest.raises(EndpointUnreachable) as caught:
                call(storage)
            assert "connection refused" in str(caught.value)


def test_keys_object_store_cannot_name_are_listed_and_read(new_store: Callable[[str], Store],
                                                           write_pipeline: Callable[..., Path]) -> None:
    """object_store refuses empty, '.' and '..' segments and control characters: those keys, and
    every key after them, still come from the listing, and reads go through the fsspec storage."""
    store = new_store("s3")
    keys = {"a.txt": b"a", "double//slash.txt": b"d", "./dot.txt": b"dot", "tab\tkey.txt": b"t",
            "up/../x.txt": b"u", "z/last.txt": b"z", "/leading.txt": b"l"}
    for key, data in keys.items():
        store.fs.call_s3("put_object", Bucket=store.bucket, Key=key, Body=data)
    storage = opened(write_pipeline, connector_for(store))
    infos = listed(storage)
    assert sorted(o.key for o in infos) == sorted(keys)
    assert len(infos) == len(keys), "no key listed twice"
    for key, data in keys.items():
        assert storage.read_versioned(key)[0] == data
        with storage.stream_versioned(key)[0] as stream:
            assert stream.read() == data


def test_folder_placeholders_are_skipped_and_empty_objects_kept(new_store: Callable[[str], Store],
                                                                write_pipeline: Callable[..., Path]) -> None:
    """object_store lists "folder/" as "folder": a placeholder is told from an empty object."""
    store = new_store("s3")
    for key, data in {"folder/": b"", "folder/a.txt": b"a", "empty": b"", "both": b"", "both/": b"",
                      "lone/": b""}.items():
        store.fs.call_s3("put_object", Bucket=store.bucket, Key=key, Body=data)
    storage = opened(write_pipeline, connector_for(store))
    assert sorted(o.key for o in listed(storage)) == ["both", "empty", "folder/a.txt"]


def test_prefixes_that_end_inside_a_name(new_store: Callable[[str], Store],
                                         write_pipeline: Callable[..., Path]) -> None:
    store = new_store("azure_blob")
    store.put_many({k: b"x" for k in ("report", "report-1.txt", "reports/q1.txt", "repora.txt", "rz.txt",
                                      "a/report.txt", "a/reportage/x.txt", "a/b.txt")})
    storage = opened(write_pipeline, connector_for(store))
    assert [o.key for o in listed(storage, "report")] == ["report", "report-1.txt", "reports/q1.txt"]
    assert [o.key for o in listed(storage, "a/report")] == ["a/report.txt", "a/reportage/x.txt"]
    assert [o.key for o in listed(storage, "a/")] == ["a/b.txt", "a/report.txt", "a/reportage/x.txt"]


def test_a_missing_obstore_names_the_install(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    storage = opened(write_pipeline, connector_for(new_store("s3")))
    monkeypatch.setitem(sys.modules, "obstore", None)
    with pytest.raises(FlexingestError) as caught:
        listed(storage)
    assert str(caught.value).startswith("connector type 's3' needs the obstore package: pip install 'flexingest[s3]'")


def test_a_bucket_region_is_found_from_the_bucket(new_store: Callable[[str], Store]) -> None:
    """Without ``region`` (and no endpoint), the bucket's region comes from one HEAD request."""
    from flexingest.connectors.s3 import bucket_region

    store = new_store("s3")
    assert store.server is not None
    name = store.bucket + "-eu"
    store.fs.call_s3("create_bucket", Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert bucket_region(f"{store.server.url}/{name}") == "eu-west-1"
    assert bucket_region(f"http://127.0.0.1:{free_port()}/{name}", timeout=2) is None
