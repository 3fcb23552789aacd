"""Bucket event sources against real servers on loopback: moto (S3 -> SQS, SNS, EventBridge),
fake-gcs-server publishing to the Pub/Sub emulator, Azurite's queue with Event Grid messages
written as Event Grid writes them. Plus the ``events:`` block's validation."""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import GCS_EVENTS_TOPIC
from servers import AZURITE_ACCOUNT, AZURITE_KEY, PUBSUB_PROJECT, Server, free_port, pubsub_request
from stores import S3_CREDENTIALS, S3_REGION, Store

from flexingest.connectors import open_connector
from flexingest.events import event_source_class, open_event_source
from flexingest.events.base import EventSource, Message
from flexingest.exceptions import (
    ConfigError,
    EventSourceError,
    FlexingestError,
    QueueAccessDenied,
    QueueNotFound,
    ReceiptExpired,
)
from flexingest.loader import load_pipeline

KEYS = ["plain.txt", "with space.txt", "plus+sign.txt", "percent%41.txt", "a+b c%2B d.txt",
        "naïve/résumé ☃.txt", "deep/er/path/x.bin"]

Opener = Callable[..., EventSource]


@pytest.fixture
def open_source(write_pipeline: Callable[..., pathlib.Path]) -> Iterator[Opener]:
    """``open_source(connector, events)``: the event source of a one-sync pipeline file, closed after the test."""
    opened: list[EventSource] = []

    def opener(connector: dict[str, Any], events: dict[str, Any]) -> EventSource:
        path = write_pipeline(connector, steps=["extract_text"],
                              syncs=[{"name": "s", "connector": connector["name"], "events": events}])
        pipeline = load_pipeline(path)
        source = open_event_source(pipeline, pipeline.syncs[0])
        opened.append(source)
        return source

    yield opener
    for source in opened:
        source.close()


def listed_versions(source: EventSource) -> dict[str, str]:
    """What a listing of the source's connector records as each key's version."""
    storage = open_connector(source.connector, source.base_dir)
    return {o.key: o.version for page in storage.iter_pages() for o in page}


def drain_events(source: EventSource, count: int, max_wait: float = 15.0, *, total: int = 0) -> list[Message]:
    """Messages until ``count`` of them carry events and ``total`` were received (notifications
    are asynchronous)."""
    held: list[Message] = []
    deadline = time.monotonic() + max_wait
    while ((sum(1 for m in held if m.events) < count or len(held) < total)
           and time.monotonic() < deadline):
        held.extend(source.receive(wait_seconds=min(2.0, max(0.1, deadline - time.monotonic()))))
    return held


def events_of(messages: list[Message]) -> list[tuple[str, str, str | None]]:
    return sorted((e.kind, e.key, e.version) for m in messages for e in m.events)


# ============================================================================================ SQS


def aws(server: Server, service: str, **extra: Any) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=server.url, region_name=S3_REGION, **{**S3_CREDENTIALS, **extra})


def new_queue(server: Server) -> tuple[str, str]:
    sqs = aws(server, "sqs")
    url = sqs.create_queue(QueueName=f"fi-events-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def sqs_connector(store: Store) -> dict[str, Any]:
    return {"name": "docs", "type": "s3", "config": store.connector_config()}


@pytest.fixture
def s3_queue(new_store: Callable[[str], Store], s3_server: Server) -> tuple[Store, str]:
    """A fresh bucket whose created and removed events go straight to a fresh SQS queue."""
    store = new_store("s3")
    url, arn = new_queue(s3_server)
    aws(s3_server, "s3").put_bucket_notification_configuration(Bucket=store.bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return store, url


def test_s3_notifications_name_each_key_with_the_listed_etag(s3_queue: tuple[Store, str], open_source: Opener,
                                                            s3_server: Server) -> None:
    store, url = s3_queue
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url})
    first = source.drain(max_wait=10)
    assert [m.ignored_reason for m in first] == [f"s3:TestEvent for bucket {store.bucket!r} (sent when a "
                                                 "notification is configured)"]
    source.ack_all(first)

    s3 = aws(s3_server, "s3")
    for key in KEYS:
        s3.put_object(Bucket=store.bucket, Key=key, Body=key.encode())
    messages = drain_events(source, len(KEYS))
    listed = listed_versions(source)
    assert events_of(messages) == sorted(("created", key, listed[key]) for key in KEYS)
    assert all(e.bucket == store.bucket and e.time is not None and e.size == len(e.key.encode())
               for m in messages for e in m.events)
    assert all(m.receive_count == 1 and m.invalid_reason is None for m in messages)
    source.ack_all(messages)
    assert source.drain(max_wait=3) == [] and source.backlog() == 0

    s3.delete_object(Bucket=store.bucket, Key="with space.txt")
    deleted = drain_events(source, 1)
    assert [(e.kind, e.key) for m in deleted for e in m.events] == [("deleted", "with space.txt")]
    deleted[0].ack()


