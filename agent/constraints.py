"""What a value taken from a log line may be before a fix acts on it.

Whoever can make a program log text controls the fields of a match, so a
field reaches a fix only through a declared constraint: a type, an anchored
`allow` regex, a list of configured values (`one_of`), and for paths the
configured roots it must lie under. Constraints are built once at pack load;
`check` runs when a fix is about to start (not on the per-line path), so a
symlink planted after the line was written is still seen.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import regex

from agent.params import ParamValue
from agent.tomlsrc import Section

MAX_VALUE = 4096
PID_MAX = 4_194_304  # the kernel's ceiling for /proc/sys/kernel/pid_max
ALLOW_TIMEOUT = 0.05
# C0, DEL, C1, and the invisible format characters that reorder or hide text
# (bidi overrides and isolates, line/paragraph separators, zero-width marks, BOM)
_CONTROL = regex.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_INT = regex.compile(r"[0-9]{1,18}")
_WORD = regex.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LABEL = regex.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class FieldType(StrEnum):
    """The kinds of value a pack can declare a field to be."""

    INT = "int"
    PID = "pid"
    PORT = "port"
    IP = "ip"
    HOST = "host"
    WORD = "word"
    PATH = "path"


@dataclass(frozen=True, slots=True)
class Constraint:
    """One field's declared shape, with the host's values (params) already bound."""

    field: str
    type: FieldType | None = None
    allow: regex.Pattern[str] | None = None
    under: tuple[str, ...] | None = None  # an empty tuple confines to nothing: all refused
    one_of: tuple[str, ...] | None = None
    depth: int | None = None  # with `under`: at most this many components below the root
    pid_files: tuple[str, ...] | None = None  # a pid must be the one one of these names

    def check(self, value: str) -> str | None:
        """Why `value` may not reach a fix, or None when it may."""
        if len(value) > MAX_VALUE:
            return f"{self.field}: longer than {MAX_VALUE} characters"
        if _CONTROL.search(value):
            return f"{self.field}: contains a control character"
        if self.type is not None:
            problem = _TYPE_CHECKS[self.type](value)
            if problem:
                return f"{self.field}: {problem}"
        if self.allow is not None:
            try:
                allowed = self.allow.fullmatch(value, timeout=ALLOW_TIMEOUT) is not None
            except TimeoutError:
                allowed = False
            if not allowed:
                return f"{self.field}: {value!r} does not match allow {self.allow.pattern!r}"
        if self.one_of is not None and value not in self.one_of:
            return f"{self.field}: {value!r} is not one of the configured values"
        if self.pid_files is not None and value not in _pids_named(self.pid_files):
            return f"{self.field}: {value} is not the PID in any configured pid file"
        if self.under is not None:
            return _confined(self.field, value, self.under, self.depth)
        if self.type is FieldType.PATH and os.path.islink(value):
            return f"{self.field}: {value} is a symbolic link"
        return None


def check_fields(constraints: tuple[Constraint, ...], fields: dict[str, str] | None) -> str | None:
    """The first reason any constrained field is refused (a missing one too), or None."""
    fields = fields or {}
    for constraint in constraints:
        value = fields.get(constraint.field)
        if value is None:
            return f"{constraint.field}: no value captured"
        problem = constraint.check(value)
        if problem:
            return problem
    return None


def _int(value: str) -> str | None:
    return None if _INT.fullmatch(value) else f"{value!r} is not a non-negative integer"


def _pid(value: str) -> str | None:
    if not _INT.fullmatch(value) or not 1 < int(value) <= PID_MAX:
        return f"{value!r} is not a process id (2..{PID_MAX})"
    return None


def _port(value: str) -> str | None:
    if not _INT.fullmatch(value) or not 1 <= int(value) <= 65535:
        return f"{value!r} is not a port (1..65535)"
    return None


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    if "%" in value:  # a scope id ("fe80::1%eth0") is free text
        return f"{value!r} carries a scope id"
    return None


def _host(value: str) -> str | None:
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253 or not name or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        return f"{value!r} is not a host name"
    return None


def _word(value: str) -> str | None:
    if not _WORD.fullmatch(value):
        return f"{value!r} is not a word (letters, digits, _ . -, not starting with - or .)"
    return None


def _path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} is not an absolute path"
    if os.path.normpath(value) != value or value.startswith("//"):
        return f"{value!r} is not a normal path (no '..', '.', '//' or trailing '/')"
    return None


_TYPE_CHECKS = {
    FieldType.INT: _int,
    FieldType.PID: _pid,
    FieldType.PORT: _port,
    FieldType.IP: _ip,
    FieldType.HOST: _host,
    FieldType.WORD: _word,
    FieldType.PATH: _path,
}


def _pids_named(files: tuple[str, ...]) -> set[str]:
    """The PIDs the pid files name now; a file that is a symlink, or unreadable, names none."""
    pids = set()
    for file in files:
        try:
            fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                pids.add(os.read(fd, 64).split(b"\n", 1)[0].strip().decode("ascii", "replace"))
        finally:
            os.close(fd)
    return pids


def _confined(name: str, path: str, roots: tuple[str, ...], depth: int | None) -> str | None:
    """`path` lies strictly under one of `roots`, with no symlink below the root on the way.

    Components that do not exist yet are fine (a fix may create them); one that
    exists and is a symbolic link could point anywhere, so it is refused.
    """
    for root in roots:
        if not path.startswith(root.rstrip("/") + "/"):
            continue
        parts = path[len(root) :].strip("/").split("/")
        if depth is not None and len(parts) > depth:
            return f"{name}: {path!r} is more than {depth} level(s) below {root}"
        current = root
        for part in parts:
            current = os.path.join(current, part)
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                return None
            except OSError as exc:
                return f"{name}: cannot inspect {current}: {exc.strerror}"
            if stat.S_ISLNK(info.st_mode):
                return f"{name}: {current} is a symbolic link"
        return None
    if not roots:
        return f"{name}: no roots are configured for it on this host"
    return f"{name}: {path!r} is not under {', '.join(roots)}"


# -- `[pattern.fields]` in pack.toml -----------------------------------------------


def _param_list(
    section: Section, key: str, params: Mapping[str, ParamValue], absolute: bool
) -> tuple[str, ...] | None:
    """A constraint's `under`/`one_of`: the name of a pack param, bound to the host's value."""
    name = section.string(key, None)
    if not isinstance(name, str):
        return None
    if name not in params:
        section.error(key, f"names param {name!r}, which [pack.params] does not declare")
        return None
    value = params[name]
    items = (value,) if isinstance(value, str) else value
    if absolute:
        bad = [v for v in items if not v.startswith("/") or os.path.normpath(v) != v]
        if bad:
            section.error(key, f"param {name!r} holds {bad[0]!r}, not a normal absolute path")
            return None
    return items


def parse_constraints(
    section: Section | None, groups: set[str], params: Mapping[str, ParamValue]
) -> dict[str, Constraint]:
    """`[pattern.fields]`: what each field may be before a fix may see it."""
    if section is None:
        return {}
    out: dict[str, Constraint] = {}
    for name in list(section.data):
        table = section.table(name)
        if table is None:
            continue
        if name not in groups:
            section.error(name, "is not a named group of the pattern's regex")
        kind = table.string("type", None, choices=tuple(FieldType))
        allow_source = table.string("allow", None)
        allow = None
        if isinstance(allow_source, str):
            try:
                # ASCII: \d, \w and case folding mean what an author expects (no
                # Arabic-Indic digits, no Kelvin sign for k)
                allow = regex.compile(allow_source, regex.VERSION0 | regex.ASCII)
            except (regex.error, OverflowError, RecursionError, ValueError) as exc:
                table.error("allow", f"is not a valid regex: {exc}")
        is_path = kind == FieldType.PATH
        under = _param_list(table, "under", params, absolute=True)
        one_of = _param_list(table, "one_of", params, absolute=is_path)
        depth = table.integer("depth", None, minimum=1)
        pid_files = _param_list(table, "pid_file", params, absolute=True)
        table.finish()
        if pid_files is not None and kind != FieldType.PID:
            table.error("pid_file", 'only a field of type = "pid" can be checked against pid files')
        if depth is not None and under is None:
            table.error("depth", "only limits a path confined with under")
        if kind is None and allow is None and one_of is None:
            table.error(None, "needs a type, an allow regex or one_of")
        if under is not None and not is_path:
            table.error("under", 'only a field of type = "path" can be confined under roots')
        if is_path and under is None and one_of is None:
            table.error("type", "a path needs under = PARAM (its roots) or one_of = PARAM")
        out[name] = Constraint(
            field=name,
            type=FieldType(kind) if isinstance(kind, str) and kind in set(FieldType) else None,
            allow=allow,
            under=under,
            one_of=one_of,
            depth=depth,
            pid_files=pid_files,
        )
    return out
