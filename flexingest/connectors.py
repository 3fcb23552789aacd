"""Connectors: read access to a bucket through its fsspec filesystem.

:data:`BACKENDS` maps a connector type to its fsspec protocol; the backend (s3fs,
gcsfs, adlfs) is imported only when a connector of that type is opened. A
:class:`Storage` is an opened connector: it lists keys page by page with their version
tokens (S3 ETag, GCS generation, Azure ETag, local mtime_ns + size) and reads objects.
Backend errors are translated once, here, by :func:`storage_errors`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from .exceptions import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    FlexingestError,
    ObjectGone,
    StorageError,
    TransientStorageError,
    UnsafeKey,
)
from .objects import READ_BLOCK, ObjectInfo, Source, check_key
from .redact import Redactor

__all__ = ["BACKENDS", "ObjectInfo", "Source", "Storage", "open_connector", "test_connector"]

if TYPE_CHECKING:
    import asyncio

    from fsspec import AbstractFileSystem

    from .config import ConnectorBase

#: connector type -> (fsspec protocol, module to import, pip extra naming the install)
BACKENDS: dict[str, tuple[str, str | None, str | None]] = {
    "azure_blob": ("abfs", "adlfs", "flexingest[azure]"),
    "gcs": ("gcs", "gcsfs", "flexingest[gcs]"),
    "local": ("file", None, None),
    "s3": ("s3", "s3fs", "flexingest[s3]"),
}

PAGE_SIZE = 1000
LIST_STREAMS = 4  # listings of sub-prefixes in flight at once
MAX_PARTITIONS = 512  # more top-level prefixes than this: one listing stream instead
PREFETCH = 8  # pages listed ahead of the pass


def _import_backend(kind: str) -> None:
    _, module, extra = BACKENDS[kind]
    if module is None:
        return
    try:
        __import__(module)
    except ImportError as exc:
        raise FlexingestError(
            f"connector type {kind!r} needs the {module} package: pip install '{extra}' ({exc})") from None


# --------------------------------------------------------------------------- errors


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "status", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def _error_code(exc: BaseException) -> str:
    """The service's error code, also when a backend re-raised the error as an OSError."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        if getattr(seen, "error_code", None):
            return str(seen.error_code)  # type: ignore[attr-defined]
        seen = seen.__cause__ or seen.__context__
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text and isinstance(exc, TimeoutError):  # gcsfs' timeouts say nothing but their class
        return f"timed out waiting for an answer ({type(exc).__name__})"
    text = text or type(exc).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def storage_errors(what: str, *, missing: type[StorageError] = BucketNotFound,
                   redact: Callable[[str], str] = lambda s: s) -> Iterator[None]:
    """Translate backend exceptions into :mod:`flexingest.exceptions`, once, here.

    ``what`` names the bucket or object for the message; ``missing`` is what a
    not-found means here (a missing bucket when listing, a gone object when reading).
    """
    try:
        yield
    except FlexingestError:
        raise
    except Exception as exc:  # noqa: BLE001 - this is the one translation point
        raise translate(exc, what, missing, redact) from exc