def test_a_multipart_upload_is_two_created_events_of_the_final_etag(s3_queue: tuple[Store, str],
                                                                    open_source: Opener, s3_server: Server) -> None:
    store, url = s3_queue
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url})
    source.ack_all(source.drain(max_wait=10))  # the test event
    s3 = aws(s3_server, "s3")
    key = "big report.pdf"
    upload = s3.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
    parts = []
    for number, body in ((1, b"a" * (5 * 1024 * 1024)), (2, b"tail")):
        etag = s3.upload_part(Bucket=store.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    messages = drain_events(source, 2)
    version = listed_versions(source)[key]
    assert version.endswith("-2")
    assert events_of(messages) == [("created", key, version)] * 2  # dedup is the pass's job
    source.ack_all(messages)


@pytest.mark.parametrize("raw", [False, True], ids=["sns-envelope", "sns-raw"])
def test_s3_notifications_through_sns(raw: bool, new_store: Callable[[str], Store], s3_server: Server,
                                      open_source: Opener) -> None:
    store = new_store("s3")
    url, arn = new_queue(s3_server)
    sns = aws(s3_server, "sns")
    topic = sns.create_topic(Name=f"fi-{uuid.uuid4().hex[:12]}")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn,
                  Attributes={"RawMessageDelivery": "true" if raw else "false"})
    s3 = aws(s3_server, "s3")
    s3.put_bucket_notification_configuration(Bucket=store.bucket, NotificationConfiguration={
        "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]})
    s3.put_object(Bucket=store.bucket, Key="via sns/a+b.txt", Body=b"x")
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url})
    messages = drain_events(source, 1)
    assert [m.ignored_reason for m in messages if not m.events] == [
        f"s3:TestEvent for bucket {store.bucket!r} (sent when a notification is configured)"]
    assert events_of(messages) == [("created", "via sns/a+b.txt", listed_versions(source)["via sns/a+b.txt"])]
    source.ack_all(messages)


def test_s3_events_through_eventbridge(new_store: Callable[[str], Store], s3_server: Server,
                                       open_source: Opener) -> None:
    store = new_store("s3")
    url, arn = new_queue(s3_server)
    s3, bridge = aws(s3_server, "s3"), aws(s3_server, "events")
    rule = f"fi-{uuid.uuid4().hex[:12]}"
    bridge.put_rule(Name=rule, EventPattern=json.dumps({"source": ["aws.s3"],
                                                        "detail": {"bucket": {"name": [store.bucket]}}}))
    bridge.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": arn}])
    s3.put_bucket_notification_configuration(Bucket=store.bucket,
                                             NotificationConfiguration={"EventBridgeConfiguration": {}})
    key = "eventbridge keeps+plus and spaces %41.txt"  # not URL-encoded there
    s3.put_object(Bucket=store.bucket, Key=key, Body=b"x")
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url})
    created = drain_events(source, 1)
    version = listed_versions(source)[key]
    s3.delete_object(Bucket=store.bucket, Key=key)
    messages = created + drain_events(source, 1)
    assert ("created", key, version) in events_of(messages)
    assert ("deleted", key) in [(e.kind, e.key) for m in messages for e in m.events]
    # moto also sends "Object Tags Added" for each put: acknowledged and ignored
    assert all("changes no object's content" in (m.ignored_reason or "") for m in messages if not m.events)
    source.ack_all(messages)


def test_extend_keeps_a_message_hidden_and_an_unacknowledged_one_comes_back(
        s3_queue: tuple[Store, str], open_source: Opener, s3_server: Server) -> None:
    store, url = s3_queue
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url, "visibility_timeout": "1s"})
    source.ack_all(source.drain(max_wait=10))
    aws(s3_server, "s3").put_object(Bucket=store.bucket, Key="slow.pdf", Body=b"x")
    (message,) = drain_events(source, 1)
    worker = threading.Thread(target=message.extend, args=(3,))  # as the pass does, from another thread
    worker.start()
    worker.join()
    time.sleep(1.5)  # past the original 1 s
    assert source.receive(wait_seconds=0) == []
    again = source.receive(wait_seconds=4)  # back once the extension ran out
    assert [m.id for m in again] == [message.id] and again[0].receive_count == 2
    again[0].ack()


