"""Typed reading of TOML documents with errors that name file, key and line.

tomllib gives values but no positions, so `KeyLines` scans the text once to map
every key path to the line it was written on. Files are read through a size
bound, and any failure of the parser becomes a ConfigError naming the file: a
hostile pack or config is refused, it never crashes the agent.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError, ConfigErrors

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

MAX_BYTES = 1 << 20  # a pack.toml or an agent config; real ones are a few KiB
MAX_KEY_PARTS = 64  # longer key paths are scanned past, not recorded

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float | None:
    """Seconds from "250ms", "30s", "10m", "2h", "1d" or bare seconds; None if it is none."""
    match = _DURATION.match(text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


# The scanner's regexes are single character classes or fixed-length
# alternatives: each is linear in what it consumes and never backtracks.
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = re.compile(r"[ \t\r]*")
_BLANK = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)*")  # blanks, line ends and comments
_SCALAR = re.compile(r"[^,\]}#\n]*")  # a number, boolean or date: up to what ends it
_BASIC_STOP = re.compile(r'\\.|["\n]')  # an escape, the closing quote, or the line's end
_ML_BASIC_STOP = re.compile(r'\\.|"""', re.DOTALL)
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)
_ESCAPES = {
    "b": "\b",
    "t": "\t",
    "n": "\n",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    '"': '"',
    "\\": "\\",
}