def translate(exc: Exception, what: str, missing: type[StorageError] = BucketNotFound,
              redact: Callable[[str], str] = lambda s: s) -> StorageError:
    names = {c.__name__ for c in type(exc).__mro__}
    code = _error_code(exc)
    status = _status_of(exc)
    detail = redact(_first_line(exc))
    if code in ("NoSuchBucket", "ContainerNotFound") or "ContainerNotFound" in detail:
        return BucketNotFound(f"{what}: bucket or container not found")
    if code in ("NoSuchKey", "BlobNotFound") or "BlobNotFound" in detail:
        return ObjectGone(f"{what}: object not found (deleted after listing?)")
    if isinstance(exc, FileNotFoundError) or "ResourceNotFoundError" in names or status == 404:
        if missing is BucketNotFound:
            return BucketNotFound(f"{what}: bucket or container not found")
        return missing(f"{what}: not found (deleted after listing?)")
    if "DefaultCredentialsError" in names:
        return AccessDenied(f"{what}: no Google credentials were found (application default credentials): "
                            "give 'service_account_json', run 'gcloud auth application-default login', "
                            "or say 'anonymous: true' for a public bucket or an emulator")
    if (isinstance(exc, PermissionError) or "ClientAuthenticationError" in names or status in (401, 403)
            or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                        "AuthorizationFailure", "AuthenticationFailed", "InvalidToken", "TokenRefreshRequired",
                        "InvalidClientTokenId", "UnrecognizedClientException", "AllAccessDisabled")):
        return AccessDenied(f"{what}: access denied ({detail})")
    unreachable = {"EndpointConnectionError", "ClientConnectorError", "ServiceRequestError",
                   "ConnectTimeoutError", "ConnectionRefusedError", "ClientConnectorDNSError",
                   "ServerDisconnectedError", "gaierror"}
    if names & unreachable or (isinstance(exc, OSError) and exc.errno in (
            errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)):
        return EndpointUnreachable(f"{what}: endpoint unreachable ({detail})")
    # a body cut short surfaces after the client's own retries: only the pass can try again
    cut_short = {"ClientPayloadError", "IncompleteReadError", "ResponseStreamingError", "IncompleteRead",
                 "ContentLengthError", "ChunkedEncodingError", "TransferEncodingError"}
    if names & cut_short:
        return TransientStorageError(f"{what}: {detail}")
    # no answer in time: the client already waited and tried again; the pass does not add more
    timeouts = {"TimeoutError", "ReadTimeoutError", "ServerTimeoutError", "FSTimeoutError", "ConnectTimeoutError"}
    if names & timeouts or (isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT):
        return TransientStorageError(f"{what}: {detail}", clients_retried=True)
    transient_names = {"ServiceResponseError", "ClientOSError", "ConnectionError", "ConnectionResetError",
                       "ProtocolError", "ResponseParserError", "ClientResponseError", "HTTPClientError",
                       "ServerDisconnectedError"}
    if (status in (408, 429) or (status is not None and status >= 500)
            or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                        "ServiceUnavailable", "ServerBusy", "OperationTimedOut")
            or names & transient_names or (isinstance(exc, OSError) and exc.errno in (
                errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED))):
        return TransientStorageError(f"{what}: {detail}")
    if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EAGAIN, errno.EBUSY):
        return TransientStorageError(f"{what}: {detail}")
    return StorageError(f"{what}: {detail}")


# --------------------------------------------------------------------------- storages


