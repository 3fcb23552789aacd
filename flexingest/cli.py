"""The ``flexingest`` command line. The only module that prints or exits.

Exit codes: 0 success, 1 an object or connector failed, 2 invalid pipeline file or
usage, 75 another process holds the state lock (EX_TEMPFAIL: try again later).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

if TYPE_CHECKING:
    from .config import Pipeline, Sync
    from .sync import PassResult

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_LOCKED = 0, 1, 2, 75

log = logging.getLogger("flexingest")


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-v/-q/--log-format on every command, set up before it runs."""

    def setup(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[param.name] = value
        return value

    fn = click.option("-v", "--verbose", count=True, expose_value=False, callback=setup,
                      help="More detail: -v debug logs of flexingest, -vv scheduler too.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=setup,
                      help="Only warnings and errors on stderr.")(fn)
    fn = click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      expose_value=False, callback=setup, help="json: one JSON object per log line.")(fn)
    return fn


def _init_logging() -> None:
    from .console import setup_logging

    meta = click.get_current_context().meta
    verbosity = -1 if meta.get("quiet") else int(meta.get("verbose") or 0)
    setup_logging(verbosity, meta.get("log_format") or "text")


def _exit(code: int) -> NoReturn:
    logging.shutdown()
    sys.exit(code)


def _json_logs() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.meta.get("log_format") == "json"


def _say_error(message: str, **fields: Any) -> None:
    """An error line on stderr: plain text, or one JSON object with --log-format json."""
    from .console import error_json, secret_filter

    message = secret_filter.mask(message)
    click.echo(error_json(message, **fields) if _json_logs() else message, err=True)


def _fail(message: str, code: int) -> NoReturn:
    from .console import secret_filter

    message = secret_filter.mask(message)
    if _json_logs():
        _say_error(message, exit_code=code)
    else:
        click.echo(f"error: {message}", err=True)
    _exit(code)


def _config_errors(path: str, issues: list[Any]) -> None:
    for issue in issues:
        if _json_logs():
            _say_error(str(issue), file=issue.file, line=issue.line, column=issue.column, field=issue.field,
                       problem=issue.message)
        else:
            click.echo(str(issue), err=True)


def _load(path: str, *, need_secrets: bool = True) -> Pipeline:
    from .console import add_secrets
    from .exceptions import ConfigError
    from .loader import load_pipeline

    _init_logging()
    try:
        pipeline: Pipeline = load_pipeline(path, need_secrets=need_secrets)
    except ConfigError as exc:
        _config_errors(path, exc.issues)
        n = len(exc.issues)
        _say_error(f"{path}: {n} error{'s' if n != 1 else ''}", exit_code=EXIT_INVALID)
        _exit(EXIT_INVALID)
    add_secrets(pipeline.secrets())
    return pipeline


def _syncs(pipeline: Pipeline, name: str | None) -> list[Sync]:
    from .exceptions import FlexingestError

    if name is not None:
        try:
            return [pipeline.sync(name)]
        except FlexingestError as exc:
            _fail(str(exc), EXIT_INVALID)
    if not pipeline.syncs:
        _fail(f"{pipeline.path}: no syncs declared", EXIT_INVALID)
    return list(pipeline.syncs)


def _report(result: PassResult) -> None:
    result.log(log)


def _state(pipeline: Pipeline, *, create: bool = True, verify: bool = True) -> Any:
    """The state file, checked (a StateError is exit 1 with its message, by ``_Group``)."""
    from .state import State

    state = State(pipeline.state_path, create=create)
    if verify:
        try:
            state.verify()
        except BaseException:
            state.close()
            raise
    return state


def _progress_factory() -> Callable[[str], Any]:
    """Progress bars for passes (on a terminal, unless -q); callable from any thread."""
    from .console import progress_bars

    return progress_bars(quiet=bool(click.get_current_context().meta.get("quiet")))


# ---------------------------------------------------------------------------- commands


