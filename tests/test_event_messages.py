"""Message parsing (flexingest.events.messages): every notification shape, and hostile ones."""

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexingest.events.messages import (
    MAX_BODY,
    ObjectEvent,
    Parsed,
    parse_azure_queue,
    parse_pubsub,
    parse_sqs,
)

# ----------------------------------------------------------------------------- S3 shapes


def s3_record(name: str = "ObjectCreated:Put", key: str = "a+b.txt", **obj: Any) -> dict[str, Any]:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-11-12T10:20:30.123Z", "eventName": name,
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
                   "bucket": {"name": "docs", "arn": "arn:aws:s3:::docs"}, "object": {"key": key, **obj}}}


def s3_body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def sns(message: str, kind: str = "Notification") -> str:
    return json.dumps({"Type": kind, "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": message,
                       "Timestamp": "2026-11-12T10:20:30.123Z", "SignatureVersion": "1"})


def eventbridge(detail_type: str = "Object Created", key: str = "a+b c.txt", **obj: Any) -> dict[str, Any]:
    return {"version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": detail_type,
            "source": "aws.s3", "account": "111122223333", "time": "2021-11-12T00:00:00Z", "region": "ca-central-1",
            "resources": ["arn:aws:s3:::docs"],
            "detail": {"version": "0", "bucket": {"name": "docs"}, "object": {"key": key, **obj},
                       "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "reason": "PutObject"}}


WHEN = datetime(2026, 11, 12, 10, 20, 30, 123000, tzinfo=timezone.utc)


def one(parsed: Parsed) -> ObjectEvent:
    assert parsed.invalid is None and parsed.ignored is None, parsed
    (event,) = parsed.events
    return event


@pytest.mark.parametrize(("encoded", "key"), [
    ("a+b.txt", "a b.txt"),                             # "+" is a space
    ("a%2Bb.txt", "a+b.txt"),                           # "%2B" is a plus
    ("100%25+done%21.pdf", "100% done!.pdf"),
    ("r%C3%A9sum%C3%A9+%E2%98%83.txt", "résumé ☃.txt"),
    ("folder/sub%2Fdir/x.bin", "folder/sub/dir/x.bin"),  # AWS leaves "/" alone; moto and MinIO write %2F
    ("a%3Ab%3Dc%26d.txt", "a:b=c&d.txt"),
])
def test_s3_keys_are_form_decoded(encoded: str, key: str) -> None:
    assert one(parse_sqs(s3_body(s3_record(key=encoded)))).key == key


def test_an_s3_put_is_created_with_the_etag_unquoted_and_its_version_id() -> None:
    body = s3_body(s3_record(size=1024, eTag="d41d8cd98f00b204e9800998ecf8427e", versionId="3HL4kqtJlcpXroDTDmJ",
                             sequencer="0055AED6DCD90281E5"))
    assert one(parse_sqs(body)) == ObjectEvent(bucket="docs", key="a b.txt", version="d41d8cd98f00b204e9800998ecf8427e",
                                               kind="created", time=WHEN, size=1024, version_id="3HL4kqtJlcpXroDTDmJ")
    quoted = one(parse_sqs(s3_body(s3_record(eTag='"abc-2"'))))
    assert quoted.version == "abc-2"


@pytest.mark.parametrize("name", ["ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy",
                                  "ObjectCreated:CompleteMultipartUpload", "s3:ObjectCreated:Put"])
def test_every_s3_creation_is_created(name: str) -> None:
    assert one(parse_sqs(s3_body(s3_record(name, eTag="e")))).kind == "created"


@pytest.mark.parametrize("name", ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated",
                                  "LifecycleExpiration:Delete", "LifecycleExpiration:DeleteMarkerCreated"])
def test_every_s3_removal_is_deleted_without_a_version(name: str) -> None:
    event = one(parse_sqs(s3_body(s3_record(name, versionId="v1", sequencer="1"))))
    assert (event.kind, event.version, event.version_id) == ("deleted", None, "v1")


@pytest.mark.parametrize("name", ["ObjectTagging:Put", "ObjectRestore:Completed", "ObjectAcl:Put",
                                  "LifecycleTransition", "Replication:OperationFailedReplication",
                                  "IntelligentTiering", "ReducedRedundancyLostObject"])
def test_s3_events_that_change_no_content_are_ignored(name: str) -> None:
    assert parse_sqs(s3_body(s3_record(name))) == Parsed(ignored=f"S3 event {name} changes no object's content")


def test_several_records_in_one_message() -> None:
    parsed = parse_sqs(s3_body(s3_record(key="one"), s3_record("ObjectTagging:Put", key="two"),
                               s3_record("ObjectRemoved:Delete", key="three")))
    assert [(e.kind, e.key) for e in parsed.events] == [("created", "one"), ("deleted", "three")]


def test_the_s3_test_event_is_ignored() -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-01T09:02:41.718Z",
                       "Bucket": "docs", "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3"})
    assert parse_sqs(body) == Parsed(ignored="s3:TestEvent for bucket 'docs' (sent when a notification is configured)")


