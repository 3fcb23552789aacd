"""Bucket event sources: queues of notifications that find new objects between listings.

A sync with ``events:`` reads a queue that its bucket's notifications are sent to: an SQS
queue (S3 direct, through SNS, or through EventBridge), a Pub/Sub subscription (Cloud
Storage notifications), or an Azure Storage queue (Event Grid). This module holds the
``events:`` models (one per type, discriminated on ``type``), the registry of
:data:`EVENT_SOURCES` (type -> ``module:Class``, imported on first use, like the steps) and
:func:`open_event_source`. The queue clients are imported only when a source is opened.

    source = open_event_source(pipeline, sync)       # an EventSource (flexingest.events.base)
    for message in source.drain(max_wait=60):        # run --once: what the queue holds now
        message.events                               # [ObjectEvent(bucket, key, version, kind, time)]
        ...; message.ack()                           # only once its objects are committed

Credentials are the connector's, derived exactly as :mod:`flexingest.connectors` derives them
for the bucket, unless the ``events:`` block gives its own.
"""

from __future__ import annotations

import importlib
import re
import typing
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ..exceptions import FlexingestError
from ..models import AwsCredentials
from ..units import Duration

if TYPE_CHECKING:
    from ..config import Pipeline, Sync
    from .base import EventSource

#: event type -> the class that reads it, imported on first use
EVENT_SOURCES: dict[str, str] = {
    "azure_queue": "flexingest.events.azure_queue:AzureQueueSource",
    "pubsub": "flexingest.events.pubsub:PubSubSource",
    "sqs": "flexingest.events.sqs:SQSSource",
}
#: event type -> the connector type whose notifications it carries
CONNECTOR_TYPES: dict[str, str] = {"azure_queue": "azure_blob", "pubsub": "gcs", "sqs": "s3"}
#: event type -> (module of its client, the package that brings it, the extra that installs it)
CLIENTS: dict[str, tuple[str, str, str]] = {
    "azure_queue": ("azure.storage.queue", "azure-storage-queue", "flexingest[azure,events]"),
    "pubsub": ("google.pubsub_v1", "google-cloud-pubsub", "flexingest[gcs,events]"),
    "sqs": ("aiobotocore", "aiobotocore", "flexingest[s3]"),
}


# --------------------------------------------------------------------------- the events: block


class EventsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the largest batch one receive may ask for, and the longest visibility the queue allows
    MAX_BATCH: ClassVar[int] = 10
    MAX_VISIBILITY: ClassVar[float] = 12 * 3600.0
    MIN_VISIBILITY: ClassVar[float] = 1.0

    endpoint_url: str | None = Field(None, description="emulators and private endpoints")
    wait: Duration = Field(timedelta(seconds=20), description="how long one receive waits for a message "
                           "before answering empty (long polling); also how soon a service notices a stop")
    batch: int = Field(10, ge=1, description="messages asked for in one receive")
    visibility_timeout: Duration = Field(
        timedelta(minutes=5), description="how long a received message stays hidden from other consumers; "
        "it is extended while its objects are processed, and delivered again if never acknowledged")
    lateness: Duration = Field(
        timedelta(minutes=1), description="how late a notification may arrive after its object changed; "
        "a reconciliation listing counts as missed by events what changed longer ago than this, was not "
        "announced, and is new to the state")

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v > cls.MAX_BATCH:
            raise ValueError(f"must be at most {cls.MAX_BATCH} for {cls._kind()} (got {v})")
        return v

    @field_validator("visibility_timeout")
    @classmethod
    def _visibility(cls, v: timedelta) -> timedelta:
        if not cls.MIN_VISIBILITY <= v.total_seconds() <= cls.MAX_VISIBILITY:
            raise ValueError(f"must be between {_span(cls.MIN_VISIBILITY)} and {_span(cls.MAX_VISIBILITY)} for "
                             f"{cls._kind()} (got {_span(v.total_seconds())})")
        return v

    @field_validator("wait")
    @classmethod
    def _wait(cls, v: timedelta) -> timedelta:
        if v.total_seconds() > 60:
            raise ValueError(f"must be at most 60s (got {_span(v.total_seconds())})")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http:// or https:// URL (got {v!r})")
        return v

    @classmethod
    def _kind(cls) -> str:
        field = cls.model_fields.get("type")
        args = typing.get_args(field.annotation) if field is not None else ()
        return str(args[0]) if args else cls.__name__


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_SQS_URL = re.compile(r"^https?://[^/\s]+/[^/\s]+/[^/\s]+/?$")


