"""Building the matcher's Hyperscan databases, in this process or apart from it.

Hyperscan's compiler needs about 9 MiB for 1,000 patterns, and the C allocator
keeps most of it once the compile is done: in the agent that would stay
resident (and in its peak) for its whole life, for a database of a few hundred
KiB. So the agent compiles apart: `python -m agent.hscompile` reads the
expressions on standard input, compiles, and writes the serialized database
back; the agent loads it as it loads one from the memo (agent.derived). `logmend
test` and `check`, which exit soon after, compile in process. A child that
cannot be run or dies is not fatal: the compile is done in process instead.

Databases serialize with Hyperscan's own format (checksummed); requests and
answers are msgpack: nothing here evaluates what it reads.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:  # the child runs this file alone: it imports nothing of logmend's
    from agent.derived import Memo

_hs: Any
try:
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised where the wheel is missing
    _hs = None

log = logging.getLogger("logmend")

NOT_ASCII = b"[\\x80-\\xff][^\\n]*$"  # a line where a byte is not a character: all confirm
CHILD_TIMEOUT = 600.0  # seconds; 1,000 patterns take about one


class Refused(Exception):
    """Hyperscan will not compile this set (too large, or syntax it lacks)."""


def loose_flags(count: int, prefilter: int) -> list[int]:
    """Multiline for all; prefilter mode for the first `prefilter` expressions."""
    assert _hs is not None
    loose = _hs.HS_FLAG_PREFILTER | _hs.HS_FLAG_MULTILINE
    return [loose if i < prefilter else _hs.HS_FLAG_MULTILINE for i in range(count)]


def compile_here(expressions: list[bytes], flags: list[int], literal: bool = False) -> Any:
    """One block-mode database (raises Refused)."""
    assert _hs is not None
    database = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    try:
        database.compile(
            expressions=expressions,
            ids=list(range(len(expressions))),
            elements=len(expressions),
            flags=flags,
            literal=literal,
        )
    except _hs.error as exc:
        raise Refused(str(exc)) from None
    return database


def compilable(expressions: list[bytes]) -> list[bool]:
    """Which prefilter expressions Hyperscan takes: all at once if it can, else halves
    until each refusal is found (a refused one stays confirmed on every line)."""
    if not expressions:
        return []
    try:
        compile_here(expressions, loose_flags(len(expressions), len(expressions)))
        return [True] * len(expressions)
    except Refused:
        if len(expressions) == 1:
            return [False]
    half = len(expressions) // 2
    return compilable(expressions[:half]) + compilable(expressions[half:])


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """A request answered in this process: a database, or the shapes taken and theirs."""
    assert _hs is not None
    expressions = list(request["expressions"])
    try:
        if request["kind"] == "database":
            built = compile_here(expressions, list(request["flags"]), bool(request["literal"]))
            return {"database": _hs.dumpb(built)}
        whole = [*expressions, NOT_ASCII]
        try:  # one compile when Hyperscan takes them all, as it nearly always does
            built = compile_here(whole, loose_flags(len(whole), len(expressions)))
            return {"taken": [True] * len(expressions), "database": _hs.dumpb(built)}
        except Refused:
            taken = compilable(expressions)
        kept = [e for e, ok in zip(expressions, taken, strict=True) if ok]
        if not kept:
            return {"taken": taken, "database": None}
        whole = [*kept, NOT_ASCII]
        built = compile_here(whole, loose_flags(len(whole), len(kept)))
        return {"taken": taken, "database": _hs.dumpb(built)}
    except Refused as exc:
        return {"refused": str(exc)}


def _ask(request: dict[str, Any], apart: bool) -> dict[str, Any]:
    if not apart:
        return _answer(request)
    try:
        # this very file, isolated (-I: no PYTHONPATH, no user site, not the working or
        # the script's directory on sys.path), from /: only the agent's own code runs
        done = subprocess.run(
            [sys.executable, "-I", str(Path(__file__).resolve())],
            input=msgpack.packb(request, use_bin_type=True),
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
            cwd="/",
        )
        answer = msgpack.unpackb(done.stdout, raw=False) if done.returncode == 0 else None
        if isinstance(answer, dict):
            return answer
        reason = done.stderr.decode("utf-8", "replace").strip()[-300:] or f"exit {done.returncode}"
    except subprocess.TimeoutExpired:  # here it would take as long: taken as a refusal
        log.warning("compiling the Hyperscan database took over %gs: not used", CHILD_TIMEOUT)
        return {"refused": f"took over {CHILD_TIMEOUT:g}s to compile"}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        reason = str(exc)
    log.warning("compiling the Hyperscan database apart failed (%s): compiling here", reason)
    return _answer(request)


def database(expressions: list[bytes], flags: list[int], literal: bool, apart: bool) -> bytes:
    """A serialized database of `expressions` (raises Refused)."""
    answer = _ask(
        {"kind": "database", "expressions": expressions, "flags": flags, "literal": literal}, apart
    )
    if "refused" in answer:
        raise Refused(str(answer["refused"]))
    raw = answer["database"]
    assert isinstance(raw, bytes)
    return raw


def shapes(expressions: list[bytes], apart: bool) -> tuple[list[bool], bytes | None]:
    """Which shape expressions Hyperscan takes, and a serialized database of those and
    NOT_ASCII (the first expressions in prefilter mode; NOT_ASCII's id follows theirs)."""
    answer = _ask({"kind": "shapes", "expressions": expressions}, apart)
    if "refused" in answer:  # it took too long, say: none is prefiltered by its shape
        return [False] * len(expressions), None
    taken = [bool(ok) for ok in answer["taken"]]
    raw = answer["database"]
    assert raw is None or isinstance(raw, bytes)
    if len(taken) != len(expressions):
        raise ValueError("the compiler answered for another set of expressions")
    return taken, raw


# -- databases through the memo (agent.derived) ------------------------------------
def _key(expressions: list[bytes], flags: list[int], literal: bool) -> bytes:
    from agent.derived import digest

    return digest(b"literal" if literal else b"regex", repr(flags), *expressions)


def _load(raw: bytes) -> Any:
    """A serialized database, ready to scan (raises hyperscan.error)."""
    assert _hs is not None
    database = _hs.loadb(raw, _hs.HS_MODE_BLOCK)
    database.scratch = _hs.Scratch(database)
    database.scan(b"\n")  # a database this build or CPU cannot run fails here, not later
    return database


def _kept(memo: Memo, key: bytes) -> Any | None:
    """The database an earlier start built, if the memo has it and it still loads."""
    raw = memo.get("hyperscan", key, _is_bytes)
    if raw is None:
        return None
    try:
        return _load(raw)
    except _hs.error:
        memo.forget("hyperscan", key)
        return None


def kept_or_built(memo: Memo, expressions: list[bytes], flags: list[int], literal: bool) -> Any:
    """The database of `expressions`, ready to scan: from the memo, else built (apart,
    in the agent) and kept."""
    key = _key(expressions, flags, literal)
    built = _kept(memo, key)
    if built is None:
        raw = database(expressions, flags, literal, memo.apart)
        memo.put("hyperscan", key, raw)
        built = _load(raw)
    return built


def shapes_database(memo: Memo, expressions: list[bytes]) -> tuple[list[bool], Any]:
    """Which shape expressions Hyperscan takes, and one database of those and NOT_ASCII."""

    def key_of(taken: list[bool]) -> bytes:
        whole = [*(e for e, ok in zip(expressions, taken, strict=True) if ok), NOT_ASCII]
        return _key(whole, loose_flags(len(whole), len(whole) - 1), False)

    from agent.derived import digest

    key = digest(b"taken", *expressions)
    known = memo.get(
        "taken",
        key,
        lambda v: (
            isinstance(v, tuple)
            and len(v) == len(expressions)
            and all(isinstance(ok, bool) for ok in v)
        ),
    )
    if known is not None:
        taken = list(known)
        if not any(taken):
            return taken, None
        built = _kept(memo, key_of(taken))
        if built is not None:
            return taken, built
    taken, raw = shapes(expressions, memo.apart)
    memo.put("taken", key, taken)
    if raw is None:
        return taken, None
    memo.put("hyperscan", key_of(taken), raw)
    return taken, _load(raw)


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes)


def main() -> int:
    request = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    sys.stdout.buffer.write(msgpack.packb(_answer(request), use_bin_type=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
