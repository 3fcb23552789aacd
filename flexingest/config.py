"""The pipeline file as pydantic models.

These models are the whole file format: ``flexingest schema`` prints their JSON Schema,
and :func:`flexingest.loader.load_pipeline` validates a YAML file into :class:`Pipeline`.
Loading a file runs nothing: no connector is contacted, no step is built.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Literal, Union

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from .connectors import CONNECTOR_TYPES as _CONNECTOR_TYPES
from .connectors import connector_models, secret_fields
from .events import EventsConfig
from .models import ConnectorBase, Strict
from .steps import BUILTIN_STEPS, StepCall, StepOptions, known_steps, step_class
from .units import Duration, Size

# --------------------------------------------------------------------------- values

def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob on a key into a regex.

    ``*`` and ``?`` stay inside one path segment, ``**`` crosses segments (``**/`` also
    matches no folder at all), ``[abc]`` is a class. A pattern without ``/`` matches the
    last segment at any depth, like ``.gitignore``: ``*.pdf`` matches ``a/b/c.pdf``.
    """
    if not pattern:
        raise ValueError("an empty glob matches nothing")
    anchored = "/" in pattern.rstrip("/")
    body = pattern.lstrip("/")
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = body.find("]", i + 2 if body[i + 1: i + 2] in ("!", "]") else i + 1)
            if end == -1:
                raise ValueError(f"unclosed '[' in glob {pattern!r}")
            cls = body[i + 1: end]
            if cls.startswith("!"):
                cls = "^" + cls[1:]
            out.append("[" + cls.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    regex = "".join(out)
    if body.endswith("/"):
        regex += ".*"  # "drafts/" means everything under drafts/
    prefix = "" if anchored else "(?:.*/)?"
    try:
        return re.compile(f"^{prefix}{regex}$", re.DOTALL)
    except re.error as exc:
        raise ValueError(f"invalid glob {pattern!r}: {exc}") from exc


# --------------------------------------------------------------------------- connectors


#: one entry of ``connectors:``: each connector type's model, from :mod:`flexingest.connectors`
if TYPE_CHECKING:
    Connector = ConnectorBase
else:
    Connector = Annotated[Union[tuple(connector_models())], Field(discriminator="type")]
CONNECTOR_TYPES = _CONNECTOR_TYPES
SECRET_FIELDS = secret_fields()


# --------------------------------------------------------------------------- steps


def _step_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if isinstance(key, str) else None
    return getattr(value, "step_name", None)


def _step_union(names: Iterable[str]) -> Any:
    """``- name: {options}`` for each of ``names``, as one tagged union."""
    members = []
    for name in sorted(names):
        options_model: type[StepOptions] = step_class(name).Options

        def shorthand(value: Any, _name: str = name) -> Any:
            if isinstance(value, str):  # "- extract_text" means "- extract_text: {}"
                return {_name: {}}
            if isinstance(value, dict) and value.get(_name) is None:
                return {_name: {}}
            return value

        wrapper = create_model(
            f"Step_{name}",
            __config__=ConfigDict(extra="forbid"),
            options=(options_model, Field(alias=name)),
        )
        wrapper.step_name = name  # type: ignore[attr-defined]
        members.append(Annotated[wrapper, BeforeValidator(shorthand), Tag(name)])
    union = Annotated[  # type: ignore[valid-type]
        Union[tuple(members)],
        Discriminator(_step_tag),
    ]
    return Annotated[union, BeforeValidator(lambda v: v), _ToStepCall()]


class _ToStepCall:
    """Turns a validated ``Step_<name>`` wrapper into a plain :class:`StepCall`."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            lambda w: StepCall(type(w).step_name, w.options), handler(source),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda call: {call.name: call.options.model_dump(mode="json")}))


#: the built-in steps; a pipeline naming a registered plugin step is validated by
#: :func:`model_for`, which imports that plugin (and only that one)
StepList = list[_step_union(BUILTIN_STEPS)]  # type: ignore[misc,valid-type]

# --------------------------------------------------------------------------- syncs


class Every(Strict):
    every: Duration = Field(description="run a pass this often, e.g. 5m")

    @field_validator("every")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("must be longer than zero")
        return v


class Cron(Strict):
    cron: str = Field(description="five crontab fields, e.g. '*/15 * * * *'")
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _crontab(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"invalid crontab {v!r}: {exc}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. UTC, Europe/Paris)") from None
        return v


def _schedule_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "every" in value and "cron" in value:
            return None  # one or the other: the shape error says which shapes exist
        return "every" if "every" in value else "cron" if "cron" in value else None
    return "every" if isinstance(value, Every) else "cron" if isinstance(value, Cron) else None


Schedule = Annotated[
    Union[Annotated[Every, Tag("every")], Annotated[Cron, Tag("cron")]],
    Discriminator(_schedule_tag, custom_error_type="schedule_shape",
                  custom_error_message="a schedule is {every: 5m} or {cron: '*/15 * * * *', timezone: UTC}"),
]


class After(Strict):
    """What happens to a source object once it is done (one of the three)."""

    delete: bool = Field(False, description="delete the object")
    move_to: str | None = Field(None, min_length=1, description="a prefix of the same bucket (done/), or a URL of "
                                                                "another bucket of the connector's store")
    tag: dict[str, str] | None = Field(None, description="S3 object tags, GCS custom metadata, Azure blob index "
                                                         "tags, local extended attributes (user.NAME)")

    @model_validator(mode="after")
    def _one(self) -> After:
        given = [name for name, on in (("delete", self.delete), ("move_to", self.move_to is not None),
                                       ("tag", bool(self.tag))) if on]
        if len(given) != 1:
            raise ValueError("give one of delete: true, move_to: PREFIX or tag: {name: value}"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    def describe(self) -> str:
        return "delete" if self.delete else f"move_to {self.move_to}" if self.move_to else "tag"


class Sync(Strict):
    name: str = Field(min_length=1, pattern=r"^[^\s]+$")
    connector: str | int = Field(description="a connector name, or its integer id")
    prefix: str = Field("", description="only keys under this prefix")
    include: list[str] = Field(default_factory=list, description="globs on the key relative to prefix")
    exclude: list[str] = Field(default_factory=list)
    min_size: Size | None = None
    max_size: Size | None = None
    min_age: Duration | None = Field(None, description="skip objects modified more recently than this")
    schedule: Schedule = Field(default_factory=lambda: Every(every=timedelta(minutes=5)))
    on_change: Literal["reprocess", "ignore"] = "reprocess"
    concurrency: int = Field(8, ge=1, le=512, description="objects in flight at once")
    max_attempts: int = Field(3, ge=1, description="failed attempts before an object is parked as dead")
    steps: StepList | None = Field(None, description="overrides the top-level steps")  # type: ignore[valid-type]
    events: EventsConfig | None = Field(None, description="bucket notifications that find new objects between "
                                        "listings; 'schedule' is then the reconciliation listing")
    after: After | None = Field(None, description="what happens to each source object once it is done")

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for pattern in v:
            glob_to_regex(pattern)
        return v

    @model_validator(mode="after")
    def _sizes(self) -> Sync:
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError("'min_size' is larger than 'max_size'")
        return self

    def after_loops(self) -> str | None:
        """Why ``after: {move_to}`` would move objects back into what this sync lists, or None.

        Objects moved under the sync's own prefix, where its filters keep them, would be new
        objects at the next listing: processed, moved again, for ever.
        """
        if self.after is None or self.after.move_to is None or "://" in self.after.move_to:
            return None
        dest = self.after.move_to.lstrip("/")
        if not dest.startswith(self.prefix):
            return None
        names = ["file.txt", "a/b/file.pdf", *(p.rsplit("/", 1)[-1].replace("**", "x").replace("*", "x")
                                              .replace("?", "x") for p in self.include)]
        base = dest if dest.endswith("/") or not dest else f"{dest}/"
        for name in names:
            if self.skip_reason(base + name, 1, None) is None:
                return (f"moves objects to {dest!r}, inside what this sync lists (prefix {self.prefix!r}), where its "
                        f"filters keep them: they would be processed again, for ever; move them outside the prefix, "
                        f"or exclude the destination (exclude: ['{base}**'])")
        return None

    @cached_property
    def _include_re(self) -> list[re.Pattern[str]]:
        return [glob_to_regex(p) for p in self.include]

    @cached_property
    def _exclude_re(self) -> list[re.Pattern[str]]:
        return [glob_to_regex(p) for p in self.exclude]

    def skip_reason(self, key: str, size: int, age_seconds: float | None) -> str | None:
        """Why this listed object is filtered out of the sync, or None to keep it."""
        rel = key[len(self.prefix):] if key.startswith(self.prefix) else key
        if self.include and not any(r.match(rel) for r in self._include_re):
            return "not included"
        for pattern, regex in zip(self.exclude, self._exclude_re):
            if regex.match(rel):
                return f"excluded by {pattern!r}"
        if self.min_size is not None and size < self.min_size:
            return f"smaller than min_size ({size} < {int(self.min_size)} bytes)"
        if self.max_size is not None and size > self.max_size:
            return f"larger than max_size ({size} > {int(self.max_size)} bytes)"
        if self.min_age is not None and age_seconds is not None and age_seconds < self.min_age.total_seconds():
            return f"younger than min_age ({age_seconds:.0f}s)"
        return None


# --------------------------------------------------------------------------- executors


class ThreadsExecutor(Strict):
    type: Literal["threads"] = Field(description="the steps run in threads of this process (the default)")


class ProcessesExecutor(Strict):
    type: Literal["processes"]
    workers: int | Literal["auto"] = Field("auto", description="worker processes; auto: one per core")
    threads: int = Field(4, ge=1, le=64, description="objects a worker process works on at once (I/O overlaps)")
    batch: int | Literal["auto"] = Field("auto", description="objects sent to a worker at a time; auto: adapts "
                                                              "to how long objects take")

    @field_validator("workers", "batch")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1, or auto")
        return v


class DaskExecutor(ProcessesExecutor):
    type: Literal["dask"]  # type: ignore[assignment]
    address: str | None = Field(None, description="the scheduler, e.g. tcp://10.0.0.5:8786 or tls://...; none: a "
                                                  "local cluster of `workers` processes started by flexingest")
    threads: int = Field(1, ge=1, le=64, description="objects a worker task works on at once")

    @field_validator("address")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://", v):
            raise ValueError(f"expected a scheduler address like tcp://host:8786 or tls://host:8786, got {v!r}")
        return v


def _executor_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "threads")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


Executor = Annotated[
    Union[Annotated[ThreadsExecutor, Tag("threads")], Annotated[ProcessesExecutor, Tag("processes")],
          Annotated[DaskExecutor, Tag("dask")]],
    Discriminator(_executor_tag, custom_error_type="executor_type",
                  custom_error_message="an executor is {type: threads}, {type: processes, workers: 4} or "
                                       "{type: dask, address: tcp://host:8786}"),
]

# --------------------------------------------------------------------------- pipeline


class Pipeline(Strict):
    """A whole pipeline file."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "flexingest pipeline"})

    version: Literal[1] = Field(description="the file format version; always 1")
    state: str | None = Field(None, description="the state file; default .flexingest/<file stem>.db")
    connectors: list[Connector] = Field(min_length=1)
    steps: StepList = Field(default_factory=list,  # type: ignore[valid-type]
                            description="default steps for syncs and `process`")
    syncs: list[Sync] = Field(default_factory=list)
    connectors_dir: str | None = Field(
        None, description="a folder (relative to this file) of connector files, one connector per *.yaml; "
        "connectors created over HTTP are written there")
    executor: Executor = Field(default_factory=lambda: ThreadsExecutor(type="threads"),
                               description="where the steps run: threads (default), processes, or a Dask cluster")

    _path: Path = PrivateAttr(default=Path("pipeline.yaml"))
    #: connector name -> the file of connectors_dir that declares it (the others are in the pipeline file)
    _connector_files: dict[str, Path] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        """The pipeline file this was loaded from."""
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.resolve().parent

    @property
    def state_path(self) -> Path:
        if self.state:
            p = Path(self.state).expanduser()
            return p if p.is_absolute() else (self.base_dir / p).resolve()
        return self.base_dir / ".flexingest" / f"{self._path.stem}.db"

    @property
    def connectors_path(self) -> Path | None:
        """The folder of ``connectors_dir``, or None when connectors are declared in the file only."""
        if self.connectors_dir is None:
            return None
        p = Path(self.connectors_dir).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def connector_file(self, name: str) -> Path | None:
        """The file of ``connectors_dir`` that declares connector ``name`` (None: the pipeline file)."""
        return self._connector_files.get(name)

    def connector(self, ref: str | int) -> ConnectorBase:
        """A connector by name, or by integer id (``42`` or ``"42"``)."""
        for c in self.connectors:
            if c.name == ref:
                return c
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            for c in self.connectors:
                if c.id is not None and c.id == int(ref):
                    return c
        from .exceptions import FlexingestError

        raise FlexingestError(f"unknown connector {ref!r} (known: {', '.join(self.connector_names())})")

    def connector_names(self) -> list[str]:
        return [c.name for c in self.connectors]

    def sync(self, name: str) -> Sync:
        for s in self.syncs:
            if s.name == name:
                return s
        from .exceptions import FlexingestError

        known = ", ".join(s.name for s in self.syncs) or "none declared"
        raise FlexingestError(f"unknown sync {name!r} (known: {known})")

    def steps_for(self, sync: Sync | None) -> list[StepCall]:
        return list(sync.steps) if sync is not None and sync.steps is not None else list(self.steps)

    def secrets(self) -> set[str]:
        """Every secret value of the file, so that logs and errors can mask them wherever they appear."""
        found: set[str] = set()
        for c in self.connectors:
            for name in SECRET_FIELDS:
                value = getattr(c.config, name, None)
                if isinstance(value, SecretStr):
                    found.add(value.get_secret_value())
        for sync in self.syncs:  # an events: block's own credentials
            for name in SECRET_FIELDS:
                value = getattr(sync.events, name, None)
                if isinstance(value, SecretStr):
                    found.add(value.get_secret_value())
        calls: list[StepCall] = list(self.steps)
        for sync in self.syncs:
            calls.extend(sync.steps or [])
        for step in calls:
            for value in getattr(step.options, "headers", {}).values():
                if isinstance(value, SecretStr):
                    found.add(value.get_secret_value())
        return found


@functools.cache
def model_for(plugins: frozenset[str]) -> type[Pipeline]:
    """The pipeline model that also knows the plugin steps ``plugins`` (each imported here).

    Plugins are loaded only when a pipeline names them: a broken one breaks only the
    pipelines that use it.
    """
    if not plugins:
        return Pipeline
    steps: Any = list[_step_union({*BUILTIN_STEPS, *plugins})]  # type: ignore[misc]
    optional: Any = steps | None
    sync: Any = create_model("Sync", __base__=Sync,
                             steps=(optional, Field(None, description="overrides the top-level steps")))
    syncs: Any = list[sync]
    model: type[Pipeline] = create_model(
        "Pipeline", __base__=Pipeline,
        steps=(steps, Field(default_factory=list, description="default steps for syncs and `process`")),
        syncs=(syncs, Field(default_factory=list)))
    return model


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline file, for editors: with every registered step."""
    plugins = frozenset(known_steps()) - set(BUILTIN_STEPS)
    schema = model_for(plugins).model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