class SQSEvents(EventsBase, AwsCredentials):
    """S3 notifications in an SQS queue: direct, through SNS (raw or not), or through EventBridge."""

    type: Literal["sqs"]
    queue_url: str = Field(description="e.g. https://sqs.us-east-1.amazonaws.com/123456789012/contracts-events")
    region: str | None = Field(None, description="default: the queue URL's region, else the connector's")

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, v: str) -> str:
        if not _SQS_URL.match(v):
            raise ValueError(f"must be an SQS queue URL like https://sqs.us-east-1.amazonaws.com/123456789012/name "
                             f"(got {v!r})")
        return v

    @model_validator(mode="after")
    def _sqs(self) -> SQSEvents:
        self.check_credentials()
        return self


_SUBSCRIPTION = re.compile(r"^projects/[^/\s]+/subscriptions/[^/\s]+$")
_SUBSCRIPTION_NAME = re.compile(r"^[A-Za-z][-A-Za-z0-9_.~+%]{2,254}$")


class PubSubEvents(EventsBase):
    """Cloud Storage notifications in a Pub/Sub subscription (synchronous pull)."""

    MAX_BATCH: ClassVar[int] = 1000
    MAX_VISIBILITY: ClassVar[float] = 600.0
    MIN_VISIBILITY: ClassVar[float] = 10.0

    type: Literal["pubsub"]
    subscription: str = Field(description="projects/<project>/subscriptions/<name>, or <name> with 'project'")
    project: str | None = Field(None, description="default: the connector's project")
    service_account_json: SecretStr | None = Field(
        None, description="path to a service-account key file, or the key's JSON itself")
    anonymous: bool = Field(False, description="no credentials: emulators")

    @field_validator("subscription")
    @classmethod
    def _subscription(cls, v: str) -> str:
        if "/" in v:
            if not _SUBSCRIPTION.match(v):
                raise ValueError(f"must be projects/<project>/subscriptions/<name>, or a bare name (got {v!r})")
        elif not _SUBSCRIPTION_NAME.match(v):
            raise ValueError(f"{v!r} is not a Pub/Sub subscription name (3-255 letters, digits, - _ . ~ + %, "
                             "starting with a letter)")
        return v

    @model_validator(mode="after")
    def _pubsub(self) -> PubSubEvents:
        if self.anonymous and self.service_account_json is not None:
            raise ValueError("'anonymous: true' cannot be combined with 'service_account_json'")
        return self

    def own_credentials(self) -> bool:
        return self.anonymous or self.service_account_json is not None

    def subscription_path(self, connector_project: str | None) -> str | None:
        """The full subscription name, or None when a bare name has no project to go with."""
        if "/" in self.subscription:
            return self.subscription
        project = self.project or connector_project
        return f"projects/{project}/subscriptions/{self.subscription}" if project else None


_QUEUE_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class AzureQueueEvents(EventsBase):
    """Event Grid blob events in an Azure Storage queue (the storage-queue event handler)."""

    MAX_BATCH: ClassVar[int] = 32
    MAX_VISIBILITY: ClassVar[float] = 7 * 86400.0

    type: Literal["azure_queue"]
    queue: str = Field(description="the queue's name, in the connector's storage account unless given here")
    account_name: str | None = Field(None, description="default: the connector's account")
    account_key: SecretStr | None = None
    sas_token: SecretStr | None = Field(None, description="an SAS allowing the queue service: read, process, update")
    connection_string: SecretStr | None = None

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        if not _QUEUE_NAME.match(v):
            raise ValueError(f"{v!r} is not an Azure queue name (3-63 lowercase letters, digits and single hyphens)")
        return v

    @model_validator(mode="after")
    def _azure(self) -> AzureQueueEvents:
        given = [n for n in ("account_key", "sas_token", "connection_string") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of account_key, sas_token, connection_string (got {', '.join(given)})")
        return self

    def own_credentials(self) -> bool:
        return any(getattr(self, n) is not None for n in ("account_key", "sas_token", "connection_string"))


EventsConfig = Annotated[Union[SQSEvents, PubSubEvents, AzureQueueEvents], Field(discriminator="type")]
EVENT_TYPES = tuple(sorted(EVENT_SOURCES))
#: fields of an events: block that are secret (never shown in errors or logs)
SECRET_FIELDS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                           "service_account_json", "account_key", "sas_token", "connection_string"})


# --------------------------------------------------------------------------- checks against the connector


