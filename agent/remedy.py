"""Running fixes: argv from fields (no shell), timeouts, output tails, retries.

A fix runs in its own session with a minimal environment; on timeout its whole
process group is killed. Output is read while it runs and only a bounded tail is
kept, so a chatty script can neither hang on a full pipe nor fill memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol

import tenacity

from agent.packs import Pattern, Remedy, Template

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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


class Runner(Protocol):
    def __call__(
        self, argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float
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

    def __init__(self, output_tail: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.output_tail = output_tail
        self.clock = clock

    def __call__(
        self, argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float
    ) -> Attempt:
        started = self.clock()
        t0 = time.monotonic()
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
            )
        except OSError as exc:
            return Attempt(tuple(argv), started, 0.0, None, None, False, "", f"cannot start: {exc}")
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _Tail(proc.stdout, self.output_tail), _Tail(proc.stderr, self.output_tail)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        code = proc.returncode
        return Attempt(
            argv=tuple(argv),
            started=started,
            duration=round(time.monotonic() - t0, 6),
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

    @property
    def tries(self) -> int:
        """Runs of the fix itself, not counting verify runs."""
        return sum(a.phase == "fix" for a in self.attempts)


def run_remedy(
    pattern: Pattern,
    remedy: Remedy,
    fields: Mapping[str, str],
    pack_dir: Path,
    runner: Runner,
    sleep: Callable[[float], None] = time.sleep,
    env_extra: Mapping[str, str] | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> Outcome:
    """Run the fix (and its verify) until it succeeds or the attempts are spent."""
    env = fix_env(
        fields, {"LOGMEND_PACK": pattern.pack, "LOGMEND_PATTERN": pattern.id, **(env_extra or {})}
    )
    attempts: list[Attempt] = []

    def once() -> bool:
        attempt = runner(expand_argv(remedy.run, fields, pack_dir), env, pack_dir, remedy.timeout)
        attempts.append(attempt)
        if on_attempt:
            on_attempt(attempt)
        if not attempt.ok or remedy.verify is None:
            return attempt.ok
        check = runner(expand_argv(remedy.verify, fields, pack_dir), env, pack_dir, remedy.timeout)
        check = replace(check, phase="verify")
        attempts.append(check)
        if on_attempt:
            on_attempt(check)
        return check.ok

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(remedy.attempts),
        wait=tenacity.wait_exponential(
            multiplier=remedy.backoff.initial, max=remedy.backoff.maximum
        )
        + tenacity.wait_random(0, remedy.backoff.initial),
        retry=tenacity.retry_if_result(lambda ok: not ok),
        sleep=sleep,
        retry_error_callback=lambda state: False,
    )
    resolved = bool(retrying(once))
    return Outcome(resolved=resolved, attempts=tuple(attempts))