# ----------------------------------------------------------------------------- SNS and EventBridge


def test_an_sns_envelope_is_opened() -> None:
    event = one(parse_sqs(sns(s3_body(s3_record(key="via+sns%2B.txt", eTag="e1")))))
    assert (event.key, event.version) == ("via sns+.txt", "e1")
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "docs"})
    assert parse_sqs(sns(test_event)).ignored is not None
    assert one(parse_sqs(sns(json.dumps(eventbridge())))).key == "a+b c.txt"  # EventBridge -> SNS -> SQS


def test_sns_subscription_messages_are_ignored_with_what_to_do() -> None:
    confirmation = parse_sqs(sns("You have chosen to subscribe", kind="SubscriptionConfirmation"))
    assert confirmation.ignored is not None and "confirm the subscription" in confirmation.ignored
    assert parse_sqs(sns("bye", kind="UnsubscribeConfirmation")).ignored is not None


@pytest.mark.parametrize(("body", "why"), [
    (sns("not json"), "the SNS notification's 'Message' is not JSON"),
    (sns(sns(s3_body(s3_record()))), "an SNS envelope inside an SNS envelope"),
    (json.dumps({"Type": "Notification", "TopicArn": "t", "Message": {"Records": []}}),
     "the SNS notification's 'Message' is not a string"),
])
def test_broken_sns_envelopes_are_invalid(body: str, why: str) -> None:
    invalid = parse_sqs(body).invalid
    assert invalid is not None and invalid.startswith(why)


