"""Every error flexingest raises.

    FlexingestError
    ├── ConfigError            the pipeline file is invalid (carries every issue found)
    ├── StateError             the state file cannot be used (corrupt, foreign, newer schema)
    │   └── StateLocked        another process holds the state lock
    ├── StorageError           a connector could not do what was asked
    │   ├── BucketNotFound
    │   ├── AccessDenied
    │   ├── ObjectGone         the object was deleted between listing and reading
    │   ├── EndpointUnreachable          (transient)
    │   └── TransientStorageError        (transient: timeouts, resets, 429, 5xx)
    ├── EventSourceError       a queue of bucket events could not do what was asked (names the queue)
    │   ├── QueueNotFound
    │   ├── QueueAccessDenied
    │   └── ReceiptExpired     ack/extend of a message no longer held: it will be delivered again
    ├── StepError              a step failed for one object
    │   ├── UnsafeKey          the key would escape a local destination
    │   └── UnprocessableObject  the object itself cannot be processed (unsupported, encrypted,
    │                            corrupt): trying again cannot help, it goes dead at once
    └── ObjectSkipped          a step chose to skip the object (it is recorded done)

``transient`` says whether trying again later may succeed; the sync pass retries
transient errors with backoff inside the pass and records the others at once.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlexingestError(Exception):
    """Base class of every error flexingest raises."""

    transient: bool = False


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
    """A connector could not list or read what was asked."""


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


class EventSourceError(FlexingestError):
    """A queue of bucket notifications (SQS, Pub/Sub, Azure queue) could not do what was asked.

    ``transient`` is set per error: an unreachable endpoint, a timeout, throttling or a 5xx
    may pass; a missing queue or a denied request will not.
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

    permanent = False  # True: no retry can cure it (see UnprocessableObject)

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
    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"unsafe key {key!r}: {why}")


class ObjectSkipped(FlexingestError):
    """A step decided the object needs no processing (e.g. ``on_unsupported: skip``).

    The object is recorded ``done`` with the reason; the remaining steps do not run.
    """
