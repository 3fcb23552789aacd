"""What every event source does: receive, settle, drain, keep messages hidden, translate errors.

:class:`EventSource` is the base of the three queue clients (one required method per
operation: ``_receive``, ``_ack``, ``_extend``); :class:`Message` is one received message
with its parsed events. A message is acknowledged only by an explicit :meth:`Message.ack`;
:meth:`Message.extend` may be called from any thread while its objects are in flight.
Client errors become :mod:`flexingest.exceptions` here, in :func:`queue_errors`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import (
    EventSourceError,
    FlexingestError,
    QueueAccessDenied,
    QueueNotFound,
    ReceiptExpired,
)
from .messages import ObjectEvent, Parsed

if TYPE_CHECKING:
    from ..models import ConnectorBase
    from . import EventsBase

log = logging.getLogger(__name__)

#: how long one receive of :meth:`EventSource.drain` waits: a queue silent that long is empty
DRAIN_IDLE = 1.0
#: backoff of :meth:`EventSource.batches` after a transient error, doubling up to this
MAX_BACKOFF = 60.0


class Message:
    """One received message: its parsed events, and the handle to settle it.

    Exactly one of these holds: ``events`` is not empty; ``ignored_reason`` says why the
    message names no object (acknowledge it); ``invalid_reason`` says why it is not a
    bucket notification (leave it: it is delivered again after its visibility timeout,
    then goes to the queue's dead-letter queue if it has one).
    """

    def __init__(self, source: EventSource, message_id: str, handle: Any, parsed: Parsed, *,
                 receive_count: int | None = None) -> None:
        self.source = source
        self.id = message_id
        self.receive_count = receive_count  # deliveries so far, where the queue says (SQS, Azure)
        #: the events of this source's bucket (a queue may carry other buckets' too: those are left out)
        self.events: list[ObjectEvent] = [e for e in parsed.events if e.bucket == source.bucket]
        self.ignored_reason: str | None = parsed.ignored
        self.invalid_reason: str | None = parsed.invalid
        foreign = sorted({e.bucket for e in parsed.events if e.bucket != source.bucket})
        if foreign and not self.events:
            self.ignored_reason = (f"events of bucket {foreign[0]!r}, not {source.bucket!r}: the queue also "
                                   "carries another bucket's notifications")
        self.acked = False
        #: when (time.monotonic()) the message becomes visible to other consumers again
        self.expires_at = time.monotonic() + source.visibility_timeout
        self._handle = handle
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = ("invalid" if self.invalid_reason else "ignored" if self.ignored_reason
                 else f"{len(self.events)} events")
        return f"<Message {self.id} {state}{' acked' if self.acked else ''}>"

    @property
    def handle(self) -> Any:
        """The queue's handle of this delivery (SQS receipt handle, Pub/Sub ack id, Azure pop receipt)."""
        return self._handle

    def ack(self) -> None:
        """Delete the message from the queue: call once its objects are committed. Idempotent."""
        with self._lock:
            if self.acked:
                return
            with self.source.errors(f"acknowledging message {self.id}"):
                self.source._ack(self)
            self.acked = True

    def extend(self, seconds: float | None = None) -> None:
        """Keep the message hidden for ``seconds`` from now (default: the visibility timeout).

        Safe from another thread while the message's objects are processed; a no-op once
        acknowledged. Raises :class:`ReceiptExpired` if the message is no longer held.
        """
        seconds = self.source.visibility_timeout if seconds is None else seconds
        with self._lock:
            if self.acked:
                return
            with self.source.errors(f"extending message {self.id}"):
                self._handle = self.source._extend(self, seconds)
            self.expires_at = time.monotonic() + seconds

    def release(self) -> None:
        """Make the message visible again now (Pub/Sub: a nack), e.g. on a stop, so that another
        consumer need not wait out the visibility timeout. A no-op once acknowledged."""
        self.extend(0)


class EventSource:
    """A queue of one connector's bucket notifications.

    ``receive`` long-polls (or polls, for Azure) for at most ``wait`` seconds; ``drain``
    receives until the queue is empty (``run --once``); ``batches`` receives for as long as
    a service runs. Nothing is acknowledged unless asked. Safe to use from several threads.
    """

    kind: ClassVar[str] = ""
    #: longest wait one request may make server-side (SQS 20 s); 0: the queue has no long polling
    LONG_POLL: ClassVar[float] = 20.0

    def __init__(self, config: EventsBase, connector: ConnectorBase, base_dir: Path) -> None:
        self.config = config
        self.connector = connector
        self.base_dir = base_dir
        conf: Any = connector.config
        #: the bucket (or container) whose events this source keeps; others are ignored
        self.bucket: str = str(getattr(conf, "bucket", None) or getattr(conf, "container", ""))
        self.wait = config.wait.total_seconds()
        self.batch = config.batch
        self.visibility_timeout = config.visibility_timeout.total_seconds()
        self.closed = False
        from ..redact import Redactor

        self._redactor = Redactor(v.get_secret_value() for model in (conf, config) for v in vars(model).values()
                                  if hasattr(v, "get_secret_value"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- naming and errors
    def describe(self) -> str:
        """The queue, for messages: 'SQS queue https://...', 'Pub/Sub subscription projects/...'."""
        raise NotImplementedError

    def redact(self, text: str) -> str:
        return self._redactor.mask(text)

    def errors(self, doing: str = "") -> contextlib.AbstractContextManager[None]:
        what = self.describe() + (f" ({doing})" if doing else "")
        return queue_errors(what, redact=self.redact)

    # -- receiving
    def receive(self, max_messages: int | None = None, wait_seconds: float | None = None) -> list[Message]:
        """At most ``max_messages`` messages (default ``batch``), waiting up to ``wait_seconds``
        (default ``wait``) for the first. Each stays hidden for ``visibility_timeout``."""
        if self.closed:
            raise EventSourceError(f"{self.describe()}: the event source is closed")
        n = max(1, min(max_messages or self.batch, type(self.config).MAX_BATCH))
        wait = self.wait if wait_seconds is None else max(0.0, wait_seconds)
        deadline = time.monotonic() + wait
        pause = 0.1
        while True:
            left = max(0.0, deadline - time.monotonic())
            with self.errors("receiving"):
                got = self._receive(n, min(left, self.LONG_POLL))
            if got or time.monotonic() >= deadline:
                return got
            if self.LONG_POLL == 0:  # no long polling (Azure): poll, backing off
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 2.0)

    def drain(self, max_wait: float = 60.0, *, max_messages: int | None = None) -> list[Message]:
        """Receive until the queue answers empty (nothing within ``DRAIN_IDLE``), ``max_wait``
        seconds passed, or ``max_messages`` are held: for ``run --once``. None is acknowledged;
        each stays hidden for ``visibility_timeout`` from its receipt (see :meth:`keep_alive`)."""
        deadline = time.monotonic() + max_wait
        held: list[Message] = []
        while max_messages is None or len(held) < max_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            want = self.batch if max_messages is None else min(self.batch, max_messages - len(held))
            got = self.receive(want, wait_seconds=min(DRAIN_IDLE, left))
            if not got:
                break
            held.extend(got)
        return held

    def batches(self, stop: threading.Event | None = None, *,
                on_error: Callable[[EventSourceError], None] | None = None) -> Iterator[list[Message]]:
        """Batches of messages as they arrive, until ``stop`` is set: for a long-running service.

        Each receive waits up to ``wait`` seconds, so a stop is noticed within that. A
        transient error (endpoint down, throttling, 5xx) is passed to ``on_error`` (default:
        logged as a warning) and retried with backoff; a permanent one (queue missing, access
        denied) ends the iteration by raising.
        """
        stop = stop or threading.Event()
        backoff = 1.0
        while not stop.is_set() and not self.closed:
            try:
                got = self.receive()
            except EventSourceError as exc:
                if not exc.transient:
                    raise
                (on_error or _warn)(exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 1.0
            if got:
                yield got

    # -- settling
    def ack_all(self, messages: Iterable[Message]) -> None:
        """Acknowledge several messages, in as few requests as the queue allows. Every message is
        tried; if some fail, one :class:`EventSourceError` says how many, after the others are acked."""
        pending = [m for m in messages if not m.acked]
        if not pending:
            return
        failures = self._ack_many(pending)
        if failures:
            first = failures[0]
            message = (f"{self.describe()}: {len(failures)} of {len(pending)} messages could not be "
                       f"acknowledged (first: {first})")
            raise EventSourceError(message, transient=all(f.transient for f in failures))

    def _ack_many(self, messages: list[Message]) -> list[EventSourceError]:
        failures = []
        for message in messages:
            try:
                message.ack()
            except EventSourceError as exc:
                failures.append(exc)
        return failures

    @contextlib.contextmanager
    def keep_alive(self, messages: Iterable[Message], every: float | None = None) -> Iterator[None]:
        """Extend the messages' visibility every ``every`` seconds (default: half the visibility
        timeout) from a background thread, until the block ends; acknowledged ones are left alone.
        A message that can no longer be extended is logged and dropped (it will come again)."""
        held = list(messages)
        interval = self.visibility_timeout / 2 if every is None else every
        done = threading.Event()

        def beat() -> None:
            while not done.wait(interval):
                for message in list(held):
                    if message.acked:
                        held.remove(message)
                        continue
                    try:
                        message.extend()
                    except EventSourceError as exc:
                        if not exc.transient:
                            held.remove(message)
                        log.warning("%s", exc)

        thread = threading.Thread(target=beat, name=f"flexingest-keepalive-{self.kind}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    # -- the queue itself
    def check(self) -> None:
        """One bounded request: the queue exists and these credentials may read it."""
        with self.errors("checking"):
            self._check()

    def backlog(self) -> int | None:
        """About how many messages wait in the queue (None where the queue does not say: Pub/Sub)."""
        with self.errors("counting messages"):
            return self._backlog()

    def close(self) -> None:
        """Release the client. Messages not acknowledged are delivered again after their timeout."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._close()

    # -- what each queue implements
    def _receive(self, max_messages: int, wait_seconds: float) -> list[Message]:
        raise NotImplementedError

    def _ack(self, message: Message) -> None:
        raise NotImplementedError

    def _extend(self, message: Message, seconds: float) -> Any:
        """Hide the message for ``seconds`` from now; returns its (possibly new) handle."""
        raise NotImplementedError

    def _check(self) -> None:
        raise NotImplementedError

    def _backlog(self) -> int | None:
        return None

    def _close(self) -> None:
        pass


def _warn(exc: EventSourceError) -> None:
    log.warning("%s; trying again", exc)


# --------------------------------------------------------------------------- errors

_QUEUE_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "QueueNotFound",
                  "QueueBeingDeleted", "NonExistentQueue"}
_RECEIPT_GONE = {"ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotFound", "PopReceiptMismatch",
                 "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight"}


@contextlib.contextmanager
def queue_errors(what: str, *, redact: Callable[[str], str] = lambda s: s) -> Iterator[None]:
    """Translate queue client exceptions into :mod:`flexingest.exceptions`, once, here.

    ``what`` names the queue (never a secret); messages are passed through ``redact``.
    """
    try:
        yield
    except FlexingestError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one translation point of the queue clients
        raise translate(exc, what, redact) from exc


def translate(exc: Exception, what: str, redact: Callable[[str], str] = lambda s: s) -> EventSourceError:
    """The :class:`EventSourceError` for a client exception (botocore, google.api_core, azure)."""
    from ..connectors.errors import error_code, first_line, status_of
    from ..connectors.errors import translate as translate_storage
    from ..exceptions import AccessDenied, BucketNotFound, EndpointUnreachable, TransientStorageError

    code = error_code(exc)
    detail = redact(first_line(exc))
    names = {c.__name__ for c in type(exc).__mro__}
    lowered = detail.lower()
    stale = "receipt handle" in lowered or "not available for visibility" in lowered
    if code in _RECEIPT_GONE or (code.endswith("InvalidParameterValue") and stale):
        return ReceiptExpired(f"{what}: the message is no longer held (its visibility timeout passed, or "
                              "another consumer received it); it will be delivered again")
    if code in _QUEUE_MISSING or "NotFound" in names:
        return QueueNotFound(f"{what}: not found ({detail})")
    if "DefaultCredentialsError" in names or "CredentialUnavailableError" in names or "NoCredentialsError" in names:
        return QueueAccessDenied(f"{what}: no credentials found ({detail})")
    if "DeadlineExceeded" in names:
        return EventSourceError(f"{what}: no answer in time ({detail})", transient=True)
    storage = translate_storage(exc, what, BucketNotFound, redact)
    if isinstance(storage, BucketNotFound) or status_of(exc) == 404:
        return QueueNotFound(f"{what}: not found ({detail})")
    if isinstance(storage, AccessDenied):
        return QueueAccessDenied(f"{what}: access denied ({detail})")
    if isinstance(storage, EndpointUnreachable):
        return EventSourceError(f"{what}: endpoint unreachable ({detail})", transient=True)
    if isinstance(storage, TransientStorageError) or names & {"ServiceUnavailable", "InternalServerError",
                                                              "TooManyRequests", "ResourceExhausted", "Aborted"}:
        return EventSourceError(f"{what}: {detail}", transient=True)
    return EventSourceError(f"{what}: {detail}")