def test_eventbridge_keys_are_not_decoded() -> None:
    event = one(parse_sqs(json.dumps(eventbridge(key="a+b %41 c.txt", size=5, etag="b1946ac92492d2347c6235b4d2611184",
                                                 **{"version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"}))))
    assert event == ObjectEvent(bucket="docs", key="a+b %41 c.txt", version="b1946ac92492d2347c6235b4d2611184",
                                kind="created", time=datetime(2021, 11, 12, tzinfo=timezone.utc), size=5,
                                version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e")
    assert one(parse_sqs(json.dumps(eventbridge(eTag="moto-writes-eTag")))).version == "moto-writes-eTag"


def test_eventbridge_deletions_and_other_detail_types() -> None:
    deleted = eventbridge("Object Deleted", key="k")
    deleted["detail"]["deletion-type"] = "Delete Marker Created"
    assert one(parse_sqs(json.dumps(deleted))).kind == "deleted"
    for other in ("Object Tags Added", "Object Restore Completed", "Object Storage Class Changed"):
        assert parse_sqs(json.dumps(eventbridge(other))).ignored == f"S3 event {other!r} changes no object's content"
    ec2 = {**eventbridge(), "source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification"}
    assert parse_sqs(json.dumps(ec2)).ignored == "an EventBridge event from 'aws.ec2', not aws.s3"


# ----------------------------------------------------------------------------- Cloud Storage


def gcs_attributes(event_type: str = "OBJECT_FINALIZE", **extra: str) -> dict[str, str]:
    return {"eventType": event_type, "bucketId": "docs", "objectId": "a b+c%d/é.txt",
            "objectGeneration": "1796115745532472", "eventTime": "2026-12-01T09:02:25.532465Z",
            "payloadFormat": "JSON_API_V1", "notificationConfig": "projects/_/buckets/docs/notificationConfigs/1",
            **extra}


GCS_BODY = json.dumps({"kind": "storage#object", "name": "a b+c%d/é.txt", "bucket": "docs",
                       "generation": "1796115745532472", "size": "6", "md5Hash": "boCcvaBzKsSEWRalkBb5VA=="}).encode()


def test_a_finalize_is_created_with_the_generation() -> None:
    assert one(parse_pubsub(GCS_BODY, gcs_attributes())) == ObjectEvent(
        bucket="docs", key="a b+c%d/é.txt", version="1796115745532472", kind="created",
        time=datetime(2026, 12, 1, 9, 2, 25, 532465, tzinfo=timezone.utc), size=6)
    assert one(parse_pubsub(b"", gcs_attributes(payloadFormat="NONE"))).size is None


def test_gcs_deletions_overwrites_and_metadata() -> None:
    assert one(parse_pubsub(GCS_BODY, gcs_attributes("OBJECT_DELETE"))).kind == "deleted"
    assert one(parse_pubsub(GCS_BODY, gcs_attributes("OBJECT_ARCHIVE"))).kind == "deleted"  # versioned: noncurrent
    for kind in ("OBJECT_DELETE", "OBJECT_ARCHIVE"):
        replaced = parse_pubsub(GCS_BODY, gcs_attributes(kind, overwrittenByGeneration="1796115745532999"))
        assert replaced == Parsed(ignored=f"{kind} of generation 1796115745532472, replaced by generation "
                                          "1796115745532999")
    assert parse_pubsub(GCS_BODY, gcs_attributes("OBJECT_METADATA_UPDATE")).ignored is not None


@pytest.mark.parametrize(("data", "attributes", "why"), [
    (GCS_BODY, {}, "no 'eventType' attribute"),
    (GCS_BODY, {k: v for k, v in gcs_attributes().items() if k != "objectId"}, "attribute 'objectId' is missing"),
    (GCS_BODY, gcs_attributes(bucketId=""), "attribute 'bucketId' is not a non-empty string"),
    (GCS_BODY, gcs_attributes(objectGeneration="12ab"), "attribute 'objectGeneration' is not a generation number"),
    (GCS_BODY, gcs_attributes(objectGeneration="1"), "the body's generation"),
    (GCS_BODY, gcs_attributes("OBJECT_EXPLODED"), "unknown Cloud Storage eventType"),
    (b"\xff\xfe", gcs_attributes(), "the message data is not UTF-8"),
    (b"[1, 2]", gcs_attributes(), "the message data is JSON but not an object resource"),
    (b"{", gcs_attributes(), "the message data is not JSON"),
])
def test_broken_gcs_notifications_are_invalid(data: bytes, attributes: dict[str, str], why: str) -> None:
    invalid = parse_pubsub(data, attributes).invalid
    assert invalid is not None and invalid.startswith(why), invalid


# ----------------------------------------------------------------------------- Azure Event Grid


def grid(event_type: str = "Microsoft.Storage.BlobCreated", name: str = "reports/a b+c%d.txt", *,
         cloud: bool = False, **data: Any) -> dict[str, Any]:
    body = {"api": "PutBlob", "clientRequestId": "6d79dbfb", "requestId": "831e1650", "eTag": "0x8D4BCC2E4835CD0",
            "contentType": "text/plain", "contentLength": 524288, "blobType": "BlockBlob",
            "url": "https://acct.blob.core.windows.net/box/reports/a%20b%2Bc%25d.txt", "sequencer": "0" * 32, **data}
    subject = f"/blobServices/default/containers/box/blobs/{name}"
    source = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct"
    if cloud:
        return {"source": source, "subject": subject, "type": event_type, "time": "2017-06-26T18:41:00.9584103Z",
                "id": "831e1650", "data": body, "specversion": "1.0"}
    return {"topic": source, "subject": subject, "eventType": event_type, "eventTime": "2017-06-26T18:41:00.9584103Z",
            "id": "831e1650", "data": body, "dataVersion": "", "metadataVersion": "1"}


def b64(doc: Any) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


@pytest.mark.parametrize("cloud", [False, True], ids=["event-grid", "cloudevents"])
@pytest.mark.parametrize("encode", [b64, json.dumps], ids=["base64", "plain"])
def test_blob_created_in_both_schemas_and_encodings(cloud: bool, encode: Any) -> None:
    assert one(parse_azure_queue(encode(grid(cloud=cloud)))) == ObjectEvent(
        bucket="box", key="reports/a b+c%d.txt", version="0x8D4BCC2E4835CD0", kind="created",
        time=datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=timezone.utc), size=524288)


