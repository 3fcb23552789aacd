"""S3 and Azure Blob sources read through obstore (Python bindings of Rust's object_store).

A pass's listing, HEADs and GETs of ``s3`` and ``azure_blob`` connectors go through obstore:
about a tenth of the CPU per request of s3fs / adlfs (see ``docs/benchmarks.md``, BM-7).
:class:`_ObstoreSource` is mixed into the fsspec storages of :mod:`flexingest.connectors.s3`
and :mod:`flexingest.connectors.azure_blob`, so ``Storage.fs`` (s3fs, adlfs) still serves
destinations and whatever else needs a filesystem, imported only when asked for.

What obstore cannot address is left to the fsspec storage: object_store refuses keys with an
empty, ``.`` or ``..`` segment or an ASCII control character and drops a leading ``/``, so
such keys are read through s3fs / adlfs, and a listing that meets one carries on through the
fsspec listing from the last key it had (both list in key order).

Version tokens are the ones the fsspec storages give: the S3 ETag and the Azure ETag, without
quotes (listings and reads alike).
"""

from __future__ import annotations

import contextlib
import io
import queue
import re
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from ..exceptions import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    FlexingestError,
    ObjectGone,
    StorageError,
    TransientStorageError,
)
from ..objects import READ_BLOCK, ObjectInfo
from .base import PAGE_SIZE, Storage
from .errors import translate as translate_fsspec

PREFETCH = 8  # listing chunks fetched ahead of the pass
_INSTALL = {"s3": "flexingest[s3]", "azure_blob": "flexingest[azure]"}


def _import_obstore(kind: str) -> Any:
    try:
        import obstore
    except ImportError as exc:
        raise FlexingestError(f"connector type {kind!r} needs the obstore package: pip install "
                              f"'{_INSTALL[kind]}' ({exc})") from None
    return obstore


def addressable(key: str) -> bool:
    """Whether object_store names ``key`` exactly (``object_store::path::Path::parse`` rules)."""
    if not key or key.startswith("/"):
        return False
    body = key[:-1] if key.endswith("/") else key
    return all(part not in ("", ".", "..") for part in body.split("/")) and _CONTROL.search(key) is None


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _version(e_tag: str | None) -> str:
    return (e_tag or "").strip('"')


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


# --------------------------------------------------------------------------- errors

_STATUS = re.compile(r"status code: (\d{3})|\bstatus: (\d{3}),")
_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<\n]*)")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
_OS_MESSAGE = re.compile(r'message: "([^"]*)"')
_CAUSES = {"TimedOut": "timed out", "IncompleteMessage": "connection closed before the answer",
           "IncompleteBody": "body cut short", "UnexpectedEof": "body cut short"}
_SAS = re.compile(r"\b(sig|se|st|sp|sv|sr|srt|ss|spr|skoid|sktid|skt|ske|sks|skv)=[^&\s\"'<>]+", re.IGNORECASE)


#: service error codes that say the credentials are wrong, or the service is busy, whatever the status
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "AuthorizationFailure", "AuthenticationFailed", "TokenRefreshRequired", "InvalidClientTokenId",
           "UnrecognizedClientException", "AllAccessDisabled", "AuthorizationPermissionMismatch"}
_BUSY = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable",
         "ServerBusy", "OperationTimedOut"}


def _status(text: str) -> int | None:
    found = _STATUS.search(text)
    return int(found.group(1) or found.group(2)) if found else None


def _detail(text: str, status: int | None, kind: str | None) -> str:
    """One line: ``HTTP 503 SlowDown: <the service's message>``, or the error's first line and
    its cause (``connection refused``, ``timed out``, ``body cut short``)."""
    if status is not None:
        code, message = _CODE.search(text), _MESSAGE.search(text)
        line = f"HTTP {status}" + (f" {code.group(1)}" if code else "")
        return f"{line}: {message.group(1).strip()}" if message else line
    first = text.strip().splitlines()[0][:300] if text.strip() else ""
    cause = _OS_MESSAGE.search(text)
    reason = cause.group(1).lower() if cause else next((v for k, v in _CAUSES.items() if k in text), None)
    if reason is None and kind == "Timeout":
        reason = "timed out"
    return f"{first} ({reason})" if reason and reason not in first else first


