"""Connectors: read access to a bucket, one module per type.

:data:`CONNECTORS` is the one registry of connector types: each module declares its
``config:`` model (``CONNECTOR``) and its storage (``STORAGE``, a :class:`Storage`); adding a
type is a module and a line here. A storage's cloud library (s3fs, obstore, gcsfs, adlfs) is
imported only when a connector of that type is opened.

    connectors/
      base.py         Storage: what a pass asks of a store; readers; listing machinery
      errors.py       the libraries' exceptions mapped to flexingest's, by type
      objectstore.py  the obstore read path (S3 and Azure sources)
      local.py, s3.py, gcs.py, azure_blob.py   one per type
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import FlexingestError
from .base import PAGE_SIZE, Storage
from .errors import storage_errors, translate

if TYPE_CHECKING:
    from ..models import ConnectorBase

__all__ = ["CONNECTORS", "CONNECTOR_TYPES", "PAGE_SIZE", "Storage", "connector_models", "gcs_filesystem",
           "open_connector", "storage_class", "storage_errors", "test_connector", "translate"]

#: connector type -> the module that declares it (its CONNECTOR model and its STORAGE class)
CONNECTORS: dict[str, str] = {
    "azure_blob": "flexingest.connectors.azure_blob",
    "gcs": "flexingest.connectors.gcs",
    "local": "flexingest.connectors.local",
    "s3": "flexingest.connectors.s3",
}
CONNECTOR_TYPES = tuple(sorted(CONNECTORS))


@cache
def _module(kind: str) -> Any:
    if kind not in CONNECTORS:
        raise FlexingestError(f"unknown connector type {kind!r} (known: {', '.join(CONNECTOR_TYPES)})")
    return importlib.import_module(CONNECTORS[kind])


def connector_models() -> list[type[ConnectorBase]]:
    """The model of each connector type (for the pipeline file's ``connectors:`` union)."""
    return [_module(kind).CONNECTOR for kind in CONNECTOR_TYPES]


def url_schemes(kind: str) -> tuple[str, ...]:
    """URL schemes that name a place in ``kind``'s store (``s3://``, ``gs://``, ...)."""
    schemes: tuple[str, ...] = _module(kind).CONNECTOR.url_schemes
    return schemes


def secret_fields() -> frozenset[str]:
    """The names of every connector type's secret fields (shown as ``**********``)."""
    from pydantic import SecretStr

    found = set()
    for model in connector_models():
        config = model.model_fields["config"].annotation
        for name, field in getattr(config, "model_fields", {}).items():
            if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ())):
                found.add(name)
    return frozenset(found)


def storage_class(kind: str) -> type[Storage]:
    cls: type[Storage] = _module(kind).STORAGE
    return cls


def open_connector(connector: ConnectorBase, base_dir: Path, *, fast_fail: bool = False) -> Storage:
    timeout = getattr(connector.config, "timeout", None)
    kwargs = {"timeout": timeout.total_seconds()} if timeout is not None else {}
    return storage_class(connector.type)(connector, base_dir, fast_fail=fast_fail, **kwargs)


def test_connector(connector: ConnectorBase, base_dir: Path) -> dict[str, Any]:
    """``flexingest test``: one bounded listing request; FlexOrch's response shape."""
    try:
        open_connector(connector, base_dir, fast_fail=True).check()
    except FlexingestError as exc:
        return {"connector": connector.name, "success": False, "message": str(exc)}
    return {"connector": connector.name, "success": True, "message": "Connection established successfully."}


def gcs_filesystem() -> Any:
    """gcsfs' JSON-API filesystem class (for ``gs://`` destinations too)."""
    from .gcs import gcs_filesystem as cls

    return cls()
