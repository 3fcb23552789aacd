"""``s3`` connectors: Amazon S3 and S3-compatible stores (MinIO, R2, Ceph, ...).

A pass lists and reads through obstore (:class:`ObstoreS3Storage`); s3fs serves the
filesystem (destinations, ``after:`` actions) and the keys object_store cannot name. The
version token is the ETag, without quotes.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ..exceptions import FlexingestError
from ..models import AwsCredentials, ConnectorBase
from ..objects import ObjectInfo
from ..units import Duration
from .base import Storage, _parse_timestamp, _timestamp
from .objectstore import _ObstoreSource

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


def _revealed(secret: Any) -> str | None:
    return secret.get_secret_value() if secret is not None else None


_s3_sessions: dict[tuple[Any, ...], Any] = {}
_sessions_lock = threading.Lock()


class S3Config(AwsCredentials):
    bucket: str = Field(min_length=1, description="bucket name")
    region: str | None = Field(None, description="e.g. us-east-1; found from the bucket when omitted")
    endpoint_url: str | None = Field(None, description="S3-compatible stores: MinIO, R2, Ceph, ...")
    anonymous: bool = Field(False, description="unsigned requests, for public buckets")
    timeout: Duration = Field(timedelta(seconds=60), description="how long one request may wait for an answer")

    @model_validator(mode="after")
    def _credentials(self) -> S3Config:
        self.check_credentials()
        if self.anonymous and (self.aws_access_key_id or self.profile or self.role_arn):
            raise ValueError("'anonymous: true' cannot be combined with credentials")
        return self


class S3Connector(ConnectorBase):
    type: Literal["s3"]
    config: S3Config

    url_schemes = ("s3", "s3a")



class S3Storage(Storage):
    """``s3`` through s3fs: what serves ``fs`` (destinations, after: actions) and keys obstore cannot name."""

    kind = "s3"
    protocol = "s3"
    library = "s3fs"
    extra = "flexingest[s3]"

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



class ObstoreS3Storage(_ObstoreSource, S3Storage):
    """``s3`` connectors: obstore's S3 client for the pass, s3fs for ``fs``."""

    def _make_store(self) -> Any:
        from obstore.store import S3Store

        c = self.config
        kwargs: dict[str, Any] = {}
        client = self.client_options()
        provider = None
        if c.endpoint_url:
            kwargs["endpoint"] = c.endpoint_url.rstrip("/")
            kwargs["virtual_hosted_style_request"] = False  # MinIO, Ceph, moto: path-style, like s3fs
            client["allow_http"] = c.endpoint_url.startswith("http://")
        if c.anonymous:
            kwargs["skip_signature"] = True
        elif c.aws_access_key_id is not None and not c.role_arn:
            kwargs["access_key_id"] = c.aws_access_key_id.get_secret_value()
            kwargs["secret_access_key"] = c.aws_secret_access_key.get_secret_value()
            if c.aws_session_token is not None:
                kwargs["session_token"] = c.aws_session_token.get_secret_value()
        elif c.profile or c.role_arn or not (os.environ.get("AWS_ACCESS_KEY_ID")
                                             and os.environ.get("AWS_SECRET_ACCESS_KEY")):
            provider = BotocoreCredentials(c.profile, c.role_arn, self._static_credentials(), c.endpoint_url,
                                           c.region, fast_fail=self.fast_fail)
        region = c.region or (provider.region if provider is not None else None) or os.environ.get(
            "AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None and not c.endpoint_url:
            region = bucket_region(f"https://{c.bucket}.s3.amazonaws.com", timeout=5 if self.fast_fail else 10)
        kwargs["region"] = region or "us-east-1"
        options: Any = {"client_options": client, "retry_config": self.retry_config(),
                         "credential_provider": provider, **kwargs}
        return S3Store(c.bucket, **options)

    def _static_credentials(self) -> dict[str, str] | None:
        c = self.config
        if c.aws_access_key_id is None:
            return None
        creds = {"aws_access_key_id": c.aws_access_key_id.get_secret_value(),
                 "aws_secret_access_key": c.aws_secret_access_key.get_secret_value()}
        if c.aws_session_token is not None:
            creds["aws_session_token"] = c.aws_session_token.get_secret_value()
        return creds


def bucket_region(url: str, timeout: float = 10) -> str | None:
    """The region S3 names for a bucket (``x-amz-bucket-region`` of a HEAD), or None."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.netloc, timeout=timeout)
    try:
        conn.request("HEAD", parts.path or "/")
        response = conn.getresponse()
        response.read()
        return response.getheader("x-amz-bucket-region")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class BotocoreCredentials:
    """An obstore credential provider over botocore: a ``profile`` of the shared AWS files, the
    standard chain (environment, shared files, SSO, container and instance roles), and
    ``role_arn`` assumed through STS with those credentials (or the ones given), refreshed
    before they expire."""

    REFRESH = timedelta(minutes=5)  # botocore refreshes its own credentials when they near expiry

    def __init__(self, profile: str | None, role_arn: str | None, static: dict[str, str] | None,
                 endpoint_url: str | None, region: str | None, *, fast_fail: bool = False) -> None:
        try:
            import botocore.session
        except ImportError as exc:
            raise FlexingestError(f"profiles, roles and the AWS credential chain need botocore: pip install "
                                  f"'flexingest[s3]' ({exc})") from None
        self.session = botocore.session.Session(profile=profile)
        if static is not None:
            self.session.set_credentials(static["aws_access_key_id"], static["aws_secret_access_key"],
                                         static.get("aws_session_token"))
        self.role_arn = role_arn
        self.endpoint_url = endpoint_url
        self.region = region or self.session.get_config_variable("region")
        self.fast_fail = fast_fail
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            if self.role_arn:
                return self._assume_role()
            credentials = self.session.get_credentials()
            if credentials is None:
                raise FlexingestError("no AWS credentials found (environment, shared files, container or "
                                      "instance role); give keys, a profile, or 'anonymous: true'")
            frozen = credentials.get_frozen_credentials()
            refreshable = getattr(credentials, "refresh_needed", None) is not None
            return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                    "token": frozen.token,
                    "expires_at": datetime.now(timezone.utc) + self.REFRESH if refreshable else None}

    def _assume_role(self) -> dict[str, Any]:
        from botocore.config import Config

        config = Config(connect_timeout=2 if self.fast_fail else 10, read_timeout=5 if self.fast_fail else 60,
                        retries={"total_max_attempts": 1 if self.fast_fail else 3, "mode": "standard"})
        kwargs: dict[str, Any] = {"config": config, "region_name": self.region or "us-east-1"}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        sts = self.session.create_client("sts", **kwargs)
        cred = sts.assume_role(RoleArn=self.role_arn, RoleSessionName="flexingest")["Credentials"]
        return {"access_key_id": cred["AccessKeyId"], "secret_access_key": cred["SecretAccessKey"],
                "token": cred["SessionToken"], "expires_at": cred["Expiration"].astimezone(timezone.utc)}




CONNECTOR = S3Connector
STORAGE = ObstoreS3Storage