def translate(exc: BaseException, what: str, missing: type[StorageError],
              redact: Callable[[str], str]) -> FlexingestError:
    """An obstore exception as a flexingest error: by its type first (not found, permission,
    authentication), then by the HTTP status or the kind of HTTP failure it carries."""
    from obstore import exceptions as oe

    if isinstance(exc, FlexingestError):
        return exc
    text = str(exc)
    status = _status(text)
    found = _HTTP_KIND.search(text)
    kind = found.group(1) if found else None
    code = _CODE.search(text)
    service_code = code.group(1) if code else ""
    detail = _SAS.sub(lambda m: f"{m.group(1)}=**********", redact(_detail(text, status, kind)))
    if isinstance(exc, (FileNotFoundError, oe.NotFoundError)) or status == 404:
        if service_code in ("NoSuchBucket", "ContainerNotFound") or missing is BucketNotFound:
            return BucketNotFound(f"{what}: bucket or container not found")
        return missing(f"{what}: object not found (deleted after listing?)")
    if (isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)) or status in (401, 403)
            or service_code in _DENIED):
        return AccessDenied(f"{what}: access denied ({detail})")
    if "Invalid Access Key" in text:  # an account key that is not base64: refused before any request
        return AccessDenied(f"{what}: access denied (the account key is not a valid key)")
    if status is not None:
        if status in (408, 429) or status >= 500 or service_code in _BUSY:
            return TransientStorageError(f"{what}: {detail}")
        return StorageError(f"{what}: {detail}")
    if kind == "Connect":
        return EndpointUnreachable(f"{what}: endpoint unreachable ({detail})")
    if kind == "Timeout" or "TimedOut" in text:  # the client waited and tried again: the pass adds no more
        return TransientStorageError(f"{what}: {detail}", clients_retried=True)
    if kind is not None:  # resets, answers or bodies cut short: the pass tries the object again
        return TransientStorageError(f"{what}: {detail}")
    if isinstance(exc, oe.BaseError) or not isinstance(exc, Exception):
        return StorageError(f"{what}: {detail}")
    return translate_fsspec(exc, what, missing, redact)


@contextlib.contextmanager
def obstore_errors(what: str, *, missing: type[StorageError], redact: Callable[[str], str]) -> Iterator[None]:
    """Translate obstore's exceptions into :mod:`flexingest.exceptions`, once, here."""
    try:
        yield
    except FlexingestError:
        raise
    except Exception as exc:  # noqa: BLE001 - this is the one translation point for obstore
        raise translate(exc, what, missing, redact) from exc


# --------------------------------------------------------------------------- readers


