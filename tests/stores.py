"""A uniform test helper over one fresh bucket / container / folder per backend.

``make_store(kind, server, tmp_path)`` creates a new, uniquely named bucket on the given
emulator (or a new folder under ``tmp_path`` for ``local``) and returns a :class:`Store` with
put/delete/keys/read helpers and the matching flexingest connector ``config:`` mapping.

Keys with spaces, unicode and nested "folders" work on every backend. Known backend quirks
(seen with adlfs 2026.8.0 / Azurite 3.35.0, not worked around here):
- adlfs ``pipe_file`` raises ``ValueError`` (from ``urllib.parse``) *after* uploading a blob
  whose name has no "/" and contains "[...]", e.g. "br[1].txt": it re-parses the bare blob
  name as a URL host. Nested names such as "a/br[1].txt" are fine.
- A tab character in a blob name does not survive the round trip on Azure ("a\tb" lists as
  "ab").
"""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

from fsspec import AbstractFileSystem
from servers import AZURITE_ACCOUNT, AZURITE_KEY, Server

KINDS = ("local", "s3", "gcs", "azure_blob")
SERVER_KINDS = ("s3", "gcs", "azure_blob")
S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
S3_REGION = "us-east-1"
GCS_PROJECT = "test"

# Bucket-name prefixes: lowercase letters, digits and single hyphens are valid on S3, GCS and
# Azure (containers forbid underscores and "--").
_PREFIX = {"local": "fi-local", "s3": "fi-s3", "gcs": "fi-gcs", "azure_blob": "fi-az"}


def unique_bucket_name(kind: str) -> str:
    name = f"{_PREFIX[kind]}-{uuid.uuid4().hex[:16]}"
    assert 3 <= len(name) <= 63 and name == name.lower()
    return name


def azurite_connection_string(server: Server) -> str:
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={server.url}/{AZURITE_ACCOUNT};"
    )


class Store:
    """One bucket (or local folder) plus an fsspec filesystem to inspect and mutate it directly."""

    def __init__(self, kind: str, bucket: str, fs: AbstractFileSystem, server: Server | None) -> None:
        self.kind = kind
        self.bucket = bucket
        self.fs = fs
        self.server = server

    def __repr__(self) -> str:
        return f"Store(kind={self.kind!r}, bucket={self.bucket!r})"

    # -- paths
    def path(self, key: str) -> str:
        """The fsspec path of ``key`` (bucket-relative, "/"-separated)."""
        return f"{self.bucket}/{key.lstrip('/')}"

    def _key(self, path: str) -> str:
        prefix = self.bucket.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise AssertionError(f"{path!r} is not under {prefix!r}")
        return path[len(prefix):]

    # -- operations (single-object calls on purpose: no glob expansion of keys like "a[1].txt")
    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(key), data)
        self.fs.invalidate_cache()

    def put_many(self, items: dict[str, bytes]) -> None:
        if items:
            self.fs.pipe({self.path(key): data for key, data in items.items()})
        self.fs.invalidate_cache()

    def delete(self, key: str) -> None:
        self.fs.rm_file(self.path(key))
        self.fs.invalidate_cache()

    def read(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(key)))

    def keys(self) -> list[str]:
        # Objects may have been written by other clients (flexingest itself): never trust a
        # listing cache.
        self.fs.invalidate_cache()
        return sorted(self._key(p) for p in self.fs.find(self.bucket))

    def connector_config(self) -> dict[str, Any]:
        """The ``config:`` mapping of a flexingest connector of type ``self.kind`` for this store."""
        if self.kind == "local":
            return {"path": self.bucket}
        assert self.server is not None
        if self.kind == "s3":
            return {
                "bucket": self.bucket,
                "endpoint_url": self.server.url,
                "region": S3_REGION,
                **S3_CREDENTIALS,
            }
        if self.kind == "gcs":
            return {
                "bucket": self.bucket,
                "endpoint_url": self.server.url,
                "project": GCS_PROJECT,
                "anonymous": True,
            }
        if self.kind == "azure_blob":
            return {
                "container": self.bucket,
                "account_name": AZURITE_ACCOUNT,
                "account_key": AZURITE_KEY,
                "account_url": f"{self.server.url}/{AZURITE_ACCOUNT}",
            }
        raise ValueError(f"unknown store kind {self.kind!r}")


# --------------------------------------------------------------------------- filesystems
# Backend libraries are imported lazily: a run that only needs one backend does not pay for
# importing the others.


def s3_filesystem(server: Server) -> AbstractFileSystem:
    import s3fs

    # No client_kwargs region: moto rejects a us-east-1 LocationConstraint on CreateBucket.
    return s3fs.S3FileSystem(
        key=S3_CREDENTIALS["aws_access_key_id"],
        secret=S3_CREDENTIALS["aws_secret_access_key"],
        endpoint_url=server.url,
        skip_instance_cache=True,
    )


def gcs_filesystem(server: Server) -> AbstractFileSystem:
    # gcsfs' plain JSON-API class: its default (experimental, gRPC) class stalls ~40 s per
    # bucket operation against the plain-HTTP emulator
    import gcsfs.core

    # token="anon": any other token makes gcsfs contact Google's auth servers.
    return gcsfs.core.GCSFileSystem(
        endpoint_url=server.url, token="anon", project=GCS_PROJECT, skip_instance_cache=True
    )


def azure_filesystem(server: Server) -> AbstractFileSystem:
    import adlfs

    return adlfs.AzureBlobFileSystem(
        connection_string=azurite_connection_string(server), skip_instance_cache=True
    )


def make_store(kind: str, server: Server | None, tmp_path: pathlib.Path) -> Store:
    """A new, empty, uniquely named bucket / container (or folder under ``tmp_path``)."""
    if kind == "local":
        from fsspec.implementations.local import LocalFileSystem

        folder = pathlib.Path(tmp_path) / unique_bucket_name(kind)
        folder.mkdir(parents=True)
        fs = LocalFileSystem(auto_mkdir=True, skip_instance_cache=True)
        return Store(kind, folder.resolve().as_posix(), fs, None)

    if kind not in SERVER_KINDS:
        raise ValueError(f"unknown store kind {kind!r}; expected one of {KINDS}")
    if server is None or server.kind != kind:
        raise ValueError(f"a {kind} store needs a running {kind} server, got {server!r}")
    factories = {"s3": s3_filesystem, "gcs": gcs_filesystem, "azure_blob": azure_filesystem}
    fs = factories[kind](server)
    bucket = unique_bucket_name(kind)
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return Store(kind, bucket, fs, server)