def test_blob_deleted_renamed_and_quoted_etags() -> None:
    deleted = grid("Microsoft.Storage.BlobDeleted", api="DeleteBlob")
    del deleted["data"]["eTag"]
    gone = one(parse_azure_queue(b64(deleted)))
    assert (gone.kind, gone.version, gone.size) == ("deleted", None, None)
    quoted = grid(api="FlushWithClose", eTag='"0x8D4BCC2E4835CD0"')  # Data Lake events quote it
    assert one(parse_azure_queue(b64(quoted))).version == "0x8D4BCC2E4835CD0"
    renamed = grid("Microsoft.Storage.BlobRenamed", "new/na me.txt", api="RenameFile",
                   sourceUrl="https://acct.dfs.core.windows.net/box/old/na%20me.txt",
                   destinationUrl="https://acct.dfs.core.windows.net/box/new/na%20me.txt")
    assert [(e.kind, e.key) for e in parse_azure_queue(b64(renamed)).events] == [
        ("deleted", "old/na me.txt"), ("created", "new/na me.txt")]
    nested = one(parse_azure_queue(b64(grid(name="a/blobs/b.txt"))))  # "/blobs/" inside a blob name
    assert nested.key == "a/blobs/b.txt"


def test_an_event_grid_batch_and_other_event_types() -> None:
    batch = parse_azure_queue(json.dumps([grid(name="one"), grid("Microsoft.Storage.BlobTierChanged", "two"),
                                          grid("Microsoft.Storage.BlobDeleted", "three")]))
    assert [(e.kind, e.key) for e in batch.events] == [("created", "one"), ("deleted", "three")]
    tier = parse_azure_queue(b64(grid("Microsoft.Storage.BlobTierChanged")))
    assert tier.ignored == "Event Grid event Microsoft.Storage.BlobTierChanged changes no blob's content"
    validation = parse_azure_queue(b64(grid("Microsoft.EventGrid.SubscriptionValidationEvent")))
    assert validation.ignored is not None


@pytest.mark.parametrize(("content", "why"), [
    ("not base64 at all!", "the message is neither JSON nor base64-encoded JSON"),
    (base64.b64encode(b"plain text").decode(), "the message is not JSON"),
    (base64.b64encode(b"\xff\xfe").decode(), "the message is not UTF-8 text"),
    (b64(grid("Microsoft.Resources.ResourceWriteSuccess")), "the event is a 'Microsoft.Resources.ResourceWrite"),
    (b64({**grid(), "subject": "/blobServices/default/containers/box"}), "the event.subject is not /blobServices"),
    (b64({k: v for k, v in grid().items() if k != "subject"}), "the event.subject is missing"),
    (b64({**grid(), "data": "x"}), "the event.data is not an object"),
    (b64({"hello": "world"}), "the event is neither an Event Grid event nor a CloudEvent"),
    (b64([]), "the Event Grid batch is empty"),
    (b64({**grid(), "eventType": 7}), "the event's event type is not a string"),
])
def test_broken_azure_messages_are_invalid(content: str, why: str) -> None:
    invalid = parse_azure_queue(content).invalid
    assert invalid is not None and invalid.startswith(why), invalid