def test_release_hands_a_message_back_at_once(s3_server: Server, new_store: Callable[[str], Store],
                                             open_source: Opener) -> None:
    store = new_store("s3")
    url, _ = new_queue(s3_server)
    aws(s3_server, "sqs").send_message(QueueUrl=url, MessageBody=s3_body_for(store.bucket, "back.txt"))
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url, "visibility_timeout": "5m"})
    (message,) = source.receive(wait_seconds=5)
    message.release()
    (again,) = source.receive(wait_seconds=2)  # not five minutes later
    assert again.id == message.id and [e.key for e in again.events] == ["back.txt"]
    again.ack()
    with pytest.raises(ReceiptExpired, match="no longer held"):
        message.release()  # the message is deleted: the first delivery's receipt holds nothing
    assert source.receive(wait_seconds=1) == []


def s3_body_for(bucket: str, key: str) -> str:
    """An S3 notification as S3 writes it into SQS."""
    from urllib.parse import quote_plus

    return json.dumps({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "eventTime": "2026-01-01T00:00:00.000Z",
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key),
                                                                                 "eTag": "e", "size": 1}}}]})


def test_a_bad_body_is_invalid_and_left_to_the_queue(s3_server: Server, new_store: Callable[[str], Store],
                                                     open_source: Opener) -> None:
    store = new_store("s3")
    url, _ = new_queue(s3_server)
    sqs = aws(s3_server, "sqs")
    sqs.send_message(QueueUrl=url, MessageBody="this is not a notification")
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url, "visibility_timeout": "1s"})
    (message,) = source.receive(wait_seconds=5)
    assert message.events == [] and message.invalid_reason is not None
    assert message.invalid_reason.startswith("the message body is not JSON")
    (again,) = source.receive(wait_seconds=5)  # not acknowledged: delivered again (then a dead-letter queue)
    assert again.id == message.id and again.receive_count == 2


def test_other_buckets_events_in_a_shared_queue_are_ignored(s3_server: Server, new_store: Callable[[str], Store],
                                                           open_source: Opener) -> None:
    mine, theirs = new_store("s3"), new_store("s3")
    url, arn = new_queue(s3_server)
    s3 = aws(s3_server, "s3")
    s3.put_bucket_notification_configuration(Bucket=theirs.bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    s3.put_object(Bucket=theirs.bucket, Key="not-mine.txt", Body=b"x")
    source = open_source(sqs_connector(mine), {"type": "sqs", "queue_url": url})
    messages = source.drain(max_wait=10)
    assert len(messages) == 2 and all(not m.events for m in messages)
    assert any(f"events of bucket {theirs.bucket!r}, not {mine.bucket!r}" in (m.ignored_reason or "")
               for m in messages)


def test_sqs_errors_name_the_queue_and_say_whether_to_try_again(s3_server: Server, new_store: Callable[[str], Store],
                                                               open_source: Opener) -> None:
    store = new_store("s3")
    missing = f"{s3_server.url}/123456789012/fi-no-such-queue"
    with pytest.raises(QueueNotFound, match=f"SQS queue {missing} .*not found") as info:
        open_source(sqs_connector(store), {"type": "sqs", "queue_url": missing}).receive(wait_seconds=0)
    assert not info.value.transient
    down = f"http://127.0.0.1:{free_port()}/123456789012/q"
    started = time.monotonic()
    with pytest.raises(EventSourceError, match="endpoint unreachable") as info:
        open_source(sqs_connector(store), {"type": "sqs", "queue_url": down}).check()
    assert info.value.transient and time.monotonic() - started < 15


def test_sqs_credentials_are_the_connectors_unless_the_events_block_gives_its_own(
        moto_with_auth: tuple[Server, str, str], open_source: Opener) -> None:
    server, key_id, secret = moto_with_auth
    good = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    url = aws(server, "sqs", **good).create_queue(QueueName=f"fi-auth-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    bucket = {"bucket": "guarded", "endpoint_url": server.url, "region": S3_REGION}
    wrong = {"name": "docs", "type": "s3", "config": {**bucket, "aws_access_key_id": "AKIAWRONGWRONG",
                                                      "aws_secret_access_key": "wrong-secret-value"}}
    with pytest.raises(QueueAccessDenied) as info:
        open_source(wrong, {"type": "sqs", "queue_url": url}).check()
    assert "wrong-secret-value" not in str(info.value) and url in str(info.value)
    open_source(wrong, {"type": "sqs", "queue_url": url, **good}).check()  # the block's own keys
    right = {"name": "docs", "type": "s3", "config": {**bucket, **good}}
    open_source(right, {"type": "sqs", "queue_url": url}).check()  # the connector's


def test_batches_yield_as_messages_arrive_until_stopped(s3_queue: tuple[Store, str], open_source: Opener,
                                                        s3_server: Server) -> None:
    store, url = s3_queue
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url, "wait": "1s"})
    stop = threading.Event()
    seen: list[Message] = []
    for batch in source.batches(stop):
        seen.extend(batch)
        source.ack_all(batch)
        if len(seen) == 1:  # the test event; now an upload
            aws(s3_server, "s3").put_object(Bucket=store.bucket, Key="live.txt", Body=b"x")
        if any(m.events for m in seen):
            stop.set()
    assert [e.key for m in seen for e in m.events] == ["live.txt"]


