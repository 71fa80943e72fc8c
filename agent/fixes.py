"""Scheduling fixes: concurrency limits, awaited retries and recovery-line watches.

All fixes live as tasks on one asyncio loop in its own thread. A task holds a
slot (global and per pack) only while its process runs, so a fix waiting to
retry, or waiting for its recovery line, never delays another pattern's fix;
the processes themselves run on a small thread pool, one per slot. The loop
(and asyncio with it) starts with the first fix: most agents idle most of the
time, and asyncio brings OpenSSL with it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import regex

from agent.errors import StateError
from agent.model import Incident
from agent.packs import Pack, Pattern
from agent.redact import BUILTIN_REDACTOR
from agent.remedy import NOT_AWAITED, Attempt, Identity, Outcome, Runner

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("logmend.fixes")

RECOVERY_TIMEOUT = 0.1


@dataclass(frozen=True, slots=True)
class FixJob:
    incident: Incident
    pattern: Pattern
    pack: Pack


@dataclass(slots=True)
class _Watcher:
    regex: regex.Pattern[str]
    future: asyncio.Future[str]


class DryRunner:
    """Logs what would run and runs nothing (`logmend run --dry-run`)."""

    def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        identity: Identity | None = None,
    ) -> Attempt:
        who = f" as {identity.user}" if identity else ""
        shown = [BUILTIN_REDACTOR(item) for item in argv]
        log.warning("dry run: would run %s%s in %s", shown, who, cwd)
        return Attempt(tuple(argv), 0.0, 0.0, 0, None, False, "(dry run)", "")


class Remediator:
    def __init__(
        self,
        runner: Runner,
        global_limit: int,
        packs: list[Pack],
        identities: Mapping[str, Identity | None],
        finish: Callable[[FixJob, Outcome], None],
        verifying: Callable[[FixJob], None],
        report: Callable[[FixJob, Attempt], None],
        sleep: Callable[[float], Awaitable[None]] | None = None,
        dry_run: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monotonic = monotonic
        self.runner = runner
        self.global_limit = global_limit
        self.pack_limits = {p.name: p.max_concurrent_fixes or global_limit for p in packs}
        self.identities = identities
        self.finish = finish
        self.verifying = verifying
        self.report = report
        self.sleep = sleep
        self.dry_run = dry_run
        self._loop: asyncio.AbstractEventLoop | None = None  # made with the first fix
        self._thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.watched: dict[str, list[_Watcher]] = {}  # by source path; read lock-free
        self._watch_lock = threading.Lock()
        self._global: asyncio.Semaphore | None = None
        self._per_pack: dict[str, asyncio.Semaphore] = {}
        self._in_process: set[asyncio.Task[Any]] = set()  # tasks whose process runs now
        self._heartbeat = monotonic()  # the loop ticks (is not wedged) as of this

    @property
    def heartbeat(self) -> float:
        """When the loop last ticked; a loop not started yet is not wedged."""
        return self._heartbeat if self._loop is not None else self.monotonic()

    # lifecycle (any thread) -----------------------------------------------------
    def start(self) -> None:
        """Take fixes from now on; the loop starts with the first one."""
        self._started = True

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                import asyncio

                self._loop = asyncio.new_event_loop()
                self._heartbeat = self.monotonic()
                self._thread = threading.Thread(target=self._serve, name="fixes", daemon=True)
                self._thread.start()
            return self._loop

    def _serve(self) -> None:
        import asyncio

        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.set_default_executor(
            ThreadPoolExecutor(max_workers=self.global_limit, thread_name_prefix="fix")
        )
        self._global = asyncio.Semaphore(self.global_limit)
        self._per_pack = {name: asyncio.Semaphore(n) for name, n in self.pack_limits.items()}
        self._tick()
        self._loop.run_forever()

    def _tick(self) -> None:
        assert self._loop is not None
        self._heartbeat = self.monotonic()
        self._loop.call_later(1.0, self._tick)

    def reconfigure(self, packs: list[Pack], identities: Mapping[str, Identity | None]) -> None:
        """After a reload: new packs get their slots; fixes under way keep theirs."""

        def apply() -> None:
            for pack in packs:
                limit = pack.max_concurrent_fixes or self.global_limit
                if self.pack_limits.get(pack.name) != limit:
                    self.pack_limits[pack.name] = limit
                    if self._loop is not None:
                        import asyncio

                        self._per_pack[pack.name] = asyncio.Semaphore(limit)
            self.identities = identities

        with self._loop_lock:
            if self._loop is None:  # the loop makes its slots from pack_limits when it starts
                apply()
                return
            self._loop.call_soon_threadsafe(apply)

    def submit(self, job: FixJob) -> None:
        assert self._started, "submit() before start()"
        with self._pending_lock:
            self._pending += 1
        self._running_loop().call_soon_threadsafe(self._spawn, job)

    @property
    def pending(self) -> int:
        """Fixes submitted and not finished: queued, running, waiting to retry or verifying."""
        return self._pending

    def stop(self, grace: float) -> bool:
        """Cancel what waits; give running processes `grace` seconds. True if all ended."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return True
        done = threading.Event()

        async def cancel_all() -> None:
            import asyncio

            # what waits (a backoff, a recovery line, a slot) stops now; a process
            # running gets `grace` to finish and be recorded, then it is cancelled
            for task in self._tasks - self._in_process:
                task.cancel()
            if self._in_process:
                await asyncio.wait(list(self._in_process), timeout=grace)
            for task in list(self._tasks):
                task.cancel()
            done.set()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(cancel_all()))
        finished = done.wait(grace + 1.0)
        kill_all = getattr(self.runner, "kill_all", None)
        if kill_all is not None and kill_all():
            log.warning("fixes still running at shutdown were killed; they run again at start")
        thread.join(timeout=1.0)
        return finished and not self._tasks

    # recovery lines (reader thread) -----------------------------------------------
    def saw(self, path: str, block: bytes) -> None:
        """Offer a block read from `path` to the fixes waiting for a recovery line."""
        if path not in self.watched:
            return
        text = block.decode("utf-8", "replace")
        with self._watch_lock:
            watchers = self.watched.get(path, [])
            for watcher in watchers:
                if watcher.future.done():
                    continue
                try:
                    found = watcher.regex.search(text, timeout=RECOVERY_TIMEOUT)
                except TimeoutError:
                    continue
                if found:
                    line_start = text.rfind("\n", 0, found.start()) + 1
                    line_end = text.find("\n", found.end())
                    line = text[line_start : line_end if line_end >= 0 else len(text)]
                    watcher.future.get_loop().call_soon_threadsafe(_resolve, watcher.future, line)

    def _watch(self, path: str, pattern: regex.Pattern[str]) -> asyncio.Future[str]:
        assert self._loop is not None
        future: asyncio.Future[str] = self._loop.create_future()
        if self.dry_run:  # no fix ran: no recovery line to wait for, and none is claimed
            future.set_result(NOT_AWAITED)
            return future
        watcher = _Watcher(pattern, future)
        with self._watch_lock:
            self.watched.setdefault(path, []).append(watcher)

        def forget(_: object) -> None:
            with self._watch_lock:
                remaining = [w for w in self.watched.get(path, []) if w is not watcher]
                if remaining:
                    self.watched[path] = remaining
                else:
                    self.watched.pop(path, None)

        future.add_done_callback(forget)
        return future

    # the loop thread ----------------------------------------------------------------
    def _spawn(self, job: FixJob) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._fix(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def _slot(self, pack: str) -> AsyncIterator[None]:
        import asyncio

        assert self._global is not None
        async with self._per_pack[pack], self._global:
            task = asyncio.current_task()
            assert task is not None
            self._in_process.add(task)
            try:
                yield
            finally:
                self._in_process.discard(task)

    async def _fix(self, job: FixJob) -> None:
        import asyncio

        from agent.retry import run_remedy

        remedy = job.pattern.remedy
        assert remedy is not None
        recovery = remedy.recovery
        try:
            outcome = await run_remedy(
                job.pattern,
                remedy,
                job.incident.raw_fields or job.incident.fields,
                job.pack.dir,
                self.runner,
                sleep=self.sleep or asyncio.sleep,
                slot=lambda: self._slot(job.pack.name),
                watch=(lambda: self._watch(job.incident.source, recovery.regex))
                if recovery is not None
                else None,
                identity=self.identities.get(job.pack.name),
                on_attempt=lambda attempt: self.report(job, attempt),
                on_verifying=lambda: self.verifying(job),
            )
            while True:
                try:
                    self.finish(job, outcome)
                    break
                except StateError as exc:  # disk full, database locked: keep the outcome, retry
                    log.error(
                        "cannot record how %s ended, retrying: %s", job.pattern.qualified, exc
                    )
                    await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fix for %s crashed", job.pattern.qualified)
        finally:
            with self._pending_lock:
                self._pending -= 1


def _resolve(future: asyncio.Future[str], line: str) -> None:
    if not future.done():
        future.set_result(line)
