"""Bucket notifications as lists of :class:`ObjectEvent`: pure functions, no I/O.

One function per queue kind turns a raw message into a :class:`Parsed`: the objects it
names, or why it is ignored (a test event, an event that changes no object's version), or
why it is invalid (not a bucket notification at all). No exception escapes them.

Shapes understood:

- SQS (:func:`parse_sqs`): S3 event notifications (``Records[].s3``; keys are form-encoded,
  ``+`` for a space), the ``s3:TestEvent`` sent when a notification is configured, SNS
  envelopes around either (raw message delivery off), and EventBridge events from
  ``aws.s3`` (keys are **not** encoded there).
- Pub/Sub (:func:`parse_pubsub`): Cloud Storage notifications (attributes ``eventType``,
  ``bucketId``, ``objectId``, ``objectGeneration``; the body, if any, is the object resource).
- Azure queue (:func:`parse_azure_queue`): Event Grid ``Microsoft.Storage.Blob*`` events, in
  the Event Grid schema or the CloudEvents schema, as JSON or base64 JSON (what Event Grid's
  storage-queue handler writes).

Versions are what a listing records as the version token, so that an event and a listing
agree: the S3 ETag without quotes, the GCS generation as a string, the Azure ETag without
quotes (Event Grid's ``eTag`` is the blob's ETag, ``0x8D...``; Data Lake events quote it).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Mapping
from urllib.parse import unquote, unquote_plus, urlsplit

#: Larger bodies are refused unread: a notification is a few KiB (SQS takes at most 1 MiB).
MAX_BODY = 2 * 1024 * 1024
#: Records or events in one message: S3 sends one, Event Grid batches are small.
MAX_EVENTS = 1000
#: Longest key accepted (S3 and GCS allow 1,024 bytes, Azure 1,024 characters).
MAX_KEY = 4096

Kind = Literal["created", "deleted"]


@dataclass(frozen=True)
class ObjectEvent:
    """One object that a notification says was created (or overwritten) or deleted.

    ``version`` is the object's version token as a listing records it (None when the
    notification does not carry it, as for most deletions); ``time`` is when the change
    happened, as the cloud says. ``size`` and the S3 ``version_id`` (versioned buckets) are
    there when the notification carries them.
    """

    bucket: str
    key: str
    version: str | None
    kind: Kind
    time: datetime | None
    size: int | None = None
    version_id: str | None = None


@dataclass(frozen=True)
class Parsed:
    """What one message says: its events, or why it is ignored, or why it is invalid."""

    events: tuple[ObjectEvent, ...] = ()
    ignored: str | None = None
    invalid: str | None = None


class _Invalid(Exception):
    """Raised inside the parsers; turned into ``Parsed(invalid=...)`` at their edge."""


def _invalid(reason: str) -> Parsed:
    return Parsed(invalid=reason)


# --------------------------------------------------------------------------- entry points


def parse_sqs(body: str | bytes) -> Parsed:
    """An SQS message body: S3 notification, S3 test event, SNS envelope or EventBridge event."""
    try:
        return _aws(_load_json(body, "the message body"), sns=True)
    except _Invalid as exc:
        return _invalid(str(exc))
    except Exception as exc:  # noqa: BLE001 - the safety net: a hostile body never escapes as an error
        return _invalid(f"unexpected message shape ({type(exc).__name__})")


def parse_pubsub(data: bytes | str, attributes: Mapping[str, str]) -> Parsed:
    """A Pub/Sub message of a Cloud Storage notification (its data and its attributes)."""
    try:
        return _gcs(data, attributes)
    except _Invalid as exc:
        return _invalid(str(exc))
    except Exception as exc:  # noqa: BLE001 - the safety net
        return _invalid(f"unexpected message shape ({type(exc).__name__})")


def parse_azure_queue(content: str | bytes) -> Parsed:
    """An Azure Storage queue message written by Event Grid (JSON or base64 JSON, either schema)."""
    try:
        return _event_grid(_load_json(_unbase64(content), "the message"))
    except _Invalid as exc:
        return _invalid(str(exc))
    except Exception as exc:  # noqa: BLE001 - the safety net
        return _invalid(f"unexpected message shape ({type(exc).__name__})")


# --------------------------------------------------------------------------- helpers


def _load_json(raw: str | bytes, what: str) -> Any:
    if len(raw) > MAX_BODY:
        raise _Invalid(f"{what} is {len(raw)} bytes, larger than any bucket notification ({MAX_BODY} bytes)")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid(f"{what} is not UTF-8 text") from None
    text = raw.strip()
    if not text:
        raise _Invalid(f"{what} is empty")
    try:
        return json.loads(text)
    except RecursionError:
        raise _Invalid(f"{what} is JSON nested too deeply") from None
    except ValueError as exc:
        raise _Invalid(f"{what} is not JSON ({str(exc).splitlines()[0][:80]})") from None


def _unbase64(content: str | bytes) -> str | bytes:
    """Event Grid's storage-queue handler writes base64 JSON; a message may also be plain JSON."""
    if len(content) > MAX_BODY:
        return content  # refused by _load_json with the size
    text = content.strip()
    first = text[:1]
    if first in ("{", "[", b"{", b"["):
        return text
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid("the message is neither JSON nor base64-encoded JSON") from None


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} is not an object")
    return value


