"""Running fixes: argv from fields (no shell), timeouts, output tails, retries, verify.

A fix runs in its own session with a minimal environment; on timeout its whole
process group is killed. Output is read while it runs and only a bounded tail is
kept, so a chatty script can neither hang on a full pipe nor fill memory.
The retries and waits around a run are agent.retry's (asyncio is imported only
once a fix is due).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from agent.packs import Template

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# what a dry run's recovery watch answers: no line was awaited, none is claimed
NOT_AWAITED = "\0not awaited"
KILL_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a command, as recorded and sent with an escalation."""

    argv: tuple[str, ...]
    started: float
    duration: float
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    phase: str = "fix"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["argv"] = list(self.argv)
        return out


@dataclass(frozen=True, slots=True)
class Identity:
    """The user and group a fix runs as when the agent is root."""

    user: str
    uid: int
    gid: int

    def describe(self) -> str:
        """user:group, for `logmend check`."""
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = str(self.gid)
        return f"{self.user}:{group}"


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """Look the names up once, at start; raises ValueError for an unknown name."""
    if user is None and group is None:
        return None
    try:
        entry = pwd.getpwnam(user) if user is not None else pwd.getpwuid(os.geteuid())
    except KeyError:
        raise ValueError(f"no such user {user!r}") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None
    return Identity(entry.pw_name, entry.pw_uid, gid)


class Runner(Protocol):
    def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        identity: Identity | None = None,
    ) -> Attempt: ...


class _Tail:
    """Keeps the last `limit` bytes of a stream, read on its own thread."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
                self.data += chunk
                if len(self.data) > 2 * self.limit:
                    del self.data[: -self.limit]

    def text(self) -> str:
        self.thread.join(timeout=KILL_GRACE)
        return bytes(self.data[-self.limit :]).decode("utf-8", "replace")


class ProcessRunner:
    """Runs a command with no shell, in its own process group, with bounded output."""

    def __init__(
        self,
        output_tail: int = 4096,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.output_tail = output_tail
        self.clock = clock
        self.monotonic = monotonic
        self._live: set[subprocess.Popen[bytes]] = set()
        self._live_lock = threading.Lock()

    def kill_all(self) -> int:
        """Kill every fix still running, with its group (at shutdown); returns how many."""
        with self._live_lock:
            live = list(self._live)
        for proc in live:
            _kill_group(proc)
        return len(live)

    def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        identity: Identity | None = None,
    ) -> Attempt:
        started = self.clock()
        t0 = self.monotonic()
        switch: dict[str, Any] = {}
        if identity is not None and os.geteuid() == 0:
            switch = {"user": identity.uid, "group": identity.gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                **switch,
            )
        except OSError as exc:
            return Attempt(tuple(argv), started, 0.0, None, None, False, "", f"cannot start: {exc}")
        assert proc.stdout is not None and proc.stderr is not None
        with self._live_lock:
            self._live.add(proc)
        out, err = _Tail(proc.stdout, self.output_tail), _Tail(proc.stderr, self.output_tail)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        finally:
            with self._live_lock:
                self._live.discard(proc)
        code = proc.returncode
        return Attempt(
            argv=tuple(argv),
            started=started,
            duration=round(self.monotonic() - t0, 6),
            exit_code=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            timed_out=timed_out,
            stdout=out.text(),
            stderr=err.text(),
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:
                # the leader is gone; children it left in the group get no grace
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def fix_env(fields: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """A clean, minimal environment: fields as LOGMEND_FIELD_<NAME>, nothing inherited."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/", **extra}
    for name, value in fields.items():
        env[f"LOGMEND_FIELD_{name.upper()}"] = value.replace("\0", "")
    return env


def expand_argv(
    templates: tuple[Template, ...], fields: Mapping[str, str], pack_dir: Path
) -> list[str]:
    """Each template becomes exactly one argv item; the program is resolved in the pack."""
    argv = [t.expand(dict(fields)).replace("\0", "") for t in templates]
    argv[0] = str((pack_dir / argv[0]).resolve())
    return argv


@dataclass(frozen=True, slots=True)
class Outcome:
    resolved: bool
    attempts: tuple[Attempt, ...]
    rejected: str | None = None  # a field failed its constraint: nothing ran

    @property
    def tries(self) -> int:
        """Runs of the fix itself, not counting verify runs."""
        return sum(a.phase == "fix" for a in self.attempts)