# ----------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(("body", "why"), [
    ("", "the message body is empty"),
    ("   ", "the message body is empty"),
    ("<xml/>", "the message body is not JSON"),
    (b"\xff" * 10, "the message body is not UTF-8 text"),
    ("[1]", "the message is JSON but not an object"),
    ("null", "the message is JSON but not an object"),
    ("1e999999", "the message is JSON but not an object"),
    ("[" * 200_000 + "]" * 200_000, "the message body is JSON nested too deeply"),
    ('{"x": ' * 500 + "1" + "}" * 500, "not an S3, SNS or EventBridge notification (fields: x)"),
    ('{"x": ' * 5000 + "1" + "}" * 5000, "the message body is JSON nested too deeply"),
    ("9" * 5000, "the message body is not JSON"),  # Python's limit on integer digits
    ('{"Records": "x"}', "'Records' is not a list"),
    ('{"Records": []}', "'Records' is empty"),
    ('{"Records": [1]}', "Records[0] is not an object"),
    (s3_body({**s3_record(), "eventName": None}), "Records[0].eventName is missing"),
    (s3_body({**s3_record(), "eventName": ["ObjectCreated:Put"]}), "Records[0].eventName is not a non-empty string"),
    (s3_body({**s3_record(), "s3": {"bucket": {}, "object": {"key": "k"}}}), "Records[0].s3.bucket.name is missing"),
    (s3_body(s3_record(key=5)), "Records[0].s3.object.key is not a non-empty string"),  # type: ignore[arg-type]
    (s3_body(s3_record(key="")), "Records[0].s3.object.key is not a non-empty string"),
    (s3_body(s3_record(key="%FF%FE")), "Records[0].s3.object.key is not UTF-8 once decoded"),
    (s3_body(s3_record(key="k" * 5000)), "Records[0].s3.object.key is longer than 4096"),
    (s3_body(*[s3_record()] * 1001), "'Records' has 1001 entries"),
    (json.dumps({"Message": "x"}), "not an S3, SNS or EventBridge notification (fields: Message)"),
    (json.dumps({**eventbridge(), "detail": []}), "detail is not an object"),
    (json.dumps({**eventbridge(), "detail-type": None}), "the EventBridge event's 'detail-type' is not a string"),
])
def test_hostile_sqs_bodies_are_invalid_never_an_error(body: str | bytes, why: str) -> None:
    invalid = parse_sqs(body).invalid
    assert invalid is not None and invalid.startswith(why), invalid


def test_a_huge_body_is_refused_unread() -> None:
    body = s3_body(s3_record(key="x" * (MAX_BODY + 1)))
    assert parse_sqs(body).invalid == f"the message body is {len(body)} bytes, larger than any bucket notification " \
                                      f"({MAX_BODY} bytes)"
    assert parse_azure_queue("A" * (MAX_BODY + 4)).invalid is not None
    assert parse_pubsub(b"{" * (MAX_BODY + 1), gcs_attributes()).invalid is not None


def test_odd_values_where_optional_fields_are_do_not_spoil_an_event() -> None:
    event = one(parse_sqs(s3_body({**s3_record(size=True, eTag=["x"], versionId=7), "eventTime": "yesterday"})))
    assert (event.size, event.version, event.version_id, event.time) == (None, None, None, None)


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
SAMPLES: list[Any] = [json.loads(s3_body(s3_record(eTag="e"))), json.loads(sns(s3_body(s3_record()))), eventbridge(),
                      grid(), grid(cloud=True)]


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    """``doc`` with the node at a pseudo-random path replaced by ``value``."""
    doc = copy.deepcopy(doc)
    node, parent, key = doc, None, None
    for step in path:
        if isinstance(node, dict) and node:
            key = sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            break
        parent, node = node, node[key]
    if parent is None:
        return value
    parent[key] = value
    return doc


def _well_formed(parsed: Parsed) -> bool:
    return sum((bool(parsed.events), parsed.ignored is not None, parsed.invalid is not None)) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), path=st.lists(st.integers(0, 50), max_size=6), value=JSON,
       text=st.text(max_size=200), attributes=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=6))
def test_no_input_makes_a_parser_raise(sample: Any, path: list[int], value: Any, text: str,
                                       attributes: dict[str, str]) -> None:
    mutated = json.dumps(_mutate(sample, path, value))
    for parsed in (parse_sqs(mutated), parse_sqs(text), parse_azure_queue(mutated), parse_azure_queue(b64(mutated)),
                   parse_azure_queue(text), parse_pubsub(mutated.encode(), {**gcs_attributes(), **attributes}),
                   parse_pubsub(text, attributes)):
        assert _well_formed(parsed), parsed
        assert all(e.key and e.bucket and e.kind in ("created", "deleted") for e in parsed.events)
