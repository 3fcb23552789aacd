"""Connectors created and removed over HTTP: the files of the pipeline's ``connectors_dir``.

A connector stays declarative: ``POST /v1/connectors`` writes one YAML file in
``connectors_dir`` (the pipeline as it would then be is validated first, by the loader, so
the errors are those of ``flexingest validate``), atomically (a temporary file, fsync,
rename, mode 0600: it may hold credentials). Values are written literally: ``${`` in a
posted value is escaped, so that a request cannot read the service's environment through
interpolation. ``DELETE`` removes a file of the folder, never a connector of the pipeline
file itself, nor one a sync uses.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ..exceptions import ApiError, ConfigError, ConfigIssue
from ..redact import MASK

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..models import ConnectorBase

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_DEPTH = 20  # nesting of a posted config: a connector's is 1 or 2


class InvalidConnector(Exception):
    """The pipeline with this connector would not be valid: its issues, as ``validate`` says them."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__(f"{len(issues)} error(s)")
        self.issues = issues


def shown(connector: ConnectorBase) -> dict[str, Any]:
    """A connector as the API answers it: secrets as ``**********``, durations as ``30s``."""
    config: Any = connector.config  # every connector type has one
    return {"id": connector.id, "type": getattr(connector, "type", None), "name": connector.name,
            "config": _plain(config.model_dump(exclude_unset=True))}


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _literal(value: Any, depth: int = 0) -> Any:
    """``value`` with ``${`` escaped in every string: what was posted is what the file means."""
    if depth > MAX_DEPTH:
        raise ApiError(422, f"the config is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {_literal(k, depth + 1): _literal(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v, depth + 1) for v in value]
    return value


def _load(pipeline: Pipeline, files: dict[str, str | None]) -> Pipeline:
    from ..loader import load_pipeline

    new: Pipeline = load_pipeline(pipeline.path, connector_files=files)
    return new


def create(pipeline: Pipeline, body: dict[str, Any]) -> Pipeline:
    """Write the connector of ``body`` (type, name, config, optional id) into ``connectors_dir``;
    returns the pipeline with it. ApiError 409 without connectors_dir or for a name or id in use;
    InvalidConnector when the loader refuses it."""
    import yaml

    folder = pipeline.connectors_path
    if folder is None:
        raise ApiError(409, f"connectors are declared in the pipeline file {pipeline.path}: add "
                            "'connectors_dir: connectors.d' to it to create connectors over HTTP")
    name = body["name"]
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise InvalidConnector([ConfigIssue("request", 0, 0, "name", "a connector created over HTTP is named with "
                                            "letters, digits, '.', '_' and '-' (it names its file), at most 100")])
    if name in pipeline.connector_names():
        raise ApiError(409, f"a connector named {name!r} exists already")
    ids = [c.id for c in pipeline.connectors if c.id is not None]
    cid = body.get("id")
    if cid is not None and cid in ids:
        raise ApiError(409, f"a connector with id {cid} exists already")
    if cid is None:
        cid = max(ids, default=0) + 1
    file = f"{name}.yaml"
    if (folder / file).exists():
        raise ApiError(409, f"{folder / file} exists already (it declares another connector)")
    data = {"name": name, "id": cid, "type": _literal(body["type"]), "config": _literal(body["config"])}
    text = (f"# created over HTTP (POST /v1/connectors) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}Z;\n"
            "# a connector file like any other: edit it, or delete it with DELETE /v1/connectors/ID\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=1000))
    new = _checked(pipeline, {file: text}, file)
    _write(folder, file, text)
    return new


def delete(pipeline: Pipeline, connector: ConnectorBase) -> Pipeline:
    """Remove a connector of ``connectors_dir``; returns the pipeline without it (ApiError 409 when
    it is declared in the pipeline file, or used)."""
    path = pipeline.connector_file(connector.name)
    if path is None:
        raise ApiError(409, f"connector {connector.name!r} is declared in the pipeline file {pipeline.path}; "
                            "remove it there")
    users = [s.name for s in pipeline.syncs if s.connector in (connector.name, connector.id)
             or (isinstance(s.connector, str) and s.connector.isdigit() and int(s.connector) == connector.id)]
    if users:
        raise ApiError(409, f"connector {connector.name!r} is used by sync(s) {', '.join(users)}")
    try:
        new = _checked(pipeline, {path.name: None}, None)
    except InvalidConnector as exc:
        raise ApiError(409, f"connector {connector.name!r} is still needed: "
                            + "; ".join(str(i) for i in exc.issues)) from None
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ApiError(503, f"cannot remove {path}: {exc.strerror}") from None
    _sync_folder(path.parent)
    return new


def _checked(pipeline: Pipeline, files: dict[str, str | None], new_file: str | None) -> Pipeline:
    """The pipeline with ``files`` changed, or InvalidConnector with the problems of the new file
    (ApiError 409 when the pipeline's own files are what is wrong)."""
    try:
        return _load(pipeline, files)
    except ConfigError as exc:
        mine = [i for i in exc.issues if new_file is not None and Path(i.file).name == new_file]
        if mine or new_file is None:
            raise InvalidConnector(mine or list(exc.issues)) from None
        raise ApiError(409, "the pipeline files have errors: " + "; ".join(str(i) for i in exc.issues)) from None


def _write(folder: Path, name: str, text: str) -> None:
    """``folder/name`` appears whole (temporary file, fsync, rename), readable by its owner only."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise ApiError(503, f"cannot write {folder / name}: {exc.strerror}") from None
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
