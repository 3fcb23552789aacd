"""Cloud Storage notifications from a Pub/Sub subscription, by synchronous pull.

The client is google-cloud-pubsub's generated ``SubscriberClient`` (gRPC); streaming pull
is not used, because its lease management would extend and settle messages on its own.
Each pulled batch gets ``visibility_timeout`` as its ack deadline at once (the
subscription's own deadline is often 10 s).

Credentials are the connector's, as :class:`flexingest.connectors.gcs.GCSStorage` builds them
(a service-account key, anonymous, or application default credentials), scoped for
Pub/Sub, unless the ``events:`` block gives its own. An ``endpoint_url`` of ``http://``
(emulators) or ``PUBSUB_EMULATOR_HOST`` in the environment means a plain channel without
credentials.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..exceptions import FlexingestError
from .base import EventSource, Message
from .messages import parse_pubsub

if TYPE_CHECKING:
    from ..models import ConnectorBase
    from . import PubSubEvents

PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
MAX_ACK_DEADLINE = 600  # seconds: Pub/Sub's longest
REQUEST_TIMEOUT = 30.0  # seconds for acknowledge, modifyAckDeadline, getSubscription


class PubSubSource(EventSource):
    kind = "pubsub"
    LONG_POLL = 20.0  # one pull waits this long at most for a first message

    config: PubSubEvents

    def __init__(self, config: PubSubEvents, connector: ConnectorBase, base_dir: Path) -> None:
        super().__init__(config, connector, base_dir)
        project = getattr(connector.config, "project", None)
        subscription = config.subscription_path(project)
        if subscription is None:
            raise FlexingestError(f"events of sync on connector {connector.name!r}: the subscription "
                                  f"{config.subscription!r} needs a project")
        self.subscription = subscription
        self._client: Any = None

    def describe(self) -> str:
        return f"Pub/Sub subscription {self.subscription}"

    # -- client
    @property
    def endpoint(self) -> str | None:
        """Where requests go: events' endpoint_url, else the emulator of PUBSUB_EMULATOR_HOST, else Google."""
        if self.config.endpoint_url:
            return self.config.endpoint_url
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        return f"http://{emulator}" if emulator else None

    def _credentials(self) -> Any:
        """The connector's credentials as GCSStorage derives them (or the events block's), for Pub/Sub."""
        from google.auth.credentials import AnonymousCredentials

        from ..connectors.gcs import GCSStorage

        c = self.config
        base: Any = self.connector.config
        # the storage endpoint is not Pub/Sub's: only the credentials carry over
        base = base.model_copy(update={"endpoint_url": None})
        if c.own_credentials():
            base = base.model_copy(update={"anonymous": c.anonymous, "service_account_json": c.service_account_json})
        token = GCSStorage(self.connector.model_copy(update={"config": base}), self.base_dir).options()["token"]
        if token == "anon":
            return AnonymousCredentials()  # type: ignore[no-untyped-call]
        if token == "google_default":
            import google.auth

            credentials, _ = google.auth.default(scopes=[PUBSUB_SCOPE])
            return credentials
        return token.with_scopes([PUBSUB_SCOPE])

    def _open(self) -> Any:
        if self._client is None:
            from google.pubsub_v1 import SubscriberClient

            endpoint = self.endpoint
            parts = urlsplit(endpoint) if endpoint else None
            with self.errors("connecting"):
                if parts is not None and parts.scheme == "http":  # an emulator: plain gRPC, no credentials
                    import grpc
                    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

                    channel = grpc.insecure_channel(parts.netloc)
                    self._client = SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
                else:
                    options = {"api_endpoint": parts.netloc} if parts is not None else None
                    self._client = SubscriberClient(credentials=self._credentials(), client_options=options)
        return self._client

    # -- operations
    def _receive(self, max_messages: int, wait_seconds: float) -> list[Message]:
        from google.api_core.exceptions import DeadlineExceeded

        client = self._open()
        try:
            out = client.pull(request={"subscription": self.subscription, "max_messages": max_messages},
                              timeout=max(wait_seconds, 1.0), retry=None)
        except DeadlineExceeded:
            return []  # nothing arrived within the wait
        received = list(out.received_messages)
        if not received:
            return []
        client.modify_ack_deadline(request={"subscription": self.subscription,
                                            "ack_ids": [r.ack_id for r in received],
                                            "ack_deadline_seconds": self._deadline(self.visibility_timeout)},
                                   timeout=REQUEST_TIMEOUT)
        messages = []
        for r in received:
            attempt = int(r.delivery_attempt or 0)
            parsed = parse_pubsub(bytes(r.message.data), dict(r.message.attributes))
            messages.append(Message(self, str(r.message.message_id), r.ack_id, parsed,
                                    receive_count=attempt or None))  # only with a dead-letter policy
        return messages

    @staticmethod
    def _deadline(seconds: float) -> int:
        return max(0, min(int(seconds), MAX_ACK_DEADLINE))

    def _ack(self, message: Message) -> None:
        self._open().acknowledge(request={"subscription": self.subscription, "ack_ids": [message.handle]},
                                 timeout=REQUEST_TIMEOUT)

    def _ack_many(self, messages: list[Message]) -> list[Any]:
        failures = []
        for start in range(0, len(messages), 1000):  # well under the request size limit
            chunk = messages[start:start + 1000]
            try:
                with self.errors("acknowledging messages"):
                    self._open().acknowledge(request={"subscription": self.subscription,
                                                      "ack_ids": [m.handle for m in chunk]}, timeout=REQUEST_TIMEOUT)
            except FlexingestError as exc:
                failures.extend([exc] * len(chunk))
                continue
            for message in chunk:
                message.acked = True
        return failures

    def _extend(self, message: Message, seconds: float) -> Any:
        self._open().modify_ack_deadline(request={"subscription": self.subscription, "ack_ids": [message.handle],
                                                  "ack_deadline_seconds": self._deadline(seconds)},
                                         timeout=REQUEST_TIMEOUT)
        return message.handle

    def _check(self) -> None:
        self._open().get_subscription(request={"subscription": self.subscription}, timeout=REQUEST_TIMEOUT)

    def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.transport.close()