class Storage:
    """An opened connector: its filesystem and what a sync pass asks of it.

    ``fast_fail`` builds the filesystem with short timeouts and no retries, for
    ``flexingest test``, which must answer quickly when an endpoint is down.
    """

    kind = ""

    def __init__(self, connector: ConnectorBase, base_dir: Path, *, fast_fail: bool = False,
                 timeout: float = 60.0) -> None:
        self.connector = connector
        self.config: Any = connector.config  # type: ignore[attr-defined]
        self.base_dir = base_dir
        self.fast_fail = fast_fail
        self.timeout = timeout
        self._fs: AbstractFileSystem | None = None
        self._redactor = Redactor(v.get_secret_value() for v in vars(self.config).values()
                                  if hasattr(v, "get_secret_value"))

    # -- naming
    @property
    def name(self) -> str:
        return self.connector.name

    @property
    def root(self) -> str:
        """The bucket, container or folder that keys are relative to."""
        raise NotImplementedError

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def describe(self, key: str | None = None) -> str:
        where = f"{self.connector.type}://{self.root}"  # type: ignore[attr-defined]
        return f"{where}/{key}" if key else where

    def redact(self, text: str) -> str:
        return self._redactor.mask(text)

    def errors(self, key: str | None = None) -> contextlib.AbstractContextManager[None]:
        return storage_errors(self.describe(key), missing=ObjectGone if key else BucketNotFound,
                              redact=self.redact)

    # -- filesystem
    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            _import_backend(self.connector.type)  # type: ignore[attr-defined]
            with storage_errors(self.describe(), redact=self.redact):
                self._fs = self._make_fs()
        return self._fs

    def _make_fs(self) -> AbstractFileSystem:
        import fsspec

        return fsspec.filesystem(BACKENDS[self.connector.type][0], **self.options())  # type: ignore[attr-defined]

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the fsspec filesystem (credentials, endpoint, timeouts)."""
        return {}

    # -- listing
    def iter_pages(self, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[ObjectInfo]]:
        """Yield the objects under ``prefix``, a page at a time; folder placeholders skipped.

        Pages are listed ahead of the caller on the filesystem's event loop. Under a prefix
        with sub-folders, each sub-folder is listed by its own stream, a few at a time, so
        that the client parses one answer while the server prepares the next.
        """
        from fsspec.asyn import sync

        fs = self.fs
        loop = fs.loop
        with self.errors():
            queue, task = sync(loop, self._start_listing, prefix, page_size)
        try:
            while True:
                with self.errors():
                    item = sync(loop, queue.get)
                    if isinstance(item, BaseException):
                        raise item
                if item is None:
                    return
                yield item
        finally:
            with contextlib.suppress(Exception):
                sync(loop, _cancel, task)

    async def _start_listing(self, prefix: str, page_size: int) -> tuple[asyncio.Queue[Any], asyncio.Task[None]]:
        import asyncio  # imported here: the obstore, GCS-less and local passes never need it

        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=PREFETCH)

        async def stream(under: str, *, delimiter: bool, nested_only: bool = False) -> list[str]:
            """One listing stream into the queue; returns the sub-prefixes it saw."""
            token, prefixes = None, []
            while True:
                objects, subs, token = await self._list_page(under, token, page_size, delimiter)
                if nested_only:  # direct objects were listed already
                    objects = [o for o in objects if "/" in o.key[len(under):]]
                if objects:
                    await queue.put(objects)
                prefixes.extend(subs)
                if not token or page_size == 1:
                    return prefixes

        async def produce() -> None:
            try:
                if page_size == 1:
                    await stream(prefix, delimiter=False)
                else:
                    subs = await stream(prefix, delimiter=True)
                    if len(subs) > MAX_PARTITIONS:
                        await stream(prefix, delimiter=False, nested_only=True)
                    elif subs:
                        gate = asyncio.Semaphore(LIST_STREAMS)

                        async def one(sub: str) -> None:
                            async with gate:
                                await stream(sub, delimiter=False)

                        async with asyncio.TaskGroup() as group:
                            for sub in subs:
                                group.create_task(one(sub))
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, translated there
                while isinstance(exc, BaseExceptionGroup):
                    exc = exc.exceptions[0]
                await queue.put(exc)

        return queue, asyncio.ensure_future(produce())

    async def _list_page(self, prefix: str, token: Any, page_size: int,
                         delimiter: bool) -> tuple[list[ObjectInfo], list[str], Any]:
        """One page of the listing: (objects, sub-prefixes if ``delimiter``, next page's token)."""
        raise NotImplementedError

    def check(self, prefix: str = "") -> None:
        """One bounded request: list at most one key. Raises StorageError on failure."""
        for _ in self.iter_pages(prefix, page_size=1):
            break

    # -- objects
    def info(self, key: str) -> ObjectInfo:
        with self.errors(key):
            return self._info(self.fs.info(self.path(key)), key)

    def _info(self, detail: dict[str, Any], key: str) -> ObjectInfo:
        raise NotImplementedError

    def open(self, key: str) -> IO[bytes]:
        """A streaming, seekable reader that never holds the whole object."""
        with self.errors(key):
            return _ErrorMappingReader(  # type: ignore[return-value]
                self.fs.open(self.path(key), "rb", block_size=READ_BLOCK, cache_type="readahead"), self, key)

    def read(self, key: str) -> bytes:
        with self.errors(key):
            return self.fs.cat_file(self.path(key))  # type: ignore[no-any-return]

    def local_file(self, key: str) -> str | None:
        """The object's own file on this machine, if it has one (local folders)."""
        return None

    def download(self, key: str, dest: Path) -> None:
        with self.open(key) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, READ_BLOCK)

    # Reads that also say which version they read, so that what is recorded is what was
    # processed even when the object is overwritten between the listing and the read.

    def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        """The whole object and its version token, from one request where the backend allows."""
        from fsspec.asyn import sync

        with self.errors(key):
            return sync(self.fs.loop, self._read_versioned, key)  # type: ignore[no-any-return]

    async def _read_versioned(self, key: str) -> tuple[bytes, str | None]:
        return await self.fs._cat_file(self.path(key)), None

    def stream_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        """A sequential reader over one request (no ranged re-reads), and the version it reads."""
        from fsspec.asyn import sync

        with self.errors(key):
            read, close, version = sync(self.fs.loop, self._open_stream, key)
        return _ErrorMappingReader(_AsyncStream(self.fs.loop, read, close), self, key), version  # type: ignore[return-value]

    async def _open_stream(self, key: str) -> tuple[Any, Any, str | None]:
        raise NotImplementedError  # backends without a streaming GET use open_versioned

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        """A streaming reader and the version it reads (from the file's details)."""
        reader = self.open(key)
        with self.errors(key):
            details = getattr(getattr(reader, "_raw", reader), "details", None)
            version = self._info(details, key).version if details else None
        return reader, version or None


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


class _ErrorMappingReader:
    """Wraps a backend file so that read errors come out as flexingest errors."""

    def __init__(self, raw: Any, storage: Storage, key: str) -> None:
        self._raw = raw
        self._storage = storage
        self._key = key

    def read(self, size: int = -1) -> bytes:
        with self._storage.errors(self._key):
            return self._raw.read(size)  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _ErrorMappingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._raw)