def events_problems(events: Any, connector_type: Any, connector_config: Any) -> list[tuple[tuple[str, ...], str]]:
    """Why an ``events:`` block (raw data) cannot work with its sync's connector: (field, message) pairs.

    Run by the loader with the other cross-field checks, so that they name file:line:col.
    """
    if not isinstance(events, dict) or events.get("type") not in EVENT_SOURCES:
        return []  # the model reports the shape
    kind = events["type"]
    config = connector_config if isinstance(connector_config, dict) else {}
    expected = CONNECTOR_TYPES[kind]
    if isinstance(connector_type, str) and connector_type != expected:
        fits = [t for t, c in CONNECTOR_TYPES.items() if c == connector_type]
        hint = f"type {fits[0]!r} carries {connector_type} notifications" if fits else \
            f"{connector_type} connectors have no events"
        return [(("type",), f"event type {kind!r} carries {expected} notifications, but the connector is "
                            f"{connector_type} ({hint})")]
    problems: list[tuple[tuple[str, ...], str]] = []
    if kind == "pubsub":
        name = events.get("subscription")
        if isinstance(name, str) and "/" not in name and not events.get("project") and not config.get("project"):
            problems.append((("subscription",), f"a bare subscription name needs a project: write "
                             f"projects/<project>/subscriptions/{name}, or give 'project' here or in the connector"))
    if kind == "azure_queue" and not events.get("endpoint_url") and events.get("connection_string") is None:
        own = any(events.get(n) is not None for n in ("account_key", "sas_token"))
        url = config.get("account_url") if isinstance(config.get("account_url"), str) else None
        ours = config.get("account_name") or account_from_url(url)
        named = events.get("account_name")
        if own and not (named or ours) and config.get("connection_string") is None:
            problems.append((("account_name",), "say which storage account holds the queue: 'account_name' "
                             "(or 'endpoint_url', or 'connection_string')"))
        elif (named is None or named == ours) and url and queue_endpoint_from_blob(url) is None:
            problems.append((("endpoint_url",), f"the queue endpoint cannot be derived from the connector's "
                             f"account_url {url!r}: give the queue service's URL as 'endpoint_url'"))
    return problems


def account_from_url(url: str | None) -> str | None:
    """The storage account a blob endpoint names: ``acct`` of ``https://acct.blob.core.windows.net``,
    or of the path-style ``http://127.0.0.1:10000/acct`` (Azurite)."""
    if not url or "://" not in url:
        return None
    host, _, path = url.split("://", 1)[1].partition("/")
    if ".blob." in host or ".queue." in host or ".dfs." in host:
        return host.split(".", 1)[0] or None
    return path.strip("/").split("/", 1)[0] or None


def queue_endpoint_from_blob(url: str) -> str | None:
    """The queue endpoint of a storage account from its blob endpoint (``.blob.`` -> ``.queue.``),
    or None when the URL does not name it that way (Azurite, a custom domain)."""
    scheme, sep, rest = url.strip().rstrip("/").partition("://")
    host, slash, path = rest.partition("/")
    if not sep or ".blob." not in host:
        return None
    return f"{scheme}://{host.replace('.blob.', '.queue.', 1)}{slash}{path}"


# --------------------------------------------------------------------------- registry


def event_source_class(kind: str) -> type[EventSource]:
    """The class reading ``kind`` events, imported now; a missing client names the install."""
    from .base import EventSource

    target = EVENT_SOURCES.get(kind)
    if target is None:
        raise FlexingestError(f"unknown event type {kind!r} (known: {', '.join(EVENT_TYPES)})")
    module_name, _, attr = target.partition(":")
    client, package, extra = CLIENTS[kind]
    try:
        importlib.import_module(client)
    except ImportError as exc:
        raise FlexingestError(f"event type {kind!r} needs the {package} package: pip install '{extra}' "
                              f"({exc})") from None
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, EventSource)):
        raise FlexingestError(f"event type {kind!r} ({target}) is not an EventSource")
    return cls


def open_event_source(pipeline: Pipeline, sync: Sync) -> EventSource:
    """The event source of ``sync`` (which must have ``events:``), ready to receive.

    Nothing is contacted until the first receive; :meth:`EventSource.check` makes one
    bounded request (for ``flexingest test``).
    """
    if sync.events is None:
        raise FlexingestError(f"sync {sync.name!r} has no events")
    connector = pipeline.connector(sync.connector)
    return event_source_class(sync.events.type)(sync.events, connector, pipeline.base_dir)
