"""Pack parameters: host facts (data directories, temp roots, pid files) a fix acts on.

A pack declares each parameter with a default under `[pack.params]`; the agent
config overrides it per host under `[params.PACK]`. A fix acts on what the host
configured: a log line only selects among configured things. Values are a
string or a list of strings, checked once at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from agent.errors import ConfigError
from agent.tomlsrc import Doc, Section

ParamValue = str | tuple[str, ...]
_NAME = regex.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTROL = regex.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class HostParams:
    """The agent config's `[params.PACK]` tables, with where each was written."""

    file: Path | None = None
    values: Mapping[str, Mapping[str, ParamValue]] = field(default_factory=dict)
    lines: Mapping[tuple[str, str], int | None] = field(default_factory=dict)
    # packs that may come later, from [sync] ("*": any, for owner:TEAM): params for
    # them before they arrive are not an error
    pending: frozenset[str] = frozenset()
    central: frozenset[tuple[str, str]] = frozenset()  # (pack, param) set by the receiver
    central_owner: Mapping[str, str] = field(default_factory=dict)  # whose pack they are for


def param_value(raw: Any) -> tuple[ParamValue | None, str | None]:
    """A TOML value as a parameter, or the reason it cannot be one."""
    if isinstance(raw, str):
        items: tuple[str, ...] = (raw,)
        value: ParamValue = raw
    elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        items = value = tuple(raw)
    else:
        return None, f"must be a string or a list of strings, not {raw!r}"
    if any(_CONTROL.search(item) for item in items):
        return None, "must not contain control characters (newline, tab, NUL, ...)"
    return value, None


# a pack's name, owner or version: plain, as they label logs, folders and URLs
PLAIN_NAME = regex.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


def valid_pack_name(name: str) -> bool:
    return PLAIN_NAME.fullmatch(name) is not None


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def param_env(params: Mapping[str, ParamValue]) -> dict[str, str]:
    """`LOGMEND_PARAM_<NAME>` for every parameter; a list is one item per line."""
    return {
        f"LOGMEND_PARAM_{name.upper()}": value if isinstance(value, str) else "\n".join(value)
        for name, value in params.items()
    }


def parse_params(
    section: Section | None, pack: Any, host: HostParams, doc: Doc, owner: Any = None
) -> dict[str, ParamValue]:
    """`[pack.params]` defaults, overridden by the host's `[params.PACK]`."""
    params: dict[str, ParamValue] = {}
    for key, raw in section.data.items() if section else ():
        assert section is not None
        section._used.add(key)
        value, problem = param_value(raw)
        if not valid_name(key):
            section.error(key, "a param name is lower case letters, digits and _")
        elif value is None:
            section.error(key, problem or "invalid")
        else:
            params[key] = value
    for key, raw in (host.values.get(pack, {}) if isinstance(pack, str) else {}).items():
        where = (host.file or "", f"params.{pack}.{key}", host.lines.get((pack, key)))
        if (pack, key) in host.central:
            if host.central_owner.get(pack) != owner:
                continue  # another team's values for its own pack of this name
            where = ("the receiver", f"params.{pack}.{key} (set centrally)", None)
        if key not in params:
            declared = ", ".join(sorted(params)) or "none"
            doc.errors.append(
                ConfigError(*where, f"pack {pack!r} has no param {key!r} (it declares: {declared})")
            )
        elif isinstance(raw, str) != isinstance(params[key], str):
            kind = "a string" if isinstance(params[key], str) else "a list of strings"
            doc.errors.append(ConfigError(*where, f"must be {kind}, like the pack's default"))
        else:
            params[key] = raw
    return params
