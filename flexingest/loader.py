"""Load a pipeline YAML file into :class:`flexingest.config.Pipeline`.

YAML is composed safely (no tags that build objects; size, nesting and alias expansion
bounded), then walked node by node so that every value keeps its line and column;
``${VAR}`` interpolation happens on the way. Every problem of the file is collected and raised
at once as a :class:`~flexingest.exceptions.ConfigError`, each naming
``FILE:LINE:COL: field.path: message``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from .console import printable
from .exceptions import ConfigError, ConfigIssue
from .validation import Loc, field_path, issue_from_pydantic, model_issues, plugins_named, reference_issues

MAX_NODES = 100_000  # values after alias expansion: a bound against "billion laughs"
MAX_YAML_NODES = 20_000  # values as written (a pipeline with 500 syncs has about 10,000): parsing stays < 1 s
MAX_BYTES = 1024 * 1024  # 100 times a large pipeline; PyYAML parses about 2 MB/s
MAX_DEPTH = 100  # nesting levels; a pipeline needs about 6, and PyYAML slows down quadratically past that
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}|\$\{([^}]*)\}?")


def interpolate(text: str, env: Mapping[str, str], *, keep_missing: bool = False) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$${``.

    Returns the text and the problems found (missing variables, bad syntax).
    ``:-`` and ``:?`` also apply when the variable is set but empty; ``-`` and ``?``
    only when it is unset, as in POSIX shells. ``keep_missing`` leaves a missing
    variable's reference as it is written instead of reporting it.
    """
    problems: list[str] = []

    def expand(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "$${":
            return "${"
        if m.group(6) is not None or not whole.endswith("}"):
            problems.append(f"invalid variable reference {whole!r}: "
                            "use ${NAME}, ${NAME:-default} or ${NAME:?message}")
            return whole
        name, dash_op, default, q_op, message = m.group(1, 2, 3, 4, 5)
        value = env.get(name)
        empty = value is None or (value == "" and ((dash_op or q_op or "").startswith(":")))
        if dash_op:
            return default if empty else value  # type: ignore[return-value]
        if empty and keep_missing:
            return whole
        if empty:
            if q_op:
                problems.append(f"{message or 'required'} (environment variable {name} is not set)")
            else:
                problems.append(f"environment variable {name} is not set")
            return whole
        return value  # type: ignore[return-value]

    return _VAR.sub(expand, text), problems


class _Walker:
    """Turns composed YAML nodes into plain data, remembering where each value was."""

    def __init__(self, file: str, env: Mapping[str, str], *, need_secrets: bool = True,
                 alias_marks: dict[tuple[int, Any], yaml.Mark] | None = None) -> None:
        self.file = file
        self.alias_marks = alias_marks or {}
        self.env = env
        self.need_secrets = need_secrets
        self.issues: list[ConfigIssue] = []
        self.value_marks: dict[Loc, tuple[int, int]] = {}
        self.key_marks: dict[Loc, tuple[int, int]] = {}
        self.tainted: set[Loc] = set()  # values whose interpolation failed
        self.nodes = 0
        self._constructor = yaml.SafeLoader("")

    def issue(self, node_or_mark: Any, loc: Loc, message: str) -> None:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        self.issues.append(ConfigIssue(self.file, line, col, field_path(loc), message))

    def walk(self, node: yaml.Node, loc: Loc, active: frozenset[int] = frozenset(),
             alias: yaml.Mark | None = None) -> Any:
        """``alias``: where the outermost alias being expanded is used (an alias bomb names it)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(alias or node.start_mark)
        self.value_marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if id(node) in active:
            self.issue(node, loc, "recursive alias: a value contains itself")
            return None
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                self.issue(node, loc, f"tag {node.tag!r} is not allowed")
                self.tainted.add(loc)
                return None
            explicit = len([k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"])
            try:
                self._constructor.flatten_mapping(node)  # "<<: *defaults" merge keys come first
            except yaml.MarkedYAMLError as exc:
                self.issue(exc.problem_mark, loc, exc.problem or "invalid merge key")
                return None
            merged = len(node.value) - explicit
            out: dict[Any, Any] = {}
            from_merge: set[Any] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                key = self.walk_key(key_node, loc)
                if key is None:
                    continue
                if key in out and key in from_merge and index >= merged:
                    from_merge.discard(key)  # an explicit key overrides a merged one
                elif key in out:
                    if key not in from_merge:
                        self.issue(key_node, (*loc, key), "duplicate key (the later one would silently win)")
                    continue
                elif index < merged:
                    from_merge.add(key)
                self.key_marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.walk(value_node, (*loc, key), active | {id(node)},
                                     alias or self.alias_marks.get((id(node), id(key_node))))
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                self.issue(node, loc, f"tag {node.tag!r} is not allowed")
                self.tainted.add(loc)
                return None
            return [self.walk(child, (*loc, i), active | {id(node)}, alias or self.alias_marks.get((id(node), i)))
                    for i, child in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == _TIMESTAMP:
            value: Any = node.value  # "prefix: 2024-01-01" is text, not a datetime
        elif node.tag not in _SCALAR_TAGS:
            self.issue(node, loc, f"tag {node.tag!r} is not allowed (only plain YAML values)")
            self.tainted.add(loc)
            return None
        else:
            value = self._constructor.construct_object(node)
        if isinstance(value, str):
            written = value
            value, problems = interpolate(value, self.env, keep_missing=not self.need_secrets and _secret_side(loc))
            value, bad = _pair_surrogates(value)
            if bad and _SURROGATE.search(written) is None:
                bad = "a variable used here has a value that is not UTF-8 text"
            if bad:
                problems.append(bad)
            for problem in problems:
                self.issue(node, loc, problem)
            if problems:
                self.tainted.add(loc)
                return None if bad else value
        return value

    def walk_key(self, node: yaml.Node, loc: Loc) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (*_SCALAR_TAGS, _TIMESTAMP):
            self.issue(node, loc, "mapping keys must be plain strings")
            return None
        key = node.value if node.tag == _TIMESTAMP else self._constructor.construct_object(node)
        text, bad = _pair_surrogates(str(key) if key is not None else "null")
        if bad:
            self.issue(node, loc, f"key: {bad}")
            return None
        return text


_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def _pair_surrogates(text: str) -> tuple[str, str | None]:
    """``text`` with escaped UTF-16 pairs (YAML "\\ud83c\\udf89") joined into one character, or
    the problem when a lone surrogate is left: it is no character, and nothing can encode it."""
    if _SURROGATE.search(text) is None:
        return text, None
    lone = _LONE_SURROGATE.search(text)
    if lone is not None:
        return text, (f"a lone UTF-16 surrogate \\u{ord(lone.group()):04x} (character {lone.start() + 1}) is not "
                      "a character: write the character itself, or a \\U escape")
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le"), None


def _secret_side(loc: Loc) -> bool:
    """Where credentials live: what ``status`` and ``retry`` never use (connectors, steps, events)."""
    return bool(loc) and (loc[0] == "connectors" or "steps" in loc or "events" in loc)


class _TooBig(Exception):
    def __init__(self, mark: yaml.Mark | None = None) -> None:
        self.mark = mark


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark) -> None:
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing more than MAX_YAML_NODES values, or values nested deeper than
    MAX_DEPTH, before it gets slow or recursive."""

    _depth = 0
    _nodes = 0

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        #: where each alias is used: (id of its parent node, key node id or item index) -> mark
        self.alias_marks: dict[tuple[int, Any], yaml.Mark] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_YAML_NODES:
                raise _TooBig()
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            if parent is not None and self.check_event(yaml.AliasEvent):
                where = index if isinstance(index, int) else id(index)
                self.alias_marks[(id(parent), where)] = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_pipeline(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                  need_secrets: bool = True, connector_files: Mapping[str, str | None] | None = None) -> Any:
    """Validate a pipeline file (and the connector files of its ``connectors_dir``); raise
    ConfigError naming every problem in them.

    ``need_secrets=False`` (``status``, ``retry``: commands that contact no connector)
    leaves variables of connectors, steps and events unexpanded when they are not set.
    ``connector_files``: file name in ``connectors_dir`` -> its text as it would be written
    (None: as if it were removed), to check a change before it is made.
    """
    try:
        return _load(path, env, need_secrets, None, connector_files or {})
    except ConfigError as exc:
        if all(i.field.isprintable() and i.message.isprintable() for i in exc.issues):
            raise
        # a hostile file's keys and values are quoted, never echoed raw to a terminal
        raise ConfigError([dataclasses.replace(i, field=printable(i.field), message=printable(i.message))
                           for i in exc.issues]) from None


def load_pipeline_text(text: str, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Any:
    """A pipeline from its text, as if read from ``path`` (a worker rebuilding the
    coordinator's pipeline: relative paths resolve against ``path``'s folder; the files of its
    ``connectors_dir`` are read there)."""
    try:
        return _load(path, env, True, text.encode("utf-8"), {})
    except ConfigError as exc:
        raise ConfigError([dataclasses.replace(i, field=printable(i.field), message=printable(i.message))
                           for i in exc.issues]) from None


def _fail(file: str, message: str, line: int = 0, col: int = 0) -> ConfigError:
    return ConfigError([ConfigIssue(file, line, col, "", message)])


def _read_text(path: str | os.PathLike[str], file: str, raw: bytes | None = None) -> str:
    try:
        if raw is None:
            with open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)  # never more: the path may be a huge file, or /dev/zero
    except FileNotFoundError:
        raise _fail(file, "no such file") from None
    except IsADirectoryError:
        raise _fail(file, "is a folder, not a pipeline file") from None
    except OSError as exc:
        raise _fail(file, f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise _fail(file, f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB; is it really a pipeline file?")
    return _decode(raw, file)


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        column = len(raw[line_start:exc.start].decode("utf-8", "replace")) + 1
        raise _fail(file, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                    raw.count(b"\n", 0, exc.start) + 1, column) from None


def _compose(text: str, file: str, what: str = "a pipeline") -> tuple[yaml.Node, dict[tuple[int, Any], yaml.Mark]]:
    """The one YAML document of ``text``, composed safely and bounded, and where its aliases are used."""
    try:
        loader = _Loader(text)
        try:
            documents: list[yaml.Node] = []
            while loader.check_node():
                node = loader.get_node()
                if node is not None:
                    documents.append(node)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:  # a control character such as NUL
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        what_char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise _fail(file, f"invalid YAML: character {what_char} is not allowed ({exc.reason})", line, column) from None
    except _TooDeep as exc:
        raise _fail(file, f"values are nested more than {MAX_DEPTH} levels deep; refusing to load it",
                    exc.mark.line + 1, exc.mark.column + 1) from None
    except _TooBig:
        raise _fail(file, f"the file has more than {MAX_YAML_NODES} values; refusing to load it") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise _fail(file, f"invalid YAML: {problem}",
                    *((mark.line + 1, mark.column + 1) if mark else (0, 0))) from None
    except yaml.YAMLError as exc:
        raise _fail(file, f"invalid YAML: {exc}") from None
    documents = [d for d in documents if d is not None]
    if not documents:
        if what == "a pipeline":
            raise _fail(file, "the file is empty; a pipeline needs at least 'version: 1' and 'connectors'")
        raise _fail(file, f"the file is empty; {what} file has 'name', 'type' and 'config'")
    if len(documents) > 1:
        m = documents[1].start_mark
        raise _fail(file, f"one {what.removeprefix('a ')} per file: found a second YAML document",
                    m.line + 1, m.column + 1)
    return documents[0], loader.alias_marks


def _walk(walker: _Walker, node: yaml.Node, loc: Loc) -> Any:
    try:
        return walker.walk(node, loc)
    except _TooBig as exc:
        where = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark is not None else (0, 0)
        raise _fail(walker.file, f"the file expands to more than {MAX_NODES} values (an alias bomb?): this alias "
                    "crossed the bound; refusing to load it", *where) from None
    except RecursionError:
        raise _fail(walker.file, f"the file expands to more than {MAX_NODES} values (alias bomb?); "
                    "refusing to load it") from None


def _load(path: str | os.PathLike[str], env: Mapping[str, str] | None, need_secrets: bool,
          raw: bytes | None, overrides: Mapping[str, str | None]) -> Any:
    from .config import model_for

    file = str(path)
    env = os.environ if env is None else env
    document, alias_marks = _compose(_read_text(path, file, raw), file)
    walker = _Walker(file, env, need_secrets=need_secrets, alias_marks=alias_marks)
    data = _walk(walker, document, ())
    if not isinstance(data, dict):
        top = ConfigIssue(file, 1, 1, "", "the top level must be a mapping with 'version', 'connectors', ...")
        raise ConfigError([*walker.issues, top])

    from_dir = _connectors_dir(data, walker, Path(path), overrides)
    issues = list(walker.issues)
    model = model_for(plugins_named(data, walker, issues))
    try:
        pipeline = model.model_validate(data)
    except ValidationError as exc:
        pipeline = None
        for error in exc.errors():
            issue = issue_from_pydantic(error, data, walker, model)
            if issue is not None:
                issues.append(issue)
    issues.extend(reference_issues(data, walker))
    if pipeline is not None:
        issues.extend(model_issues(pipeline, walker))
    if from_dir:
        issues = [_in_connector_file(i, from_dir) for i in issues]
    if issues:
        raise ConfigError(_dedupe(issues))
    assert pipeline is not None
    pipeline._path = Path(path)
    pipeline._connector_files = {data["connectors"][i]["name"]: real for i, (_, real) in from_dir.items()}
    return pipeline


MAX_CONNECTOR_FILES = 1000  # connectors in connectors_dir: each is a connector the service opens


def _connectors_dir(data: dict[str, Any], walker: _Walker, path: Path,
                    overrides: Mapping[str, str | None]) -> dict[int, tuple[str, Path]]:
    """Add the connectors of ``connectors_dir/*.yaml`` to ``data["connectors"]``, each walked in its
    own file (errors name that file). Returns: index in ``connectors`` -> (file as shown, its path)."""
    written = data.get("connectors_dir")
    if not isinstance(written, str) or not written:
        return {}  # absent, or the model says what is wrong with it
    folder = Path(written).expanduser()
    if not folder.is_absolute():
        folder = path.resolve().parent / folder
    shown_folder = written if Path(written).expanduser().is_absolute() else os.path.join(os.path.dirname(str(path)),
                                                                                          written)
    inline = data.get("connectors", [])
    if not isinstance(inline, list):
        return {}  # the model reports the pipeline file's own mistake
    texts: dict[str, str | None] = {}
    if folder.is_dir():
        try:
            texts = {p.name: None for p in folder.iterdir() if p.name.endswith(".yaml") and p.is_file()}
        except OSError as exc:
            walker.issue(None, ("connectors_dir",), f"cannot read the folder {folder}: {exc.strerror}")
            return {}
    elif folder.exists():
        line, col = walker.value_marks.get(("connectors_dir",), (0, 0))
        walker.issues.append(ConfigIssue(walker.file, line, col, "connectors_dir", f"{folder} is not a folder"))
        return {}
    for name, text in overrides.items():
        if text is None:
            texts.pop(name, None)
        else:
            texts[name] = text
    if len(texts) > MAX_CONNECTOR_FILES:
        line, col = walker.value_marks.get(("connectors_dir",), (0, 0))
        walker.issues.append(ConfigIssue(walker.file, line, col, "connectors_dir",
                                         f"more than {MAX_CONNECTOR_FILES} connector files in {folder}"))
        return {}
    if not texts:
        return {}
    connectors = data["connectors"] = list(inline)
    found: dict[int, tuple[str, Path]] = {}
    main_file = walker.file
    for name in sorted(texts):
        shown = os.path.join(shown_folder, name)
        try:
            text = texts[name]
            text = _read_text(folder / name, shown) if text is None else text
            document, alias_marks = _compose(text, shown, "a connector")
            index = len(connectors)
            walker.file = shown  # the errors of this connector name its own file
            walker.alias_marks.update(alias_marks)
            connectors.append(_walk(walker, document, ("connectors", index)))
        except ConfigError as exc:
            walker.issues.extend(exc.issues)
            continue
        finally:
            walker.file = main_file
        found[index] = (shown, folder / name)
    return found


def _in_connector_file(issue: ConfigIssue, from_dir: dict[int, tuple[str, Path]]) -> ConfigIssue:
    """An issue of a connector from connectors_dir, named in its file: ``dir/x.yaml:3:5: config.bucket: ...``."""
    if not issue.field.startswith("connectors["):
        return issue
    index, _, rest = issue.field[len("connectors["):].partition("]")
    if not index.isdigit() or int(index) not in from_dir:
        return issue
    return dataclasses.replace(issue, file=from_dir[int(index)][0], field=rest.removeprefix("."))


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[tuple[int, int, str, str]] = set()
    out = []
    for i in issues:
        k = (i.line, i.column, i.field, i.message)
        if k not in seen:
            seen.add(k)
            out.append(i)
    return out