def test_keep_alive_extends_held_messages_in_the_background(s3_queue: tuple[Store, str], open_source: Opener,
                                                            s3_server: Server) -> None:
    store, url = s3_queue
    source = open_source(sqs_connector(store), {"type": "sqs", "queue_url": url, "visibility_timeout": "1s"})
    source.ack_all(source.drain(max_wait=10))
    aws(s3_server, "s3").put_object(Bucket=store.bucket, Key="held.txt", Body=b"x")
    held = drain_events(source, 1)
    with source.keep_alive(held, every=0.3):
        time.sleep(2)  # twice the visibility timeout: still hidden
        assert source.receive(wait_seconds=0) == []
        source.ack_all(held)
    assert source.receive(wait_seconds=1.5) == []


# ============================================================================================ Pub/Sub


def new_subscription(pubsub: Server) -> str:
    name = f"fi-{uuid.uuid4().hex[:12]}"
    pubsub_request(pubsub, "PUT", f"/v1/projects/{PUBSUB_PROJECT}/subscriptions/{name}",
                   {"topic": f"projects/{PUBSUB_PROJECT}/topics/{GCS_EVENTS_TOPIC}", "ackDeadlineSeconds": 10})
    return name


def gcs_connector(server: Server, bucket: str) -> dict[str, Any]:
    return {"name": "docs", "type": "gcs", "config": {"bucket": bucket, "endpoint_url": server.url,
                                                     "project": PUBSUB_PROJECT, "anonymous": True}}


@pytest.fixture
def gcs_bucket(gcs_events_server: Server) -> Iterator[tuple[Any, str]]:
    from stores import gcs_filesystem, unique_bucket_name

    fs = gcs_filesystem(gcs_events_server)
    bucket = unique_bucket_name("gcs")
    fs.mkdir(bucket)
    yield fs, bucket


def test_cloud_storage_notifications_carry_the_listed_generation(
        gcs_bucket: tuple[Any, str], gcs_events_server: Server, pubsub_server: Server, open_source: Opener) -> None:
    fs, bucket = gcs_bucket
    subscription = new_subscription(pubsub_server)
    source = open_source(gcs_connector(gcs_events_server, bucket),
                         {"type": "pubsub", "subscription": subscription, "endpoint_url": pubsub_server.url})
    source.check()
    for key in KEYS:
        fs.pipe_file(f"{bucket}/{key}", key.encode())
    messages = drain_events(source, len(KEYS))
    listed = listed_versions(source)
    assert events_of(messages) == sorted(("created", key, listed[key]) for key in KEYS)
    assert all(e.size == len(e.key.encode()) and e.time is not None for m in messages for e in m.events)
    source.ack_all(messages)

    fs.pipe_file(f"{bucket}/plain.txt", b"new bytes")  # an overwrite: the old generation's delete is ignored
    fs.rm_file(f"{bucket}/with space.txt")
    messages = drain_events(source, 2, total=3)
    new = listed_versions(source)["plain.txt"]
    assert events_of(messages) == sorted([("created", "plain.txt", new),
                                          ("deleted", "with space.txt", listed["with space.txt"])])
    assert [m.ignored_reason for m in messages if not m.events] == [
        f"OBJECT_DELETE of generation {listed['plain.txt']}, replaced by generation {new}"]
    source.ack_all(messages)
    assert source.drain(max_wait=3) == []


