"""``gcs`` connectors: Google Cloud Storage through gcsfs's JSON API. The version token is
the object's generation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator

from ..exceptions import FlexingestError
from ..models import ConnectorBase, Strict
from ..objects import READ_BLOCK, ObjectInfo
from ..units import Duration
from .base import Storage, _ErrorMappingReader, _timestamp

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


_gcs_classes: dict[int, Any] = {}


class GCSConfig(Strict):
    bucket: str = Field(min_length=1)
    project: str | None = None
    service_account_json: SecretStr | None = Field(
        None, description="path to a service-account key file, or the key's JSON itself")
    endpoint_url: str | None = Field(None, description="for emulators such as fake-gcs-server")
    anonymous: bool = Field(False, description="no credentials: public buckets and emulators")
    timeout: Duration = Field(timedelta(seconds=60), description="how long one request may wait for an answer")

    @model_validator(mode="after")
    def _credentials(self) -> GCSConfig:
        if self.anonymous and self.service_account_json is not None:
            raise ValueError("'anonymous: true' cannot be combined with 'service_account_json'")
        return self


class GCSConnector(ConnectorBase):
    type: Literal["gcs"]
    config: GCSConfig

    url_schemes = ("gs", "gcs")



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
    protocol = "gcs"
    library = "gcsfs"
    extra = "flexingest[gcs]"

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




CONNECTOR = GCSConnector
STORAGE = GCSStorage