def _unescape(raw: str) -> str:
    """A quoted key's escapes, read as tomllib reads them; a bad one stays as written."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) > 1:
            try:
                return chr(int(code[1:], 16))
            except ValueError:
                return match.group(0)
        return _ESCAPES.get(code, match.group(0))

    return _ESCAPE.sub(one, raw) if "\\" in raw else raw


def _join(path: KeyPath | None, parts: KeyPath) -> KeyPath | None:
    if path is None or len(path) + len(parts) > MAX_KEY_PARTS:
        return None
    return path + parts


@dataclass
class _Open:
    """An array or inline table being scanned: its path, and the line that path is on."""

    array: bool
    path: KeyPath | None
    line: int
    count: int = -1


class KeyLines:
    """Maps key paths (with array indices) to the line numbers they appear on.

    A hand-written scanner, linear in the length of the text whatever it holds
    (the regexes it replaced took minutes on one line of `[` and spaces). It
    follows strings, arrays and inline tables, so no line inside a multi-line
    string or array is taken for a key or a header. Text that is not TOML
    gets whatever can be recorded and never an exception. A key or element is
    recorded only where its line differs from its parent's, since `line_of`
    falls back to the parent: a one-line array of 100,000 items is one entry.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}  # [[array]] tables seen so far, by path
        self._text = text
        self._pos = 0
        self._newlines = 0  # newlines before _counted_to
        self._counted_to = 0
        self._eol = -1
        self._scan()

    def line_of(self, path: KeyPath) -> int | None:
        """The line of the longest written prefix of `path`."""
        for end in range(len(path), -1, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return None

    def path_at(self, line: int) -> KeyPath | None:
        """The key written last at or before `line` (a syntax error's likely key)."""
        best: tuple[int, KeyPath] | None = None
        for path, at in self._lines.items():
            if path and at <= line and (best is None or at >= best[0]):
                best = (at, path)
        return best[1] if best else None

    # the scanner: every step moves _pos forward or returns ------------------------
    def _line(self) -> int:
        """The line of the current position (asked at ever later positions)."""
        self._newlines += self._text.count("\n", self._counted_to, self._pos)
        self._counted_to = self._pos
        return self._newlines + 1

    def _end_of_line(self) -> int:
        if self._eol < self._pos:
            found = self._text.find("\n", self._pos)
            self._eol = len(self._text) if found < 0 else found
        return self._eol

    def _skip(self, pattern: re.Pattern[str]) -> None:
        match = pattern.match(self._text, self._pos)
        if match is not None:
            self._pos = match.end()

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _record(self, path: KeyPath | None, line: int, parent: int | None = None) -> None:
        if path is not None and line != parent:
            self._lines.setdefault(path, line)

    def _record_key(
        self, base: KeyPath | None, keys: tuple[str, ...], line: int, parent: int | None = None
    ) -> KeyPath | None:
        """`a.b.c = 1` also writes tables a and a.b here, if nothing wrote them before."""
        for end in range(1, len(keys)):
            self._record(_join(base, keys[:end]), line, parent)
        path = _join(base, keys)
        self._record(path, line, parent)
        return path

    def _scan(self) -> None:
        current: KeyPath | None = ()
        while True:
            self._skip(_BLANK)
            char = self._peek()
            if not char:
                return
            line = self._line()
            if char == "[":
                current = self._header(current, line)
            else:
                keys = self._key()
                self._skip(_SPACE)
                if keys is not None and self._peek() == "=":
                    self._pos += 1
                    self._value(self._record_key(current, keys, line), line)
            self._pos = max(self._pos, self._end_of_line())  # a comment, or not TOML

    def _header(self, current: KeyPath | None, line: int) -> KeyPath | None:
        """`[a.b]` or `[[a.b]]`: the table the keys below it belong to."""
        self._pos += 1
        double = self._peek() == "["
        self._pos += double
        names = self._key()
        self._skip(_SPACE)
        close = "]]" if double else "]"
        if names is None or not self._text.startswith(close, self._pos):
            return current
        self._pos += len(close)
        if len(names) > MAX_KEY_PARTS:
            return None
        resolved: list[str | int] = []
        for index, name in enumerate(names):
            resolved.append(name)
            if index == len(names) - 1:
                break
            count = self._arrays.get(tuple(resolved), 0)
            if count:
                resolved.append(count - 1)  # `[a.b]` under `[[a]]` is in a's last element
            self._record(tuple(resolved), line)  # `[a.b]` also writes table a, if first
        if double:
            key = tuple(resolved)
            self._record(key, line)  # the array itself is where its first table is
            self._arrays[key] = self._arrays.get(key, 0) + 1
            resolved.append(self._arrays[key] - 1)
        path = tuple(resolved)
        self._record(path, line)
        return path

    def _key(self) -> tuple[str, ...] | None:
        """A dotted key (`a."b.c".'d'`), or None where there is none."""
        parts: list[str] = []
        while True:
            self._skip(_SPACE)
            char = self._peek()
            if char == '"':
                start = self._pos + 1
                if not self._basic():
                    return None
                parts.append(_unescape(self._text[start : self._pos - 1]))
            elif char == "'":
                end = self._text.find("'", self._pos + 1, self._end_of_line())
                if end < 0:
                    return None
                parts.append(self._text[self._pos + 1 : end])
                self._pos = end + 1
            else:
                match = _BARE.match(self._text, self._pos)
                if match is None:
                    return None
                parts.append(match.group())
                self._pos = match.end()
            self._skip(_SPACE)
            if self._peek() != ".":
                return tuple(parts)
            self._pos += 1

    def _basic(self) -> bool:
        """Past a one-line basic string, escaped quotes and all; False if it is unclosed."""
        for match in _BASIC_STOP.finditer(self._text, self._pos + 1):
            if match.group() == '"':
                self._pos = match.end()
                return True
            if match.group() == "\n":
                self._pos = match.start()
                return False
        self._pos = len(self._text)
        return False

    def _string(self) -> None:
        """Past any of the four kinds of string; a multi-line one to its closing quotes."""
        text, quote = self._text, self._peek()
        if not text.startswith(quote * 3, self._pos):
            if quote == '"':
                self._basic()
            else:
                end = text.find("'", self._pos + 1, self._end_of_line())
                self._pos = self._end_of_line() if end < 0 else end + 1
            return
        start = self._pos + 3
        if quote == "'":
            end = text.find(quote * 3, start)
        else:
            stops = _ML_BASIC_STOP.finditer(text, start)
            end = next((m.start() for m in stops if m.group() == '"""'), -1)
        if end < 0:
            self._pos = len(text)
            return
        end += 3
        for _ in range(2):  # the content may end in one or two quotes: """say "hi"""""
            if text.startswith(quote, end):
                end += 1
        self._pos = end

    def _value(self, path: KeyPath | None, line: int) -> None:
        """Past one value, recording the lines of the keys and elements inside it.

        An explicit stack, no recursion: arrays nested 50,000 deep are just
        text to pass. Returns early on what is not TOML; the caller skips the line.
        """
        stack: list[_Open] = []
        want, parent = path, line
        while True:
            self._skip(_SPACE)
            char = self._peek()
            opened = char in ("[", "{")
            if opened:
                self._pos += 1
                stack.append(_Open(char == "[", want, parent))
            elif char in ('"', "'"):
                self._string()
            else:
                self._skip(_SCALAR)
            while True:  # to the next member of the innermost open array or table
                if not stack:
                    return
                top = stack[-1]
                closer = "]" if top.array else "}"
                self._skip(_BLANK)
                if self._peek() == closer:
                    self._pos += 1
                    stack.pop()
                    opened = False
                    continue
                if not opened:
                    if self._peek() != ",":
                        return
                    self._pos += 1
                    self._skip(_BLANK)
                    if self._peek() == closer:  # a trailing comma
                        continue
                parent = self._line()
                top.count += 1
                if top.array:
                    want = _join(top.path, (top.count,))
                else:
                    keys = self._key()
                    self._skip(_SPACE)
                    if keys is None or self._peek() != "=":
                        return
                    self._pos += 1
                    want = self._record_key(top.path, keys, parent, top.line)
                self._record(want, parent, top.line)
                break


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"


def _read(file: Path, limit: int) -> str:
    """At most `limit` bytes of a regular file as UTF-8; anything else is a ConfigError."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(file, "", None, "cannot read: not a regular file")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(file, "", None, f"cannot read: {exc}") from exc
    if len(data) > limit:
        raise ConfigError(
            file, "", None, f"is larger than {_size(limit)}: refused (no real one is this big)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", None, f"cannot read: {exc}") from exc


def read_bounded(file: Path, limit: int = MAX_BYTES) -> str:
    """The text of a config file, refused past `limit` bytes (read no further than that).

    Raises ConfigErrors, the way `load_config` reports: its one reader.
    """
    try:
        return _read(file, limit)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from exc


class Doc:
    """A parsed TOML file: the place every Section reports its errors against."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.text = text
        self.errors: list[ConfigError] = []
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            line = int(match.group(1)) if match else None
            near = KeyLines(text).path_at(line) if line else None  # linear, never raises
            raise ConfigError(file, format_path(near) if near else "", line, str(exc)) from exc
        except MemoryError:
            raise
        except RecursionError as exc:  # tomllib recurses once per level of nesting
            raise ConfigError(
                file, "", None, "is nested too deeply to read (arrays or tables inside one another)"
            ) from exc
        except Exception as exc:  # a parser bug on a hostile file is still the file's error
            raise ConfigError(
                file, "", None, f"cannot be read as TOML ({type(exc).__name__}: {exc})"
            ) from exc

    @classmethod
    def read(cls, file: Path, limit: int = MAX_BYTES) -> Doc:
        """Read and parse `file`; past `limit` bytes it is refused unread, not parsed."""
        return cls(file, _read(file, limit))

    @cached_property
    def keylines(self) -> KeyLines:
        """Scanned only when an error wants a line: most documents have none."""
        return KeyLines(self.text)

    def error(self, path: KeyPath, message: str) -> ConfigError:
        err = ConfigError(self.file, format_path(path), self.keylines.line_of(path), message)
        self.errors.append(err)
        return err

    def root(self) -> Section:
        return Section(self, (), self.data)


class _Missing:
    pass


MISSING: Any = _Missing()


class Section:
    """One table of a Doc; typed getters that record errors instead of raising."""

    def __init__(self, doc: Doc, path: KeyPath, data: dict[str, Any]) -> None:
        self.doc = doc
        self.path = path
        self.data = data
        self._used: set[str] = set()

    def error(self, key: str | None, message: str) -> None:
        self.doc.error(self.path + ((key,) if key else ()), message)

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str, default: Any) -> Any:
        self._used.add(key)
        if key not in self.data:
            if default is MISSING:
                self.error(key, "is required")
                return None
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.error(key, f"must be {kind_name}, not {type(value).__name__} {value!r}")
            return None if default is MISSING else default
        return value

    def string(self, key: str, default: Any = MISSING, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key, str, "a string", default)
        if choices and isinstance(value, str) and value not in choices:
            self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def integer(self, key: str, default: Any = MISSING, minimum: int = 0) -> Any:
        value = self._get(key, int, "an integer", default)
        if isinstance(value, int) and value < minimum:
            self.error(key, f"must be at least {minimum}, not {value}")
            return default if default is not MISSING else minimum
        return value

    def number(
        self, key: str, default: Any = MISSING, minimum: float = 0.0, maximum: float = math.inf
    ) -> Any:
        """An integer or a float, as a float, within [minimum, maximum]."""
        value = self._get(key, (int, float), "a number", default)
        if isinstance(value, int | float):
            if not minimum <= value <= maximum:
                self.error(key, f"must be from {minimum:g} to {maximum:g}, not {value}")
                return None if default is MISSING else default
            return float(value)
        return value

    def boolean(self, key: str, default: Any = MISSING) -> Any:
        return self._get(key, bool, "true or false", default)

    def duration(self, key: str, default: Any = MISSING) -> Any:
        """Seconds from "250ms", "30s", "10m", "2h", "1d" or a bare number of seconds."""
        value = self._get(key, (str, int, float), 'a duration like "30s"', default)
        if isinstance(value, bool):
            self.error(key, 'must be a duration like "30s"')
            return default
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                self.error(key, f'must be a duration like "250ms", "30s", "10m", not {value!r}')
                return None if default is MISSING else default
            return float(match.group(1)) * _UNITS[match.group(2)]
        return value

    def strings(self, key: str, default: Any = MISSING, allow_str: bool = False) -> Any:
        self._used.add(key)
        if key not in self.data:
            if default is MISSING:
                self.error(key, "is required")
                return None
            return default
        value = self.data[key]
        if allow_str and isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"must be a list of strings, not {value!r}")
            return None if default is MISSING else default
        return tuple(value)

    def table(self, key: str, required: bool = False) -> Section | None:
        self._used.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return None
        if not isinstance(value, dict):
            self.error(key, f"must be a table, not {type(value).__name__}")
            return None
        return Section(self.doc, self.path + (key,), value)

    def tables(self, key: str) -> Iterator[Section]:
        self._used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables ([[{key}]]), not {type(value).__name__}")
            return
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.doc.error(self.path + (key, index), "must be a table")
                continue
            yield Section(self.doc, self.path + (key, index), item)

    def finish(self) -> None:
        """Report keys nobody asked for: a typo must not silently do nothing."""
        for key in self.data:
            if key not in self._used:
                self.error(key, "unknown key" + _did_you_mean(key, self._used))


def _did_you_mean(key: str, known: set[str]) -> str:
    """The known key a typo most likely meant, as a hint ("" when none is close)."""
    if len(key) > 64:  # no one mistypes a key this long; difflib would only cost time
        return ""
    import difflib  # only on an error: not a cost of every start

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