def test_pubsub_emulator_host_from_the_environment(gcs_bucket: tuple[Any, str], gcs_events_server: Server,
                                                  pubsub_server: Server, open_source: Opener,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fs, bucket = gcs_bucket
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_server.host)
    subscription = f"projects/{PUBSUB_PROJECT}/subscriptions/{new_subscription(pubsub_server)}"
    connector = gcs_connector(gcs_events_server, bucket)
    del connector["config"]["anonymous"]  # the emulator needs no credentials, whatever the connector has
    source = open_source(connector, {"type": "pubsub", "subscription": subscription})
    fs.pipe_file(f"{bucket}/env.txt", b"x")
    messages = drain_events(source, 1)
    assert [e.key for m in messages for e in m.events] == ["env.txt"]
    messages[0].extend(30)
    source.ack_all(messages)


def test_a_missing_subscription_is_named(gcs_events_server: Server, pubsub_server: Server,
                                         open_source: Opener) -> None:
    source = open_source(gcs_connector(gcs_events_server, "fi-gcs-none"),
                         {"type": "pubsub", "subscription": "fi-no-such-subscription",
                          "endpoint_url": pubsub_server.url})
    with pytest.raises(QueueNotFound, match=f"Pub/Sub subscription projects/{PUBSUB_PROJECT}/subscriptions/"
                                            "fi-no-such-subscription.*not found"):
        source.receive(wait_seconds=0)


@pytest.mark.slow
def test_pubsub_extend_and_redelivery(gcs_bucket: tuple[Any, str], gcs_events_server: Server,
                                      pubsub_server: Server, open_source: Opener) -> None:
    fs, bucket = gcs_bucket
    subscription = new_subscription(pubsub_server)
    source = open_source(gcs_connector(gcs_events_server, bucket),
                         {"type": "pubsub", "subscription": subscription, "endpoint_url": pubsub_server.url,
                          "visibility_timeout": "10s"})
    fs.pipe_file(f"{bucket}/slow.txt", b"x")
    (message,) = drain_events(source, 1)
    time.sleep(6)
    message.extend(10)  # at 6 s: now hidden until 16 s
    time.sleep(6)
    assert source.receive(wait_seconds=0.5) == []  # 12 s: past the first deadline
    again = source.receive(wait_seconds=10)
    assert [m.id for m in again] == [message.id]
    again[0].ack()


# ============================================================================================ Azure queue


def azure_connector(blob_server: Server, container: str, **extra: Any) -> dict[str, Any]:
    return {"name": "docs", "type": "azure_blob",
            "config": {"container": container, "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY,
                       "account_url": f"{blob_server.url}/{AZURITE_ACCOUNT}", **extra}}


def queue_client(server: Server, name: str) -> Any:
    from azure.storage.queue import QueueClient

    return QueueClient(f"{server.url}/{AZURITE_ACCOUNT}", name,
                       credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})


def event_grid_message(kind: str, container: str, key: str, etag: str | None, url: str, *,
                       cloud_events: bool, encode: bool) -> str:
    """A BlobCreated/BlobDeleted event as Event Grid's storage-queue handler writes it."""
    from urllib.parse import quote

    data: dict[str, Any] = {"api": "PutBlob" if kind == "BlobCreated" else "DeleteBlob",
                            "requestId": str(uuid.uuid4()), "contentType": "text/plain", "blobType": "BlockBlob",
                            "url": f"{url}/{container}/{quote(key)}", "sequencer": "0" * 32}
    if etag is not None:
        data.update(eTag=etag, contentLength=len(key.encode()))
    source = f"/subscriptions/{uuid.uuid4()}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct"
    subject = f"/blobServices/default/containers/{container}/blobs/{key}"
    if cloud_events:
        event: dict[str, Any] = {"source": source, "subject": subject, "type": f"Microsoft.Storage.{kind}",
                                 "time": "2026-06-26T18:41:00.9584103Z", "id": str(uuid.uuid4()), "data": data,
                                 "specversion": "1.0"}
    else:
        event = {"topic": source, "subject": subject, "eventType": f"Microsoft.Storage.{kind}",
                 "eventTime": "2026-06-26T18:41:00.9584103Z", "id": str(uuid.uuid4()), "data": data,
                 "dataVersion": "", "metadataVersion": "1"}
    text = json.dumps(event, ensure_ascii=False)
    return base64.b64encode(text.encode()).decode() if encode else text