class _AsyncStream(io.RawIOBase):
    """A file over an async ``read(n)`` running on the filesystem's event loop."""

    def __init__(self, loop: Any, read: Callable[[int], Any], close: Callable[[], Any]) -> None:
        super().__init__()
        self._loop, self._read, self._close = loop, read, close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from fsspec.asyn import sync

        data = sync(self._loop, self._read, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        from fsspec.asyn import sync

        if size is None or size < 0:
            chunks = []
            while chunk := sync(self._loop, self._read, READ_BLOCK):
                chunks.append(chunk)
            return b"".join(chunks)
        return sync(self._loop, self._read, size)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            from fsspec.asyn import sync

            with contextlib.suppress(Exception):
                sync(self._loop, self._close)
        super().close()


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _azure_error(response: Any, body: bytes) -> Exception:
    """The SDK's exception for an error answer, with the service's code and message."""
    from xml.etree import ElementTree

    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    code = response.headers.get("x-ms-error-code", "")
    try:
        message = ElementTree.fromstring(body).findtext("Message") or ""
    except ElementTree.ParseError:
        message = body[:200].decode("utf-8", "replace")
    text = f"{response.status_code} {code or response.reason}" + (f": {message.splitlines()[0]}" if message else "")
    error = (ResourceNotFoundError if response.status_code == 404 else HttpResponseError)(message=text,
                                                                                       response=response)
    error.error_code = code  # type: ignore[attr-defined]
    return error


def _revealed(secret: Any) -> str | None:
    return secret.get_secret_value() if secret is not None else None


_s3_sessions: dict[tuple[Any, ...], Any] = {}
_sessions_lock = threading.Lock()


def _parse_timestamp(value: str) -> datetime:
    """ISO 8601 (listings) and RFC 7231 (headers) timestamps, as aware datetimes."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        import email.utils

        parsed = email.utils.parsedate_to_datetime(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)  # type: ignore[no-any-return]


class S3Storage(Storage):
    kind = "s3"

    @property
    def root(self) -> str:
        return str(self.config.bucket)

    def options(self) -> dict[str, Any]:
        c = self.config
        opts: dict[str, Any] = {
            "anon": c.anonymous,
            "config_kwargs": {
                "connect_timeout": 2 if self.fast_fail else 10,
                "read_timeout": 5 if self.fast_fail else self.timeout,
                # total_max_attempts counts the first try; botocore's max_attempts counts retries only
                "retries": {"total_max_attempts": 1 if self.fast_fail else 3, "mode": "standard"},
                "max_pool_connections": 128,  # a sync's concurrency may be high: no queueing for sockets
                "parameter_validation": False,  # requests are built by s3fs and us: skip the CPU
            },
            "session": self._session(),
        }
        if c.endpoint_url:
            opts["endpoint_url"] = c.endpoint_url
        if c.region:
            opts["client_kwargs"] = {"region_name": c.region}
        if c.aws_access_key_id is not None and not c.role_arn:
            opts["key"] = c.aws_access_key_id.get_secret_value()
            opts["secret"] = c.aws_secret_access_key.get_secret_value()
            if c.aws_session_token is not None:
                opts["token"] = c.aws_session_token.get_secret_value()
        return opts

    def _make_fs(self) -> AbstractFileSystem:
        fs = super()._make_fs()
        # s3fs' own retry layer (one try: off). It wraps botocore's retries, which already cover
        # timeouts, resets, 5xx and SlowDown with backoff, and nests within itself around reads:
        # 3 tries made a hung endpoint cost 15 requests per listing page and up to 45 per read.
        # A body cut short is retried by the sync pass, which retries the whole object.
        fs.retries = 1
        return fs

    def _session(self) -> Any:
        """One aiobotocore session per connector settings (s3fs caches filesystems by their
        arguments: a new session each pass would grow that cache for the life of a service).

        Its responses' timestamps are parsed with the standard library: botocore's dateutil
        parser was a fifth of the client's CPU per request.
        """
        from aiobotocore.session import AioSession

        c = self.config
        key = (c.profile, c.role_arn, c.endpoint_url, c.region, _revealed(c.aws_access_key_id),
               _revealed(c.aws_secret_access_key), _revealed(c.aws_session_token))
        with _sessions_lock:
            if key not in _s3_sessions:
                session = self._assume_role_session() if c.role_arn else AioSession(profile=c.profile)
                session.get_component("response_parser_factory").set_parser_defaults(
                    timestamp_parser=_parse_timestamp)
                _s3_sessions[key] = session
            return _s3_sessions[key]

    def _assume_role_session(self) -> Any:
        """An aiobotocore session whose credentials come from STS AssumeRole and refresh."""
        from aiobotocore.credentials import AioDeferredRefreshableCredentials
        from aiobotocore.session import AioSession

        c = self.config
        source: dict[str, Any] = {}
        if c.aws_access_key_id is not None:
            source = {"aws_access_key_id": c.aws_access_key_id.get_secret_value(),
                      "aws_secret_access_key": c.aws_secret_access_key.get_secret_value()}
            if c.aws_session_token is not None:
                source["aws_session_token"] = c.aws_session_token.get_secret_value()
        if c.endpoint_url:
            source["endpoint_url"] = c.endpoint_url
        if c.region:
            source["region_name"] = c.region

        async def refresh() -> dict[str, str]:
            async with AioSession(profile=c.profile).create_client("sts", **source) as sts:
                out = await sts.assume_role(RoleArn=c.role_arn, RoleSessionName="flexingest")
            cred = out["Credentials"]
            return {"access_key": cred["AccessKeyId"], "secret_key": cred["SecretAccessKey"],
                    "token": cred["SessionToken"], "expiry_time": cred["Expiration"].isoformat()}

        session = AioSession(profile=c.profile)
        # botocore keeps resolved credentials here; setting them is how a session is given
        # refreshable credentials of our own (the assumed role's).
        session._credentials = AioDeferredRefreshableCredentials(refresh_using=refresh, method="assume-role")
        return session

    async def _list_page(self, prefix: str, token: Any, page_size: int,
                         delimiter: bool) -> tuple[list[ObjectInfo], list[str], Any]:
        fs: Any = self.fs
        kwargs: dict[str, Any] = {"Bucket": self.root, "Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            kwargs["Delimiter"] = "/"
        if token:
            kwargs["ContinuationToken"] = token
        out = await fs._call_s3("list_objects_v2", **kwargs)
        objects = [ObjectInfo(o["Key"], str(o.get("ETag", "")).strip('"'), int(o["Size"]),
                              _timestamp(o.get("LastModified")))
                   for o in out.get("Contents", []) if not o["Key"].endswith("/")]
        subs = [p["Prefix"] for p in out.get("CommonPrefixes", [])]
        return objects, subs, out.get("NextContinuationToken") if out.get("IsTruncated") else None

    def _info(self, detail: dict[str, Any], key: str) -> ObjectInfo:
        return ObjectInfo(key, str(detail.get("ETag", "")).strip('"'), int(detail["size"]),
                          _timestamp(detail.get("LastModified")))

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    async def _read_versioned(self, key: str) -> tuple[bytes, str | None]:
        fs: Any = self.fs  # one GET, whose answer carries the ETag of what it returns
        response = await fs._call_s3("get_object", Bucket=self.root, Key=key)
        try:
            data = await response["Body"].read()
        finally:
            response["Body"].close()
        return data, str(response.get("ETag", "")).strip('"') or None

    async def _open_stream(self, key: str) -> tuple[Any, Any, str | None]:
        fs: Any = self.fs
        response = await fs._call_s3("get_object", Bucket=self.root, Key=key)
        body = response["Body"]

        async def close() -> None:
            body.close()

        return body.read, close, str(response.get("ETag", "")).strip('"') or None


_gcs_classes: dict[int, Any] = {}


def gcs_filesystem() -> Any:
    """gcsfs' JSON-API filesystem class, whatever ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` says: its
    experimental gRPC class stalls for about 40 s per operation against plain-HTTP endpoints
    (emulators), and the JSON API serves standard and hierarchical-namespace buckets alike."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem


def _gcs_class(attempts: int) -> Any:
    """gcsfs with ``attempts`` tries per request: gcsfs bakes six (about 31 s of waiting) into
    ``_request``, on top of which the pass retries the object."""
    if attempts not in _gcs_classes:
        from gcsfs.retry import retry_request

        base = gcs_filesystem()
        _gcs_classes[attempts] = type(f"GCSFileSystem{attempts}", (base,), {
            "_request": retry_request(retries=attempts)(base._request.__wrapped__)})
    return _gcs_classes[attempts]


def _google_host(url: str) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url if "://" in url else f"https://{url}").hostname or "").lower()
    return host == "googleapis.com" or host.endswith(".googleapis.com")


