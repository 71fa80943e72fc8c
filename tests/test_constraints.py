"""Field constraints: what a value from a log line may be before a fix sees it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.constraints import Constraint, FieldType, check_fields


def test_types_accept_their_values_and_refuse_the_rest():
    cases = {
        FieldType.INT: (["0", "42", "123456789012345678"], ["-1", "1e3", "٣", " 1", "", "0x10"]),
        FieldType.PID: (["2", "4242", "4194304"], ["0", "1", "4194305", "12a", "+5"]),
        FieldType.PORT: (["1", "80", "65535"], ["0", "65536", "http"]),
        FieldType.IP: (["10.0.0.1", "::1", "fe80::1"], ["10.0.0.256", "1.2.3", "fe80::1%eth0"]),
        FieldType.HOST: (
            ["db-01", "a.example.com", "example.com."],
            ["-x", "a..b", "a_b.com", "x" * 64, "a b"],
        ),
        FieldType.WORD: (["app", "my_db.v2", "A-1"], ["-rf", ".hidden", "a b", "a/b", "$(x)"]),
    }
    for kind, (good, bad) in cases.items():
        constraint = Constraint("f", kind)
        for value in good:
            assert constraint.check(value) is None, (kind, value)
        for value in bad:
            assert constraint.check(value) is not None, (kind, value)


def test_allow_is_a_full_match_with_a_timeout():
    constraint = Constraint("user", allow=regex.compile(r"[a-z]+"))
    assert constraint.check("app") is None
    assert constraint.check("app; rm -rf /") is not None
    slow = Constraint("x", allow=regex.compile(r"(a+)+b"))
    started = time.monotonic()
    assert "does not match" in (slow.check("a" * 4000 + "c") or "")
    assert time.monotonic() - started < 2


def test_one_of_takes_only_configured_values():
    constraint = Constraint("datadir", FieldType.PATH, one_of=("/srv/pg/main",))
    assert constraint.check("/srv/pg/main") is None
    assert constraint.check("/srv/pg/main/") is not None
    assert constraint.check("/srv/pg/other") is not None


@pytest.mark.parametrize(
    "char",
    ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u202e", "\u2028", "\u200b", "\ufeff"],
)
def test_control_characters_are_refused_whatever_the_constraint(char):
    constraint = Constraint("x", allow=regex.compile(r"(?s).*"))
    assert "control character" in (constraint.check(f"a{char}b") or "")


def test_paths_stay_under_their_roots_and_never_cross_a_symlink(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "real" / "file-link").symlink_to(outside / "x")
    constraint = Constraint("p", FieldType.PATH, under=(str(root),))
    assert constraint.check(f"{root}/real/client_temp") is None
    assert constraint.check(f"{root}/missing/deeper") is None  # a fix may create it
    refused = {
        f"{root}": "not under",  # the root itself is not "under" it
        f"{root}x/a": "not under",
        f"{root}/../outside/a": "not a normal path",
        f"{root}/real/./a": "not a normal path",
        f"{root}//real": "not a normal path",
        f"{root}/real/": "not a normal path",
        "relative/a": "not an absolute path",
        f"{root}/link/a": "symbolic link",
        f"{root}/link": "symbolic link",
        f"{root}/real/file-link": "symbolic link",
        "/etc/passwd": "not under",
    }
    for value, why in refused.items():
        assert why in (constraint.check(value) or ""), value


def test_depth_bounds_how_far_below_the_root_a_path_may_go(tmp_path):
    constraint = Constraint("p", FieldType.PATH, under=(str(tmp_path),), depth=1)
    assert constraint.check(f"{tmp_path}/client_temp") is None
    assert "more than 1 level" in (constraint.check(f"{tmp_path}/a/client_temp") or "")


def test_a_pid_must_be_the_one_a_configured_pid_file_names(tmp_path):
    real, link, fifo = tmp_path / "app.pid", tmp_path / "link.pid", tmp_path / "fifo.pid"
    real.write_text("4242\n")
    other = tmp_path / "other.pid"
    other.write_text("5151\n")
    link.symlink_to(other)
    os.mkfifo(fifo)
    files = (str(tmp_path / "missing.pid"), str(real), str(link), str(fifo))
    constraint = Constraint("pid", FieldType.PID, pid_files=files)
    assert constraint.check("4242") is None
    assert "not the PID" in (constraint.check("5151") or "")  # only through a symlink
    assert "not the PID" in (constraint.check("4243") or "")


def test_an_empty_list_of_roots_or_pid_files_refuses_everything():
    """A param the host left empty confines to nothing; it must not mean "unconfined"."""
    assert "no roots are configured" in (
        Constraint("p", FieldType.PATH, under=()).check("/x/y") or ""
    )
    assert "not the PID" in (Constraint("p", FieldType.PID, pid_files=()).check("4242") or "")


def test_a_missing_field_is_refused_not_skipped():
    constraints = (Constraint("a", FieldType.INT), Constraint("b", FieldType.WORD))
    assert check_fields(constraints, {"a": "1", "b": "x"}) is None
    assert check_fields(constraints, {"a": "1"}) == "b: no value captured"
    assert "a:" in (check_fields(constraints, {"a": "x", "b": "y"}) or "")


# -- properties -----------------------------------------------------------------

SEGMENTS = st.sampled_from(["a", "b", "..", ".", "", "link", "up", "c d", "-x", "*", "|"])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tree")
    root = base / "root"
    for folder in ("a/b", "b/a", "a/a"):
        (root / folder).mkdir(parents=True)
    (root / "link").symlink_to(base)
    (root / "a" / "up").symlink_to("../..")
    return base, root


@settings(max_examples=400, deadline=None)
@given(st.lists(SEGMENTS, min_size=1, max_size=8))
def test_an_accepted_path_resolves_inside_its_root(tree, segments):
    """Whatever the line says, a path that passes lies inside the root once resolved."""
    _, root = tree
    value = str(root) + "/" + "/".join(segments)
    constraint = Constraint("p", FieldType.PATH, under=(str(root),))
    if constraint.check(value) is None:
        resolved = os.path.realpath(value)
        assert resolved.startswith(str(root.resolve()) + os.sep), (value, resolved)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_a_word_never_starts_an_option_or_holds_a_separator(text):
    if Constraint("w", FieldType.WORD).check(text) is None:
        assert not text.startswith(("-", ".")) and "/" not in text and " " not in text
        assert text.isascii()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_a_pid_is_always_a_plain_number_in_range(text):
    if Constraint("p", FieldType.PID).check(text) is None:
        assert text.isascii() and text.isdigit() and 1 < int(text) <= 4_194_304
