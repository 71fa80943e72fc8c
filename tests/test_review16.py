"""Review of issue 16 (the memo, the compile child, the pure-Python prefix gate): each
test here failed on the reviewed commit and names the bug it shows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent import derived, hscompile
from agent.derived import Memo
from agent.match import Matcher, available_engines
from agent.records import decode_line, split_block
from tests.test_match import pattern, plain

ROOT = Path(__file__).resolve().parent.parent
needs_hyperscan = pytest.mark.skipif(
    "hyperscan" not in available_engines(), reason="the compile child is Hyperscan's"
)


def scanned(matcher: Matcher, block: bytes) -> dict[int, tuple[str, list[tuple[str, dict]]]]:
    return {s: (t, [(p.id, f) for p, f in hits]) for s, t, hits in matcher.scan(block)}


def expected(patterns: list, block: bytes) -> dict[int, tuple[str, list[tuple[str, dict]]]]:
    out = {}
    start = 0
    for raw in split_block(block):
        record = decode_line(raw, 0, len(raw), 1 << 30)
        want = plain(patterns, record)
        if want:
            out[start] = (record, want)
        start += len(raw) + 1
    return out


# -- the literal gate and U+FFFD ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        # new in issue 16: two-character literals gate unanchored patterns (python engine)
        (r"\ufffd\ufffd", "python"),
        (r"(?P<sep>\ufffd\ufffd)", "python"),
        # the same flaw in the three-character literal prefilter, both engines
        (r"bad\ufffd", "python"),
        pytest.param(r"bad\ufffd", "hyperscan", marks=needs_hyperscan),
    ],
)
def test_a_literal_with_the_replacement_character_gates_no_undecodable_line(source, kind):
    """A record is its line decoded with errors="replace": bytes that are not UTF-8
    become U+FFFD, which the raw line does not hold as EF BF BD. A literal containing
    U+FFFD is looked for in the raw bytes, never found, and the line is never tried,
    though `regex.search` on the record matches."""
    patterns = [pattern(source)]
    block = b"bad\xff\xfe\nok\n"
    want = expected(patterns, block)
    assert want  # the plain loop matches the first record
    assert scanned(Matcher(patterns, 5.0, kind), block) == want


# -- the memo file ------------------------------------------------------------------------


def test_a_fifo_at_the_memo_path_does_not_hang_the_start(tmp_path):
    """`Memo._read` opens the path O_RDONLY (no O_NONBLOCK) and only then checks that it
    is a regular file: a FIFO at patterns.memo blocks the open until some writer comes,
    so the agent's start (or a reload) hangs instead of being a cold start."""
    path = tmp_path / derived.FILE
    os.mkfifo(path, 0o600)
    done = threading.Event()

    def read() -> None:
        Memo(path)
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        assert done.wait(5.0), "Memo() blocked opening a FIFO"
    finally:
        if not done.is_set():  # let the blocked open go: a writer comes and goes
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5.0)


def _salt_of(package_root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "from agent import derived; print(derived.salt())"],
        env={**os.environ, "PYTHONPATH": str(package_root)},
        cwd=package_root,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_a_change_to_the_compile_child_is_a_cold_start(tmp_path):
    """agent.hscompile derives two kinds of memo facts (which shapes Hyperscan takes,
    and every serialized database: its flags, NOT_ASCII, the halving), but it is not in
    derived.DERIVING: a logmend whose hscompile changed (a fix to `compilable`, other
    compile flags) starts warm on the databases and refusals the old code kept."""
    import shutil

    shutil.copytree(
        ROOT / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    before = _salt_of(tmp_path)
    child = tmp_path / "agent" / "hscompile.py"
    child.write_text(child.read_text().replace("CHILD_TIMEOUT = 600.0", "CHILD_TIMEOUT = 60.0"))
    assert _salt_of(tmp_path) != before


# -- the compile child --------------------------------------------------------------------


@needs_hyperscan
def test_the_compile_child_runs_no_code_from_the_working_directory(tmp_path, monkeypatch):
    """`python -m agent.hscompile` puts the working directory first on the child's
    sys.path: a msgpack.py (or agent/, hyperscan.py) in whatever directory the agent
    runs from is imported and run by the child, with the agent's privileges."""
    marker = tmp_path / "ran"
    (tmp_path / "msgpack.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n"
    )
    monkeypatch.chdir(tmp_path)
    raw = hscompile.database([b"abc"], [0], True, apart=True)
    assert isinstance(raw, bytes)  # compiled anyway (here, if the child failed)
    assert not marker.exists(), "the compile child ran msgpack.py from the working directory"


def test_a_memo_of_colliding_keys_is_no_slower_to_refuse_than_to_read(tmp_path):
    """The whole file is decoded before its salt is looked at, with any hashable key
    allowed (strict_map_key=False, arrays as tuples): a 3 MB memo whose map keys are
    tuples of floats that all hash alike (m * 2**e, e stepping by 61) makes the decode
    quadratic: minutes for a file the agent should refuse at once (wrong salt). Run
    apart, with a deadline."""
    import itertools

    import msgpack

    floats = [1.5 * 2.0**e for e in range(-1000, 1000, 61)]
    packer = msgpack.Packer(use_bin_type=True)
    keys = list(itertools.islice(itertools.product(floats, repeat=4), 100_000))
    assert len({hash(k) for k in keys}) == 1
    body = bytearray(packer.pack_map_header(2))
    body += packer.pack("salt") + packer.pack("not this build")
    body += packer.pack("facts") + packer.pack_map_header(1) + packer.pack("regex")
    body += packer.pack_map_header(len(keys))
    for key in keys:
        body += packer.pack(key) + packer.pack(None)
    path = tmp_path / derived.FILE
    path.write_bytes(bytes(body))
    path.chmod(0o600)
    assert len(body) < 4 << 20
    try:
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import pathlib, agent.derived as d; d.Memo(pathlib.Path({str(path)!r}))",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            timeout=10,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading a 3 MB memo with a foreign salt took more than 10 s")
