"""Typed reading of TOML documents with errors that name file, key and line.

tomllib gives values but no positions, so `KeyLines` scans the text once to map
every key path to the line it was written on.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [p.strip("\"'") for p in parts]


class KeyLines:
    """Maps key paths (with array indices) to the line numbers they appear on."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        current: KeyPath = ()
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header:
                names = _split_dotted(header.group(2))
                resolved: list[str | int] = []
                for i, name in enumerate(names):
                    resolved.append(name)
                    if i < len(names) - 1 and tuple(map(str, resolved)) in arrays:
                        resolved.append(arrays[tuple(map(str, resolved))] - 1)
                if header.group(1) == "[[":
                    key = tuple(map(str, resolved))
                    arrays[key] = arrays.get(key, 0) + 1
                    resolved.append(arrays[key] - 1)
                current = tuple(resolved)
                self._lines.setdefault(current, number)
                continue
            assign = _ASSIGN.match(line)
            if assign:
                path = current + tuple(_split_dotted(assign.group(1)))
                self._lines.setdefault(path, number)
                rest = line[assign.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) == 1:
                        in_multiline = quote

    def line_of(self, path: KeyPath) -> int | None:
        """The line of the longest written prefix of `path`."""
        for end in range(len(path), -1, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return None


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Doc:
    """A parsed TOML file: the place every Section reports its errors against."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.keylines = KeyLines(text)
        self.errors: list[ConfigError] = []
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            raise ConfigError(file, "", int(match.group(1)) if match else None, str(exc)) from exc

    @classmethod
    def read(cls, file: Path) -> Doc:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, "", None, f"cannot read: {exc}") from exc
        return cls(file, text)

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
                self.error(key, "unknown key")
