"""The storage libraries' exceptions as flexingest's: what each failure means for the pass.

Every exception here is the library's own class, built as the library builds it (botocore's
``ClientError`` from an error response, s3fs' translation of it, aiohttp's connector error,
azure-core's and azure-storage's errors over a real transport response, gcsfs' and Google's
errors). What a user relies on is the class (a missing bucket stops the pass, a gone object is
not a failure) and its ``transient``/``permanent`` attributes, which decide attempts and retries.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import aiohttp
import aiohttp.client_exceptions as aiohttp_errors
import azure.core.exceptions as azure_errors
import botocore.exceptions as boto_errors
import gcsfs.retry
import google.api_core.exceptions as google_api_errors
import google.auth.exceptions as google_auth_errors
import pytest
import requests
from aiohttp.client_reqrep import ConnectionKey
from azure.core.pipeline.transport import HttpRequest, RequestsTransportResponse
from azure.storage.blob._shared.response_handlers import process_storage_error
from multidict import CIMultiDict, CIMultiDictProxy
from s3fs.errors import translate_boto_error
from yarl import URL

from flexingest.connectors.errors import (
    BUSY,
    CUT_SHORT,
    DENIED,
    MISSING,
    NO_CREDENTIALS,
    NO_GOOGLE_CREDENTIALS,
    TIMEOUT,
    UNREACHABLE,
    classify,
    storage_errors,
    translate,
)
from flexingest.exceptions import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    FlexingestError,
    ObjectGone,
    StorageError,
    TransientStorageError,
    UnsafeKey,
)


def client_error(code: str, status: int, operation: str = "GetObject") -> boto_errors.ClientError:
    return boto_errors.ClientError({"Error": {"Code": code, "Message": f"the {code} message"},
                                    "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def s3fs_error(code: str, status: int) -> BaseException:
    """What s3fs raises for a ClientError: an OSError of its choosing, raised from it."""
    original = client_error(code, status)
    try:
        try:
            raise original
        except boto_errors.ClientError as exc:
            raise translate_boto_error(exc) from exc
    except Exception as raised:  # noqa: BLE001
        return raised
    raise AssertionError("unreachable")


def azure_response(status: int, code: str | None = None) -> RequestsTransportResponse:
    response = requests.Response()
    response.status_code = status
    response.reason = "Reason"
    response._content = b""
    if code:
        response.headers["x-ms-error-code"] = code
    return RequestsTransportResponse(HttpRequest("GET", "http://127.0.0.1:1/account/container/blob"), response)


def azure_storage_error(status: int, code: str) -> BaseException:
    """What azure-storage-blob raises: its own processing of azure-core's error."""
    error_class = azure_errors.ResourceNotFoundError if status == 404 else azure_errors.HttpResponseError
    try:
        process_storage_error(error_class(response=azure_response(status, code)))
    except Exception as raised:  # noqa: BLE001
        return raised
    raise AssertionError("process_storage_error always raises")


def aiohttp_response_error(status: int) -> aiohttp_errors.ClientResponseError:
    url = URL("http://127.0.0.1:1/bucket/key")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp_errors.ClientResponseError(info, (), status=status, message="answer")


def connector_error() -> aiohttp_errors.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    return aiohttp_errors.ClientConnectorError(key, OSError(errno.ECONNREFUSED, "Connect call failed"))


