"""Validation of a loaded pipeline file beyond what its YAML says: pydantic's errors mapped to
``FILE:LINE:COLUMN: field: message``, the plugin steps it names (imported only then), and the
checks across fields (connector references, duplicate names, destinations).

Used by :mod:`flexingest.loader`, which keeps where every value was written.
"""

from __future__ import annotations

import difflib
import functools
import typing
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel

from .exceptions import ConfigIssue

if TYPE_CHECKING:
    from .loader import _Walker

Loc = tuple[str | int, ...]


def field_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _resolve(loc: tuple[Any, ...], data: Any) -> tuple[Loc, list[Any]]:
    """Map a pydantic loc (with union tags) onto the data: matched path + unmatched rest."""
    matched: list[str | int] = []
    rest: list[Any] = []
    cur = data
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if (isinstance(cur, dict) and part in cur and parts and isinstance(parts[0], str) and parts[0] in cur
                and not isinstance(cur[part], (dict, list))):
            continue  # a union tag that is also a key here ({cron: ..., timezone: ...})
        if isinstance(cur, dict) and part in cur:
            matched.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            matched.append(part)
            cur = cur[part]
        elif parts and isinstance(part, str) and not (isinstance(cur, dict) and part in cur):
            continue  # a union tag such as 's3' or a step's wrapper: not in the data
        else:
            rest = [part, *parts]
            break
    return tuple(matched), rest


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def _step_entries(data: dict[str, Any]) -> typing.Iterator[tuple[Loc, str]]:
    """Every step of the file, as (its location, its name)."""
    lists: list[tuple[Loc, Any]] = [(("steps",), data.get("steps"))]
    syncs = data.get("syncs")
    if isinstance(syncs, list):
        lists += [(("syncs", i, "steps"), s.get("steps")) for i, s in enumerate(syncs) if isinstance(s, dict)]
    for loc, steps in lists:
        for j, step in enumerate(steps if isinstance(steps, list) else []):
            name = step if isinstance(step, str) else next(iter(step)) if isinstance(step, dict) and step else None
            if isinstance(name, str):
                yield (*loc, j), name


def plugins_named(data: dict[str, Any], walker: _Walker, issues: list[ConfigIssue]) -> frozenset[str]:
    """The plugin steps this file names, imported now (only those); one that cannot be
    loaded is an issue at each step naming it."""
    from .exceptions import PluginError
    from .steps import BUILTIN_STEPS, step_class

    loaded: set[str] = set()
    for loc, name in _step_entries(data):
        if name in BUILTIN_STEPS or name not in _step_names():
            continue  # an unknown name is reported by the validation, with the known ones
        try:
            step_class(name)
        except PluginError as exc:
            line, col = walker.key_marks.get((*loc, name), walker.value_marks.get(loc, (0, 0)))
            issues.append(ConfigIssue(walker.file, line, col, field_path(loc), str(exc)))
            walker.tainted.add(loc)
            continue
        loaded.add(name)
    return frozenset(loaded)