def _text(value: Any, what: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{what} is missing" if value is None else f"{what} is not a non-empty string")
    return value


def _key(value: str, what: str) -> str:
    if len(value) > MAX_KEY:
        raise _Invalid(f"{what} is longer than {MAX_KEY} characters")
    return value


def _version(value: Any) -> str | None:
    """An ETag as a listing records it: without quotes (and None when absent or empty)."""
    if not isinstance(value, str):
        return None
    value = value.strip().strip('"').strip()
    return value or None


def _size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time as an aware datetime; None (never an error) when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _count(items: list[Any], what: str) -> None:
    if not items:
        raise _Invalid(f"{what} is empty")
    if len(items) > MAX_EVENTS:
        raise _Invalid(f"{what} has {len(items)} entries, more than {MAX_EVENTS}")


def _settle(events: list[ObjectEvent], skipped: list[str]) -> Parsed:
    if events:
        return Parsed(events=tuple(events))
    return Parsed(ignored="; ".join(dict.fromkeys(skipped)) or "no object events")


# --------------------------------------------------------------------------- AWS


def _aws(doc: Any, *, sns: bool) -> Parsed:
    if not isinstance(doc, dict):
        raise _Invalid("the message is JSON but not an object")
    if "Records" in doc:
        return _s3_records(doc["Records"])
    if doc.get("Event") == "s3:TestEvent":
        bucket = doc.get("Bucket")
        where = f" for bucket {bucket!r}" if isinstance(bucket, str) else ""
        return Parsed(ignored=f"s3:TestEvent{where} (sent when a notification is configured)")
    if "detail-type" in doc and "source" in doc:
        return _eventbridge(doc)
    kind = doc.get("Type")
    if kind in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation") and "TopicArn" in doc:
        if not sns:
            raise _Invalid("an SNS envelope inside an SNS envelope")
        topic = doc.get("TopicArn")
        if kind == "SubscriptionConfirmation":
            return Parsed(ignored=f"SNS SubscriptionConfirmation for topic {topic!r}: confirm the "
                                  "subscription (its SubscribeURL is in the message)")
        if kind == "UnsubscribeConfirmation":
            return Parsed(ignored=f"SNS UnsubscribeConfirmation for topic {topic!r}")
        message = doc.get("Message")
        if not isinstance(message, str):
            raise _Invalid("the SNS notification's 'Message' is not a string")
        try:
            inner = _load_json(message, "the SNS notification's 'Message'")
        except _Invalid as exc:
            raise _Invalid(f"{exc} (SNS from topic {topic!r})") from None
        return _aws(inner, sns=False)
    known = ", ".join(sorted(k for k in doc if isinstance(k, str))[:8])
    raise _Invalid(f"not an S3, SNS or EventBridge notification (fields: {known or 'none'})")


def _s3_records(records: Any) -> Parsed:
    if not isinstance(records, list):
        raise _Invalid("'Records' is not a list")
    _count(records, "'Records'")
    events: list[ObjectEvent] = []
    skipped: list[str] = []
    for i, record in enumerate(records):
        where = f"Records[{i}]"
        record = _mapping(record, where)
        name = _text(record.get("eventName"), f"{where}.eventName")
        assert name is not None
        name = name.removeprefix("s3:")  # MinIO and Ceph write "s3:ObjectCreated:Put"
        s3 = _mapping(record.get("s3"), f"{where}.s3")
        bucket = _text(_mapping(s3.get("bucket"), f"{where}.s3.bucket").get("name"), f"{where}.s3.bucket.name")
        obj = _mapping(s3.get("object"), f"{where}.s3.object")
        raw_key = _text(obj.get("key"), f"{where}.s3.object.key")
        assert bucket is not None and raw_key is not None
        if name.startswith("ObjectCreated:"):
            kind: Kind = "created"
        elif name.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
            kind = "deleted"
        else:
            skipped.append(f"S3 event {name} changes no object's content")
            continue
        try:  # form encoding: "+" is a space, "%2B" a plus
            key = unquote_plus(raw_key, errors="strict")
        except UnicodeDecodeError:
            raise _Invalid(f"{where}.s3.object.key is not UTF-8 once decoded") from None
        version_id = obj.get("versionId")
        events.append(ObjectEvent(
            bucket=bucket, key=_key(key, f"{where}.s3.object.key"), version=_version(obj.get("eTag")),
            kind=kind, time=_time(record.get("eventTime")), size=_size(obj.get("size")),
            version_id=version_id if isinstance(version_id, str) and version_id else None))
    return _settle(events, skipped)


_EVENTBRIDGE_KINDS: dict[str, Kind] = {"Object Created": "created", "Object Deleted": "deleted"}


def _eventbridge(doc: dict[str, Any]) -> Parsed:
    source, detail_type = doc.get("source"), doc.get("detail-type")
    if source != "aws.s3":
        return Parsed(ignored=f"an EventBridge event from {source!r}, not aws.s3")
    if not isinstance(detail_type, str):
        raise _Invalid("the EventBridge event's 'detail-type' is not a string")
    kind = _EVENTBRIDGE_KINDS.get(detail_type)
    if kind is None:
        return Parsed(ignored=f"S3 event {detail_type!r} changes no object's content")
    detail = _mapping(doc.get("detail"), "detail")
    bucket = _text(_mapping(detail.get("bucket"), "detail.bucket").get("name"), "detail.bucket.name")
    obj = _mapping(detail.get("object"), "detail.object")
    key = _text(obj.get("key"), "detail.object.key")  # EventBridge keys are not URL-encoded
    assert bucket is not None and key is not None
    version_id = obj.get("version-id")
    return Parsed(events=(ObjectEvent(
        bucket=bucket, key=_key(key, "detail.object.key"), version=_version(obj.get("etag", obj.get("eTag"))),
        kind=kind, time=_time(doc.get("time")), size=_size(obj.get("size")),
        version_id=version_id if isinstance(version_id, str) and version_id else None),))


# --------------------------------------------------------------------------- Google Cloud Storage


def _gcs(data: bytes | str, attributes: Mapping[str, str]) -> Parsed:
    if not isinstance(attributes, Mapping):
        raise _Invalid("the message's attributes are not a mapping")
    event_type = attributes.get("eventType")
    if event_type is None:
        raise _Invalid("no 'eventType' attribute: not a Cloud Storage notification")
    bucket = _text(attributes.get("bucketId"), "attribute 'bucketId'")
    key = _text(attributes.get("objectId"), "attribute 'objectId'")
    assert bucket is not None and key is not None
    body = _gcs_body(data, attributes)
    generation = attributes.get("objectGeneration", body.get("generation"))
    if not (isinstance(generation, str) and generation.isdigit() and len(generation) < 40):
        raise _Invalid(f"attribute 'objectGeneration' is not a generation number: {str(generation)[:40]!r}")
    if "generation" in body and str(body["generation"]) != generation:
        raise _Invalid(f"the body's generation {str(body['generation'])[:40]!r} is not the attribute's {generation!r}")
    replaced = attributes.get("overwrittenByGeneration")
    if event_type == "OBJECT_FINALIZE":
        kind: Kind = "created"
    elif event_type in ("OBJECT_DELETE", "OBJECT_ARCHIVE"):
        if replaced is not None:  # an overwrite: the new generation's OBJECT_FINALIZE is the event
            return Parsed(ignored=f"{event_type} of generation {generation}, replaced by generation {replaced}")
        kind = "deleted"
    elif event_type == "OBJECT_METADATA_UPDATE":
        return Parsed(ignored="OBJECT_METADATA_UPDATE: the metadata changed, the generation did not")
    else:
        raise _Invalid(f"unknown Cloud Storage eventType {str(event_type)[:60]!r}")
    return Parsed(events=(ObjectEvent(
        bucket=bucket, key=_key(key, "attribute 'objectId'"), version=generation, kind=kind,
        time=_time(attributes.get("eventTime")), size=_size(body.get("size")) if kind == "created" else None),))


def _gcs_body(data: bytes | str, attributes: Mapping[str, str]) -> dict[str, Any]:
    """The object resource of a JSON_API_V1 notification ({} for payloadFormat NONE)."""
    if not data or attributes.get("payloadFormat") == "NONE":
        return {}
    body = _load_json(data, "the message data")
    if not isinstance(body, dict):
        raise _Invalid("the message data is JSON but not an object resource")
    return body


# --------------------------------------------------------------------------- Azure Event Grid

_SUBJECT = re.compile(r"^/blobServices/default/containers/([^/]+)/blobs/(.+)$", re.DOTALL)
_IGNORED_PREFIXES = ("Microsoft.Storage.", "Microsoft.EventGrid.")
_RENAMED: tuple[tuple[str, Kind], ...] = (("sourceUrl", "deleted"), ("destinationUrl", "created"))


def _event_grid(doc: Any) -> Parsed:
    items = doc if isinstance(doc, list) else [doc]
    _count(items, "the Event Grid batch")
    events: list[ObjectEvent] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        where = f"events[{i}]" if isinstance(doc, list) else "the event"
        item = _mapping(item, where)
        if "specversion" in item:  # CloudEvents 1.0 schema
            event_type, event_time = item.get("type"), item.get("time")
        elif "eventType" in item:  # Event Grid schema
            event_type, event_time = item.get("eventType"), item.get("eventTime")
        else:
            raise _Invalid(f"{where} is neither an Event Grid event nor a CloudEvent")
        if not isinstance(event_type, str):
            raise _Invalid(f"{where}'s event type is not a string")
        data = item.get("data")
        when = _time(event_time)
        if event_type in ("Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobDeleted"):
            data = _mapping(data, f"{where}.data")
            container, key = _blob_subject(item.get("subject"), where)
            created = event_type.endswith("Created")
            events.append(ObjectEvent(
                bucket=container, key=key, version=_version(data.get("eTag")),
                kind="created" if created else "deleted", time=when,
                size=_size(data.get("contentLength")) if created else None))
        elif event_type == "Microsoft.Storage.BlobRenamed":  # hierarchical namespace: gone here, new there
            data = _mapping(data, f"{where}.data")
            for field, kind in _RENAMED:
                container, key = _blob_url(data.get(field), f"{where}.data.{field}")
                events.append(ObjectEvent(bucket=container, key=key, version=None, kind=kind, time=when))
        elif event_type.startswith(_IGNORED_PREFIXES):
            skipped.append(f"Event Grid event {event_type} changes no blob's content")
        else:
            raise _Invalid(f"{where} is a {event_type[:80]!r} event, not a Blob Storage event")
    return _settle(events, skipped)


def _blob_subject(subject: Any, where: str) -> tuple[str, str]:
    """``/blobServices/default/containers/<container>/blobs/<name>``: the name as written, not encoded."""
    text = _text(subject, f"{where}.subject")
    assert text is not None
    match = _SUBJECT.match(text)
    if match is None:
        raise _Invalid(f"{where}.subject is not /blobServices/default/containers/<container>/blobs/<name>")
    return match.group(1), _key(match.group(2), f"{where}.subject")


def _blob_url(url: Any, what: str) -> tuple[str, str]:
    """``https://<account>.blob.core.windows.net/<container>/<name>`` (percent-encoded)."""
    text = _text(url, what)
    assert text is not None
    path = urlsplit(text).path.lstrip("/")
    container, _, name = path.partition("/")
    if not container or not name:
        raise _Invalid(f"{what} names no container and blob")
    try:
        return unquote(container, errors="strict"), _key(unquote(name, errors="strict"), what)
    except UnicodeDecodeError:
        raise _Invalid(f"{what} is not UTF-8 once decoded") from None
