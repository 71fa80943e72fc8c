"""What load and the matcher derive from pattern sources, kept between starts.

Compiling 1,000 patterns with `regex`, finding their required literals and
shapes and building the Hyperscan databases takes about a second; a restart or
a reload of the same set should not pay it again. Each fact is stored under the
exact text it was derived from, in one file of the state directory, and the
file as a whole is salted with everything that could change an answer (the
code that derives them, the versions of Python, `regex` and Hyperscan, the
CPU's features): a changed pattern, library or logmend is a miss, never a
stale answer.

The file is the agent's own: it is read only when it is a regular file owned
by this user and writable by nobody else (like the state database beside it),
and anything wrong with it (truncated, foreign, of another version) is a cold
start, never an error.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import regex

from agent import __version__
from agent.atomic import write_atomically
from agent.hashing import blake2b

log = logging.getLogger("logmend")

FORMAT = 1
FILE = "patterns.memo"  # in the state directory
DERIVING = (
    "derived.py",
    "hscompile.py",
    "literals.py",
    "shapes.py",
    "match.py",
    "packs.py",
    "lint.py",
)
MAGIC = b"logmend pattern memo\n"  # then the salt's digest, then the msgpack body
MAX_BYTES = 256 << 20  # a memo larger than this is not read (1,000 patterns: about 1 MiB)
_MISSING = object()


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            return next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _hyperscan_build() -> str:
    try:
        import hyperscan
    except ImportError:
        return "none"
    version = str(getattr(hyperscan, "__version__", "?"))
    try:
        ext = next(p for p in Path(hyperscan.__file__).parent.iterdir() if p.suffix == ".so")
        info = ext.stat()
        return f"{version}:{info.st_size}:{info.st_mtime_ns}"
    except (OSError, StopIteration):
        return version


def _deriving_code() -> str:
    """The code that derives the facts: a fix to it (even in an unreleased build) is a miss."""
    h = blake2b()
    for name in DERIVING:
        try:
            h.update((Path(__file__).parent / name).read_bytes())
        except OSError:
            h.update(name.encode())
    return h.hexdigest()


@functools.cache
def salt() -> str:
    """Everything besides a pattern's text that a derived fact depends on."""
    return "\n".join(
        (
            str(FORMAT),
            __version__,
            _deriving_code(),
            sys.version,
            str(regex.__version__),
            _hyperscan_build(),
            platform.machine(),
            blake2b(_cpu_features().encode()).hexdigest(),
        )
    )


def digest(*parts: bytes | str) -> bytes:
    """A key for a fact derived from several texts (a set of expressions)."""
    h = blake2b(digest_size=32)
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.digest()


class Memo:
    """Facts by (kind, key); `save` writes back the ones asked for since the start.

    With no path (`logmend test`, `check`) it only remembers within the process.
    """

    def __init__(self, path: Path | None = None, apart: bool = False) -> None:
        self.path: Path | None = None
        self.apart = apart  # build what is costly in memory in a child (agent.hscompile)
        self._salt = salt()
        self._old: dict[str, dict[Any, Any]] = {}
        self._used: dict[str, dict[Any, Any]] = {}
        self._changed = False
        self.hits = 0
        self.misses = 0
        if path is not None:
            self.open(path)

    def open(self, path: Path) -> None:
        """Read the facts kept at `path` (once the state directory is known)."""
        self.path = path
        self._old = self._read(path)

    def get(self, kind: str, key: Any, valid: Callable[[Any], bool], default: Any = None) -> Any:
        """The fact kept for `key`, if there is one and `valid` accepts its form (the
        file is msgpack: well-formed is not the same as the shape the caller needs)."""
        used = self._used.setdefault(kind, {})
        value = used.get(key, _MISSING)
        if value is _MISSING:
            value = self._old.get(kind, {}).get(key, _MISSING)
            if value is _MISSING or not valid(value):
                self.misses += 1
                return default
            used[key] = value
        self.hits += 1
        return value

    def put(self, kind: str, key: Any, value: Any) -> None:
        """Keep `value` in the form it will have when read back (lists become tuples)."""
        self._used.setdefault(kind, {})[key] = _decode(_encode(value))
        self._changed = True

    def forget(self, kind: str, key: Any) -> None:
        """A stored fact that proved wrong (a database this CPU cannot run)."""
        self._used.get(kind, {}).pop(key, None)
        self._old.get(kind, {}).pop(key, None)
        self._changed = True

    def tally(self) -> str:
        """What was derived and what remembered since the last tally (for the log)."""
        text = f"{self.misses} derived, {self.hits} remembered"
        self.hits = self.misses = 0
        return text

    def save(self) -> None:
        """Keep what this load used (what it did not is of an older set) if anything changed."""
        path = self.path
        if path is None or not path.parent.is_dir():
            return
        if not self._changed and all(
            len(self._used.get(kind, {})) == len(facts) for kind, facts in self._old.items()
        ):
            return
        body = self._header() + _encode(self._used)
        try:
            write_atomically(path, body, 0o600)
        except OSError as exc:  # a full disk costs the next start its warmth, nothing else
            log.warning("could not save the pattern memo %s: %s", path, exc.strerror)
            return
        self._old = self._used
        self._used = {}
        self._changed = False

    def reopen(self) -> None:
        """Read the file again before a reload (after `finish` let go of its facts)."""
        if self.path is not None:
            self.open(self.path)

    def finish(self, save: bool = True) -> str:
        """After a load: keep what it used (unless it failed), let go of the facts held
        in memory, and say how much was derived and how much remembered."""
        if save:
            self.save()
        self.close()
        return self.tally()

    def close(self) -> None:
        """Let go of the facts held in memory (a megabyte for 1,000 patterns): what the
        next load needs is in the file, which `open` reads again."""
        self._old = {}
        self._used = {}
        self._changed = False

    def _read(self, path: Path) -> dict[str, dict[Any, Any]]:
        try:
            # non-blocking: a FIFO planted at the path must not hold the start
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return {}
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_uid != os.geteuid()
                or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                or info.st_size > MAX_BYTES
            ):
                log.warning(
                    "not reading the pattern memo %s: not a private file of this user", path
                )
                return {}
            header = self._header()
            if handle.read(len(header)) != header:  # another build's (or nobody's): unread
                return {}
            raw = handle.read()
        try:
            facts = _decode(raw)
            if not isinstance(facts, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in facts.items()
            ):
                return {}
            return facts
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return {}

    def _header(self) -> bytes:
        return MAGIC + blake2b(self._salt.encode(), digest_size=32).digest()


def _encode(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _decode(raw: bytes) -> Any:
    # keys are texts and digests only (strict_map_key): no tuple keys that hash alike
    return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
