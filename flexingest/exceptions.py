"""Every error flexingest raises.

    FlexingestError
    ├── ConfigError              the pipeline file is invalid (carries every issue found)
    ├── PluginError              a registered step could not be loaded (names its package)
    ├── StateError               the state file cannot be used (corrupt, foreign, newer schema)
    │   └── StateLocked          another process holds the state lock
    ├── StorageError             the source store could not do what was asked
    │   ├── BucketNotFound
    │   ├── AccessDenied
    │   ├── ObjectGone           the object was deleted between listing and reading
    │   ├── EndpointUnreachable          (transient)
    │   └── TransientStorageError        (transient: timeouts, resets, 429, 5xx)
    ├── DestinationError         a destination (a step's URL, a webhook) failed; transient or not
    │   └── DestinationUnavailable   missing or denied: a configuration outage, the pass stops
    ├── EventSourceError         a queue of bucket events failed (names the queue); transient or not
    │   ├── QueueNotFound
    │   ├── QueueAccessDenied
    │   └── ReceiptExpired       ack/extend of a message no longer held: it will be delivered again
    ├── StepError                a step failed for one object
    │   ├── UnsafeKey            the key would escape a local destination
    │   └── UnprocessableObject  the object itself cannot be processed: it goes dead at once
    ├── ObjectSkipped            a step chose to skip the object (recorded ``skipped``)
    ├── PassStopped              the pass stopped before its end: storage or destination down
    └── ApiError                 a request to the HTTP interface cannot be done (carries its status code)

Two class attributes say what trying again may do, and the pass reads nothing else:
``transient`` (an outage: retried with backoff, never charged to the object) and
``permanent`` (the object itself: no retry can cure it, so it is ``dead`` at once).
Errors that are neither count one attempt towards ``max_attempts``.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlexingestError(Exception):
    """Base class of every error flexingest raises."""

    #: an outage: trying later may succeed; never charged to the object
    transient: bool = False
    #: the object itself cannot be processed, whatever happens: it goes dead at once
    permanent: bool = False


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a pipeline file, located as precisely as the YAML allows."""

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    field: str  # e.g. "syncs[0].connector"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(FlexingestError):
    """The pipeline file is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.column, i.field))
        super().__init__("\n".join(str(i) for i in self.issues))


class PluginError(FlexingestError):
    """A step registered by a package (entry point) could not be loaded."""


class StateError(FlexingestError):
    """The state file cannot be used as it is."""


class StateLocked(StateError):
    """Another process holds the lock of this state file."""

    def __init__(self, lock_path: str, pid: int | None) -> None:
        self.lock_path = lock_path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{holder} holds the state lock {lock_path}; another flexingest run is in progress")


class StorageError(FlexingestError):
    """The source store could not list or read what was asked."""


class BucketNotFound(StorageError):
    pass


class AccessDenied(StorageError):
    pass


class ObjectGone(StorageError):
    """The object was deleted after it was listed."""


class EndpointUnreachable(StorageError):
    transient = True
    clients_retried = True  # the cloud client already tried again, with backoff


class TransientStorageError(StorageError):
    transient = True

    def __init__(self, message: str, *, clients_retried: bool = False) -> None:
        super().__init__(message)
        self.clients_retried = clients_retried


class DestinationError(FlexingestError):
    """A step's destination failed: a bucket or folder written to, a webhook receiver.

    Its message names the destination, never the source object. ``transient`` when the
    destination is unreachable, times out or answers 429/5xx.
    """

    clients_retried = True  # destinations retry with backoff themselves

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class DestinationUnavailable(DestinationError):
    """The destination is missing or refuses us: no object can succeed until it is fixed.

    The pass stops at once with this message; the objects are not charged an attempt.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class EventSourceError(FlexingestError):
    """A queue of bucket notifications (SQS, Pub/Sub, Azure queue) could not do what was asked.

    Its message names the queue, never a secret. ``transient`` is set per error: an
    unreachable endpoint, a timeout, throttling or a 5xx may pass; a missing queue or a
    denied request will not.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class QueueNotFound(EventSourceError):
    pass


class QueueAccessDenied(EventSourceError):
    pass


class ReceiptExpired(EventSourceError):
    """The message is no longer held by this consumer (its visibility timeout or ack deadline
    passed, or another consumer received it): it will be delivered again."""


class StepError(FlexingestError):
    """A step failed for one object."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class UnprocessableObject(StepError):
    """The object itself cannot be processed, and trying again cannot change that.

    An unsupported type, an encrypted or corrupt document: the object goes ``dead`` at once
    (until its version changes, or ``flexingest retry``) instead of failing pass after pass.
    """

    permanent = True


class UnsafeKey(StepError):
    permanent = True  # the key stays what it is

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"unsafe key {key!r}: {why}")


class ObjectSkipped(FlexingestError):
    """A step decided the object needs no processing (e.g. ``on_unsupported: skip``).

    The object is recorded ``skipped`` with the reason; the remaining steps do not run.
    """


class PassStopped(FlexingestError):
    """The pass stopped before its end because no object could succeed (an outage)."""


class ApiError(FlexingestError):
    """A request to the HTTP interface that cannot be done: unknown (404), in conflict with the
    pipeline file (409), too large (413), too many waiting (429), not now (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
