"""The boundary between the storage libraries' exceptions and flexingest's, crossed once, here.

An exception is classified **by its type**: the standard library's, then those of botocore,
aiohttp, azure-core, google-auth and fsspec, each looked up only if that library is already
imported (its exception could not exist otherwise), as ``httpx`` maps ``httpcore``'s. What the
type does not say (an S3 ``ClientError``, an Azure ``HttpResponseError``) is read from the
service's error code and HTTP status the exception carries. obstore's exceptions are mapped
in :mod:`flexingest.connectors.objectstore`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from typing import Any, Callable, Iterator

from ..exceptions import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    FlexingestError,
    ObjectGone,
    StorageError,
    TransientStorageError,
)

MISSING, DENIED, NO_CREDENTIALS, NO_GOOGLE_CREDENTIALS, UNREACHABLE, CUT_SHORT, TIMEOUT, BUSY = (
    "missing", "denied", "no credentials", "no google credentials", "unreachable", "cut short", "timeout", "busy")

#: service error codes (S3, Azure, SQS) that say the same whatever the status
BUCKET_CODES = {"NoSuchBucket", "ContainerNotFound", "QueueNotFound"}
OBJECT_CODES = {"NoSuchKey", "BlobNotFound"}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                "AuthorizationFailure", "AuthenticationFailed", "TokenRefreshRequired", "InvalidClientTokenId",
                "UnrecognizedClientException", "AllAccessDisabled", "AuthorizationPermissionMismatch"}
BUSY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
              "ServiceUnavailable", "ServerBusy", "OperationTimedOut"}


def _library_types() -> Iterator[tuple[Any, str]]:
    """(exception type, kind) of the storage libraries already imported, most specific first."""
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        yield botocore.ReadTimeoutError, TIMEOUT
        yield botocore.ResponseStreamingError, CUT_SHORT
        yield botocore.IncompleteReadError, CUT_SHORT
        yield (botocore.NoCredentialsError, botocore.PartialCredentialsError), NO_CREDENTIALS
        yield botocore.ConnectionError, UNREACHABLE  # endpoint, proxy, connect timeout
        yield botocore.HTTPClientError, BUSY  # connection closed, protocol errors
    aiohttp = sys.modules.get("aiohttp.client_exceptions")
    if aiohttp is not None:
        yield aiohttp.ServerTimeoutError, TIMEOUT
        yield (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError), UNREACHABLE
        yield aiohttp.ClientPayloadError, CUT_SHORT
        yield aiohttp.ClientOSError, BUSY
    azure = sys.modules.get("azure.core.exceptions")
    if azure is not None:
        yield azure.ResourceNotFoundError, MISSING
        yield azure.ClientAuthenticationError, DENIED
        yield azure.IncompleteReadError, CUT_SHORT
        yield azure.ServiceRequestError, UNREACHABLE
        yield azure.ServiceResponseError, BUSY
    google = sys.modules.get("google.auth.exceptions")
    if google is not None:
        yield google.DefaultCredentialsError, NO_GOOGLE_CREDENTIALS
        yield google.RefreshError, DENIED
        yield google.TransportError, UNREACHABLE


_STANDARD: tuple[tuple[Any, str], ...] = (
    (FileNotFoundError, MISSING),
    (PermissionError, DENIED),
    ((ConnectionRefusedError, socket.gaierror), UNREACHABLE),
    (TimeoutError, TIMEOUT),  # asyncio's and fsspec's FSTimeoutError too
    ((ConnectionResetError, BrokenPipeError, ConnectionAbortedError), BUSY),
)
_ERRNO = {errno.ECONNREFUSED: UNREACHABLE, errno.EHOSTUNREACH: UNREACHABLE, errno.ENETUNREACH: UNREACHABLE,
          errno.ETIMEDOUT: TIMEOUT, errno.ECONNRESET: BUSY, errno.EPIPE: BUSY, errno.ECONNABORTED: BUSY,
          errno.EIO: BUSY, errno.EAGAIN: BUSY, errno.EBUSY: BUSY}


def classify(exc: BaseException) -> str | None:
    """What kind of failure ``exc`` is, by its type; None when its type does not say."""
    for types, kind in _library_types():
        if isinstance(exc, types):
            return kind
    for types, kind in _STANDARD:
        if isinstance(exc, types):
            return kind
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (botocore's response, azure's, aiohttp's, gcsfs')."""
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


def error_code(exc: BaseException) -> str:
    """The service's error code (S3's and SQS's ``Code``, Azure's ``x-ms-error-code``), also
    when a library re-raised the error as another exception."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            for field in ("Code", "QueryErrorCode"):
                if error.get(field):
                    return str(error[field])
        code = getattr(seen, "error_code", None)
        if code:
            return str(getattr(code, "value", code))
        seen = seen.__cause__ or seen.__context__
    return ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text and isinstance(exc, TimeoutError):  # gcsfs' timeouts say nothing but their class
        return f"timed out waiting for an answer ({type(exc).__name__})"
    text = text or type(exc).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def storage_errors(what: str, *, missing: type[StorageError] = BucketNotFound,
                   redact: Callable[[str], str] = lambda s: s) -> Iterator[None]:
    """Translate a library's exceptions into :mod:`flexingest.exceptions`.

    ``what`` names the bucket or object for the message; ``missing`` is what a not-found
    means here (a missing bucket when listing, a gone object when reading).
    """
    try:
        yield
    except FlexingestError:
        raise
    except Exception as exc:  # noqa: BLE001 - this is the one translation point
        raise translate(exc, what, missing, redact) from exc


def translate(exc: BaseException, what: str, missing: type[StorageError] = BucketNotFound,
              redact: Callable[[str], str] = lambda s: s) -> StorageError:
    """The flexingest error of a storage library's exception (see the module docstring)."""
    kind = classify(exc)
    code = error_code(exc)
    status = status_of(exc)
    detail = redact(first_line(exc))
    if code in BUCKET_CODES:
        return BucketNotFound(f"{what}: bucket or container not found")
    if code in OBJECT_CODES:
        return ObjectGone(f"{what}: object not found (deleted after listing?)")
    if kind == MISSING or status == 404:
        if missing is BucketNotFound:
            return BucketNotFound(f"{what}: bucket or container not found")
        return missing(f"{what}: not found (deleted after listing?)")
    if kind == NO_GOOGLE_CREDENTIALS:
        return AccessDenied(f"{what}: no Google credentials were found (application default credentials): "
                            "give 'service_account_json', run 'gcloud auth application-default login', "
                            "or say 'anonymous: true' for a public bucket or an emulator")
    if kind == NO_CREDENTIALS:
        return AccessDenied(f"{what}: no credentials were found ({detail}): give them in the connector's config, "
                            "or say 'anonymous: true' for a public bucket or an emulator")
    if kind == DENIED or status in (401, 403) or code in DENIED_CODES:
        return AccessDenied(f"{what}: access denied ({detail})")
    if kind == UNREACHABLE:
        return EndpointUnreachable(f"{what}: endpoint unreachable ({detail})")
    if kind == CUT_SHORT:  # after the client's own retries: only the pass can try again
        return TransientStorageError(f"{what}: {detail}")
    if kind == TIMEOUT:  # the client already waited and tried again; the pass adds no more
        return TransientStorageError(f"{what}: {detail}", clients_retried=True)
    if kind == BUSY or status in (408, 429) or (status is not None and status >= 500) or code in BUSY_CODES:
        return TransientStorageError(f"{what}: {detail}")
    return StorageError(f"{what}: {detail}")
