"""Small pure parts the pass relies on: the breaker, executors' batch sizes, durations and
sizes, masking secrets, and the one rule for keys that become paths on this machine."""

from __future__ import annotations

import math
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from flexingest.config import Every
from flexingest.exceptions import UnsafeKey
from flexingest.executors import MAX_BATCH, DaskExecutor, Executor, ProcessExecutor, make_executor
from flexingest.loader import load_pipeline
from flexingest.objects import check_key
from flexingest.processing import BREAKER, Breaker
from flexingest.redact import MASK, Redactor, secret_parts
from flexingest.state import Outcome
from flexingest.units import parse_duration

# --------------------------------------------------------------------------- Breaker


def outcome(status: str, *, transient: bool = False, permanent: bool = False, halt: bool = False,
            key: str = "k") -> Outcome:
    return Outcome(key, "v1", 1, None, status, f"{key}: {status}", transient=transient, permanent=permanent,
                   halt=halt)


def test_the_breaker_trips_after_that_many_outages_in_a_row() -> None:
    breaker = Breaker()
    for i in range(BREAKER - 1):
        breaker.record(outcome("failed", transient=True, key=f"k{i}"))
        assert not breaker.tripped
    breaker.record(outcome("failed", transient=True, key="last"))
    assert breaker.tripped
    assert breaker.reason == (f"stopped after {BREAKER} objects in a row failed with transient errors (an outage: "
                              "no attempt was charged to them); last: last: failed")


@pytest.mark.parametrize("between", [outcome("done"), outcome("skipped"), outcome("gone"), outcome("failed"),
                                     outcome("failed", permanent=True)])
def test_anything_but_an_outage_between_outages_resets_the_count(between: Outcome) -> None:
    breaker = Breaker(limit=3)
    for _ in range(4):
        breaker.record(outcome("failed", transient=True))
        breaker.record(outcome("failed", transient=True))
        breaker.record(between)
    assert not breaker.tripped and breaker.in_a_row == 0


def test_the_objects_own_failures_never_trip_the_breaker() -> None:
    breaker = Breaker(limit=2)
    for _ in range(50):
        breaker.record(outcome("failed"))
        breaker.record(outcome("failed", permanent=True))
    assert not breaker.tripped


def test_a_missing_destination_trips_it_at_once_and_the_first_reason_stays() -> None:
    breaker = Breaker(limit=100)
    breaker.record(Outcome("k", "v1", 1, None, "failed", "file:///out: folder not found", transient=True, halt=True))
    assert breaker.reason == "file:///out: folder not found"
    breaker.record(Outcome("k2", "v1", 1, None, "failed", "another", halt=True))
    breaker.trip("the executor is gone")
    assert breaker.reason == "file:///out: folder not found"


def test_trip_stops_a_pass_for_a_reason_of_its_own() -> None:
    breaker = Breaker()
    breaker.trip("workers could not process a batch")
    assert breaker.tripped and breaker.reason == "workers could not process a batch"


# --------------------------------------------------------------------------- Executor.batch_size


def test_the_threads_executor_sends_objects_one_at_a_time() -> None:
    assert [Executor().batch_size(c, s) for c, s in [(1, None), (8, None), (512, 0.001)]] == [1, 1, 1]


def test_a_fixed_batch_is_kept_unless_fewer_than_two_batches_per_worker_would_fit() -> None:
    pool = ProcessExecutor(workers=2, batch=10)
    assert pool.batch_size(concurrency=100, seconds_per_object=None) == 10
    assert pool.batch_size(concurrency=100, seconds_per_object=5.0) == 10, "fixed: speed does not matter"
    assert pool.batch_size(concurrency=20, seconds_per_object=None) == 5, "20 in flight, 2 workers: 5 per batch"
    assert pool.batch_size(concurrency=3, seconds_per_object=None) == 1, "never less than one"


def test_auto_batches_start_small_then_aim_at_half_a_second_of_work() -> None:
    pool = ProcessExecutor(workers=2, batch="auto")
    assert pool.batch_size(concurrency=64, seconds_per_object=None) == 4, "no measure yet: 4"
    assert pool.batch_size(concurrency=4, seconds_per_object=None) == 1
    assert pool.batch_size(concurrency=64, seconds_per_object=0.05) == 10, "0.5 s / 0.05 s"
    assert pool.batch_size(concurrency=64, seconds_per_object=2.0) == 1, "slow objects go alone"
    assert pool.batch_size(concurrency=64, seconds_per_object=0.0) == 16, "bounded by what fits in flight"
    huge = ProcessExecutor(workers=1, batch="auto")
    assert huge.batch_size(concurrency=10_000, seconds_per_object=1e-9) == MAX_BATCH


