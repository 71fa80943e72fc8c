"""Wiring and lifecycle: construct the parts, start them, signals, reload, health, shutdown.

The pipeline lives elsewhere: the reader pass in `reader.py` (read, join,
match, trigger, commit), fixes in `fixes.py` and `ledger.py`, delivery in
`escalate.py` and `alerts.py`. `Agent` starts them, runs the reader's loop,
acts on what each pass produced, swaps config and packs on SIGHUP, tells
systemd how it is, and stops them in order.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent import __version__, derived, events
from agent.config import Config, load_config
from agent.errors import ConfigErrors, LogmendError, StateError, unexpected
from agent.filewatch import FolderWatch, watch_sources
from agent.fixes import FixJob, Remediator
from agent.ledger import Counters, FixLedger
from agent.notify import Notifier
from agent.observe import Observer
from agent.packs import Pack
from agent.packset import BrokenPack
from agent.policy import FIXING
from agent.preflight import (
    identities_for,
    own_log_identity,
    refuse_own_log,
    runnable_packs,
    spool_limits,
)
from agent.reader import Produced, Reader
from agent.remedy import ProcessRunner, Runner
from agent.snapshot import Snapshot
from agent.state import Store

if TYPE_CHECKING:  # the sinks (and httpx) are imported only where they are configured
    import httpx

    from agent.alerts import AlertSink
    from agent.escalate import Sender

log = logging.getLogger("logmend")

SHUTDOWN_GRACE = 5.0
STATS_INTERVAL = 10.0
STATUS_INTERVAL = 5.0
FIX_LOOP_GRACE = 30.0


class Agent:
    def __init__(
        self,
        config: Config,
        packs: list[Pack] | None = None,
        clock: Callable[[], float] = time.time,
        runner: Runner | None = None,
        transport: httpx.BaseTransport | None = None,
        dry_run: bool = False,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        memo: derived.Memo | None = None,
        broken: list[BrokenPack] | None = None,
    ) -> None:
        # what an earlier start derived from the same patterns: a warm start skips compiling
        self.memo = memo or derived.Memo(config.state_dir / derived.FILE, apart=True)
        if packs is None:
            packs, broken = runnable_packs(config, self.memo)
        self.broken = broken or []  # packs that do not run here; the others do
        identities = identities_for(config, packs, [b.name for b in broken or ()])
        self.own_log = own_log_identity()
        refuse_own_log(config, self.own_log)
        self.clock = clock
        self.monotonic = monotonic
        self.transport = transport
        self.store = Store(
            config.state_db,
            config.limits.max_samples,
            spool_limits(config),
            recount=events.recount,
        )
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._reload_asked = threading.Event()
        self._signalled = threading.Event()  # set by signal handlers only
        self._stop_signal: int | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self.ledger = FixLedger(
            self.store,
            config.host,
            lambda: self.reader.redactors,
            clock,
            self.wake,
            self._escalated,
        )
        self.remediator = Remediator(
            runner or ProcessRunner(config.limits.output_tail_bytes, clock, monotonic),
            config.limits.max_concurrent_fixes,
            packs,
            identities,
            finish=self.ledger.finish,
            verifying=self.ledger.verifying,
            report=self.ledger.report,
            dry_run=dry_run,
            monotonic=monotonic,
        )
        self.reader = Reader(
            config,
            packs,
            self.store,
            clock=clock,
            monotonic=monotonic,
            observer=observer,
            recovery=self.remediator.saw,
            watched=self.remediator.watched,
            exclude=self.own_log,
            memo=self.memo,
            wake=self.wake,
        )
        self._memo_tally = self.memo.finish()  # until a reload, the facts are in the file
        self._note_broken()
        self.sender: Sender | None = self._new_sender()
        self.alerts: AlertSink | None = self._new_alerts()
        self.notify = Notifier()
        self._last_ping = 0.0
        self._last_status = 0.0
        self._status_lines = 0
        self.metrics_server: Any = None
        self.metrics_port = 0
        self._file_events: FolderWatch | None = None
        self._last_stats = monotonic()
        self.dry_run = dry_run
        self._reload_why = "received SIGHUP"
        self._pack_sync: Any = None  # agent.packsync.SyncLoop, with [sync]

    @property
    def config(self) -> Config:
        return self.reader.config

    @property
    def packs(self) -> list[Pack]:
        return self.reader.packs

    @property
    def counters(self) -> Counters:
        return self.ledger.counters

    def _new_sender(self) -> Sender | None:
        if self.config.escalation is None:
            return None
        from agent.escalate import Sender

        return Sender(
            self.store,
            self.config.escalation,
            {"host": self.config.host, "version": __version__},
            transport=self.transport,
            clock=self.clock,
            owners={p.name: p.owner for p in self.reader.packs},
            monotonic=self.monotonic,
        )

    def _new_alerts(self) -> AlertSink | None:
        if self.config.alertmanager is None:
            return None
        from agent.alerts import AlertSink

        return AlertSink(
            self.store,
            self.config.alertmanager,
            self.config.host,
            self.reader.pattern_by_id,
            self.reader.pack_by_name,
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

        self.metrics_server, self.metrics_port = serve_metrics(self.snapshot, self.config.metrics)

    def start(self) -> None:
        self.remediator.start()
        reader = self.reader
        for incident in self.store.open_incidents():
            pattern = reader.pattern_by_id.get((incident.pack, incident.pattern))
            if incident.status in FIXING and pattern is not None and pattern.remedy is not None:
                log.info(
                    "resuming fix for %s/%s key=%r", incident.pack, incident.pattern, incident.key
                )
                self.remediator.submit(FixJob(incident, pattern, reader.pack_by_name[pattern.pack]))
        if self.sender is not None:
            self.sender.start()
        if self.alerts is not None:
            self.alerts.start()
        self._start_pack_sync()
        if self.config.limits.file_events:
            self._file_events = watch_sources(
                self.config.sources, self.wake, self.config.limits.sweep_interval
            )
        reader.tailer.sweep()
        self._act(reader.housekeeping())
        self.start_metrics()
        self.notify.ready(self.status_line())
        log.info(
            "logmend %s running: %d source(s), %d file(s), %d pack(s)%s, %d pattern(s) "
            "(facts about them: %s)",
            __version__,
            len(self.config.sources),
            len(reader.tailer.files),
            len(reader.packs),
            self._broken_note(),
            len(reader.pattern_by_id),
            self._memo_tally,
        )

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set() and signum == signal.SIGINT:
                os._exit(130)
            self._stop_signal = signum  # logged by the loop: a handler must not write a stream
            self.stopping.set()
            self._signalled.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload_why = "received SIGHUP"
            self._reload_asked.set()
            self._signalled.set()

        threading.Thread(target=self._relay_signals, name="signals", daemon=True).start()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _relay_signals(self) -> None:
        """Wake the loop for the signal handlers, from a thread of its own.

        A handler runs on the main thread between two bytecodes, possibly while
        that same thread holds a lock: the one inside `wake.wait()` (seen: an
        agent deaf to SIGTERM), or threading's own while it starts a thread. So
        a handler only sets events the main thread never takes the lock of
        (`stopping`, `_reload_asked`, `_signalled`), and this thread, blocked on
        `_signalled`, does the `wake.set()`.
        """
        while True:
            self._signalled.wait()
            self._signalled.clear()
            self.wake.set()

    def shutdown(self) -> None:
        self.notify.stopping()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self._file_events is not None:
            self._file_events.stop()
        if self._pack_sync is not None:
            self._pack_sync.stop()
        deadline = self.monotonic() + SHUTDOWN_GRACE
        fixes_ended = self.remediator.stop(grace=SHUTDOWN_GRACE / 2)
        if self.sender is not None:
            self.sender.stop(flush_seconds=max(0.5, deadline - self.monotonic()))
        if self.alerts is not None:
            self.alerts.stop(flush_seconds=max(0.5, deadline - self.monotonic()))
        self.reader.tailer.close()
        self.flush_stats()  # the journal sources as they ran, for `logmend status`
        self.reader.stop_journals()
        if fixes_ended:
            self.store.close()
        log.info("stopped")

    def flush_stats(self) -> None:
        """Persist what each pattern cost since the last flush (for `logmend status`)."""
        self._last_stats = self.monotonic()
        self.reader.flush_pattern_stats()
        journals = self.reader.journal_status()
        if journals:  # for `logmend status`, which reads the state file
            try:
                self.store.set_meta("journals", json.dumps({"at": self.clock(), **journals}))
            except StateError as exc:
                log.error("cannot write the journal sources' status: %s", exc)

    # health, for systemd and Prometheus --------------------------------------------
    def status_line(self) -> str:
        now = self.monotonic()
        elapsed = max(1e-6, now - self._last_status) if self._last_status else 0.0
        lines = sum(self.reader.lines_by_source.values())
        rate = (lines - self._status_lines) / elapsed if elapsed else 0.0
        self._last_status, self._status_lines = now, lines
        files = len(self.reader.tailer.files)
        try:
            spool = self.store.spool_summary()
            open_incidents = self.store.open_count()
        except StateError:
            return f"{files} files, {rate:.0f} lines/s, state database failing"
        return (
            f"{files} files, {rate:.0f} lines/s, {open_incidents} open"
            f" incidents, {spool['queued']} queued and {spool['parked']} parked escalations"
        )

    def progressing(self) -> bool:
        """The reader is here to ask; are the sender and the fix loop moving too?"""
        now = self.monotonic()
        if self.sender is not None and now - self.sender.heartbeat > self.sender.grace:
            return False
        return now - self.remediator.heartbeat <= FIX_LOOP_GRACE

    def _keepalive(self) -> None:
        now = self.monotonic()
        interval = self.notify.watchdog_interval
        if interval is not None and now - self._last_ping >= interval and self.progressing():
            self.notify.watchdog()
            self._last_ping = now
        if self.notify.enabled and now - self._last_status >= STATUS_INTERVAL:
            self.notify.status(self.status_line())

    def snapshot(self) -> Snapshot:
        """A read-only copy of what the metrics endpoint reports (taken at scrape time)."""
        reader, sender = self.reader, self.sender
        lag = []
        for followed in list(reader.tailer.files.values()):
            try:
                lag.append((followed.path, max(0, os.fstat(followed.fd).st_size - followed.offset)))
            except OSError:
                continue
        patterns = [
            (pack, pattern, counts[0], counts[2])
            for (pack, pattern), (counts, _) in reader.pattern_totals().items()
        ]
        deliveries = None
        if sender is not None:
            stats = sender.stats
            deliveries = {"sent": stats.sent, "failed": stats.failures, "parked": stats.parked}
        by_status: dict[str, int] | None = None
        spool: dict[str, Any] = {}
        try:
            by_status = self.store.incidents_by_status()
            spool = self.store.spool_summary()
        except StateError as exc:
            log.warning("metrics without state: %s", exc)
        return Snapshot(
            now=self.clock(),
            lines_by_source=dict(reader.lines_by_source),
            bytes_by_source=dict(reader.bytes_by_source),
            patterns=patterns,
            fixes_resolved=self.ledger.counters.resolved,
            fixes_failed=self.ledger.counters.failed,
            deliveries=deliveries,
            reloads=dict(self.reloads),
            lag=lag,
            incidents_by_status=by_status,
            spool=spool,
            packs_running=len(reader.packs),
            broken_packs=tuple(p.name for p in self.broken),
            unknown=reader.unknowns.sizes(),
            journals=reader.journal_status(),
        )

    # reload ------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read config and packs and swap them in between records; keep all state.

        A config or pack with errors, or one its reader fails on in any way,
        changes nothing: the running set stays, and the errors are logged and
        kept for `logmend status`.
        """
        log.info("%s, reloading %s", self._reload_why, self.config.file)
        self.notify.reloading()
        where: Path | str = self.config.file
        try:
            config = load_config(self.config.file)
            where = "a pack under " + ", ".join(map(str, config.pack_roots))
            self.memo.reopen()
            packs, broken = runnable_packs(config, self.memo)
            where = self.config.file
            identities = identities_for(config, packs, [b.name for b in broken])
            refuse_own_log(config, self.own_log)
            token = ""
            if config.escalation:
                from agent.escalate import read_token

                token = read_token(config.escalation)
            old = self.config
            # a new sync on every reload: the trusted keys and token read again, new
            # versions proven with the config as reloaded
            resync = config.sync is not None or old.sync is not None
            syncing = self._new_pack_sync(config) if resync else None
            tailer = None
            if config.sources != old.sources or config.limits != old.limits:
                tailer = self.reader.new_tailer(config)  # reads the store: may be refused
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
            self.memo.finish(save=False)  # the next reload's count is its own
            self._record_reload(errors)
            self.notify.ready(self.status_line())
            return False
        self.flush_stats()
        reader = self.reader
        reader.adopt(config, packs)
        memo_tally = self.memo.finish()
        self.broken = broken
        self._note_broken()
        self.remediator.reconfigure(packs, identities)
        self.store.spool_limits = spool_limits(config)
        if tailer is not None:
            reader.retail(tailer)  # resumes at the committed checkpoints
            reader.follow_journals(config)  # and cursors
            self._act(reader.housekeeping())
        self._swap_sinks(old, token)
        if resync:
            if self._pack_sync is not None:
                self._pack_sync.stop()
            self._pack_sync = syncing
            if syncing is not None:
                syncing.start()
        self.reloads["ok"] += 1
        self._record_reload([])
        log.info(
            "reloaded: %d source(s), %d pack(s)%s, %d pattern(s) (facts about them: %s)",
            len(config.sources),
            len(packs),
            self._broken_note(),
            len(reader.pattern_by_id),
            memo_tally,
        )
        self.notify.ready(self.status_line())
        return True

    def _swap_sinks(self, old: Config, token: str) -> None:
        """New sinks where their config (or the token in its file) changed; the others
        take the new packs in place."""
        config, reader = self.config, self.reader
        rotated = self.sender is not None and token != self.sender.token
        if config.escalation != old.escalation or config.host != old.host or rotated:
            if self.sender is not None:
                self.sender.stop(flush_seconds=2.0)
            self.sender = self._new_sender()
            if self.sender is not None:
                self.sender.start()
        elif self.sender is not None:
            self.sender.owners = {p.name: p.owner for p in reader.packs}
        self.ledger.host = config.host
        if config.alertmanager != old.alertmanager or config.host != old.host:
            if self.alerts is not None:
                self.alerts.stop(flush_seconds=2.0)
            self.alerts = self._new_alerts()
            if self.alerts is not None:
                self.alerts.start()
        elif self.alerts is not None:  # keeps what fires, so it can end it later
            self.alerts.patterns, self.alerts.packs = reader.pattern_by_id, reader.pack_by_name

    def _start_pack_sync(self) -> None:
        self._pack_sync = self._new_pack_sync(self.config)
        if self._pack_sync is not None:
            self._pack_sync.start()

    def _new_pack_sync(self, config: Config) -> Any:
        """With [sync]: the packs the receiver says this host runs, checked here, then
        swapped in by a reload (agent/packsync.py); never in a dry run. Raises a config
        error for an unreadable token or key file."""
        sync = config.sync
        if sync is None or self.dry_run:
            return None
        from agent import packsync
        from agent.signing import trusted_keys

        transport = packsync.HttpTransport(sync, packsync.read_token(sync))
        syncer = packsync.PackSync(
            config,
            transport,
            trusted_keys(list(sync.trust)),
            packsync.prove_here(config),
            in_use=lambda: {pack.dir for pack in self.reader.packs},
        )
        return packsync.SyncLoop(syncer, sync.interval, self._synced)

    def _synced(self, result: Any) -> None:
        """(On the sync's thread.) Record it for `status`; report each refused version to
        its owner once; reload for what was installed."""
        from agent import packsync

        now = self.clock()
        self.store.set_meta("pack_sync", json.dumps({"at": now, **result.to_json()}))
        if result.failed:
            log.warning("pack sync: %s; the packs here keep running", result.failed)
        for refusal in result.refused:
            log.error(
                "pack sync: %s %s refused, the running version stays: %s",
                refusal.name,
                refusal.version,
                "; ".join(refusal.reasons[:3]),
            )
        if result.refused:
            wrecks = [packsync.as_broken(r, self.config) for r in result.refused]
            self.store.report_once(
                [events.pack_error(b, self.config.host, now) for b in wrecks], now
            )
        if result.reload:
            said = ", ".join(result.installed) or "new central values of params"
            if result.removed:
                said = f"{said}; removed {', '.join(result.removed)}"
            log.info("pack sync: installed %s", said)
            self._reload_why = "packs synced"
            self._reload_asked.set()
            self.wake.set()

    def _broken_note(self) -> str:
        names = ", ".join(p.name for p in self.broken)
        return f" ({len(self.broken)} broken, not running: {names})" if self.broken else ""

    def _note_broken(self) -> None:
        """Name each pack that does not run: in the log, for `status` and the metrics,
        and to its owner through the receiver (once per host and way it is broken)."""
        for pack in self.broken:
            log.error(
                "pack %s in %s does not run (%d problem(s)); every other pack does: %s",
                pack.name,
                pack.dir,
                len(pack.errors),
                "; ".join(str(e) for e in pack.errors[:5])
                + (" ..." if len(pack.errors) > 5 else ""),
            )
        now = self.clock()
        try:
            self.store.set_meta("broken_packs", json.dumps([p.to_json() for p in self.broken]))
            running = {p.name: p.version for p in self.reader.packs}  # for `status`
            self.store.set_meta("packs", json.dumps(running, sort_keys=True))
            params = {p.name: dict(p.params) for p in self.reader.packs if p.params}
            self.store.set_meta("params", json.dumps(params, sort_keys=True))
            self.store.report_once(
                [events.pack_error(p, self.config.host, now) for p in self.broken], now
            )
        except StateError as exc:
            log.error("cannot record the broken packs in the state database: %s", exc)
        except Exception as exc:  # a report must never stop the agent, at start or reload
            log.error("cannot report the broken packs", exc_info=exc)

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
        last_sweep = self.monotonic()
        esc = self.config.escalation
        stats_every = min(STATS_INTERVAL, esc.stats_interval) if esc else STATS_INTERVAL
        while not self.stopping.is_set():
            if self._reload_asked.is_set() and self.reader.unsaved is None:
                self._reload_asked.clear()
                self.reload()
                interval = self.config.limits.sweep_interval
            read_any = self.pass_once()
            self._keepalive()
            if self.monotonic() - last_sweep >= interval or self.wake.is_set():
                self.wake.clear()
                self.reader.tailer.sweep()
                self._act(self.reader.housekeeping())
                last_sweep = self.monotonic()
            if self.monotonic() - self._last_stats >= stats_every:
                self.flush_stats()
            if not read_any:
                self.wake.wait(timeout=max(0.0, interval - (self.monotonic() - last_sweep)))
        if self._stop_signal is not None:
            log.info("received %s, stopping", signal.Signals(self._stop_signal).name)

    def pass_once(self) -> bool:
        """One reader pass; fixes that ended hand their cooldowns back first."""
        self._apply_finished()
        behind = self.remediator.pending >= self.config.limits.max_queued_fixes
        produced = self.reader.pass_once(fixes_behind=behind)
        self._act(produced)
        return produced.read_any

    def _act(self, produced: Produced) -> None:
        """Start the fixes a pass opened and wake the sinks if it escalated."""
        for job in produced.fixes:
            self.remediator.submit(job)
        if produced.escalated:
            self._escalated()

    def _escalated(self) -> None:
        for sink in (self.sender, self.alerts):
            if sink is not None:
                sink.wake.set()

    def _apply_finished(self) -> None:
        while True:
            try:
                fingerprint, incident_id, until, resolved_at = self.ledger.cooled.get_nowait()
            except queue.Empty:
                return
            self.reader.trigger.finished(fingerprint, incident_id, until, resolved_at)