@pytest.mark.parametrize("cloud_events", [False, True], ids=["event-grid-schema", "cloudevents-schema"])
def test_event_grid_blob_events_in_an_azure_queue(cloud_events: bool, new_store: Callable[[str], Store],
                                                  azure_queue_server: Server, open_source: Opener) -> None:
    store = new_store("azure_blob")
    assert store.server is not None
    name = f"fi-{uuid.uuid4().hex[:12]}"
    queue = queue_client(azure_queue_server, name)
    queue.create_queue()
    from azure.storage.blob import BlobServiceClient
    from stores import azurite_connection_string

    service = BlobServiceClient.from_connection_string(azurite_connection_string(store.server))
    blobs = service.get_container_client(store.bucket)  # the SDK, for the ETag it answers
    etags = {}
    for key in KEYS:
        etags[key] = blobs.get_blob_client(key).upload_blob(key.encode(), overwrite=True)["etag"]
        assert etags[key].startswith('"0x')  # the header's form; Event Grid writes it without quotes
    account_url = f"{store.server.url}/{AZURITE_ACCOUNT}"
    for i, key in enumerate(KEYS):
        queue.send_message(event_grid_message("BlobCreated", store.bucket, key, etags[key].strip('"'), account_url,
                                              cloud_events=cloud_events, encode=i % 2 == 0))
    queue.send_message(event_grid_message("BlobDeleted", store.bucket, "gone.txt", None, account_url,
                                          cloud_events=cloud_events, encode=True))
    source = open_source(azure_connector(store.server, store.bucket),
                         {"type": "azure_queue", "queue": name, "endpoint_url": f"{azure_queue_server.url}/"
                          f"{AZURITE_ACCOUNT}"})
    assert source.backlog() == len(KEYS) + 1
    messages = source.drain(max_wait=10)
    listed = listed_versions(source)
    assert events_of(messages) == sorted([("created", key, listed[key]) for key in KEYS]
                                         + [("deleted", "gone.txt", None)])
    source.ack_all(messages)
    assert source.backlog() == 0


def test_azure_extend_renews_the_pop_receipt_and_unacked_messages_come_back(
        azure_queue_server: Server, azure_server: Server, open_source: Opener) -> None:
    name = f"fi-{uuid.uuid4().hex[:12]}"
    queue = queue_client(azure_queue_server, name)
    queue.create_queue()
    url = f"{azure_server.url}/{AZURITE_ACCOUNT}"
    queue.send_message(event_grid_message("BlobCreated", "box", "a.txt", "0x8D4BCC2E4835CD0", url,
                                          cloud_events=False, encode=True))
    queue.send_message("{not json")
    source = open_source(azure_connector(azure_server, "box"),
                         {"type": "azure_queue", "queue": name, "visibility_timeout": "1s",
                          "endpoint_url": f"{azure_queue_server.url}/{AZURITE_ACCOUNT}"})
    messages = source.receive(wait_seconds=5)  # both at once (a second receive would see them again after 1 s)
    assert len(messages) == 2
    good = next(m for m in messages if m.events)
    bad = next(m for m in messages if m.invalid_reason)
    first = good.handle
    good.extend(4)
    assert good.handle != first  # Azure answers a new pop receipt for each update
    time.sleep(1.5)
    (again,) = source.receive(wait_seconds=3)  # the bad one, back after 1 s; the good one is still hidden
    assert again.id == bad.id and again.receive_count == 2 and again.invalid_reason == bad.invalid_reason
    with pytest.raises(ReceiptExpired, match="no longer held"):
        bad.ack()  # the first delivery's pop receipt no longer holds it
    assert not bad.acked
    good.ack()  # with the renewed pop receipt
    assert source.backlog() == 1


