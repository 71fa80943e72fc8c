"""Attacking a shipped pack through the real agent, as root, against canaries.

Each attack test copies one shipped pack, configures the host's params to a
temporary area, starts a real receiver and a real agent (root allowed for that
pack), writes crafted lines, and then checks three things: each crafted line
was escalated with the expected status (`rejected-field`, or not matched at
all), the one legitimate line was fixed (so the refusals are not an accident of
a broken setup), and nothing outside the configured area changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AgentProc, Receiver, append, make_receiver, wait_for, write_config

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="fixes run as root only when root")


def snapshot(*paths: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `paths`, never following a symlink: type, mode, owner, content."""
    seen: dict[str, tuple[Any, ...]] = {}

    def one(path: Path) -> None:
        try:
            info = path.lstat()
        except FileNotFoundError:
            seen[str(path)] = ("missing",)
            return
        entry: tuple[Any, ...] = (stat.S_IFMT(info.st_mode), info.st_mode, info.st_uid, info.st_gid)
        if stat.S_ISLNK(info.st_mode):
            entry += (os.readlink(path),)
        elif stat.S_ISREG(info.st_mode):
            entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
        seen[str(path)] = entry
        if stat.S_ISDIR(info.st_mode):
            for child in sorted(path.iterdir()):
                one(child)

    for path in paths:
        one(path)
    return seen


@dataclass
class Siege:
    """One shipped pack under attack; `tmp` holds the pack, the log, the state and canaries."""

    tmp: Path
    pack: str
    params: dict[str, str | list[str]]
    receiver: Receiver = field(init=False)
    agent: AgentProc = field(init=False)
    log: Path = field(init=False)

    def __enter__(self) -> Siege:
        packs = self.tmp / "packs"
        packs.mkdir(mode=0o755)
        shutil.copytree(PATTERNS / self.pack, packs / self.pack)
        self.receiver = make_receiver(self.tmp).start()
        self.log = self.tmp / "app.log"
        self.log.touch()
        values = "\n".join(f"{name} = {_toml(value)}" for name, value in self.params.items())
        config = write_config(
            self.tmp,
            [(str(self.log), [self.pack])],
            packs,
            self.receiver,
            escalation='aggregate = "0s"\n',
            agent_extra=f'allow_root = ["{self.pack}"]\n',
        )
        with config.open("a") as handle:
            handle.write(f"\n[params.{self.pack}]\n{values}\n")
        self.agent = AgentProc(config).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.receiver.stop()

    def write(self, *lines: str) -> None:
        append(self.log, *lines)

    def outcomes(self, expected: dict[str, str], timeout: float = 60.0) -> dict[str, str]:
        """Wait until every expected key has an escalation; returns status by key."""

        def statuses() -> dict[str, str]:
            return {e["key"]: e["status"] for e in self.receiver.escalations(pack=self.pack)}

        found = wait_for(lambda: set(expected) <= set(statuses()), timeout)
        assert found, f"missing {set(expected) - set(statuses())}\n{self.agent.log()}"
        return statuses()

    def fixed(self, logged: str, timeout: float = 30.0) -> bool:
        """The agent logged exactly one `logged` (a "resolved ..." line) within `timeout`."""
        return bool(wait_for(lambda: self.agent.saw(logged) >= 1, timeout)) and (
            self.agent.saw(logged) == 1
        )

    def reasons(self) -> dict[str, str]:
        """The refusal each rejected-field escalation carries, by key."""
        out = {}
        for event in self.receiver.escalations(pack=self.pack):
            checks = [a for a in event.get("attempts") or [] if a.get("phase") == "check"]
            if checks:
                out[event["key"]] = checks[0]["stderr"]
        return out


def _toml(value: str | list[str]) -> str:
    items = [value] if isinstance(value, str) else value
    quoted = ", ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in items)
    return quoted if isinstance(value, str) else f"[{quoted}]"
