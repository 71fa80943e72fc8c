"""Wiring: the reader loop, remedy workers, the sender, signals and shutdown.

One thread reads and matches (the only one that touches the tailer and the
trigger), a few workers run fixes, one thread sends. The reader commits each
pass's checkpoints together with everything those lines caused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import pwd
import queue
import signal
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import httpx
import regex

from agent import __version__, events, policy
from agent.alerts import AlertSink
from agent.config import Config, load_config
from agent.errors import ConfigError, ConfigErrors, StateError
from agent.escalate import Sender
from agent.fixes import FixJob, Remediator
from agent.match import Hit, Matcher
from agent.model import Batch, Incident
from agent.notify import Notifier
from agent.packs import Pack, Pattern, load_packs
from agent.policy import FIXING, Status, Wire
from agent.records import EventJoiner
from agent.redact import Redactor
from agent.remedy import Attempt, Identity, Outcome, ProcessRunner, Runner, resolve_identity
from agent.state import SpoolLimits, Store
from agent.tail import Followed, Sink, Tailer, marker_of
from agent.trigger import Trigger

log = logging.getLogger("logmend")

SHUTDOWN_GRACE = 5.0
STATS_INTERVAL = 10.0
STATUS_INTERVAL = 5.0
FIX_LOOP_GRACE = 30.0


def matchers_for(config: Config, packs: list[Pack]) -> list[Matcher]:
    """One matcher per source, over the patterns of the packs that source names."""
    out = []
    shared: dict[tuple[str, ...], Matcher] = {}
    limits = config.limits
    for source in config.sources:
        chosen = tuple(p.name for p in packs if source.packs is None or p.name in source.packs)
        if chosen not in shared:
            patterns = [
                pattern for pack in packs if pack.name in chosen for pattern in pack.patterns
            ]
            shared[chosen] = Matcher(
                patterns, limits.regex_timeout, limits.matcher, limits.max_regex_timeouts
            )
        out.append(shared[chosen])
    return out


def spool_limits(config: Config) -> SpoolLimits:
    esc = config.escalation
    if esc is None:
        return SpoolLimits()
    return SpoolLimits(esc.aggregate, esc.spool_max_events, esc.spool_max_bytes)


def identities_for(config: Config, packs: list[Pack]) -> dict[str, Identity | None]:
    """Who each pack's fixes run as (applied only when the agent is root).

    Least privilege: root only for a pack that asks for it (`user = "root"`)
    and that the host's config lists in `allow_root`; every other fix runs as
    the pack's user or the config's unprivileged `fix_user`.
    """
    out: dict[str, Identity | None] = {}
    errors = []
    try:
        default = resolve_identity(config.fix_user, config.fix_group)
    except ValueError as exc:
        raise ConfigErrors([ConfigError(config.file, "agent.fix_user", None, str(exc))]) from None
    if default is not None and (default.uid == 0 or default.gid == 0):
        raise ConfigErrors(
            [
                ConfigError(
                    config.file,
                    "agent.fix_user" if default.uid == 0 else "agent.fix_group",
                    None,
                    "must not be root: list the packs whose fixes need root in allow_root",
                )
            ]
        )
    names = {p.name for p in packs}
    for name in config.allow_root:
        if name not in names:
            errors.append(ConfigError(config.file, "agent.allow_root", None, f"no pack {name!r}"))
    for pack in packs:
        if pack.user is None and pack.group is None:
            out[pack.name] = default
            continue
        try:
            group = pack.group or (None if pack.user else config.fix_group)
            identity = resolve_identity(pack.user or config.fix_user, group)
        except ValueError as exc:
            errors.append(ConfigError(pack.file, "pack.user", None, str(exc)))
            continue
        if _privileged(identity, pack.group) and pack.name not in config.allow_root:
            log.warning(
                "pack %s asks to run its fixes as root or with a group of its choosing, "
                "which %s does not allow (allow_root); they run as %s",
                pack.name,
                config.file,
                config.fix_user,
            )
            identity = default
        out[pack.name] = identity
    if errors:
        raise ConfigErrors(errors)
    if os.geteuid() != 0:
        log.info("not running as root: every fix runs as this agent's own user")
    return out


def _privileged(identity: Identity | None, chosen_group: str | None) -> bool:
    """Root, group root, or a group the pack chose (shadow, disk, docker, ...): host consent."""
    if identity is None:
        return False
    if identity.uid == 0 or identity.gid == 0:
        return True
    return chosen_group is not None and identity.gid != pwd.getpwnam(identity.user).pw_gid


def own_log_identity() -> tuple[int, int] | None:
    """The file the agent's own log (stderr) goes to, if it is a file."""
    try:
        st = os.fstat(2)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def refuse_own_log(config: Config, own: tuple[int, int] | None) -> None:
    """A source that matches the agent's own log would feed its log lines back into it."""
    if own is None:
        return
    for index, source in enumerate(config.sources):
        for path in glob.glob(source.path):
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == own:
                    raise ConfigErrors(
                        [
                            ConfigError(
                                config.file,
                                f"source[{index}].path",
                                None,
                                f"{path} is the agent's own log (its stderr): it would read "
                                "its own lines back",
                            )
                        ]
                    )


