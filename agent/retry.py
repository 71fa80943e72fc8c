"""One fix on the fix loop: run, retry with backoff, verify, wait for the recovery line.

Retries are awaited, not slept, so waiting holds no thread and no fix slot.
Imported by the fix loop when the first fix is due: an agent that has not had
to fix anything does not load asyncio, tenacity or OpenSSL (about 7 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import tenacity

from agent.constraints import check_fields
from agent.packs import Pattern, Recovery, Remedy, Template
from agent.remedy import (
    NOT_AWAITED,
    Attempt,
    Identity,
    Outcome,
    Runner,
    expand_argv,
    fix_env,
)

Watch = Callable[[], "asyncio.Future[str]"]
"""Starts listening for the recovery line; the future gets the line when it appears."""


async def run_remedy(
    pattern: Pattern,
    remedy: Remedy,
    fields: Mapping[str, str],
    pack_dir: Path,
    runner: Runner,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    slot: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    watch: Watch | None = None,
    identity: Identity | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    on_verifying: Callable[[], None] | None = None,
) -> Outcome:
    """Run the fix, then its verify command and recovery line, until verified or spent.

    `slot` bounds how many fixes run at once and is held only while a process
    runs; the waits between tries and for the recovery line hold nothing.
    """
    if remedy.recovery is not None and watch is None:
        raise ValueError(f"{pattern.qualified}: a recovery line needs a watch on the source")
    attempts: list[Attempt] = []
    allowed = {name: value for name, value in fields.items() if name in remedy.fields}
    env = fix_env(
        allowed, {**remedy.env, "LOGMEND_PACK": pattern.pack, "LOGMEND_PATTERN": pattern.id}
    )

    async def rejected() -> str | None:
        """Checked before every try: a symlink planted meanwhile is still caught."""
        problem = await asyncio.to_thread(check_fields, remedy.constraints, allowed)
        if problem is not None:
            record(_refusal(problem))
        return problem

    def record(attempt: Attempt) -> bool:
        attempts.append(attempt)
        if on_attempt:
            on_attempt(attempt)
        return attempt.ok

    async def run(templates: tuple[Template, ...], phase: str) -> bool:
        argv = expand_argv(templates, allowed, pack_dir)
        attempt = await asyncio.to_thread(runner, argv, env, pack_dir, remedy.timeout, identity)
        return record(attempt if phase == "fix" else replace(attempt, phase=phase))

    refusal: str | None = None

    async def once() -> bool:
        nonlocal refusal
        refusal = await rejected()
        if refusal is not None:
            return True  # stops the retries: a refused field stays refused
        seen = watch() if watch is not None and remedy.recovery is not None else None
        try:
            async with slot() if slot else contextlib.nullcontext():
                ok = await run(remedy.run, "fix")
                if ok and remedy.verify is not None:
                    if on_verifying:
                        on_verifying()
                    ok = await run(remedy.verify, "verify")
            if ok and seen is not None and remedy.recovery is not None:
                if on_verifying:
                    on_verifying()
                ok = record(await _recovered(seen, remedy.recovery))
            return ok
        finally:
            if seen is not None:
                seen.cancel()

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(remedy.attempts)
        | tenacity.stop_after_delay(remedy.deadline),
        wait=tenacity.wait_exponential(
            multiplier=remedy.backoff.initial, max=remedy.backoff.maximum
        )
        + tenacity.wait_random(0, remedy.backoff.initial),
        retry=tenacity.retry_if_result(lambda ok: not ok),
        sleep=sleep,
        retry_error_callback=lambda state: False,
    )
    resolved = bool(await retrying(once)) and refusal is None
    return Outcome(resolved=resolved, attempts=tuple(attempts), rejected=refusal)


def _refusal(reason: str) -> Attempt:
    """A refused field, recorded like a run so the escalation shows why nothing ran."""
    return Attempt(
        argv=("check-fields",),
        started=time.time(),
        duration=0.0,
        exit_code=None,
        signal=None,
        timed_out=False,
        stdout="",
        stderr=f"refused, nothing ran: {reason}",
        phase="check",
    )


async def _recovered(seen: asyncio.Future[str], recovery: Recovery) -> Attempt:
    """Wait for the recovery line; recorded like a run so the escalation shows it."""
    started = time.time()
    t0 = time.monotonic()
    try:
        line = await asyncio.wait_for(asyncio.shield(seen), recovery.within)
    except TimeoutError:
        line = None
    if line == NOT_AWAITED:
        return Attempt(
            argv=("recovery", recovery.source),
            started=started,
            duration=0.0,
            exit_code=0,
            signal=None,
            timed_out=False,
            stdout="",
            stderr="not awaited: a dry run runs no fix, so no recovery line is due",
            phase="recovery",
        )
    return Attempt(
        argv=("recovery", recovery.source),
        started=started,
        duration=round(time.monotonic() - t0, 6),
        exit_code=0 if line is not None else None,
        signal=None,
        timed_out=line is None,
        stdout=line or "",
        stderr="" if line is not None else f"no recovery line within {recovery.within:g}s",
        phase="recovery",
    )
