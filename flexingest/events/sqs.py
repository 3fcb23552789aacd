"""S3 notifications from an SQS queue (direct, through SNS, or through EventBridge).

The client is aiobotocore's, on fsspec's I/O loop (the one s3fs uses), built from the same
session and credentials as the connector's bucket (:class:`flexingest.connectors.s3.S3Storage`):
keys, session token, profile, an assumed role that refreshes, or the standard AWS chain.
The ``events:`` block may give its own credentials instead; its region defaults to the queue
URL's. A queue URL that does not name an AWS host (moto, LocalStack, ElasticMQ) is also the
endpoint, unless ``endpoint_url`` says otherwise.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..exceptions import EventSourceError
from .base import EventSource, Message, translate
from .messages import parse_sqs

if TYPE_CHECKING:
    from ..connectors.s3 import S3Storage
    from ..models import ConnectorBase
    from . import SQSEvents

_REGION = re.compile(r"(?:^|\.)(?:sqs[.-]([a-z0-9-]+)|([a-z0-9-]+)\.queue)\.amazonaws\.com(?:\.cn)?$")
_AWS_HOST = re.compile(r"\.amazonaws\.com(?:\.cn)?$")


def queue_region(queue_url: str) -> str | None:
    """``us-east-1`` from ``https://sqs.us-east-1.amazonaws.com/123/name`` (None for other hosts)."""
    match = _REGION.search(urlsplit(queue_url).hostname or "")
    return (match.group(1) or match.group(2)) if match else None


def queue_endpoint(queue_url: str) -> str | None:
    """The server a non-AWS queue URL names (``http://127.0.0.1:5000``); None for AWS hosts."""
    parts = urlsplit(queue_url)
    if _AWS_HOST.search(parts.hostname or ""):
        return None
    return f"{parts.scheme}://{parts.netloc}"


class SQSSource(EventSource):
    kind = "sqs"
    LONG_POLL = 20.0  # SQS's longest WaitTimeSeconds

    config: SQSEvents

    def __init__(self, config: SQSEvents, connector: ConnectorBase, base_dir: Path) -> None:
        super().__init__(config, connector, base_dir)
        self.queue_url = config.queue_url
        self._storage = self._credentials_storage()
        self._client: Any = None
        self._context: Any = None
        self._opening = asyncio.Lock()

    def describe(self) -> str:
        return f"SQS queue {self.queue_url}"

    # -- client
    def _credentials_storage(self) -> S3Storage:
        """An S3Storage whose settings are the queue's: the connector's credentials (or the events
        block's own), the queue's region and endpoint. Only its session and options are used."""
        from ..connectors.s3 import S3Storage

        c = self.config
        base: Any = self.connector.config
        update: dict[str, Any] = {
            "region": c.region or queue_region(c.queue_url) or base.region or "us-east-1",
            "endpoint_url": c.endpoint_url or queue_endpoint(c.queue_url),
            "anonymous": False,  # queues are never read unsigned: an anonymous bucket's queue uses the AWS chain
        }
        if c.own_credentials():
            update.update(aws_access_key_id=c.aws_access_key_id, aws_secret_access_key=c.aws_secret_access_key,
                          aws_session_token=c.aws_session_token, profile=c.profile, role_arn=c.role_arn)
        config = base.model_copy(update=update)
        connector = self.connector.model_copy(update={"config": config})
        return S3Storage(connector, self.base_dir, timeout=config.timeout.total_seconds())

    @property
    def region(self) -> str:
        return str(self._storage.config.region)

    @property
    def endpoint_url(self) -> str | None:
        return self._storage.config.endpoint_url  # type: ignore[no-any-return]

    def _call(self, operation: str, **kwargs: Any) -> Any:
        from fsspec.asyn import get_loop, sync

        return sync(get_loop(), self._acall, operation, kwargs)

    async def _acall(self, operation: str, kwargs: dict[str, Any]) -> Any:
        client = await self._open()
        return await getattr(client, operation)(**kwargs)

    async def _open(self) -> Any:
        async with self._opening:
            if self._client is None:
                from aiobotocore.config import AioConfig

                storage = self._storage
                opts = storage.options()
                kwargs: dict[str, Any] = {
                    "region_name": self.region,
                    "config": AioConfig(connect_timeout=10, read_timeout=max(storage.timeout, self.LONG_POLL + 10),
                                        retries={"total_max_attempts": 3, "mode": "standard"}),
                }
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                for ours, theirs in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key"),
                                     ("token", "aws_session_token")):
                    if ours in opts:
                        kwargs[theirs] = opts[ours]
                self._context = storage._session().create_client("sqs", **kwargs)
                self._client = await self._context.__aenter__()
            return self._client

    # -- operations
    def _receive(self, max_messages: int, wait_seconds: float) -> list[Message]:
        out = self._call("receive_message", QueueUrl=self.queue_url, MaxNumberOfMessages=min(max_messages, 10),
                         WaitTimeSeconds=min(20, math.ceil(wait_seconds)),
                         VisibilityTimeout=int(self.visibility_timeout),
                         MessageSystemAttributeNames=["ApproximateReceiveCount"])
        messages = []
        for raw in out.get("Messages", []):
            count = raw.get("Attributes", {}).get("ApproximateReceiveCount")
            messages.append(Message(self, str(raw.get("MessageId", "")), raw["ReceiptHandle"],
                                    parse_sqs(raw.get("Body", "")),
                                    receive_count=int(count) if str(count).isdigit() else None))
        return messages

    def _ack(self, message: Message) -> None:
        self._call("delete_message", QueueUrl=self.queue_url, ReceiptHandle=message.handle)

    def _ack_many(self, messages: list[Message]) -> list[EventSourceError]:
        failures: list[EventSourceError] = []
        for start in range(0, len(messages), 10):  # DeleteMessageBatch takes ten
            chunk = {str(i): m for i, m in enumerate(messages[start:start + 10])}
            try:
                with self.errors("acknowledging messages"):
                    out = self._call("delete_message_batch", QueueUrl=self.queue_url,
                                     Entries=[{"Id": i, "ReceiptHandle": m.handle} for i, m in chunk.items()])
            except EventSourceError as exc:
                failures.extend([exc] * len(chunk))
                continue
            failed = {f["Id"]: f for f in out.get("Failed", [])}
            for i, message in chunk.items():
                if i not in failed:
                    message.acked = True
                    continue
                error = Exception(f"{failed[i].get('Code', '')}: {failed[i].get('Message', '')}")
                error.response = {"Error": {"Code": failed[i].get("Code", "")}}  # type: ignore[attr-defined]
                failures.append(translate(error, f"{self.describe()} (acknowledging message {message.id})",
                                          self.redact))
        return failures

    def _extend(self, message: Message, seconds: float) -> Any:
        self._call("change_message_visibility", QueueUrl=self.queue_url, ReceiptHandle=message.handle,
                   VisibilityTimeout=max(0, min(int(seconds), 43200)))
        return message.handle

    def _check(self) -> None:
        self._backlog()

    def _backlog(self) -> int | None:
        out = self._call("get_queue_attributes", QueueUrl=self.queue_url,
                         AttributeNames=["ApproximateNumberOfMessages"])
        value = out.get("Attributes", {}).get("ApproximateNumberOfMessages")
        return int(value) if str(value).isdigit() else None

    def _close(self) -> None:
        if self._context is not None:
            from fsspec.asyn import get_loop, sync

            context, self._context, self._client = self._context, None, None
            sync(get_loop(), context.__aexit__, None, None, None)