def test_azure_queue_errors(azure_queue_server: Server, azure_server: Server, open_source: Opener) -> None:
    endpoint = f"{azure_queue_server.url}/{AZURITE_ACCOUNT}"
    with pytest.raises(QueueNotFound, match=f"Azure queue {endpoint}/fi-no-such-queue.*not found"):
        open_source(azure_connector(azure_server, "box"),
                    {"type": "azure_queue", "queue": "fi-no-such-queue", "endpoint_url": endpoint}).check()
    wrong_key = base64.b64encode(b"not the key of this account, at all").decode()
    with pytest.raises(QueueAccessDenied) as info:
        open_source(azure_connector(azure_server, "box", account_key=wrong_key),
                    {"type": "azure_queue", "queue": "fi-any-queue", "endpoint_url": endpoint}).check()
    assert wrong_key not in str(info.value)


# ============================================================================================ the events: block


def validate(write_pipeline: Callable[..., pathlib.Path], connectors: list[dict[str, Any]],
             events: list[Any]) -> list[str]:
    path = write_pipeline(connectors, steps=["extract_text"], syncs=[
        {"name": f"s{i}", "connector": connectors[0]["name"] if not isinstance(e, tuple) else e[0],
         "events": e[1] if isinstance(e, tuple) else e} for i, e in enumerate(events)])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return [str(i).replace(f"{path.parent}/", "") for i in info.value.issues]


SQS_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/contracts-events"


def test_validate_names_each_wrong_events_block_with_its_line_and_column(
        write_pipeline: Callable[..., pathlib.Path]) -> None:
    connectors = [{"name": "docs", "type": "s3", "config": {"bucket": "b"}},
                  {"name": "gcs", "type": "gcs", "config": {"bucket": "b"}},
                  {"name": "az", "type": "azure_blob", "config": {"container": "c", "account_name": "acct",
                                                                 "account_url": "http://127.0.0.1:10000/acct"}},
                  {"name": "here", "type": "local", "config": {"path": "."}}]
    issues = validate(write_pipeline, connectors, [
        {"type": "sqss", "queue_url": SQS_URL},
        {"queue_url": SQS_URL},
        {"type": "sqs", "queue_url": SQS_URL, "wiat": "3s"},
        {"type": "sqs", "queue_url": "not a url", "batch": 11, "visibility_timeout": "13h"},
        {"type": "sqs", "queue_url": SQS_URL, "aws_access_key_id": "AKIAEXAMPLE"},
        {"type": "pubsub", "subscription": "projects/p/subscriptions/s"},
        ("gcs", {"type": "pubsub", "subscription": "bare-name"}),
        ("gcs", {"type": "pubsub", "subscription": "projects/p/subscriptions/s", "visibility_timeout": "5s",
                 "batch": 2000}),
        ("az", {"type": "azure_queue", "queue": "events"}),
        ("az", {"type": "azure_queue", "queue": "Bad_Name", "endpoint_url": "ftp://x", "wait": "2m"}),
        ("here", {"type": "sqs", "queue_url": SQS_URL}),
        "sqs",
    ])
    assert issues == [
        "pipeline.yaml:27:11: syncs[0].events.type: unknown event type 'sqss' (did you mean 'sqs'?) "
        "(known: azure_queue, pubsub, sqs)",
        "pipeline.yaml:31:3: syncs[1].events.type: required field missing (one of azure_queue, pubsub, sqs)",
        "pipeline.yaml:38:5: syncs[2].events.wiat: unknown field 'wiat' (did you mean 'wait'?)",
        "pipeline.yaml:43:16: syncs[3].events.queue_url: must be an SQS queue URL like "
        "https://sqs.us-east-1.amazonaws.com/123456789012/name (got 'not a url')",
        "pipeline.yaml:44:12: syncs[3].events.batch: must be at most 10 for sqs (got 11)",
        "pipeline.yaml:45:25: syncs[3].events.visibility_timeout: must be between 1s and 12h for sqs (got 13h)",
        "pipeline.yaml:48:3: syncs[4].events: 'aws_access_key_id' and 'aws_secret_access_key' go together: "
        "give both or neither",
        "pipeline.yaml:55:11: syncs[5].events.type: event type 'pubsub' carries gcs notifications, but the "
        "connector is s3 (type 'sqs' carries s3 notifications)",
        "pipeline.yaml:61:19: syncs[6].events.subscription: a bare subscription name needs a project: write "
        "projects/<project>/subscriptions/bare-name, or give 'project' here or in the connector",
        "pipeline.yaml:67:25: syncs[7].events.visibility_timeout: must be between 10s and 10m for pubsub (got 5s)",
        "pipeline.yaml:68:12: syncs[7].events.batch: must be at most 1000 for pubsub (got 2000)",
        "pipeline.yaml:71:3: syncs[8].events.endpoint_url: the queue endpoint cannot be derived from the "
        "connector's account_url 'http://127.0.0.1:10000/acct': give the queue service's URL as 'endpoint_url'",
        "pipeline.yaml:78:12: syncs[9].events.queue: 'Bad_Name' is not an Azure queue name (3-63 lowercase "
        "letters, digits and single hyphens)",
        "pipeline.yaml:79:19: syncs[9].events.endpoint_url: must be an http:// or https:// URL (got 'ftp://x')",
        "pipeline.yaml:80:11: syncs[9].events.wait: must be at most 60s (got 2m)",
        "pipeline.yaml:84:11: syncs[10].events.type: event type 'sqs' carries s3 notifications, but the "
        "connector is local (local connectors have no events)",
        "pipeline.yaml:88:11: syncs[11].events: input should be a valid dictionary or object to extract fields from",
    ]


