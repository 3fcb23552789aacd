"""A sync's filters as a user's YAML gives them: include/exclude globs, sizes, age.

Each sync is loaded through :func:`flexingest.loader.load_pipeline` from a file in
``tmp_path``, so what is tested is what a pipeline file means, not what a model built by
hand would do. No server, no pass: ``Sync.skip_reason`` alone, in milliseconds.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flexingest.config import Sync
from flexingest.exceptions import ConfigError
from flexingest.loader import load_pipeline


def load_sync(tmp_path: Path, body: str) -> Sync:
    """The one sync of a pipeline file whose sync entry has ``body`` (YAML) after name and connector."""
    text = "version: 1\nconnectors: [{name: docs, type: local, config: {path: data}}]\nsteps: [extract_text]\n" \
           "syncs:\n  - name: s\n    connector: docs\n" + textwrap.indent(textwrap.dedent(body), "    ")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    sync: Sync = load_pipeline(path, env={}).syncs[0]
    return sync


def kept(sync: Sync, *keys: str) -> list[str]:
    return [k for k in keys if sync.skip_reason(k, 100, 3600) is None]


def test_star_and_question_mark_stay_within_one_segment(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["reports/*.pdf", "reports/q?.csv"]')
    assert kept(sync, "reports/a.pdf", "reports/.pdf", "reports/x/a.pdf", "a.pdf", "reports/a.pdf.txt",
                "reports/q1.csv", "reports/q12.csv", "reports/q/.csv", "reports/q.csv") == [
        "reports/a.pdf", "reports/.pdf", "reports/q1.csv"]


def test_double_star_crosses_segments_and_its_slash_may_match_no_folder(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["**/deep/*.doc", "archive/**"]')
    assert kept(sync, "deep/a.doc", "x/deep/a.doc", "x/y/z/deep/a.doc", "deep/x/a.doc", "notdeep/a.doc",
                "archive/a", "archive/x/y/z.bin", "archive", "archived/a") == [
        "deep/a.doc", "x/deep/a.doc", "x/y/z/deep/a.doc", "archive/a", "archive/x/y/z.bin"]


def test_a_pattern_without_slash_matches_the_last_segment_at_any_depth(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["*.pdf"]')
    assert kept(sync, "a.pdf", "a/b/c.pdf", "a.pdf/readme.txt", "A.PDF", "a.pdfx") == ["a.pdf", "a/b/c.pdf"]


def test_a_leading_slash_anchors_to_the_top_and_a_trailing_slash_means_everything_under(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'exclude: ["/top.txt", "drafts/"]')
    assert kept(sync, "top.txt", "sub/top.txt", "drafts/a.pdf", "x/drafts/y/z.pdf", "drafts", "drafts.txt",
                "mydrafts/a.pdf") == ["sub/top.txt", "drafts", "drafts.txt", "mydrafts/a.pdf"]


def test_character_classes_ranges_negation_and_literal_metacharacters(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["[ab]*.csv", "[!z]?.md", "log[0-9].txt", "[]]x", "a+b(1).txt"]')
    assert kept(sync, "a1.csv", "b.csv", "c.csv", "x/a.csv",
                "y1.md", "z1.md", "yy1.md",
                "log7.txt", "logx.txt",
                "]x", "a+b(1).txt", "aab(1).txt", "a+b1.txt") == [
        "a1.csv", "b.csv", "x/a.csv", "y1.md", "log7.txt", "]x", "a+b(1).txt"]


def test_keys_with_spaces_unicode_and_control_characters(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["ünï cødé/*.txt", "* *.pdf", "日本語/**"]\nexclude: ["*🎉*"]')
    assert kept(sync, "ünï cødé/f g.txt", "unicode/f.txt", "with space/a b.pdf", "nospace.pdf",
                "日本語/ファイル/x.bin", "日本語/🎉 party.bin", "ünï cødé/line\nbreak.txt") == [
        "ünï cødé/f g.txt", "with space/a b.pdf", "日本語/ファイル/x.bin", "ünï cødé/line\nbreak.txt"]


def test_globs_match_the_key_relative_to_the_prefix(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'prefix: in/\ninclude: ["sub/*.pdf", "/top.csv"]\nexclude: ["sub/secret*"]')
    assert kept(sync, "in/sub/a.pdf", "in/other/sub/a.pdf", "in/top.csv", "in/x/top.csv", "in/sub/secret.pdf") == [
        "in/sub/a.pdf", "in/top.csv"]


def test_reasons_say_which_rule_filtered_the_key(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["**/*.pdf"]\nexclude: ["**/drafts/**", "*.tmp.pdf"]')
    assert sync.skip_reason("a.docx", 10, None) == "not included"
    assert sync.skip_reason("x/drafts/a.tmp.pdf", 10, None) == "excluded by '**/drafts/**'", "the first exclude"
    assert sync.skip_reason("x/a.tmp.pdf", 10, None) == "excluded by '*.tmp.pdf'"
    assert sync.skip_reason("x/a.pdf", 10, None) is None


def test_no_filters_keep_everything(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, "prefix: ''")
    assert sync.skip_reason("any/key at all.bin", 0, 0.0) is None


def test_sizes_in_units_with_inclusive_bounds(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, "min_size: 10KB\nmax_size: 5MiB")
    assert (int(sync.min_size or 0), int(sync.max_size or 0)) == (10_000, 5 * 1024 * 1024)
    assert sync.skip_reason("a", 9_999, None) == "smaller than min_size (9999 < 10000 bytes)"
    assert sync.skip_reason("a", 10_000, None) is None
    assert sync.skip_reason("a", 5 * 1024 * 1024, None) is None
    assert sync.skip_reason("a", 5 * 1024 * 1024 + 1, None) == "larger than max_size (5242881 > 5242880 bytes)"


def test_an_empty_object_is_kept_unless_min_size_says_otherwise(tmp_path: Path) -> None:
    assert load_sync(tmp_path, "max_size: 1").skip_reason("empty", 0, None) is None
    assert load_sync(tmp_path, "min_size: 1").skip_reason("empty", 0, None) == "smaller than min_size (0 < 1 bytes)"


def test_min_age_keeps_objects_old_enough_and_those_without_a_time(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, "min_age: 1m30s")
    assert sync.skip_reason("a", 1, 10.0) == "younger than min_age (10.0s < 90s)"
    assert sync.skip_reason("a", 1, 89.6) == "younger than min_age (89.6s < 90s)", "never rounded up to min_age"
    assert sync.skip_reason("a", 1, 90.0) is None
    assert sync.skip_reason("a", 1, 86400.0) is None
    assert sync.skip_reason("a", 1, None) is None, "a store that gives no time cannot be too young"


def test_globs_then_sizes_then_age(tmp_path: Path) -> None:
    sync = load_sync(tmp_path, 'include: ["*.pdf"]\nmin_size: 10\nmin_age: 60')
    assert sync.skip_reason("a.txt", 1, 1.0) == "not included"
    assert sync.skip_reason("a.pdf", 1, 1.0) == "smaller than min_size (1 < 10 bytes)"
    assert sync.skip_reason("a.pdf", 10, 1.0) == "younger than min_age (1.0s < 60s)"


@pytest.mark.parametrize(("body", "where"), [
    ('include: ["[abc"]', ":7:5: syncs[0].include: unclosed '[' in glob '[abc'"),
    ('exclude: [""]', ":7:5: syncs[0].exclude: an empty glob matches nothing"),
    ('include: ["[z-a]"]', ":7:5: syncs[0].include: invalid glob '[z-a]': bad character range z-a"),
    ("min_size: 2KB\nmax_size: 1KB", ":5:5: syncs[0]: 'min_size' is larger than 'max_size'"),
    ("min_size: lots", ":7:15: syncs[0].min_size: could not parse value and unit from byte string"),
    ("min_age: -5s", ":7:14: syncs[0].min_age: expected a duration like 30s, 5m, 1h30m or a number of seconds, "
                     "got '-5s'"),
])
def test_bad_filters_are_errors_of_the_file_at_their_place(tmp_path: Path, body: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sync(tmp_path, body)
    assert str(info.value).startswith(f"{tmp_path / 'pipeline.yaml'}{where}"), str(info.value)


@pytest.mark.parametrize("prefix", ["in", "in/"])
def test_globs_are_relative_to_the_prefix_with_or_without_its_slash(tmp_path: Path, prefix: str) -> None:
    sync = load_sync(tmp_path, f'prefix: {prefix}\nexclude: ["drafts/**"]')
    assert kept(sync, "in/drafts/secret.txt", "in/2024/a.pdf", "in/a.txt") == ["in/2024/a.pdf", "in/a.txt"]
    sync = load_sync(tmp_path, f'prefix: {prefix}\ninclude: ["2024/*.pdf"]')
    assert kept(sync, "in/2024/a.pdf", "in/2024/b.txt", "in/2025/a.pdf") == ["in/2024/a.pdf"]


def test_a_character_class_takes_its_characters_literally_without_warnings(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Python's re warns of nested sets for '[[' and '&&'
        sync = load_sync(tmp_path, 'include: ["[[]draft]*", "[a&&b].txt", "[!]]x", "[~|^]y"]')
        assert kept(sync, "[draft]1", "draft1", "a.txt", "&.txt", "c.txt", "zx", "]x", "~y", "|y", "^y", "zy") == [
            "[draft]1", "a.txt", "&.txt", "zx", "~y", "|y", "^y"]


@pytest.mark.parametrize(("body", "why"), [
    ("min_age: .nan", "syncs[0].min_age: expected a duration like 30s"),
    ("min_size: -1", "syncs[0].min_size: a size cannot be negative"),
    ("max_size: '-5MB'", "syncs[0].max_size: a size cannot be negative"),
])
def test_impossible_sizes_and_ages_say_so(tmp_path: Path, body: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_sync(tmp_path, body)
    assert why in str(exc.value), str(exc.value)


@pytest.mark.parametrize("prefix", ["in", "in/"])
def test_move_to_keeps_the_key_below_the_prefix_with_or_without_its_slash(tmp_path: Path, prefix: str) -> None:
    from flexingest.after import destination_key

    sync = load_sync(tmp_path, f"prefix: {prefix}\nafter: {{move_to: done/}}")
    assert sync.after is not None
    assert destination_key(sync.after, "in/sub/a.pdf", sync.prefix) == (None, "done/sub/a.pdf")
    sync = load_sync(tmp_path, f"prefix: {prefix}\nafter: {{move_to: 'file://archive/2024'}}")
    assert sync.after is not None
    assert destination_key(sync.after, "in/a.pdf", sync.prefix) == ("archive", "2024/a.pdf")
