"""Bucket events through the pass, end to end: objects found in seconds while the reconciliation
listing waits hours, each processed once, deletions marked gone, messages acknowledged only after
commit, what events missed counted by the reconciliation. Real moto (S3 + SQS), fake-gcs-server
publishing to the Pub/Sub emulator, Azurite's queue; the real `flexingest` command."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import FLEXINGEST, run_flexingest
from servers import AZURITE_ACCOUNT, AZURITE_KEY, Server
from stores import Store
from test_events import (
    GCS_EVENTS_TOPIC,
    PUBSUB_PROJECT,
    aws,
    azure_connector,
    event_grid_message,
    gcs_connector,
    new_queue,
    new_subscription,
    queue_client,
)

from flexingest.state import State


def rows(path: Path) -> dict[str, dict[str, Any]]:
    state = path.parent / ".flexingest" / "pipeline.db"
    if not state.exists():
        return {}
    with State(state, create=False) as s:
        return {r["key"]: dict(r) for r in s.objects("docs")}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def done(path: Path) -> set[str]:
    return {k for k, r in rows(path).items() if r["status"] == "done" and r["gone_at"] is None}


@pytest.fixture
def s3_events(new_store: Callable[[str], Store], s3_server: Server) -> tuple[Store, str]:
    store = new_store("s3")
    url, arn = new_queue(s3_server)
    aws(s3_server, "s3").put_bucket_notification_configuration(Bucket=store.bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return store, url


def pipeline(write_pipeline: Callable[..., Path], tmp_path: Path, connector: dict[str, Any],
             events: dict[str, Any], every: str = "6h") -> Path:
    return write_pipeline(connector, steps=[{"write_json": {"url": str(tmp_path / "out")}},
                                            {"write_jsonl": {"path": str(tmp_path / "all.jsonl")}}],
                          syncs=[{"name": "docs", "connector": "docs", "schedule": {"every": every},
                                  "events": {"wait": "1s", **events}}])


def lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "all.jsonl"
    return [json.loads(line)["key"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def service() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([FLEXINGEST, "run", str(path)], stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return stderr


def test_s3_events_are_processed_in_seconds_once_each(s3_events: tuple[Store, str], s3_server: Server,
                                                      write_pipeline: Callable[..., Path], tmp_path: Path,
                                                      service: Callable[[Path], subprocess.Popen[str]]) -> None:
    store, url = s3_events
    store.put("before.txt", b"listed by the backfill")
    path = pipeline(write_pipeline, tmp_path, {"name": "docs", "type": "s3", "config": store.connector_config()},
                    {"type": "sqs", "queue_url": url})
    proc = service(path)
    wait_for(lambda: done(path) == {"before.txt"}, 30, "the backfill listing")
    s3 = aws(s3_server, "s3")
    keys = [f"burst/{i:03d} with space+plus.txt" for i in range(40)]
    started = time.monotonic()
    for key in keys:
        s3.put_object(Bucket=store.bucket, Key=key, Body=key.encode())
    wait_for(lambda: done(path) >= set(keys), 60, "the burst, through events")
    latency = time.monotonic() - started
    upload = s3.create_multipart_upload(Bucket=store.bucket, Key="multipart.bin")["UploadId"]
    part = s3.upload_part(Bucket=store.bucket, Key="multipart.bin", UploadId=upload, PartNumber=1, Body=b"m" * 100)
    s3.complete_multipart_upload(Bucket=store.bucket, Key="multipart.bin", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    s3.delete_object(Bucket=store.bucket, Key="before.txt")
    wait_for(lambda: "multipart.bin" in done(path) and rows(path)["before.txt"]["gone_at"] is not None, 30,
             "the multipart upload and the deletion")
    time.sleep(2)  # the multipart upload's second event arrives and processes nothing
    stderr = stop(proc)
    assert "docs: listed 1, new 1" in stderr, "one listing: the backfill (the reconciliation waits 6 hours)"
    assert sorted(lines(tmp_path)) == sorted(["before.txt", *keys, "multipart.bin"]), "each object once"
    assert aws(s3_server, "sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"][
        "ApproximateNumberOfMessages"] == "0", "every message was acknowledged"
    status = json.loads(run_flexingest("status", path, "--json").stdout)["syncs"]["docs"]
    assert status["events"]["queue"] == "sqs" and status["events"]["objects"] >= 42
    print(f"\n40 objects uploaded at once: all done {latency:.1f}s after the first upload")


def test_a_message_that_is_not_a_notification_is_left_to_the_queue(s3_events: tuple[Store, str], s3_server: Server,
                                                                   write_pipeline: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    store, url = s3_events
    sqs = aws(s3_server, "sqs")
    sqs.send_message(QueueUrl=url, MessageBody="this is not JSON")
    path = pipeline(write_pipeline, tmp_path, {"name": "docs", "type": "s3", "config": store.connector_config()},
                    {"type": "sqs", "queue_url": url, "visibility_timeout": "2s"})
    result = run_flexingest("run", path, "--once")
    assert result.code == 0, result.stderr
    assert "is not a bucket notification" in result.stderr and "Traceback" not in result.stderr
    time.sleep(2.5)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1", "left for the queue's redrive policy, not deleted"


def test_run_once_drains_the_queue_and_lists_only_when_due(s3_events: tuple[Store, str], s3_server: Server,
                                                            write_pipeline: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    store, url = s3_events
    path = pipeline(write_pipeline, tmp_path, {"name": "docs", "type": "s3", "config": store.connector_config()},
                    {"type": "sqs", "queue_url": url})
    first = run_flexingest("run", path, "--once")
    assert first.code == 0 and "docs: listed 0, new 0" in first.stderr, "the backfill"
    for i in range(5):
        store.put(f"{i}.txt", b"x")
    second = run_flexingest("run", path, "--once")
    assert second.code == 0, second.stderr
    assert "docs: events: " in second.stderr and ", 5 object(s), new 5" in second.stderr
    assert "the reconciliation listing is due at" in second.stderr and "docs: listed " not in second.stderr
    assert done(path) == {f"{i}.txt" for i in range(5)}
    third = run_flexingest("run", path, "--once")
    assert "events: the queue is empty" in third.stderr


def test_what_the_events_missed_is_found_and_counted_by_the_reconciliation(
        s3_events: tuple[Store, str], s3_server: Server, write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store, url = s3_events
    path = pipeline(write_pipeline, tmp_path, {"name": "docs", "type": "s3", "config": store.connector_config()},
                    {"type": "sqs", "queue_url": url, "lateness": "1s"}, every="2s")
    assert run_flexingest("run", path, "--once").code == 0  # the backfill, and events from now on
    time.sleep(1.1)  # S3 times have a resolution of a second: the object changes after events began
    store.put("dropped.txt", b"its notification is lost")
    time.sleep(1.5)
    aws(s3_server, "sqs").purge_queue(QueueUrl=url)  # the queue drops the message
    time.sleep(1.0)
    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert "docs: listed 1, new 1" in again.stderr and "missed by events 1" in again.stderr
    assert "found 1 object(s) that events did not announce" in again.stderr
    assert done(path) == {"dropped.txt"}
    assert "events missed" in run_flexingest("status", path).stdout


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_batch_of_events_loses_nothing(
        s3_events: tuple[Store, str], s3_server: Server, write_pipeline: Callable[..., Path], tmp_path: Path,
        service: Callable[[Path], subprocess.Popen[str]]) -> None:
    store, url = s3_events
    module = f"slow_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("import time\ndef step(record):\n    time.sleep(0.5)\n    return record\n")
    path = write_pipeline({"name": "docs", "type": "s3", "config": store.connector_config()},
                          steps=[{"python": {"callable": f"{module}:step"}},
                                 {"write_json": {"url": str(tmp_path / "out")}}],
                          syncs=[{"name": "docs", "connector": "docs", "schedule": {"every": "6h"}, "concurrency": 2,
                                  "events": {"type": "sqs", "queue_url": url, "wait": "1s",
                                             "visibility_timeout": "3s"}}])
    proc = service(path)
    wait_for(lambda: (path.parent / ".flexingest" / "pipeline.db").exists() and
             run_flexingest("status", path, "--json").code == 0, 30, "the service")
    time.sleep(1)
    keys = [f"k{i:02d}.txt" for i in range(12)]
    for key in keys:
        store.put(key, b"x")
    wait_for(lambda: 2 <= len(done(path)) < len(keys), 60, "some objects done")
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # its pipe is closed by the fixture
    again = service(path)
    wait_for(lambda: done(path) == set(keys), 90, "every object, after the messages came back")
    stop(again)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{k}.json" for k in keys]


def test_cloud_storage_events_through_pubsub(gcs_events_server: Server, pubsub_server: Server,
                                             write_pipeline: Callable[..., Path], tmp_path: Path,
                                             service: Callable[[Path], subprocess.Popen[str]]) -> None:
    from stores import gcs_filesystem, unique_bucket_name

    fs = gcs_filesystem(gcs_events_server)
    bucket = unique_bucket_name("gcs")
    fs.mkdir(bucket)
    subscription = new_subscription(pubsub_server)
    path = pipeline(write_pipeline, tmp_path, gcs_connector(gcs_events_server, bucket),
                    {"type": "pubsub", "subscription": subscription, "endpoint_url": pubsub_server.url})
    proc = service(path)
    wait_for(lambda: (path.parent / ".flexingest" / "pipeline.db").exists(), 30, "the backfill")
    time.sleep(1)
    for key in ("a.txt", "folder/b.txt"):
        fs.pipe_file(f"{bucket}/{key}", key.encode())
    wait_for(lambda: done(path) == {"a.txt", "folder/b.txt"}, 60, "finalize events")
    fs.rm_file(f"{bucket}/a.txt")
    wait_for(lambda: rows(path)["a.txt"]["gone_at"] is not None, 60, "the delete event")
    stop(proc)
    assert sorted(lines(tmp_path)) == ["a.txt", "folder/b.txt"]
    assert GCS_EVENTS_TOPIC and PUBSUB_PROJECT  # the topic the emulator-backed server publishes to


def test_azure_event_grid_events_through_a_storage_queue(new_store: Callable[[str], Store],
                                                         azure_queue_server: Server,
                                                         write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("azure_blob")
    assert store.server is not None
    name = f"fi-{uuid.uuid4().hex[:12]}"
    queue = queue_client(azure_queue_server, name)
    queue.create_queue()
    account_url = f"{store.server.url}/{AZURITE_ACCOUNT}"
    endpoint = f"{azure_queue_server.url}/{AZURITE_ACCOUNT}"
    path = pipeline(write_pipeline, tmp_path, azure_connector(store.server, store.bucket),
                    {"type": "azure_queue", "queue": name, "endpoint_url": endpoint})
    store.put("old.txt", b"old")
    assert run_flexingest("run", path, "--once").code == 0  # the backfill
    from azure.storage.blob import BlobServiceClient
    from stores import azurite_connection_string

    blobs = BlobServiceClient.from_connection_string(azurite_connection_string(store.server)).get_container_client(
        store.bucket)
    etag = blobs.get_blob_client("new.txt").upload_blob(b"new", overwrite=True)["etag"].strip('"')
    queue.send_message(event_grid_message("BlobCreated", store.bucket, "new.txt", etag, account_url,
                                          cloud_events=False, encode=True))
    store.delete("old.txt")
    queue.send_message(event_grid_message("BlobDeleted", store.bucket, "old.txt", None, account_url,
                                          cloud_events=True, encode=True))
    result = run_flexingest("run", path, "--once")
    assert result.code == 0, result.stderr
    assert "docs: events: 2 message(s), 2 object(s), new 1" in result.stderr and ", gone 1" in result.stderr
    assert done(path) == {"new.txt"} and rows(path)["old.txt"]["gone_at"] is not None
    assert queue.get_queue_properties().approximate_message_count == 0
    assert AZURITE_KEY  # the account's key, from the connector