class _Reading(Protocol):
    path: str
    source: int

    @property
    def identity(self) -> tuple[int, int]: ...

    def hold_from(self, offset: int) -> None: ...


@dataclass
class _Recovered:
    """Stands in for a file that is gone: what was left of it came from a rotated copy."""

    path: str
    source: int
    identity: tuple[int, int] = (-1, -1)

    def hold_from(self, offset: int) -> None:
        """Nothing to hold: the copy is read whole, once."""


@dataclass
class Counters:
    """Fix outcomes since start, for the metrics endpoint."""

    resolved: int = 0
    failed: int = 0


class Agent:
    def __init__(
        self,
        config: Config,
        packs: list[Pack] | None = None,
        clock: Callable[[], float] = time.time,
        runner: Runner | None = None,
        transport: httpx.BaseTransport | None = None,
        dry_run: bool = False,
    ) -> None:
        packs = packs if packs is not None else load_packs(config.packs, host=config.params)
        identities = identities_for(config, packs)
        self.own_log = own_log_identity()
        refuse_own_log(config, self.own_log)
        self.clock = clock
        self.transport = transport
        self._adopt(config, packs)
        self.runner = runner or ProcessRunner(config.limits.output_tail_bytes, clock)
        self.store = Store(
            config.state_db,
            config.limits.max_samples,
            spool_limits(config),
            recount=events.recount,
        )
        self._unsaved: Batch | None = None
        self._last_store_error = 0.0
        self.trigger = Trigger(config.limits.max_samples, self.redactors)
        budget_window = max(
            (p.remedy.budget.within for p in self.pattern_by_id.values() if p.remedy), default=0.0
        )
        self.trigger.restore(
            self.store.open_incidents(),
            self.store.cooldowns(clock()),
            self.store.fix_runs(clock() - budget_window),
            {key: p.within for key, p in self.pattern_by_id.items()},
        )
        self.tailer = self._new_tailer()
        self.counters = Counters()
        self.lines_by_source: dict[str, int] = {}
        self.bytes_by_source: dict[str, int] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._reload_asked = threading.Event()
        self._done: queue.SimpleQueue[tuple[str, str, float]] = queue.SimpleQueue()
        self.remediator = Remediator(
            self.runner,
            config.limits.max_concurrent_fixes,
            self.packs,
            identities,
            finish=self._finish,
            verifying=self._verifying,
            report=self._report,
            dry_run=dry_run,
        )
        self._watched = self.remediator.watched
        self.sender: Sender | None = self._new_sender()
        self.alerts: AlertSink | None = self._new_alerts()
        self.notify = Notifier()
        self._last_ping = 0.0
        self._last_status = 0.0
        self._status_lines = 0
        self.metrics_server: Any = None
        self.metrics_port = 0
        self._observer: Any = None
        self._flushed: dict[tuple[str, str], tuple[int, int, int, float]] = {}
        self._last_stats = time.monotonic()
        esc = config.escalation
        self._stats_every = min(
            STATS_INTERVAL, esc.stats_interval if esc is not None else STATS_INTERVAL
        )
        self._quarantined: set[tuple[str, str]] = set()
        self._joiners: dict[tuple[int, int], EventJoiner] = {}
        # test hooks: every record read is appended to LOGMEND_TEST_TEE before its
        # checkpoint commits; while the file LOGMEND_TEST_STALL exists, matching stalls
        # (and LOGMEND_TEST_STALL.held says it has)
        tee = os.environ.get("LOGMEND_TEST_TEE")
        self._tee = os.open(tee, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if tee else None
        self._stall = os.environ.get("LOGMEND_TEST_STALL")

    def _adopt(self, config: Config, packs: list[Pack]) -> None:
        """Take a config and packs: everything the per-record path looks up."""
        self.config = config
        self.packs = packs
        self.pack_by_name = {p.name: p for p in packs}
        self.pattern_by_id = {(p.pack, p.id): p for pack in packs for p in pack.patterns}
        self.matchers = matchers_for(config, packs)
        self.max_line = config.limits.max_line_bytes
        self.redactors = {p.name: Redactor(p.redact, entropy=p.redact_entropy) for p in packs}
        names = {p.name for p in packs}
        for source in config.sources:
            for name in source.packs or ():
                if name not in names:
                    log.warning("source %s names pack %r, which is not loaded", source.path, name)

    def _new_tailer(self) -> Tailer:
        tailer = Tailer(
            self.config.sources,
            self.store.checkpoints(),
            self.config.limits.max_line_bytes,
            self.store.done_files(),
        )
        if self.own_log is not None:
            tailer.exclude.add(self.own_log)
        return tailer

    def _new_sender(self) -> Sender | None:
        if self.config.escalation is None:
            return None
        return Sender(
            self.store,
            self.config.escalation,
            {"host": self.config.host, "version": __version__},
            transport=self.transport,
            clock=self.clock,
            owners={p.name: p.owner for p in self.packs},
        )

    def _new_alerts(self) -> AlertSink | None:
        if self.config.alertmanager is None:
            return None
        return AlertSink(
            self.store,
            self.config.alertmanager,
            self.config.host,
            self.pattern_by_id,
            self.pack_by_name,
            transport=self.transport,
            clock=self.clock,
        )

    # lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self.start()
        try:
            self.loop()
        finally:
            self.shutdown()
        return 0

    def start_metrics(self) -> None:
        if self.config.metrics is None:
            return
        from agent.metrics import serve_metrics

        self.metrics_server = serve_metrics(self, self.config.metrics)

    def start(self) -> None:
        self.remediator.start()
        for incident in self.store.open_incidents():
            pattern = self.pattern_by_id.get((incident.pack, incident.pattern))
            if incident.status in FIXING and pattern is not None and pattern.remedy is not None:
                log.info(
                    "resuming fix for %s/%s key=%r", incident.pack, incident.pattern, incident.key
                )
                self.remediator.submit(FixJob(incident, pattern, self.pack_by_name[pattern.pack]))
        if self.sender is not None:
            self.sender.start()
        if self.alerts is not None:
            self.alerts.start()
        if self.config.limits.file_events:
            self._watch()
        self.tailer.sweep()
        self._housekeeping()
        self.start_metrics()
        self.notify.ready(self.status_line())
        log.info(
            "logmend %s running: %d source(s), %d file(s), %d pack(s), %d pattern(s)",
            __version__,
            len(self.config.sources),
            len(self.tailer.files),
            len(self.packs),
            len(self.pattern_by_id),
        )

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set() and signum == signal.SIGINT:
                os._exit(130)
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stopping.set()
            self.wake.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload_asked.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _watch(self) -> None:
        """watchdog only wakes the loop early; the periodic sweep stays the truth."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return
        wake = self.wake

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        directories = set()
        for source in self.config.sources:
            directory = Path(source.path)
            while any(ch in str(directory) for ch in "*?["):
                directory = directory.parent
            directories.add(directory if directory != Path(source.path) else directory.parent)
        observer = Observer()
        try:
            for directory in directories:
                if directory.is_dir():
                    observer.schedule(Wake(), str(directory), recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as exc:
            log.warning(
                "file events unavailable (%s); polling every %.1fs",
                exc,
                self.config.limits.sweep_interval,
            )

    def shutdown(self) -> None:
        self.notify.stopping()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self._observer is not None:
            self._observer.stop()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        fixes_ended = self.remediator.stop(grace=SHUTDOWN_GRACE / 2)
        if self.sender is not None:
            self.sender.stop(flush_seconds=max(0.5, deadline - time.monotonic()))
        if self.alerts is not None:
            self.alerts.stop(flush_seconds=max(0.5, deadline - time.monotonic()))
        self.tailer.close()
        self.flush_stats()
        if fixes_ended:
            self.store.close()
        log.info("stopped")

    def flush_stats(self) -> None:
        """Persist what each pattern cost since the last flush (for `logmend status`)."""
        rows = []
        flushed = {}
        for matcher in {id(m): m for m in self.matchers}.values():
            for pattern, stats in matcher.pattern_stats():
                key = (pattern.pack, pattern.id)
                last = self._flushed.get(key, (0, 0, 0, 0.0))
                now = (stats.matches, stats.confirms, stats.timeouts, stats.seconds)
                if now != last:
                    rows.append(
                        (
                            pattern.pack,
                            pattern.id,
                            now[0] - last[0],
                            now[1] - last[1],
                            now[2] - last[2],
                            now[3] - last[3],
                            stats.quarantined,
                        )
                    )
                    flushed[key] = now
        self._last_stats = time.monotonic()
        if rows:
            try:
                self.store.add_pattern_stats(rows, self.clock())
            except StateError as exc:
                log.error("cannot write pattern statistics (kept for the next try): %s", exc)
                return
            self._flushed.update(flushed)

    # health, for systemd --------------------------------------------------------------
    def status_line(self) -> str:
        now = time.monotonic()
        elapsed = max(1e-6, now - self._last_status) if self._last_status else 0.0
        lines = sum(self.lines_by_source.values())
        rate = (lines - self._status_lines) / elapsed if elapsed else 0.0
        self._last_status, self._status_lines = now, lines
        try:
            spool = self.store.spool_summary()
            open_incidents = self.store.open_count()
        except StateError:
            return f"{len(self.tailer.files)} files, {rate:.0f} lines/s, state database failing"
        return (
            f"{len(self.tailer.files)} files, {rate:.0f} lines/s, {open_incidents} open"
            f" incidents, {spool['queued']} queued and {spool['parked']} parked escalations"
        )

    def progressing(self) -> bool:
        """The reader is here to ask; are the sender and the fix loop moving too?"""
        now = time.monotonic()
        if self.sender is not None and now - self.sender.heartbeat > self.sender.grace:
            return False
        return now - self.remediator.heartbeat <= FIX_LOOP_GRACE

    def _keepalive(self) -> None:
        now = time.monotonic()
        interval = self.notify.watchdog_interval
        if interval is not None and now - self._last_ping >= interval and self.progressing():
            self.notify.watchdog()
            self._last_ping = now
        if self.notify.enabled and now - self._last_status >= STATUS_INTERVAL:
            self.notify.status(self.status_line())

    # reload ------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read config and packs and swap them in between records; keep all state.

        A config or pack with errors, or one its reader fails on in any way,
        changes nothing: the running set stays, and the errors are logged and
        kept for `logmend status`.
        """
        from agent.errors import LogmendError, unexpected

        log.info("received SIGHUP, reloading %s", self.config.file)
        self.notify.reloading()
        where: Path | str = self.config.file
        try:
            config = load_config(self.config.file)
            where = "a pack under " + ", ".join(map(str, config.packs))
            packs = load_packs(config.packs, host=config.params)
            where = self.config.file
            identities = identities_for(config, packs)
            refuse_own_log(config, self.own_log)
        except ConfigErrors as exc:
            errors = [str(e) for e in exc.errors]
        except LogmendError as exc:
            errors = [str(exc)]
        except Exception as exc:  # a hostile file or a bug in reading it: refused, never fatal
            log.error("reload failed unexpectedly while loading %s", where, exc_info=exc)
            errors = [str(unexpected(where, exc))]
        else:
            errors = []
        if errors:
            for error in errors:
                log.error("reload refused, the previous config and packs stay: %s", error)
            self.reloads["failed"] += 1
            self._record_reload(errors)
            self.notify.ready(self.status_line())
            return False
        self.flush_stats()
        old = self.config
        self._adopt(config, packs)
        self._flushed = {}
        self._quarantined.clear()
        self.trigger.redactors = self.redactors
        self.remediator.reconfigure(packs, identities)
        self.store.spool_limits = spool_limits(config)
        if config.sources != old.sources or config.limits != old.limits:
            self._joiners.clear()
            self.tailer.close()
            self.tailer = self._new_tailer()  # resumes at the committed checkpoints
            self.tailer.sweep()
            self._housekeeping()
        if config.escalation != old.escalation or config.host != old.host:
            if self.sender is not None:
                self.sender.stop(flush_seconds=2.0)
            self.sender = self._new_sender()
            if self.sender is not None:
                self.sender.start()
        elif self.sender is not None:
            self.sender.owners = {p.name: p.owner for p in packs}
        if config.alertmanager != old.alertmanager or config.host != old.host:
            if self.alerts is not None:
                self.alerts.stop(flush_seconds=2.0)
            self.alerts = self._new_alerts()
            if self.alerts is not None:
                self.alerts.start()
        elif self.alerts is not None:  # keeps what fires, so it can end it later
            self.alerts.patterns, self.alerts.packs = self.pattern_by_id, self.pack_by_name
        self.reloads["ok"] += 1
        self._record_reload([])
        log.info(
            "reloaded: %d source(s), %d pack(s), %d pattern(s)",
            len(config.sources),
            len(packs),
            len(self.pattern_by_id),
        )
        self.notify.ready(self.status_line())
        return True

    def _record_reload(self, errors: list[str]) -> None:
        try:
            self.store.set_meta(
                "last_reload",
                json.dumps({"at": self.clock(), "ok": not errors, "errors": errors}),
            )
        except StateError as exc:
            log.error("cannot record the reload in the state database: %s", exc)

    # the reader loop ---------------------------------------------------------------
    def loop(self) -> None:
        interval = self.config.limits.sweep_interval
        last_sweep = time.monotonic()
        while not self.stopping.is_set():
            if self._reload_asked.is_set() and self._unsaved is None:
                self._reload_asked.clear()
                self.reload()
                interval = self.config.limits.sweep_interval
            read_any = self.pass_once()
            self._keepalive()
            if time.monotonic() - last_sweep >= interval or self.wake.is_set():
                self.wake.clear()
                self.tailer.sweep()
                self._housekeeping()
                last_sweep = time.monotonic()
            if time.monotonic() - self._last_stats >= self._stats_every:
                self.flush_stats()
            if not read_any:
                self.wake.wait(timeout=max(0.0, interval - (time.monotonic() - last_sweep)))

    def pass_once(self) -> bool:
        """Read one chunk from every file, match, and commit it all in one transaction."""
        self._apply_finished()
        if self.remediator.pending >= self.config.limits.max_queued_fixes:
            return False  # backpressure: fixes are behind, so reading waits; nothing is dropped
        if self._unsaved is not None and not self._commit(Batch()):
            return False  # the state database refuses writes: read nothing more until it takes them
        batch = Batch()
        read_any = self.tailer.read_all(self.config.limits.read_chunk_bytes, self._sink(batch))
        batch.done.extend(self.tailer.take_finished())
        self._commit(batch)
        return read_any

    def _sink(self, batch: Batch) -> Sink:
        now = self.clock()

        def sink(followed: Followed, block: bytes, base: int) -> None:
            self._process(followed, block, now, batch, base)
            if followed.dirty:
                batch.checkpoints[followed.identity] = followed.checkpoint()

        return sink

    def _housekeeping(self) -> None:
        """After a sweep: let go of rotated files, take what was recovered, flush quiet ones."""
        batch = Batch()
        now = self.clock()
        sink = self._sink(batch)
        self.trigger.expire(now, batch)

        def before_release(followed: Followed) -> None:
            joiner = self._joiners.pop(followed.identity, None)
            if joiner is not None:
                self._match_records(followed, joiner.flush(), now, batch)
            batch.checkpoints.pop(followed.identity, None)

        self.tailer.release_idle(self.config.limits.read_chunk_bytes, sink, before_release)
        recovered, released, finished = self.tailer.take_recovered()
        batch.done.extend(finished)
        for source, path, block in recovered:
            log.info("read the rest of %s from its rotated copy", path)
            self._process(_Recovered(path, source), block, now, batch, 0)
        batch.forget.extend(released)  # in the same transaction as their last lines
        sources = self.config.sources
        for followed in self.tailer.flush_quiet(lambda f: sources[f.source].flush_after, sink):
            joiner = self._joiners.get(followed.identity)
            if joiner is not None and joiner.lines:
                self._match_records(followed, joiner.flush(), now, batch)
                followed.committed = followed.line_end
                followed.marker = marker_of(followed.fd, followed.committed)
                followed.dirty = True
            if followed.dirty:
                batch.checkpoints[followed.identity] = followed.checkpoint()
        for checkpoint in self.tailer.new_checkpoints():
            batch.checkpoints[(checkpoint.dev, checkpoint.ino)] = checkpoint
        self._commit(batch)

    def _process(
        self, followed: _Reading, block: bytes, now: float, batch: Batch, base: int
    ) -> None:
        if not block:
            return
        if self._stall is not None and os.path.exists(self._stall):
            Path(self._stall + ".held").touch()  # test hook: a wedged matcher, and proof of it
            while os.path.exists(self._stall):
                time.sleep(0.05)
        lines = block.count(b"\n")
        path = followed.path
        self.lines_by_source[path] = self.lines_by_source.get(path, 0) + lines
        self.bytes_by_source[path] = self.bytes_by_source.get(path, 0) + len(block)
        if self._tee is not None:
            os.write(self._tee, block)
        if followed.path in self._watched:
            self.remediator.saw(followed.path, block)
        multiline = self.config.sources[followed.source].multiline
        if multiline is not None:
            joiner = self._joiners.get(followed.identity)
            if joiner is None:
                joiner = self._joiners[followed.identity] = EventJoiner(
                    regex.compile(multiline.start) if multiline.start else None,
                    regex.compile(multiline.continuation) if multiline.continuation else None,
                    multiline.max_lines,
                    multiline.max_bytes,
                    self.config.limits.regex_timeout,
                )
            self._match_records(followed, joiner.feed(block, base, self.max_line), now, batch)
            if joiner.pending_start is not None:
                followed.hold_from(joiner.pending_start)
            return
        matcher = self.matchers[followed.source]
        for _, line, hits in matcher.scan(block, self.max_line):
            self._hits(followed, line, hits, now, batch)
        if matcher.quarantined:
            self._quarantine(matcher, now, batch)

    def _match_records(
        self, followed: _Reading, records: list[str], now: float, batch: Batch
    ) -> None:
        matcher = self.matchers[followed.source]
        for record in records:
            hits = matcher.match(record)
            if hits:
                self._hits(followed, record, hits, now, batch)
        if matcher.quarantined:
            self._quarantine(matcher, now, batch)

    def _hits(
        self, followed: _Reading, record: str, hits: Sequence[Hit], now: float, batch: Batch
    ) -> None:
        for pattern, fields in hits:
            incident = self.trigger.feed(pattern, fields, record, followed.path, now, batch)
            if incident is not None:
                self._opened(incident, pattern, batch)

    def _quarantine(self, matcher: Matcher, now: float, batch: Batch) -> None:
        """Patterns that kept timing out stop matching; their owner hears of it once."""
        for pattern in matcher.quarantined:
            key = (pattern.pack, pattern.id)
            if key in self._quarantined:
                continue
            self._quarantined.add(key)
            pack = self.pack_by_name[pattern.pack]
            stats = matcher.stats[matcher.patterns.index(pattern)]
            log.error(
                "quarantined %s/%s: %d regex timeouts (limit %gs each); it no longer matches",
                pattern.pack,
                pattern.id,
                stats.timeouts,
                self.config.limits.regex_timeout,
            )
            event = events.quarantined(pattern, pack, self.config.host, stats.timeouts, now)
            batch.escalations.append(event)
        matcher.quarantined.clear()

    def _opened(self, incident: Incident, pattern: Pattern, batch: Batch) -> None:
        log.info(
            "matched %s/%s key=%r (%d line(s)) in %s",
            pattern.pack,
            pattern.id,
            incident.key,
            incident.count,
            incident.source,
        )
        opened = batch.opened.setdefault((pattern.pack, pattern.id), [0, 0])
        opened[0] += 1
        wire = incident.escalate_as
        if wire is None:
            return
        opened[1] += 1
        pack = self.pack_by_name[pattern.pack]
        outcome = incident.outcome or policy.Outcome.NO_REMEDY
        batch.escalations.append(
            events.of_incident(incident, pattern, pack, self.config.host, wire, outcome)
        )
        log.info(
            "escalating %s/%s key=%r: %s (%s)",
            pattern.pack,
            pattern.id,
            incident.key,
            wire,
            "over its fix budget" if wire == Wire.FLAPPING else "no remedy known",
        )

    def _commit(self, batch: Batch) -> bool:
        """Commit a pass; if the database refuses (disk full, locked), keep it and say so.

        A refused batch is kept in memory and merged with what follows, and the
        reader stops reading until it is committed: nothing read is lost, and a
        crash meanwhile only means those lines are read again.
        """
        if self._unsaved is not None:
            self._unsaved.merge(batch)
            batch = self._unsaved
        if not batch:
            return True
        try:
            self.store.commit(batch, self.clock())
        except StateError as exc:
            self._unsaved = batch
            if time.monotonic() - self._last_store_error > 10.0:
                self._last_store_error = time.monotonic()
                log.error("cannot write the state database, holding what was read: %s", exc)
            return False
        if self._unsaved is not None:
            log.info("the state database takes writes again")
        self._unsaved = None
        for incident in batch.incidents.values():
            if incident.status == Status.REMEDIATING:
                pattern = self.pattern_by_id[(incident.pack, incident.pattern)]
                self.remediator.submit(FixJob(incident, pattern, self.pack_by_name[pattern.pack]))
        if batch.escalations:
            self._escalated()
        return True

    def _escalated(self) -> None:
        for sink in (self.sender, self.alerts):
            if sink is not None:
                sink.wake.set()

    def _apply_finished(self) -> None:
        while True:
            try:
                fingerprint, incident_id, until = self._done.get_nowait()
            except queue.Empty:
                return
            self.trigger.finished(fingerprint, incident_id, until)

    # fixes (called on the remediator's thread) -------------------------------------
    def _report(self, job: FixJob, attempt: Attempt) -> None:
        if attempt.phase == "check":
            return  # a refused field is logged once, with its reason, when the fix ends
        if attempt.timed_out:
            how = "timed out"
        elif attempt.signal is not None:
            how = f"signal {attempt.signal}"
        else:
            how = f"exit {attempt.exit_code}"
        log.info(
            "%s %s: %s -> %s",
            attempt.phase,
            job.pattern.qualified,
            self.redactors[job.pack.name](" ".join(attempt.argv[1:]) or attempt.argv[0]),
            how,
        )

    def _verifying(self, job: FixJob) -> None:
        self.store.set_status(job.incident.id, Status.VERIFYING, self.clock())

    def _finish(self, job: FixJob, outcome: Outcome) -> None:
        """Record how a fix ended; its escalation is spooled in the same transaction."""
        incident, pattern, pack = job.incident, job.pattern, job.pack
        remedy = pattern.remedy
        assert remedy is not None
        now = self.clock()
        redact = self.redactors[pack.name]
        attempts = [redact.attempt(a.as_dict()) for a in outcome.attempts]
        fresh = self.store.incident(incident.id) or incident
        fresh.attempts = attempts
        decision = policy.finished(pattern.escalate, outcome.resolved, outcome.rejected is not None)
        if outcome.rejected is not None:  # a forged or unexpected value: tell the owner, always
            log.warning(
                "refused to fix %s key=%r: %s",
                pattern.qualified,
                incident.key,
                redact(outcome.rejected),
            )
        assert decision.outcome is not None
        wire = decision.wire
        escalation = (
            events.of_incident(fresh, pattern, pack, self.config.host, wire, decision.outcome)
            if wire
            else None
        )
        status, result = decision.status, decision.outcome
        until = now + remedy.cooldown
        self.store.finish_incident(
            incident.id, status, result, attempts, until, incident.fingerprint, escalation, now
        )
        self._done.put((incident.fingerprint, incident.id, until))
        self.wake.set()
        if self.alerts is not None:
            self.alerts.wake.set()  # an alert of this key may end now
        if outcome.rejected is not None:
            self.counters.failed += 1
        elif outcome.resolved:
            self.counters.resolved += 1
            log.info(
                "resolved %s key=%r after %d attempt(s)",
                pattern.qualified,
                incident.key,
                outcome.tries,
            )
        else:
            self.counters.failed += 1
            log.warning(
                "fix for %s key=%r failed after %d attempt(s)",
                pattern.qualified,
                incident.key,
                outcome.tries,
            )
        if escalation is not None:
            log.info("escalating %s key=%r: %s", pattern.qualified, incident.key, wire)
            self._escalated()
