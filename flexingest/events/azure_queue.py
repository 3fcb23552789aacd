"""Event Grid blob events from an Azure Storage queue (Event Grid's storage-queue handler).

The client is azure-storage-queue's ``QueueClient``. Azure queues have no long polling:
a receive polls, backing off from 0.1 s to 2 s, until ``wait`` passes. Each update of a
message (``extend``) returns a new pop receipt, which the message keeps for its next update
or its deletion.

The storage account and credentials are the connector's, as
:class:`flexingest.connectors.AzureBlobStorage` takes them (account key, SAS, connection
string, or the default Azure credential chain), unless the ``events:`` block gives its own.
The queue endpoint is ``endpoint_url``, else the connection string's ``QueueEndpoint``, else
the blob endpoint with ``.blob.`` replaced by ``.queue.``, else
``https://<account>.queue.core.windows.net``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import FlexingestError
from . import account_from_url, queue_endpoint_from_blob
from .base import EventSource, Message
from .messages import parse_azure_queue

if TYPE_CHECKING:
    from ..models import ConnectorBase
    from . import AzureQueueEvents

MAX_VISIBILITY = 7 * 86400  # seconds: Azure's longest


def parse_connection_string(text: str) -> dict[str, str]:
    """``Name=value;...`` as a dict (values may contain '=': an account key's padding)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out[name.strip()] = value.strip()
    return out


class AzureQueueSource(EventSource):
    kind = "azure_queue"
    LONG_POLL = 0.0  # no long polling: receive polls

    config: AzureQueueEvents

    def __init__(self, config: AzureQueueEvents, connector: ConnectorBase, base_dir: Path) -> None:
        super().__init__(config, connector, base_dir)
        self.queue = config.queue
        self.account_url, self._credential = self._endpoint_and_credential()
        self._client: Any = None

    def describe(self) -> str:
        return f"Azure queue {self.account_url}/{self.queue}"

    # -- client
    def _endpoint_and_credential(self) -> tuple[str, Any]:
        """The queue service URL and the credential, from the events block's settings or the connector's."""
        c = self.config
        base: Any = self.connector.config
        ours = base.account_name or account_from_url(base.account_url)
        same_account = c.account_name is None or c.account_name == ours
        names = ("account_key", "sas_token", "connection_string", "anonymous")
        source: dict[str, Any] = {n: getattr(c if c.own_credentials() else base, n, None) for n in names}
        source["account_name"] = c.account_name or ours
        source["account_url"] = base.account_url if same_account else None
        if c.own_credentials() or not same_account:
            source["anonymous"] = False
        if c.own_credentials() and source["connection_string"] is None and base.connection_string is not None \
                and source["account_name"] is None:
            source["account_name"] = parse_connection_string(
                base.connection_string.get_secret_value()).get("AccountName")
        reveal = {n: source[n].get_secret_value() if source[n] is not None else None
                  for n in ("account_key", "sas_token", "connection_string")}
        account = source["account_name"]
        endpoint = c.endpoint_url
        if reveal["connection_string"] is not None:
            parts = parse_connection_string(reveal["connection_string"])
            account = parts.get("AccountName") or account
            endpoint = endpoint or parts.get("QueueEndpoint")
            if not endpoint and parts.get("BlobEndpoint"):
                endpoint = queue_endpoint_from_blob(parts["BlobEndpoint"])
                if endpoint is None:
                    raise FlexingestError(
                        f"{self._where()}: the connection string has a BlobEndpoint but no QueueEndpoint, and the "
                        "queue endpoint cannot be derived from it: give the queue service's URL as 'endpoint_url'")
            if not endpoint and account:
                suffix = parts.get("EndpointSuffix", "core.windows.net")
                endpoint = f"{parts.get('DefaultEndpointsProtocol', 'https')}://{account}.queue.{suffix}"
            if parts.get("AccountKey"):
                reveal["account_key"] = parts["AccountKey"]
            elif parts.get("SharedAccessSignature"):
                reveal["sas_token"] = parts["SharedAccessSignature"]
        if not endpoint and source["account_url"]:
            endpoint = queue_endpoint_from_blob(source["account_url"])
            if endpoint is None:
                raise FlexingestError(
                    f"{self._where()}: the queue endpoint cannot be derived from the connector's account_url "
                    f"{source['account_url']!r}: give the queue service's URL as 'endpoint_url'")
        if not endpoint and account:
            endpoint = f"https://{account}.queue.core.windows.net"
        if not endpoint:
            raise FlexingestError(f"{self._where()}: say which storage account holds the queue "
                                  "('account_name', 'endpoint_url' or 'connection_string')")
        endpoint = endpoint.rstrip("/")
        if reveal["account_key"] is not None:
            if not account:
                raise FlexingestError(f"{self._where()}: an account key needs 'account_name'")
            return endpoint, {"account_name": account, "account_key": reveal["account_key"]}
        if reveal["sas_token"] is not None:
            return endpoint, reveal["sas_token"].lstrip("?")
        if source["anonymous"]:
            return endpoint, None
        return endpoint, "default"  # the default Azure credential chain, built when the client is

    def _where(self) -> str:
        return f"events of connector {self.connector.name!r} (Azure queue {self.queue!r})"

    def _open(self) -> Any:
        if self._client is None:
            from azure.storage.queue import QueueClient

            credential = self._credential
            if credential == "default":
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            timeout = int(self.connector.config.timeout.total_seconds())
            with self.errors("connecting"):
                client: Any = QueueClient(self.account_url, self.queue, credential=credential, connection_timeout=10,
                                     read_timeout=timeout, retry_total=2, message_encode_policy=None,
                                     message_decode_policy=None)
            # the SDK backs off 18 s, 24 s, 42 s between tries: about 2, 4 s instead, like botocore
            policy = client._config.retry_policy
            policy.initial_backoff, policy.increment_base, policy.random_jitter_range = 0, 2, 1
            self._client = client
        return self._client

    # -- operations
    def _receive(self, max_messages: int, wait_seconds: float) -> list[Message]:
        pages = self._open().receive_messages(messages_per_page=max_messages, max_messages=max_messages,
                                              visibility_timeout=int(self.visibility_timeout))
        messages = []
        for raw in pages:
            count = raw.dequeue_count
            messages.append(Message(self, str(raw.id), raw.pop_receipt, parse_azure_queue(raw.content or ""),
                                    receive_count=int(count) if count else None))
        return messages

    def _ack(self, message: Message) -> None:
        self._open().delete_message(message.id, message.handle)

    def _extend(self, message: Message, seconds: float) -> Any:
        updated = self._open().update_message(message.id, pop_receipt=message.handle,
                                              visibility_timeout=max(0, min(int(seconds), MAX_VISIBILITY)))
        return updated.pop_receipt  # the old pop receipt no longer works

    def _check(self) -> None:
        self._open().get_queue_properties()

    def _backlog(self) -> int | None:
        count = self._open().get_queue_properties().approximate_message_count
        return int(count) if count is not None else None

    def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