class _StreamReader(io.RawIOBase):
    """A sequential file over one GET's body, a chunk (at most ``READ_BLOCK``) at a time."""

    def __init__(self, chunks: Iterator[Any], errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        super().__init__()
        self._chunks = chunks
        self._errors = errors
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        with self._errors():
            chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._buffer = memoryview(chunk)
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._buffer and not self._fill():
            return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if not self._buffer and not self._fill():
            return b""
        data = bytes(self._buffer[:size])
        self._buffer = self._buffer[size:]
        return data

    def readall(self) -> bytes:
        parts = [bytes(self._buffer)]
        self._buffer = memoryview(b"")
        while self._fill():
            parts.append(bytes(self._buffer))
            self._buffer = memoryview(b"")
        return b"".join(parts)

    def close(self) -> None:
        self._chunks = iter(())  # the stream is dropped: its connection is released
        self._buffer = memoryview(b"")
        super().close()


class _RangedReader(io.RawIOBase):
    """A seekable file over obstore's buffered reader (ranged GETs); reads give ``bytes``."""

    def __init__(self, raw: Any, errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        super().__init__()
        self._raw = raw
        self._errors = errors

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._errors():
            return int(self._raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self._raw.tell())

    def read(self, size: int | None = -1) -> bytes:
        with self._errors():
            return bytes(self._raw.read() if size is None or size < 0 else self._raw.read(size))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._raw.close()
        super().close()


# --------------------------------------------------------------------------- the shared read path


class _ObstoreSource(Storage):
    """Listing and reads through obstore; keys it cannot name go to the fsspec storage."""

    _store: Any = None
    _store_lock = threading.Lock()

    @property
    def store(self) -> Any:
        """The obstore store of this connector, built on first use."""
        if self._store is None:
            _import_obstore(self.connector.type)
            with self._store_lock:
                if self._store is None:
                    with self.obstore_errors():
                        self._store = self._make_store()
        return self._store

    def _make_store(self) -> Any:
        raise NotImplementedError

    def client_options(self) -> dict[str, Any]:
        """Timeouts (``read_timeout`` is the connector's ``timeout``: the longest wait for bytes)."""
        options: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=2 if self.fast_fail else 10),
            "read_timeout": timedelta(seconds=5 if self.fast_fail else self.timeout),
            # object_store's whole-request timeout would also cut long downloads: the read
            # timeout above is what bounds a server that stops answering
            "timeout": timedelta(seconds=20 if self.fast_fail else 24 * 3600),
            "pool_idle_timeout": timedelta(seconds=30),
        }
        return options

    def retry_config(self) -> dict[str, Any]:
        """Three tries per request (one when failing fast), backing off about 0.5, 1, 2 s."""
        return {"max_retries": 0 if self.fast_fail else 2,
                "backoff": {"init_backoff": timedelta(seconds=0.5), "max_backoff": timedelta(seconds=8), "base": 2},
                "retry_timeout": timedelta(seconds=10 if self.fast_fail else 3 * self.timeout + 30)}

    def obstore_errors(self, key: str | None = None) -> contextlib.AbstractContextManager[None]:
        return obstore_errors(self.describe(key), missing=ObjectGone if key else BucketNotFound,
                              redact=self.redact)

    # -- listing
    def iter_pages(self, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[ObjectInfo]]:
        """Yield the objects under ``prefix`` in key order, a page at a time; placeholders skipped.

        obstore lists "folders": a prefix that ends inside a name is listed from its folder,
        starting just before it, and the listing stops at the first key past it. Pages are
        fetched ahead of the caller by a thread.
        """
        if prefix and not addressable(prefix.rstrip("/") + "/x"):
            yield from super().iter_pages(prefix, page_size)
            return
        folder, offset = prefix, None
        if prefix and not prefix.endswith("/"):
            folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
            offset = prefix[:-1] if len(prefix) > len(folder) + 1 else None
            if offset is not None and not addressable(offset):  # e.g. "." before "x" of ".x"
                offset = None
        last = None
        try:
            for page in self._pages(folder, offset, prefix, page_size):
                if page:
                    last = page[-1].key
                    yield page
                if page_size == 1:
                    return
        except _Unaddressable:
            # a key object_store refuses: the rest comes from the fsspec listing, after the last key seen
            for page in super().iter_pages(prefix, page_size):
                rest = [o for o in page if last is None or o.key > last]
                if rest:
                    yield rest

    def _pages(self, folder: str, offset: str | None, prefix: str, page_size: int) -> Iterator[list[ObjectInfo]]:
        obstore = _import_obstore(self.connector.type)
        from obstore.exceptions import InvalidPathError

        store = self.store
        pages: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        done = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    pages.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            seen_empty: set[str] = set()
            try:
                chunks = obstore.list(store, folder.rstrip("/") or None, offset=offset,
                                      chunk_size=max(1, min(page_size, PAGE_SIZE)))
                for chunk in chunks:
                    page: list[ObjectInfo] = []
                    empty: list[ObjectInfo] = []
                    past = False
                    for meta in chunk:
                        key = meta["path"]
                        if not key.startswith(prefix):
                            if key > prefix:
                                past = True
                                break
                            continue
                        info = ObjectInfo(key, _version(meta["e_tag"]), meta["size"], _timestamp(meta["last_modified"]))
                        (empty if info.size == 0 else page).append(info)
                    if empty:  # "key" and a placeholder "key/" both list as "key": keep one
                        for o in self._not_markers(empty):
                            if o.key not in seen_empty:
                                seen_empty.add(o.key)
                                page.append(o)
                    page.sort(key=lambda o: o.key)
                    if not put(page) or past:
                        break
                put(done)
            except InvalidPathError as exc:
                put(_Unaddressable(str(exc)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, translated there
                put(exc)

        thread = threading.Thread(target=produce, name=f"flexingest-list-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = pages.get()
                if item is done:
                    return
                if isinstance(item, _Unaddressable):
                    raise item
                if isinstance(item, BaseException):
                    with self.obstore_errors():
                        raise item
                yield item
        finally:
            stop.set()

    def _not_markers(self, empty: list[ObjectInfo]) -> list[ObjectInfo]:
        """The empty objects of a page that are not folder placeholders.

        object_store lists a placeholder ``folder/`` as ``folder``, like an empty object of
        that name: a HEAD of each empty object tells them apart (a placeholder has no object
        under the name without the slash), and so does Azure's ``hdi_isfolder`` metadata of
        hierarchical accounts.
        """
        from concurrent.futures import ThreadPoolExecutor

        import obstore

        store = self.store

        def real(info: ObjectInfo) -> bool:
            try:
                result = obstore.get(store, info.key, options={"head": True})
            except FileNotFoundError:
                return False  # only "key/" exists (or it was deleted meanwhile: gone later)
            return str(result.attributes.get("hdi_isfolder", "")).lower() != "true"

        # synchronous calls from threads: obstore's coroutines run by asyncio.run in a thread
        # other than the main one can abort the interpreter at exit (obstore 0.12)
        if len(empty) == 1:
            return [o for o in empty if real(o)]
        with ThreadPoolExecutor(min(8, len(empty)), thread_name_prefix="flexingest-head") as pool:
            return [o for o, keep in zip(empty, pool.map(real, empty)) if keep]

    def check(self, prefix: str = "") -> None:
        for _ in self.iter_pages(prefix, page_size=1):
            break

    # -- objects
    def info(self, key: str) -> ObjectInfo:
        if not addressable(key):
            return super().info(key)
        obstore = _import_obstore(self.connector.type)
        with self.obstore_errors(key):
            meta = obstore.head(self.store, key)
        return ObjectInfo(key, _version(meta["e_tag"]), meta["size"], _timestamp(meta["last_modified"]))

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        """One GET: the whole object and the ETag of what it returned."""
        if not addressable(key):
            return super().read_versioned(key)
        obstore = _import_obstore(self.connector.type)
        with self.obstore_errors(key):
            result = obstore.get(self.store, key)
            data = bytes(result.bytes())
        return data, _version(result.meta["e_tag"]) or None

    def stream_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        """One streamed GET, read a chunk at a time (never whole), and the ETag it returned."""
        if not addressable(key):
            return super().stream_versioned(key)
        obstore = _import_obstore(self.connector.type)
        with self.obstore_errors(key):
            result = obstore.get(self.store, key)
            version = _version(result.meta["e_tag"]) or None
            chunks = iter(result.stream(min_chunk_size=READ_BLOCK))
        reader = _StreamReader(chunks, lambda: self.obstore_errors(key))
        return io.BufferedReader(reader, READ_BLOCK), version

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        """A seekable reader (ranged GETs of ``READ_BLOCK``) and the version of its HEAD."""
        if not addressable(key):
            return super().open_versioned(key)
        obstore = _import_obstore(self.connector.type)
        with self.obstore_errors(key):
            meta = obstore.head(self.store, key)
            raw = obstore.open_reader(self.store, key, buffer_size=READ_BLOCK, size=meta["size"])
        return _RangedReader(raw, lambda: self.obstore_errors(key)), _version(meta["e_tag"]) or None  # type: ignore[return-value]

    def open(self, key: str) -> IO[bytes]:
        return self.open_versioned(key)[0]

    def download(self, key: str, dest: Path) -> None:
        import shutil

        reader, _ = self.stream_versioned(key)
        with reader, open(dest, "wb") as out:
            shutil.copyfileobj(reader, out, READ_BLOCK)


class _Unaddressable(Exception):
    """The listing met a key object_store refuses."""