class GCSStorage(Storage):
    kind = "gcs"

    @property
    def root(self) -> str:
        return str(self.config.bucket)

    def options(self) -> dict[str, Any]:

        c = self.config
        # requests_timeout bounds a whole request (connect and read), like S3's 2 s + 5 s when failing fast
        opts: dict[str, Any] = {"requests_timeout": 7 if self.fast_fail else self.timeout}
        if c.project:
            opts["project"] = c.project
        if c.endpoint_url:
            opts["endpoint_url"] = c.endpoint_url
        if c.anonymous or (c.service_account_json is None and c.endpoint_url and not _google_host(c.endpoint_url)):
            # an emulator or a private endpoint with no credentials given: anonymous, as Google's
            # own clients are with STORAGE_EMULATOR_HOST; Google's endpoints keep the ADC chain
            opts["token"] = "anon"
        elif c.service_account_json is not None:
            opts["token"] = self._service_account(c.service_account_json.get_secret_value().strip())
        else:
            opts["token"] = "google_default"
        return opts

    def _service_account(self, value: str) -> Any:
        """Credentials from a key file or the key's JSON, refused clearly when unusable
        (gcsfs would fall back to user credentials and fail with a bare KeyError)."""
        import json

        where = f"connector {self.name!r}: service_account_json"
        if not value.startswith("{"):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else self.base_dir / path
            try:
                value = path.read_text()
            except OSError as exc:
                raise FlexingestError(f"{where}: cannot read the key file {path}: {exc.strerror}") from None
            where += f" ({path})"
        try:
            info = json.loads(value)
        except ValueError:
            raise FlexingestError(f"{where}: not a JSON key") from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise FlexingestError(f'{where}: not a service-account key (expected "type": "service_account")')
        from google.oauth2 import service_account

        try:
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
        except (ValueError, KeyError) as exc:
            raise FlexingestError(f"{where}: the key cannot be used ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:120] if str(exc) else 'missing field'})") from None

    def _make_fs(self) -> AbstractFileSystem:
        return _gcs_class(1 if self.fast_fail else 3)(**self.options())

    async def _list_page(self, prefix: str, token: Any, page_size: int,
                         delimiter: bool) -> tuple[list[ObjectInfo], list[str], Any]:
        fs: Any = self.fs
        out = await fs._call("GET", "b/{}/o", self.root, json_out=True, prefix=prefix or None,
                             maxResults=page_size, pageToken=token, delimiter="/" if delimiter else None,
                             fields="items(name,size,generation,updated),prefixes,nextPageToken")
        objects = [ObjectInfo(o["name"], str(o.get("generation", "")), int(o.get("size", 0)),
                              _timestamp(o.get("updated")))
                   for o in out.get("items", []) if not o["name"].endswith("/")]
        return objects, list(out.get("prefixes", [])), out.get("nextPageToken")

    def _info(self, detail: dict[str, Any], key: str) -> ObjectInfo:
        return ObjectInfo(key, str(detail.get("generation", "")), int(detail["size"]),
                          _timestamp(detail.get("updated")))

    async def _read_versioned(self, key: str) -> tuple[bytes, str | None]:
        fs: Any = self.fs
        headers, data = await fs._call("GET", fs.url(self.path(key)))
        return data, headers.get("x-goog-generation")

    def stream_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        # gcsfs reads whole responses: stream through ranged reads of a large block
        with self.errors(key):
            raw = self.fs.open(self.path(key), "rb", block_size=8 * READ_BLOCK, cache_type="none")
            version = self._info(raw.details, key).version
        return _ErrorMappingReader(raw, self, key), version  # type: ignore[return-value]