# (exception, what translate gives when listing, when reading an object, transient, the pass retries it itself)
CASES: dict[str, tuple[BaseException, type[StorageError], type[StorageError], bool, bool]] = {
    # botocore: the service's code first, then the HTTP status
    "s3 NoSuchBucket": (client_error("NoSuchBucket", 404), BucketNotFound, BucketNotFound, False, False),
    "s3 NoSuchKey": (client_error("NoSuchKey", 404), ObjectGone, ObjectGone, False, False),
    "s3 bare 404 (HEAD)": (client_error("404", 404, "HeadObject"), BucketNotFound, ObjectGone, False, False),
    "s3 AccessDenied": (client_error("AccessDenied", 403), AccessDenied, AccessDenied, False, False),
    "s3 bare 403": (client_error("403", 403, "HeadObject"), AccessDenied, AccessDenied, False, False),
    "s3 InvalidAccessKeyId": (client_error("InvalidAccessKeyId", 403), AccessDenied, AccessDenied, False, False),
    "s3 SignatureDoesNotMatch": (client_error("SignatureDoesNotMatch", 403), AccessDenied, AccessDenied, False,
                                 False),
    "s3 ExpiredToken (400)": (client_error("ExpiredToken", 400), AccessDenied, AccessDenied, False, False),
    "s3 SlowDown": (client_error("SlowDown", 503), TransientStorageError, TransientStorageError, True, True),
    "s3 InternalError": (client_error("InternalError", 500), TransientStorageError, TransientStorageError, True,
                         True),
    "s3 RequestTimeout (400)": (client_error("RequestTimeout", 400), TransientStorageError, TransientStorageError,
                                True, True),
    "s3 a 429": (client_error("TooManyRequests", 429), TransientStorageError, TransientStorageError, True, True),
    "s3 InvalidArgument": (client_error("InvalidArgument", 400), StorageError, StorageError, False, False),
    "botocore endpoint": (boto_errors.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
                          EndpointUnreachable, EndpointUnreachable, True, False),
    "botocore connect timeout": (boto_errors.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
                                 EndpointUnreachable, EndpointUnreachable, True, False),
    "botocore read timeout": (boto_errors.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
                              TransientStorageError, TransientStorageError, True, False),
    "botocore incomplete read": (boto_errors.IncompleteReadError(actual_bytes=1, expected_bytes=2),
                                 TransientStorageError, TransientStorageError, True, True),
    "botocore stream cut": (boto_errors.ResponseStreamingError(error="reset"), TransientStorageError,
                            TransientStorageError, True, True),
    "botocore no credentials": (boto_errors.NoCredentialsError(), AccessDenied, AccessDenied, False, False),
    "botocore partial credentials": (boto_errors.PartialCredentialsError(provider="env", cred_var="secret"),
                                     AccessDenied, AccessDenied, False, False),
    # s3fs re-raises ClientErrors as OSErrors: the code is still read from the cause
    "s3fs NoSuchBucket": (s3fs_error("NoSuchBucket", 404), BucketNotFound, BucketNotFound, False, False),
    "s3fs NoSuchKey": (s3fs_error("NoSuchKey", 404), ObjectGone, ObjectGone, False, False),
    "s3fs AccessDenied": (s3fs_error("AccessDenied", 403), AccessDenied, AccessDenied, False, False),
    "s3fs SlowDown": (s3fs_error("SlowDown", 503), TransientStorageError, TransientStorageError, True, True),
    # the standard library
    "FileNotFoundError": (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), BucketNotFound,
                          ObjectGone, False, False),
    "PermissionError": (PermissionError(errno.EACCES, "Permission denied"), AccessDenied, AccessDenied, False,
                        False),
    "ConnectionRefusedError": (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
                               EndpointUnreachable, EndpointUnreachable, True, False),
    "DNS failure": (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), EndpointUnreachable,
                    EndpointUnreachable, True, False),
    "TimeoutError": (TimeoutError(), TransientStorageError, TransientStorageError, True, False),
    "asyncio timeout": (asyncio.TimeoutError(), TransientStorageError, TransientStorageError, True, False),
    "ConnectionResetError": (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
                             TransientStorageError, TransientStorageError, True, True),
    "BrokenPipeError": (BrokenPipeError(errno.EPIPE, "Broken pipe"), TransientStorageError, TransientStorageError,
                        True, True),
    "OSError EHOSTUNREACH": (OSError(errno.EHOSTUNREACH, "No route to host"), EndpointUnreachable,
                             EndpointUnreachable, True, False),
    "OSError EIO": (OSError(errno.EIO, "Input/output error"), TransientStorageError, TransientStorageError, True,
                    True),
    "ValueError": (ValueError("something else"), StorageError, StorageError, False, False),
    # aiohttp (s3fs, gcsfs, adlfs)
    "aiohttp connector": (connector_error(), EndpointUnreachable, EndpointUnreachable, True, False),
    "aiohttp disconnected": (aiohttp_errors.ServerDisconnectedError(), EndpointUnreachable, EndpointUnreachable,
                             True, False),
    "aiohttp timeout": (aiohttp_errors.ServerTimeoutError("Timeout on reading data from socket"),
                        TransientStorageError, TransientStorageError, True, False),
    "aiohttp payload": (aiohttp_errors.ClientPayloadError("Response payload is not completed"),
                        TransientStorageError, TransientStorageError, True, True),
    "aiohttp os error": (aiohttp_errors.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
                         TransientStorageError, TransientStorageError, True, True),
    "aiohttp 404": (aiohttp_response_error(404), BucketNotFound, ObjectGone, False, False),
    "aiohttp 403": (aiohttp_response_error(403), AccessDenied, AccessDenied, False, False),
    "aiohttp 503": (aiohttp_response_error(503), TransientStorageError, TransientStorageError, True, True),
    # azure-core, and azure-storage-blob's errors with the service's code
    "azure not found": (azure_errors.ResourceNotFoundError(message="The specified resource does not exist."),
                        BucketNotFound, ObjectGone, False, False),
    "azure ContainerNotFound": (azure_storage_error(404, "ContainerNotFound"), BucketNotFound, BucketNotFound,
                                False, False),
    "azure BlobNotFound": (azure_storage_error(404, "BlobNotFound"), ObjectGone, ObjectGone, False, False),
    "azure AuthenticationFailed": (azure_storage_error(403, "AuthenticationFailed"), AccessDenied, AccessDenied,
                                   False, False),
    "azure ServerBusy": (azure_storage_error(503, "ServerBusy"), TransientStorageError, TransientStorageError,
                         True, True),
    "azure a 500": (azure_errors.HttpResponseError(response=azure_response(500)), TransientStorageError,
                    TransientStorageError, True, True),
    "azure authentication": (azure_errors.ClientAuthenticationError(message="Server failed to authenticate"),
                             AccessDenied, AccessDenied, False, False),
    "azure request": (azure_errors.ServiceRequestError(message="Connection refused"), EndpointUnreachable,
                      EndpointUnreachable, True, False),
    "azure response": (azure_errors.ServiceResponseError(message="Connection aborted"), TransientStorageError,
                       TransientStorageError, True, True),
    "azure incomplete": (azure_errors.IncompleteReadError(message="Incomplete read"), TransientStorageError,
                         TransientStorageError, True, True),
    # gcsfs and Google's libraries
    "gcsfs 404": (gcsfs.retry.HttpError({"code": 404, "message": "No such object"}), BucketNotFound, ObjectGone,
                  False, False),
    "gcsfs 401": (gcsfs.retry.HttpError({"code": 401, "message": "Anonymous caller"}), AccessDenied,
                  AccessDenied, False, False),
    "gcsfs 429": (gcsfs.retry.HttpError({"code": 429, "message": "rate"}), TransientStorageError,
                  TransientStorageError, True, True),
    "gcsfs 503": (gcsfs.retry.HttpError({"code": 503, "message": "backend"}), TransientStorageError,
                  TransientStorageError, True, True),
    "google NotFound": (google_api_errors.NotFound("bucket"), BucketNotFound, ObjectGone, False, False),
    "google Forbidden": (google_api_errors.Forbidden("denied"), AccessDenied, AccessDenied, False, False),
    "google ServiceUnavailable": (google_api_errors.ServiceUnavailable("later"), TransientStorageError,
                                  TransientStorageError, True, True),
    "google no default credentials": (google_auth_errors.DefaultCredentialsError("none found"), AccessDenied,
                                      AccessDenied, False, False),
    "google refresh": (google_auth_errors.RefreshError("invalid_grant"), AccessDenied, AccessDenied, False, False),
    "google transport": (google_auth_errors.TransportError("metadata server"), EndpointUnreachable,
                         EndpointUnreachable, True, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_library_error_means_one_failure(name: str) -> None:
    exc, listing, reading, transient, pass_retries = CASES[name]
    listed = translate(exc, "s3://bucket")
    read = translate(exc, "s3://bucket/key.pdf", ObjectGone)
    assert type(listed) is listing, (name, listed)
    assert type(read) is reading, (name, read)
    for error in (listed, read):
        assert error.transient is transient, name
        assert error.permanent is False, "a storage failure is never the object's own: it may pass"
        retried_by_pass = error.transient and not getattr(error, "clients_retried", False)
        assert retried_by_pass is pass_retries, name


@pytest.mark.parametrize(("exc", "kind"), [
    (FileNotFoundError(), MISSING), (PermissionError(), DENIED), (ConnectionRefusedError(), UNREACHABLE),
    (TimeoutError(), TIMEOUT), (ConnectionResetError(), BUSY), (OSError(errno.ENETUNREACH, "x"), UNREACHABLE),
    (OSError(errno.ETIMEDOUT, "x"), TIMEOUT), (OSError(errno.ENOSPC, "x"), None), (KeyError("x"), None),
    (boto_errors.NoCredentialsError(), NO_CREDENTIALS), (boto_errors.ReadTimeoutError(endpoint_url="u"), TIMEOUT),
    (aiohttp_errors.ServerTimeoutError(), TIMEOUT), (aiohttp_errors.ClientPayloadError(), CUT_SHORT),
    (azure_errors.ResourceNotFoundError(message="x"), MISSING),
    (google_auth_errors.DefaultCredentialsError(), NO_GOOGLE_CREDENTIALS),
    (client_error("NoSuchBucket", 404), None),  # a ClientError's type says nothing: its code does
])
def test_classify_goes_by_type_most_specific_first(exc: BaseException, kind: str | None) -> None:
    assert classify(exc) == kind


def test_messages_name_the_place_and_say_why() -> None:
    assert str(translate(client_error("NoSuchBucket", 404), "s3://docs")) == "s3://docs: bucket or container not found"
    assert str(translate(client_error("NoSuchKey", 404), "s3://docs/a.pdf", ObjectGone)) == \
        "s3://docs/a.pdf: object not found (deleted after listing?)"
    assert str(translate(boto_errors.EndpointConnectionError(endpoint_url="http://10.0.0.1:9000"), "s3://docs")) == \
        's3://docs: endpoint unreachable (Could not connect to the endpoint URL: "http://10.0.0.1:9000")'
    assert str(translate(TimeoutError(), "gs://docs/a")) == \
        "gs://docs/a: timed out waiting for an answer (TimeoutError)"
    no_google = str(translate(google_auth_errors.DefaultCredentialsError("x"), "gs://docs"))
    assert "service_account_json" in no_google and "anonymous: true" in no_google
    assert "anonymous: true" in str(translate(boto_errors.NoCredentialsError(), "s3://docs"))


def test_only_the_first_line_of_a_long_message_is_kept() -> None:
    error = translate(ValueError("first line\nsecond line\n" + "x" * 1000), "s3://docs")
    assert str(error) == "s3://docs: first line"
    assert len(str(translate(ValueError("y" * 1000), "s3://docs"))) == len("s3://docs: ") + 300


def test_secrets_in_a_library_message_are_masked() -> None:
    exc = client_error("AccessDenied", 403)
    exc.args = ("denied for key AKIASECRETKEY123",)
    error = translate(exc, "s3://docs", redact=lambda s: s.replace("AKIASECRETKEY123", "**********"))
    assert str(error) == "s3://docs: access denied (denied for key **********)"


def test_storage_errors_translates_once_and_keeps_the_cause() -> None:
    original = client_error("NoSuchKey", 404)
    with pytest.raises(ObjectGone) as info:
        with storage_errors("s3://docs/a.pdf", missing=ObjectGone):
            raise original
    assert info.value.__cause__ is original
    ours = UnsafeKey("../x", "has an empty, '.' or '..' path segment")
    with pytest.raises(UnsafeKey) as kept:
        with storage_errors("s3://docs"):
            raise ours
    assert kept.value is ours, "a flexingest error passes through untouched"


def test_an_unexpected_base_exception_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        with storage_errors("s3://docs"):
            raise KeyboardInterrupt


def test_every_translation_is_a_flexingest_error() -> None:
    translated: list[Any] = [translate(exc, "x") for exc, *_ in CASES.values()]
    assert all(isinstance(e, FlexingestError) for e in translated)