def test_validate_never_shows_an_events_secret(write_pipeline: Callable[..., pathlib.Path]) -> None:
    issues = validate(write_pipeline, [{"name": "docs", "type": "s3", "config": {"bucket": "b"}}], [
        {"type": "sqs", "queue_url": SQS_URL, "aws_secret_access_key": "s3cr3t-v4lue-never-shown",
         "aws_access_key_id": 1234567890}])
    assert issues and not any("s3cr3t" in i or "1234567890" in i for i in issues)


def test_a_valid_events_block_loads_with_its_defaults(write_pipeline: Callable[..., pathlib.Path]) -> None:
    path = write_pipeline({"name": "docs", "type": "s3", "config": {"bucket": "b"}}, steps=["extract_text"],
                          syncs=[{"name": "s", "connector": "docs", "schedule": {"every": "6h"},
                                  "events": {"type": "sqs", "queue_url": SQS_URL,
                                             "aws_access_key_id": "AKIAEXAMPLE",
                                             "aws_secret_access_key": "secret-of-the-queue"}}])
    pipeline = load_pipeline(path)
    events = pipeline.syncs[0].events
    assert events is not None and events.type == "sqs"
    assert (events.wait.total_seconds(), events.batch, events.visibility_timeout.total_seconds()) == (20, 10, 300)
    assert "secret-of-the-queue" in pipeline.secrets()  # masked in logs like the connectors' secrets
    assert "secret-of-the-queue" not in repr(events)
    source = open_event_source(pipeline, pipeline.syncs[0])
    assert (source.region, source.endpoint_url) == ("us-east-1", None)  # type: ignore[attr-defined]


def test_a_missing_queue_client_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.pubsub_v1", None)  # as if google-cloud-pubsub were not installed
    with pytest.raises(FlexingestError, match=r"event type 'pubsub' needs the google-cloud-pubsub package: "
                                              r"pip install 'flexingest\[gcs,events\]'"):
        event_source_class("pubsub")


def test_loading_a_pipeline_imports_no_queue_client(tmp_path: pathlib.Path) -> None:
    code = ("import sys, flexingest.cli, flexingest.config, flexingest.events, flexingest.events.base; "
            "print(sorted(m for m in sys.modules if m.startswith(('google.pubsub', 'google.cloud.pubsub', "
            "'azure.storage.queue', 'grpc', 'aiobotocore'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"


def test_pubsub_credentials_are_the_connectors_scoped_for_pubsub(open_source: Opener) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2 import service_account
    from test_soak import service_account_key

    key = service_account_key("http://127.0.0.1:1/token")
    connector = {"name": "docs", "type": "gcs", "config": {"bucket": "b", "project": "p", "service_account_json": key}}
    events = {"type": "pubsub", "subscription": "contracts", "endpoint_url": "https://pubsub.googleapis.com"}
    credentials = open_source(connector, events)._credentials()  # type: ignore[attr-defined]
    assert isinstance(credentials, service_account.Credentials)
    assert credentials.scopes == ["https://www.googleapis.com/auth/pubsub"]
    assert credentials.service_account_email == "reader@test.iam.gserviceaccount.com"
    own = open_source(connector, {**events, "anonymous": True})._credentials()  # type: ignore[attr-defined]
    assert isinstance(own, AnonymousCredentials)  # the events block's own
