"""The small exception tree every part of logmend raises from."""

from __future__ import annotations

from pathlib import Path


class LogmendError(Exception):
    """Base of every error logmend raises on purpose."""


class ConfigError(LogmendError):
    """A config or pack file is wrong; names the file, the key and the line."""

    def __init__(self, file: Path | str, key: str, line: int | None, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.line = line
        self.message = message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class ConfigErrors(LogmendError):
    """Several ConfigErrors found in one pass, so the author fixes them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class StateError(LogmendError):
    """The state database cannot be opened or written (full disk, locked, corrupt)."""


def unexpected(where: Path | str, exc: BaseException) -> ConfigError:
    """An exception nobody raised on purpose, met while loading `where`.

    Reported like any config error, naming what was being read, so that no
    file, however hostile, can crash the agent at start or on reload.
    """
    return ConfigError(where, "", None, f"cannot be loaded ({type(exc).__name__}: {exc})")