def issue_from_pydantic(error: Mapping[str, Any], data: Any, walker: _Walker,
                         root: type[BaseModel]) -> ConfigIssue | None:
    etype = error["type"]
    loc, rest = _resolve(error["loc"], data)
    if loc in walker.tainted:
        return None  # the missing variable was already reported here
    message = error["msg"]
    ctx = error.get("ctx") or {}
    mark = walker.value_marks.get(loc, (0, 0))
    if loc in walker.key_marks and isinstance(_value_at(data, loc), (dict, list)):
        mark = walker.key_marks[loc]  # a whole mapping is wrong: point at its key
    display = loc
    if etype == "extra_forbidden":
        mark = walker.key_marks.get(loc, mark)
        model = _model_at(error["loc"][:-1], root)
        known = sorted(model.model_fields) if model else []
        if model is not None:
            known = [f.alias or n for n, f in model.model_fields.items()]
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        message = f"unknown field {loc[-1]!r}"
        if hint:
            message += f" (did you mean {hint[0]!r}?)"
        elif known:
            message += f" (expected one of: {', '.join(known)})"
    elif etype == "missing":
        display = (*loc, *rest)
        message = "required field missing"
    elif etype in ("union_tag_invalid", "union_tag_not_found") and "steps" in loc:
        if etype == "union_tag_not_found":
            message = "a step is one step name with its options, e.g. '- write_jsonl: {path: out.jsonl}'"
        else:
            tag = ctx.get("tag")
            names = _step_names()
            hint = difflib.get_close_matches(str(tag), names, n=1)
            message = (f"unknown step {tag!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                       + f" (known: {', '.join(names)})")
    elif etype in ("union_tag_invalid", "union_tag_not_found") and loc[-1:] == ("events",):
        from .events import EVENT_TYPES

        display = (*loc, "type")
        mark = walker.value_marks.get(display, mark)
        tag = ctx.get("tag")
        hint = difflib.get_close_matches(str(tag), EVENT_TYPES, n=1) if etype == "union_tag_invalid" else []
        message = (f"unknown event type {tag!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                   + f" (known: {', '.join(EVENT_TYPES)})" if etype == "union_tag_invalid"
                   else f"required field missing (one of {', '.join(EVENT_TYPES)})")
    elif etype == "union_tag_invalid":
        display = (*loc, "type")
        mark = walker.value_marks.get(display, mark)
        message = f"unknown connector type {ctx.get('tag')!r} (known: {', '.join(_connector_types())})"
    elif etype == "union_tag_not_found":
        display = (*loc, "type")
        message = f"required field missing (one of {', '.join(_connector_types())})"
    elif etype in ("literal_error", "enum"):
        message = f"{message[0].lower()}{message[1:]}, got {error.get('input')!r}"
    elif etype == "value_error":
        message = message.removeprefix("Value error, ")
    else:
        message = message[0].lower() + message[1:]
    if loc and str(loc[-1]) in _secret_fields():
        message = message.split(", got ")[0]  # never echo a secret value
    return ConfigIssue(walker.file, mark[0], mark[1], field_path(display), message)


def _connector_types() -> tuple[str, ...]:
    from .connectors import CONNECTOR_TYPES

    return CONNECTOR_TYPES


def _secret_fields() -> frozenset[str]:
    from .config import SECRET_FIELDS

    return SECRET_FIELDS


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that a pydantic loc points into (following union tags)."""
    current: Any = root
    for part in loc:
        current = _step_into(current, part)
        if current is None:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _step_into(tp: Any, part: Any) -> Any:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return typing.get_args(tp)[0] if isinstance(part, int) else None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [_unwrap(m) for m in typing.get_args(tp) if m is not type(None)]
        for m in members:  # a union tag names the member
            if isinstance(m, type) and issubclass(m, BaseModel):
                if getattr(m, "step_name", None) == part:
                    return m
                field = m.model_fields.get("type")
                if field is not None and part in typing.get_args(field.annotation):
                    return m
        for m in members:
            found = _step_into(m, part)
            if found is not None:
                return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, field in tp.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
    return None


# --------------------------------------------------------------------------- references


def reference_issues(data: dict[str, Any], walker: _Walker) -> list[ConfigIssue]:
    """Cross-field checks on the raw data, so they are reported with the other errors."""
    issues: list[ConfigIssue] = []

    def add(loc: Loc, message: str) -> None:
        line, col = walker.value_marks.get(loc, (0, 0))
        issues.append(ConfigIssue(walker.file, line, col, field_path(loc), message))

    connectors: list[Any] = data["connectors"] if isinstance(data.get("connectors"), list) else []
    names: dict[str, int] = {}
    types: dict[str, Any] = {}
    configs: dict[Any, Any] = {}  # connector name or id -> (type, config)
    ids: dict[int, int] = {}
    for i, c in enumerate(connectors):
        if not isinstance(c, dict):
            continue
        name, cid = c.get("name"), c.get("id")
        if isinstance(name, str):
            if name in names:
                add(("connectors", i, "name"), f"duplicate connector name {name!r} (also connectors[{names[name]}])")
            names.setdefault(name, i)
            types.setdefault(name, c.get("type"))
        if isinstance(cid, int) and not isinstance(cid, bool):
            if cid in ids:
                add(("connectors", i, "id"), f"duplicate connector id {cid} (also connectors[{ids[cid]}])")
            ids.setdefault(cid, i)
            configs.setdefault(cid, (c.get("type"), c.get("config")))
        if isinstance(name, str):
            configs.setdefault(name, (c.get("type"), c.get("config")))

    top_steps = data.get("steps")
    syncs: list[Any] = data["syncs"] if isinstance(data.get("syncs"), list) else []
    sync_names: dict[str, int] = {}
    for i, s in enumerate(syncs):
        if not isinstance(s, dict):
            continue
        name = s.get("name")
        if isinstance(name, str):
            if name in sync_names:
                add(("syncs", i, "name"), f"duplicate sync name {name!r} (also syncs[{sync_names[name]}])")
            sync_names.setdefault(name, i)
        ref = s.get("connector")
        if isinstance(ref, (str, int)) and not isinstance(ref, bool) and names:
            by_id = (isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit())) and int(ref) in ids
            if ref not in names and not by_id:
                hint = difflib.get_close_matches(str(ref), list(names), n=1)
                add(("syncs", i, "connector"),
                    f"unknown connector {ref!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f" (known: {', '.join(names)})")
        if s.get("steps") is None and not top_steps:
            add(("syncs", i), "no steps: give this sync 'steps' or declare top-level 'steps'")
        after = s.get("after")
        if isinstance(after, dict) and isinstance(after.get("move_to"), str) and "://" in after["move_to"]:
            found = configs.get(ref) if isinstance(ref, (str, int)) and not isinstance(ref, bool) else None
            if found is not None and isinstance(found[0], str):
                problem = destination_url_problem(after["move_to"], str(ref), found[0])
                if problem:
                    add(("syncs", i, "after", "move_to"), problem)
        if s.get("events") is not None and isinstance(ref, (str, int)) and not isinstance(ref, bool):
            from .events import events_problems

            found = configs.get(ref, configs.get(int(ref)) if isinstance(ref, str) and ref.isdigit() else None)
            if found is not None:
                for field, why in events_problems(s["events"], *found):
                    where: Loc = ("syncs", i, "events", *field)
                    line, col = walker.value_marks.get(where) or walker.key_marks.get(("syncs", i, "events"), (0, 0))
                    issues.append(ConfigIssue(walker.file, line, col, field_path(where), why))

    step_lists: list[tuple[Loc, Any]] = [(("steps",), top_steps)]
    step_lists += [(("syncs", i, "steps"), s.get("steps")) for i, s in enumerate(syncs) if isinstance(s, dict)]
    for loc, steps in step_lists:
        for j, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict) and len(step) == 1:
                (step_name, options), = step.items()
                ref = options.get("connector") if isinstance(options, dict) else None
                if (isinstance(ref, str) and names and ref not in names
                        and _has_connector_option(step_name)):
                    add((*loc, j, step_name, "connector"), f"unknown connector {ref!r} (known: {', '.join(names)})")
                elif isinstance(ref, str) and ref in names and _has_connector_option(step_name):
                    url = options.get("url")
                    problem = destination_url_problem(url, ref, types[ref]) if isinstance(url, str) else None
                    if problem:
                        add((*loc, j, step_name, "url"), problem)
    return issues


def model_issues(pipeline: Any, walker: _Walker) -> list[ConfigIssue]:
    """Checks that need the validated models: an ``after: {move_to}`` that would loop."""
    issues = []
    for i, sync in enumerate(pipeline.syncs):
        problem = sync.after_loops()
        if problem:
            loc: Loc = ("syncs", i, "after", "move_to")
            line, col = walker.value_marks.get(loc, (0, 0))
            issues.append(ConfigIssue(walker.file, line, col, field_path(loc), problem))
    return issues


def destination_url_problem(url: str, connector: str, kind: Any) -> str | None:
    """Why ``url`` cannot be a destination opened with ``connector``'s credentials, or None.

    A path inside the connector's bucket, or a URL of the connector's own kind (another
    bucket of the same store); never a URL of another store."""
    from .connectors import CONNECTOR_TYPES, url_schemes

    scheme = url.split("://", 1)[0] if "://" in url else None
    schemes = url_schemes(kind) if kind in CONNECTOR_TYPES else ()
    if scheme is None or not schemes or scheme in schemes:
        return None
    return (f"{scheme}:// is not a place in connector {connector!r} ({kind}): give a path inside its "
            f"bucket, or a URL like {schemes[0]}://bucket/path")


@functools.lru_cache(maxsize=1)
def _step_names() -> tuple[str, ...]:
    """The steps known to this process. Looked up once: it reads every installed package's metadata
    (~20 ms), and the pipeline models were built from the same list when flexingest.config was imported."""
    from .steps import known_steps

    return tuple(known_steps())


def _has_connector_option(step_name: str) -> bool:
    from .steps import step_class

    return step_name in _step_names() and "connector" in step_class(step_name).Options.model_fields