class AzureBlobStorage(Storage):
    kind = "azure_blob"

    @property
    def root(self) -> str:
        return str(self.config.container)

    def options(self) -> dict[str, Any]:
        c = self.config
        opts: dict[str, Any] = {"connection_timeout": 2 if self.fast_fail else 10,
                                "read_timeout": 5 if self.fast_fail else int(self.timeout)}
        if c.connection_string is not None:
            opts["connection_string"] = c.connection_string.get_secret_value()
            return opts
        url = (c.account_url or "").rstrip("/")
        if url.startswith("http://") or (url and c.account_name is None):
            # adlfs builds https://<account_host> itself; an http endpoint (Azurite) or an
            # account known only by URL goes through a connection string instead.
            parts = [f"BlobEndpoint={url}"]
            if c.account_name:
                parts.append(f"AccountName={c.account_name}")
            if c.account_key is not None:
                parts.append(f"AccountKey={c.account_key.get_secret_value()}")
            elif c.sas_token is not None:
                parts.append(f"SharedAccessSignature={c.sas_token.get_secret_value().lstrip('?')}")
            if c.account_key is not None or c.sas_token is not None or c.anonymous:
                opts["connection_string"] = ";".join(parts) + ";"
                return opts
        if url:
            opts["account_host"] = url.split("://", 1)[-1]
        opts["account_name"] = c.account_name or url.split("://", 1)[-1].split(".", 1)[0]
        if c.account_key is not None:
            opts["account_key"] = c.account_key.get_secret_value()
        elif c.sas_token is not None:
            opts["sas_token"] = c.sas_token.get_secret_value()
        opts["anon"] = bool(c.anonymous)  # False: the default Azure credential chain
        return opts

    def _request_options(self) -> dict[str, Any]:
        if self.fast_fail:
            return {"retry_total": 0, "connection_timeout": 2, "read_timeout": 5}
        return {}

    def _make_fs(self) -> AbstractFileSystem:
        fs = super()._make_fs()
        # adlfs builds the SDK client without options and passes its timeouts to uploads and
        # downloads only: listings, properties and ranged reads waited the SDK's 60 s. And the
        # SDK backs off 18 s, 24 s, then 42 s between tries (1.5 min per failing request, before
        # the sync pass retries the object): back off about 2, 4, 8 s instead, like botocore.
        opts = self.options()
        config = fs.service_client._config
        config.transport.connection_config.timeout = opts["connection_timeout"]
        config.transport.connection_config.read_timeout = opts["read_timeout"]
        policy = config.retry_policy
        policy.initial_backoff, policy.increment_base, policy.random_jitter_range = 0, 2, 1
        return fs

    async def _list_page(self, prefix: str, token: Any, page_size: int,
                         delimiter: bool) -> tuple[list[ObjectInfo], list[str], Any]:
        """One List Blobs call through the SDK's own pipeline (credentials, retries, timeouts),
        its XML read with ElementTree: the SDK's generic deserializer cost 7x the CPU."""
        from urllib.parse import quote, unquote, urlencode
        from xml.etree import ElementTree

        from azure.core.rest import HttpRequest

        fs: Any = self.fs
        container = fs.service_client.get_container_client(self.root)
        query = {"restype": "container", "comp": "list", "maxresults": page_size}
        optional = (("prefix", prefix), ("marker", token), ("delimiter", "/" if delimiter else None))
        query.update({k: v for k, v in optional if v})
        url = container.url + ("&" if "?" in container.url else "?") + urlencode(query, quote_via=quote)
        request = HttpRequest("GET", url, headers={"x-ms-version": container.api_version})
        response = await container._client._send_request(request, **self._request_options())
        body = await response.read()
        if response.status_code >= 300:
            raise _azure_error(response, body)
        root = ElementTree.fromstring(body)

        def name_of(element: Any) -> str:
            name = element.find("Name")
            return unquote(name.text or "") if name.get("Encoded") == "true" else (name.text or "")

        objects: list[ObjectInfo] = []
        empty: list[ObjectInfo] = []
        for blob in root.iter("Blob"):
            name = name_of(blob)
            if name.endswith("/"):
                continue
            props = blob.find("Properties")
            if props is None:
                continue
            info = ObjectInfo(name, (props.findtext("Etag") or "").strip('"'),
                              int(props.findtext("Content-Length") or 0),
                              _timestamp(_parse_timestamp(props.findtext("Last-Modified") or "")))
            (empty if info.size == 0 else objects).append(info)
        subs = [name_of(p) for p in root.iter("BlobPrefix")]
        if empty:  # folder markers of hierarchical accounts are empty blobs with hdi_isfolder metadata
            import asyncio

            markers = await asyncio.gather(*(self._is_folder_marker(container, o.key) for o in empty))
            objects.extend(o for o, marker in zip(empty, markers) if not marker)
        return objects, subs, root.findtext("NextMarker") or None

    async def _is_folder_marker(self, container: Any, name: str) -> bool:
        """Hierarchical-namespace accounts list folders as empty blobs with hdi_isfolder."""
        try:
            props = await container.get_blob_client(name).get_blob_properties(**self._request_options())
        except Exception as exc:  # noqa: BLE001 - deleted meanwhile: not a marker, and gone later
            if type(exc).__name__ == "ResourceNotFoundError":
                return False
            raise
        return (props.metadata or {}).get("hdi_isfolder") == "true"

    def _info(self, detail: dict[str, Any], key: str) -> ObjectInfo:
        return ObjectInfo(key, str(detail.get("etag", "")).strip('"'), int(detail["size"]),
                          _timestamp(detail.get("last_modified")))

    async def _read_versioned(self, key: str) -> tuple[bytes, str | None]:
        fs: Any = self.fs
        async with fs.service_client.get_blob_client(container=self.root, blob=key) as blob:
            stream = await blob.download_blob(**self._request_options())
            data = await stream.readall()
        return data, str(stream.properties.etag or "").strip('"') or None

    async def _open_stream(self, key: str) -> tuple[Any, Any, str | None]:
        fs: Any = self.fs
        blob = fs.service_client.get_blob_client(container=self.root, blob=key)
        try:
            stream = await blob.download_blob(max_concurrency=1, **self._request_options())
        except BaseException:
            await blob.close()
            raise
        return stream.read, blob.close, str(stream.properties.etag or "").strip('"') or None