def test_the_executor_of_a_pipeline_file_batches_as_it_says(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        connectors: [{name: docs, type: local, config: {path: data}}]
        steps: [extract_text]
        executor: {type: processes, workers: 3, batch: 7}
        """))
    executor = make_executor(load_pipeline(path, env={}))
    assert isinstance(executor, ProcessExecutor)
    assert (executor.workers, executor.batch_size(60, None)) == (3, 7)
    assert make_executor(load_pipeline(path, env={}), "threads") is None
    dask = make_executor(load_pipeline(path, env={}), "dask:2")
    assert isinstance(dask, DaskExecutor) and dask.batch_size(40, None) == 4, "no cluster is started to answer"


# --------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("2d", 172_800), ("1w", 604_800),
    ("250ms", 0.25), ("1.5h", 5400), (" 5 m ", 300), ("5M", 300), ("1H", 3600), ("10", 10), ("0", 0),
    (0, 0), (2.5, 2.5), (90, 90),
])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(("value", "message"), [
    ("-5s", "expected a duration like 30s, 5m, 1h30m or a number of seconds, got '-5s'"),
    ("5x", "got '5x'"), ("", "got ''"), ("m", "got 'm'"), ("5 minutes", "got '5 minutes'"), ("1e3", "got '1e3'"),
    (-1, "a duration cannot be negative"), (True, "expected a duration like 30s, 5m, 1h or a number of seconds"),
    (math.inf, "duration inf is too long"), ("99999999999w", "duration '99999999999w' is too long"),
])
def test_what_is_not_a_duration(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


def test_sizes_and_durations_in_a_pipeline_file(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        connectors: [{name: docs, type: local, config: {path: data}}]
        steps: [extract_text]
        syncs:
          - {name: a, connector: docs, min_size: 1024, max_size: 1KiB, min_age: 90, schedule: {every: 1h30m}}
          - {name: b, connector: docs, min_size: 1KB, max_size: 1.5MB, min_age: 1.5m, schedule: {every: 45}}
          - {name: c, connector: docs, min_size: 0, max_size: 2GiB, min_age: 250ms, schedule: {every: 1w}}
        """))
    syncs = load_pipeline(path, env={}).syncs
    assert [(int(s.min_size or 0), int(s.max_size or 0)) for s in syncs] == [
        (1024, 1024), (1000, 1_500_000), (0, 2 * 1024 ** 3)]
    assert [s.min_age for s in syncs] == [timedelta(seconds=90), timedelta(seconds=90), timedelta(milliseconds=250)]
    assert [s.schedule for s in syncs] == [Every(every=timedelta(minutes=90)), Every(every=timedelta(seconds=45)),
                                           Every(every=timedelta(weeks=1))]


# --------------------------------------------------------------------------- Redactor


def test_every_secret_is_masked_wherever_it_appears() -> None:
    redactor = Redactor(["s3cr3t-key", "pa55word"])
    assert redactor.mask("key=s3cr3t-key, again s3cr3t-key; pa55word") == f"key={MASK}, again {MASK}; {MASK}"
    assert redactor.mask("nothing to hide") == "nothing to hide"


def test_a_longer_secret_is_masked_whole_before_a_shorter_one_inside_it() -> None:
    redactor = Redactor(["token", "token-with-suffix"])
    assert redactor.mask("token-with-suffix and token") == f"{MASK} and {MASK}"


def test_parts_of_a_secret_that_may_be_quoted_alone_are_masked_too() -> None:
    redactor = Redactor(["Bearer eyJhbGciOi.abc.def"])
    assert redactor.mask("sent Authorization: eyJhbGciOi.abc.def") == f"sent Authorization: {MASK}"
    connection = ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5PT0=;"
                  "EndpointSuffix=core.windows.net")
    assert "c2VjcmV0a2V5PT0=" in secret_parts(connection)
    assert Redactor([connection]).mask("signature made with c2VjcmV0a2V5PT0=") == f"signature made with {MASK}"
    key_file = ('{"type": "service_account", "private_key_id": "0123456789abcdef0123",'
                ' "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n'
                '-----END PRIVATE KEY-----\\n", "client_email": "robot@project.iam.gserviceaccount.com"}')
    masked = Redactor([key_file]).mask("bad key MIIEvQIBADANBgkqhkiG9w0BAQEFAASC (id 0123456789abcdef0123)")
    assert masked == f"bad key {MASK} (id {MASK})"
    assert "robot@project.iam.gserviceaccount.com" not in secret_parts(key_file), "not a secret on its own"


def test_short_and_empty_values_mask_nothing() -> None:
    redactor = Redactor(["", "abc"])
    assert not redactor
    assert redactor.mask("abc is an ordinary word") == "abc is an ordinary word"


def test_secrets_added_later_are_masked_from_then_on() -> None:
    redactor = Redactor()
    assert redactor.mask("late-secret") == "late-secret"
    redactor.add(["late-secret"])
    assert redactor and redactor.mask("late-secret") == MASK


# --------------------------------------------------------------------------- check_key


@pytest.mark.parametrize(("key", "why"), [
    ("..", "has an empty, '.' or '..' path segment"),
    ("../etc/passwd", "has an empty, '.' or '..' path segment"),
    ("a/../../b", "has an empty, '.' or '..' path segment"),
    ("a/..", "has an empty, '.' or '..' path segment"),
    ("/etc/passwd", "is an absolute path"),
    ("//server/share", "is an absolute path"),
    ("a//b", "has an empty, '.' or '..' path segment"),
    ("folder/", "has an empty, '.' or '..' path segment"),
    ("a\\..\\b", "contains a backslash"),
    ("C:\\Windows", "contains a backslash"),
    ("a\x00.pdf", "contains a NUL byte"),
    ("é" * 128, "has a path segment longer than 255 bytes"),
])
def test_keys_that_would_leave_the_folder_or_cannot_be_names_are_refused(key: str, why: str) -> None:
    with pytest.raises(UnsafeKey) as info:
        check_key(key)
    assert str(info.value) == f"unsafe key {key!r}: {why}"
    assert info.value.permanent, "the key stays what it is: no retry can cure it"


@pytest.mark.parametrize(("key", "parts"), [
    ("a/b c/ü.txt", ["a", "b c", "ü.txt"]),
    ("...", ["..."]), ("..a/b..", ["..a", "b.."]), (".hidden", [".hidden"]),
    ("line\nbreak/tab\there", ["line\nbreak", "tab\there"]),
    ("\x1b[31mred", ["\x1b[31mred"]),
    ("é" * 127, ["é" * 127]),  # 254 bytes: lengths are counted in bytes, as the file system does
    ("C:", ["C:"]),
])
def test_odd_but_harmless_keys_are_names_of_files_under_the_folder(key: str, parts: list[str]) -> None:
    assert check_key(key) == parts
