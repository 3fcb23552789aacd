"""What happens to a source object after it is processed: ``after: {delete | move_to | tag}``.

An action runs only once the object's ``done`` is committed: the commit records it as
pending in the same transaction, and the pass runs the pending actions after each commit
(and at its start, those a crash or a failure left). Each action is idempotent, so a crash
between the commit and the action repeats only the action, never the steps; a failing action
is recorded and tried again on later passes, and never undoes ``done``. An object whose
version changed since it was processed is left alone (the new version is processed first).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .exceptions import FlexingestError, ObjectGone, StorageError

if TYPE_CHECKING:
    from .config import After
    from .connectors import Storage

log = logging.getLogger(__name__)


def destination_key(after: After, key: str, prefix: str) -> tuple[str | None, str]:
    """Where ``move_to`` puts ``key``: (another bucket or None, the key there). The sync's prefix
    is replaced by the destination's: ``incoming/a.pdf`` with ``move_to: done/`` is ``done/a.pdf``."""
    assert after.move_to is not None
    rel = key[len(prefix):] if key.startswith(prefix) else key
    target = after.move_to
    if "://" in target:
        bucket, _, path = target.split("://", 1)[1].partition("/")
        return bucket, f"{path.strip('/')}/{rel}" if path.strip("/") else rel
    return None, f"{target.lstrip('/')}{rel}" if target.endswith("/") or not target else f"{target}/{rel}"


def act(storage: Storage, after: After, key: str, version: str, prefix: str) -> tuple[str, bool]:
    """Apply the action to one processed object; returns what was done, in words, and whether
    the object has left the bucket (deleted, moved, or gone already).

    Raises a :class:`~flexingest.exceptions.FlexingestError` when it could not be done.
    """
    if after.tag:
        _tag(storage, key, after.tag)
        return "tagged", False
    try:
        current = storage.info(key)
    except ObjectGone:
        if after.move_to is not None and _exists(storage, *destination_key(after, key, prefix)):
            return "moved", True  # a crash after the move, before its record: done already
        return "gone before it could be acted on", True
    if current.version != version:
        return f"left alone: it changed since it was processed (version {current.version})", False
    if after.delete:
        with storage.errors(key):
            if storage.kind == "local":
                os.remove(storage.path(key))
            else:
                storage.fs.rm_file(storage.path(key))
        return "deleted", True
    bucket, dest = destination_key(after, key, prefix)
    src = storage.path(key)
    target = f"{bucket or storage.root}/{dest}" if storage.kind != "local" else os.path.join(storage.root, dest)
    from .destinations import destination_errors

    where = target if storage.kind == "local" else f"{storage.kind}://{target}"
    with destination_errors(where):  # a missing or denied destination is named as such
        if storage.kind == "local":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(src, target)
        else:
            storage.fs.copy(src, target)  # server-side on S3, GCS and Azure
    if storage.kind != "local":
        with storage.errors(key):
            storage.fs.rm_file(src)
    return (f"moved to {dest}" if bucket is None else f"moved to {bucket}/{dest}"), True


def _exists(storage: Storage, bucket: str | None, key: str) -> bool:
    try:
        if storage.kind == "local":
            return os.path.isfile(os.path.join(storage.root, key))
        return bool(storage.fs.exists(f"{bucket or storage.root}/{key}"))
    except Exception:  # noqa: BLE001 - unknown: the action is tried again
        return False


def _tag(storage: Storage, key: str, tags: dict[str, str]) -> None:
    """Tags that change no version token: S3 object tags, GCS custom metadata (the generation
    stays), Azure blob index tags (the ETag stays), user extended attributes of a local file."""
    path = storage.path(key)
    with storage.errors(key):
        if storage.kind == "s3":
            storage.fs.put_tags(path, tags, mode="m")
        elif storage.kind == "gcs":
            storage.fs.setxattrs(path, **tags)
        elif storage.kind == "azure_blob":
            from fsspec.asyn import sync

            fs: Any = storage.fs

            async def put() -> None:
                client = fs.service_client.get_blob_client(container=storage.root, blob=key)
                existing = await client.get_blob_tags()
                await client.set_blob_tags({**existing, **tags})

            sync(fs.loop, put)
        elif storage.kind == "local":
            for name, value in tags.items():
                try:
                    os.setxattr(path, f"user.{name}", value.encode("utf-8"))
                except OSError as exc:
                    raise StorageError(f"{storage.describe(key)}: cannot set the extended attribute user.{name}: "
                                       f"{exc.strerror} (the file system may not support them)") from None
        else:
            raise FlexingestError(f"after: tag is not supported for {storage.kind} connectors")