class LocalStorage(Storage):
    kind = "local"

    _root: str | None = None
    _real_root: str | None = None
    #: keys shown for files whose names are not UTF-8 (bytes as \\xNN): listed, and failed
    _undecodable: set[str] | None = None

    @property
    def root(self) -> str:
        if self._root is None:
            p = Path(self.config.path).expanduser()
            self._root = str(p if p.is_absolute() else (self.base_dir / p).resolve())
        return self._root

    def path(self, key: str) -> str:
        """The file of ``key``; a key that could name a file outside the folder is refused.

        Listed keys are always safe; this guards keys given to ``flexingest process``.
        """
        if self._undecodable and key in self._undecodable:
            raise StorageError(f"{self.describe(key)}: the file name is not UTF-8 text (its odd bytes are shown "
                               "as \\xNN); keys are text: rename the file")
        parts = check_key(key)
        return os.path.join(self.root, *parts)

    def describe(self, key: str | None = None) -> str:
        return os.path.join(self.root, key) if key else self.root

    def iter_pages(self, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[ObjectInfo]]:
        root = self.root
        if not os.path.isdir(root):
            raise BucketNotFound(f"{root}: folder not found" if not os.path.exists(root) else f"{root}: not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise AccessDenied(f"{root}: access denied (cannot read the folder)")
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        page: list[ObjectInfo] = []
        for key, st in self._walk(os.path.join(root, *start.split("/")) if start else root,
                                  f"{start}/" if start else ""):
            if _SURROGATE.search(key) is not None:  # a name in bytes that are not UTF-8
                key = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                if self._undecodable is None:
                    self._undecodable = set()
                self._undecodable.add(key)
            if key.startswith(prefix):
                page.append(ObjectInfo(key, f"{st.st_mtime_ns}-{st.st_size}", st.st_size, st.st_mtime))
                if len(page) >= page_size:
                    yield page
                    page = []
                    if page_size == 1:
                        return
        yield page

    def _walk(self, folder: str, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        """Files below ``folder`` with their stat, depth first, without holding the tree."""
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError as exc:
            raise AccessDenied(f"{folder}: access denied ({exc.strerror})") from None
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        yield from self._walk(entry.path, f"{rel}{entry.name}/")
                    elif entry.is_file():
                        yield f"{rel}{entry.name}", entry.stat()
                except FileNotFoundError:
                    continue  # deleted while listing

    def info(self, key: str) -> ObjectInfo:
        path = self.path(key)
        if "/" in key:  # the listing never enters a linked folder; neither does a given key
            if self._real_root is None:
                self._real_root = os.path.realpath(self.root)
            if not os.path.realpath(os.path.dirname(path)).startswith(self._real_root + os.sep):
                raise UnsafeKey(key, "passes through a symbolic link to a folder")
        with self.errors(key):
            st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ObjectGone(f"{self.describe(key)}: not a file")
        return ObjectInfo(key, f"{st.st_mtime_ns}-{st.st_size}", st.st_size, st.st_mtime)

    def open(self, key: str) -> IO[bytes]:
        with self.errors(key):
            return open(self.path(key), "rb")

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str | None]:
        reader, version = self.open_versioned(key)
        with reader, self.errors(key):
            return reader.read(), version

    def open_versioned(self, key: str) -> tuple[IO[bytes], str | None]:
        reader = self.open(key)
        st = os.fstat(reader.fileno())  # the file actually opened, whatever happens to the name
        return reader, f"{st.st_mtime_ns}-{st.st_size}"

    stream_versioned = open_versioned

    def local_file(self, key: str) -> str:
        return self.path(key)


_SURROGATE = re.compile("[\ud800-\udfff]")


#: connector type -> its storage class, or "module:Class" imported on first use. S3 and Azure
#: sources list and read through obstore (``connectors_obstore.py``); their ``fs`` is still s3fs
#: and adlfs, for destinations.
STORAGES: dict[str, type[Storage] | str] = {
    "azure_blob": "flexingest.connectors_obstore:ObstoreAzureBlobStorage",
    "gcs": GCSStorage,
    "local": LocalStorage,
    "s3": "flexingest.connectors_obstore:ObstoreS3Storage",
}


def storage_class(kind: str) -> type[Storage]:
    cls = STORAGES[kind]
    if isinstance(cls, str):
        import importlib

        module, _, name = cls.partition(":")
        cls = STORAGES[kind] = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, Storage)
    return cls


def open_connector(connector: ConnectorBase, base_dir: Path, *, fast_fail: bool = False) -> Storage:
    timeout = getattr(connector.config, "timeout", None)  # type: ignore[attr-defined]
    kwargs = {"timeout": timeout.total_seconds()} if timeout is not None else {}
    return storage_class(connector.type)(connector, base_dir, fast_fail=fast_fail, **kwargs)  # type: ignore[attr-defined]


def test_connector(connector: ConnectorBase, base_dir: Path) -> dict[str, Any]:
    """``flexingest test``: one bounded listing request; FlexOrch's response shape."""
    try:
        open_connector(connector, base_dir, fast_fail=True).check()
    except FlexingestError as exc:
        return {"connector": connector.name, "success": False, "message": str(exc)}
    return {"connector": connector.name, "success": True, "message": "Connection established successfully."}