class _Group(click.Group):
    """Any flexingest error that escapes a command is a clean message and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from .exceptions import FlexingestError, StateLocked

        try:
            return super().invoke(ctx)
        except FlexingestError as exc:
            _fail(str(exc), EXIT_LOCKED if isinstance(exc, StateLocked) else EXIT_FAILED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="flexingest")
def cli() -> None:
    """Watch buckets (S3, GCS, Azure Blob, a local folder) and process every new or changed
    object through the steps declared in a YAML pipeline file.

    \b
    Start here:
      flexingest validate pipeline.yaml      check the file
      flexingest test pipeline.yaml          check each connector's credentials
      flexingest run pipeline.yaml --once    one pass of every sync (cron, CI)
      flexingest run pipeline.yaml           the service: every sync on its schedule
      flexingest status pipeline.yaml        what happened to every object

    Exit codes: 0 ok, 1 an object or connector failed, 2 invalid file or usage,
    75 another run holds the state lock.
    """


@cli.command()
@click.argument("pipelines", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_common
def validate(pipelines: tuple[str, ...]) -> None:
    """Check pipeline files without contacting any connector.

    Prints every error as FILE:LINE:COLUMN: field: message. Exit 0 if all files are
    valid, 2 otherwise.

    \b
    Example:
      flexingest validate pipelines/*.yaml
    """
    from .exceptions import ConfigError
    from .loader import load_pipeline

    _init_logging()
    bad = 0
    for path in pipelines:
        try:
            p = load_pipeline(path)
        except ConfigError as exc:
            bad += 1
            _config_errors(path, exc.issues)
            continue
        click.echo(f"{path}: valid ({len(p.connectors)} connector(s), {len(p.syncs)} sync(s))", err=True)
        from .executors import placement

        for line in placement(p):
            click.echo(f"  {line}", err=True)
    _exit(EXIT_INVALID if bad else EXIT_OK)


@cli.command()
@click.option("--indent", type=int, default=2, show_default=True)
@_common
def schema(indent: int) -> None:
    """Print the JSON Schema of pipeline files, for editor completion.

    \b
    Example (VS Code with the YAML extension):
      flexingest schema > flexingest.schema.json
      # first line of pipeline.yaml:
      # yaml-language-server: $schema=./flexingest.schema.json
    """
    from .config import json_schema

    _init_logging()
    click.echo(json.dumps(json_schema(), indent=indent))


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.argument("connectors", nargs=-1)
@_common
def test(pipeline: str, connectors: tuple[str, ...]) -> None:
    """Check that each connector can list its bucket, with one bounded request.

    Prints one JSON object per connector on stdout:
    {"connector": ..., "success": true|false, "message": ...}. Never walks the bucket.
    Exit 0 if all succeed, 1 if any failed, 2 if the file is invalid.

    \b
    Examples:
      flexingest test pipeline.yaml
      flexingest test pipeline.yaml production-docs 42
    """
    from concurrent.futures import ThreadPoolExecutor

    from .connectors import test_connector
    from .console import secret_filter
    from .exceptions import FlexingestError

    p = _load(pipeline)
    try:
        chosen = [p.connector(ref) for ref in connectors] if connectors else list(p.connectors)
    except FlexingestError as exc:
        _fail(str(exc), EXIT_INVALID)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(chosen)))) as pool:
        results = list(pool.map(lambda c: test_connector(c, p.base_dir), chosen))
    for r in results:
        r["message"] = secret_filter.mask(r["message"])
        click.echo(json.dumps(r, ensure_ascii=False))
    _exit(EXIT_OK if all(r["success"] for r in results) else EXIT_FAILED)


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.argument("keys", nargs=-1)
@click.option("--connector", "connector_ref", metavar="NAME_OR_ID", help="The connector the keys belong to.")
@click.option("--request", "request_file", type=click.File("r"), metavar="FILE",
              help='A FlexOrch request body: {"source": {"connector_id": 42, "keys": [...]}} ("-": stdin).')
@click.option("--sync", "sync_name", metavar="NAME",
              help="Use this sync's steps and record the outcome in its state.")
@click.option("--executor", "executor_spec", metavar="SPEC",
              help="Where the steps run: threads, processes[:N], dask[:N] (a local cluster) or "
                   "dask:tcp://HOST:PORT; overrides the pipeline's executor:.")
@_common
def process(pipeline: str, keys: tuple[str, ...], connector_ref: str | None, request_file: Any,
            sync_name: str | None, executor_spec: str | None) -> None:
    """Process exactly these keys now, whether or not they were processed before.

    Uses the top-level steps, or those of --sync NAME (whose state then records the
    outcome, so the next pass does not process them again). Prints one JSON object per
    key on stdout. Exit 0 if all are done, 1 if any failed.

    \b
    Examples:
      flexingest process pipeline.yaml --connector production-docs contracts/a.pdf contracts/b.pdf
      echo '{"source": {"connector_id": 42, "keys": ["a.pdf"]}}' | flexingest process pipeline.yaml --request -
    """
    from .exceptions import FlexingestError
    from .jobs import Unrecorded, key_results, request_keys
    from .runner import on_stop_signals
    from .sync import StopToken, process_keys

    p = _load(pipeline)
    if request_file is not None:
        if keys or connector_ref:
            _fail("give either --request or --connector with keys, not both", EXIT_INVALID)
        try:
            connector_ref, listed = request_keys(json.load(request_file))
            keys = tuple(listed)
        except ValueError as exc:
            _fail(f'invalid request body ({exc}); expected {{"source": {{"connector_id": 42, "keys": ["a.pdf"]}}}}',
                  EXIT_INVALID)
    if connector_ref is None or not keys:
        _fail("say what to process: --connector NAME_OR_ID KEY... or --request FILE", EXIT_INVALID)
    try:
        p.connector(connector_ref)
    except FlexingestError as exc:
        _fail(str(exc), EXIT_INVALID)
    sync = _syncs(p, sync_name)[0] if sync_name else None
    stop = StopToken()
    state = _state(p)
    target = state if sync is not None else Unrecorded(state)  # no sync: outcomes are not recorded
    executor = _executor_or_exit(p, executor_spec)
    restore = on_stop_signals(stop)
    bar = _progress_factory()("process")
    try:
        result = process_keys(p, connector_ref, list(keys), sync=sync, state=target, stop=stop, on_progress=bar,
                              executor=executor)
    finally:
        restore()
        if bar:
            bar.close()
        for opened in {id(target): target, id(state): state}.values():
            opened.close()
        if executor is not None:
            executor.close()
    connector = p.connector(connector_ref).name
    results = key_results(list(keys), result.outcomes)
    for r in results:
        click.echo(json.dumps({"connector": connector, **r}, ensure_ascii=False))
    _report(result)
    ok = result.error is None and all(r["status"] in ("done", "skipped") for r in results)
    _exit(EXIT_OK if ok else EXIT_FAILED)


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--once", is_flag=True, help="One pass of every sync, then exit (for cron and CI).")
@click.option("--sync", "sync_name", metavar="NAME", help="Only this sync.")
@click.option("--dry-run", is_flag=True,
              help="With --once: print each key and what would happen to it (new, changed, retry, "
                   "filtered, done, dead) on stdout; change nothing.")
@click.option("--grace", default="30s", show_default=True, metavar="DURATION",
              help="On SIGTERM/SIGINT, how long objects in flight may take to finish.")
@click.option("--executor", "executor_spec", metavar="SPEC",
              help="Where the steps run: threads, processes[:N], dask[:N] (a local cluster) or "
                   "dask:tcp://HOST:PORT; overrides the pipeline's executor:.")
@click.option("--http", "http_address", metavar="HOST:PORT",
              help="Also serve the HTTP interface (FlexOrch connector API, status page, /metrics) on this "
                   "address; keys from FLEXINGEST_API_KEYS or --api-key-file.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="With --http: API keys, one a line ('#' comments and blank lines ignored).")
@_common
def run(pipeline: str, once: bool, sync_name: str | None, dry_run: bool, grace: str,
        executor_spec: str | None, http_address: str | None, api_key_file: str | None) -> None:
    """Run the syncs: as a service on their schedules, or --once.

    The service makes a first pass of every sync at start, then follows each sync's
    schedule until SIGTERM or SIGINT: it then stops taking objects, lets those in flight
    finish (--grace), commits and exits 0. A second signal stops at once. SIGHUP loads
    the pipeline file again (an invalid one is refused and the running one kept).

    With --http HOST:PORT the service also answers HTTP: /v1/ (FlexOrch's connector API,
    syncs, jobs; X-API-KEY), /healthz, /readyz, /metrics and a status page at /. Without
    an API key it serves a loopback address only.

    With --once: exit 0 if every object is done, 1 if any failed, 75 if another run
    holds the state lock.

    \b
    Examples:
      flexingest run pipeline.yaml                     # systemd service
      flexingest run pipeline.yaml --once              # cron: */5 * * * *
      flexingest run pipeline.yaml --once --sync contracts --dry-run
      FLEXINGEST_API_KEYS=$(cat /etc/flexingest/key) flexingest run pipeline.yaml --http 0.0.0.0:8080
    """
    from . import children
    from .console import add_secrets
    from .lock import StateLock
    from .once import dry_run as dry_run_passes
    from .once import run_once
    from .runner import on_stop_signals, run_service
    from .sync import StopToken
    from .units import parse_duration

    try:
        grace_seconds = parse_duration(grace).total_seconds()
    except (ValueError, AttributeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    if dry_run and not once:
        raise click.UsageError("--dry-run goes with --once")
    if http_address is not None and once:
        raise click.UsageError("--http goes with the service, not --once")
    if api_key_file is not None and http_address is None:
        raise click.UsageError("--api-key-file goes with --http")
    http = _http_settings(http_address, api_key_file) if http_address is not None else None
    p = _load(pipeline)
    syncs = _syncs(p, sync_name)
    if dry_run:
        from .console import printable

        def explain(sync: str, reason: str, key: str, skip: str | None) -> None:
            click.echo(f"{sync}\t{reason}\t{printable(key)}" + (f"\t{printable(skip)}" if skip else ""))

        _exit(EXIT_OK if dry_run_passes(p, syncs, explain) else EXIT_FAILED)
    stop = StopToken(grace_seconds)
    executor = _executor_or_exit(p, executor_spec)
    lock = StateLock(p.state_path)
    lock.acquire()  # StateLocked: exit 75
    restore = on_stop_signals(stop)
    try:
        state = _state(p, verify=not once)  # refuse a bad state file before anything starts
        if once:
            with state:
                ok = run_once(p, syncs, state, stop=stop, executor=executor, on_result=_report,
                              progress=_progress_factory())
        else:
            state.close()  # checked once, before the first pass; each pass opens its own
            ok = run_service(p, syncs, stop, _report, progress=_progress_factory(), executor=executor, http=http,
                             on_reload=lambda new: add_secrets(new.secrets()))
    finally:
        restore()
        children.end()  # programs of steps still running after the grace time: TERM, then KILL
        if executor is not None:
            executor.close()
        lock.release()
    code = EXIT_OK if ok else EXIT_FAILED
    if stop.is_set():
        log.info("stopped")
        logging.shutdown()
        os._exit(code)  # do not wait for worker threads left behind after the grace time
    _exit(code)


def _http_settings(address: str, key_file: str | None) -> Any:
    """--http HOST:PORT and the API keys, checked before anything starts (exit 2 with why)."""
    from .console import add_secrets
    from .exceptions import FlexingestError
    from .http import settings

    try:
        found = settings(address, key_file, os.environ.get("FLEXINGEST_API_KEYS"))
    except FlexingestError as exc:
        _fail(str(exc), EXIT_INVALID)
    add_secrets(set(found.keys))  # a key never reaches a log line
    return found


def _executor_or_exit(p: Pipeline, spec: str | None) -> Any:
    """The pipeline's executor (or --executor's); None for threads."""
    from .executors import make_executor

    try:
        return make_executor(p, spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--executor") from None


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, on stdout.")
@click.option("--problems", "limit", type=click.IntRange(min=0), default=20, show_default=True, metavar="N",
              help="Failed and dead objects listed per sync, most recent first; 0 lists them all.")
@_common
def status(pipeline: str, as_json: bool, limit: int) -> None:
    """Per sync: objects done / skipped / failed / dead / pending / gone, the last run, the next due time.

    Failed and dead objects are listed with their last error. Reads the state only: it
    never writes the file (a read-only file or folder is fine), works while the service
    runs, and needs none of the connectors' secrets.

    \b
    Examples:
      flexingest status pipeline.yaml
      flexingest status pipeline.yaml --json | jq '.syncs.contracts.failed'
    """
    from .console import secret_filter
    from .exceptions import StateError
    from .report import status_lines, status_report

    p = _load(pipeline, need_secrets=False)
    try:
        report = status_report(p, problems=limit or None)
    except StateError as exc:
        _fail(str(exc), EXIT_FAILED)
    if as_json:
        click.echo(secret_filter.mask(json.dumps(report, indent=2, ensure_ascii=False)))
    else:
        for line in status_lines(report, secret_filter.mask):
            click.echo(line)
    _exit(EXIT_OK)


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--sync", "sync_name", metavar="NAME", help="Only this sync.")
@_common
def retry(pipeline: str, sync_name: str | None) -> None:
    """Put failed and dead objects back to be processed on the next pass.

    Works while the service runs: it picks them up at its next pass.

    \b
    Example:
      flexingest retry pipeline.yaml --sync contracts && flexingest run pipeline.yaml --once
    """
    p = _load(pipeline, need_secrets=False)
    if sync_name is not None:
        _syncs(p, sync_name)
    if not p.state_path.exists():
        click.echo("nothing to retry: no pass has run yet", err=True)
        _exit(EXIT_OK)
    with _state(p, create=False, verify=False) as state:
        n = state.retry(sync_name)
    click.echo(f"{n} object(s) will be processed again on the next pass", err=True)
    _exit(EXIT_OK)
