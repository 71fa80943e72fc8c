"""The reader pass: read, join, match, trigger, commit — and say what it produced.

One thread runs it (the only one that touches the tailer and the trigger).
Each pass reads one chunk from every followed file and commits, in one
transaction, the new checkpoints together with every incident, count,
cooldown and escalation those lines caused. It returns the fixes to start and
whether anything escalated; the wiring (`daemon.Agent`) acts on that.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import regex

from agent import events, policy
from agent.config import Config
from agent.derived import Memo
from agent.errors import StateError
from agent.fixes import FixJob
from agent.journal import JournalFollower
from agent.journalstream import JournalStream, Record
from agent.match import Hit, Matcher
from agent.model import Batch, Incident
from agent.observe import Observer
from agent.packs import Pack, Pattern
from agent.policy import Status, Wire
from agent.preflight import Shared, matchers_for, unit_matcher
from agent.records import EventJoiner
from agent.redact import Redactor
from agent.state import Store
from agent.tail import Followed, Sink, Tailer, marker_of
from agent.trigger import Trigger
from agent.unknown import Unknowns

log = logging.getLogger("logmend")

STORE_ERROR_EVERY = 10.0  # seconds between two log lines about a refusing database
JOURNAL_ENTRIES = 2000  # entries of a journal source a pass takes
MAX_UNITS = 10_000  # units whose matcher is remembered (journald sets _SYSTEMD_UNIT, not a client)


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
class _Journal:
    """A journal source where the pipeline expects a followed file: entries are whole."""

    path: str
    source: int
    identity: tuple[int, int] = (-2, -2)

    def hold_from(self, offset: int) -> None:
        """Nothing to hold: an entry is a whole record."""


def _with_journal(
    pattern: Pattern, journal: Mapping[str, str], captured: dict[str, str]
) -> dict[str, str]:
    """A hit's fields with the journal's own (unit, pid, ...) where the pattern has no
    group of that name: a group of the pattern is the pattern's alone, so an optional
    one that did not take part is not filled by the journal (and so cannot reach a fix
    its constraint was written for)."""
    fields = {k: v for k, v in journal.items() if k not in pattern.lazy.groups}
    fields.update(captured)
    return fields


@dataclass
class Produced:
    """What a pass produced, for the wiring to act on."""

    read_any: bool = False
    fixes: list[FixJob] = field(default_factory=list)
    escalated: bool = False


class Reader:
    """The per-record pipeline over one config and set of packs; swapped on reload."""

    def __init__(
        self,
        config: Config,
        packs: list[Pack],
        store: Store,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        recovery: Callable[[str, bytes], None] | None = None,
        watched: Mapping[str, Any] | None = None,
        exclude: tuple[int, int] | None = None,
        memo: Memo | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.wake = wake or threading.Event()  # journal followers wake the reading loop
        self.journals: dict[int, JournalStream] = {}
        self.memo = memo
        self.clock = clock
        self.monotonic = monotonic
        self.observer = observer or Observer()
        self.recovery = recovery
        self.watched: Mapping[str, Any] = watched if watched is not None else {}
        self.exclude = exclude
        self._quarantined: set[tuple[str, str]] = set()
        self.unknowns = Unknowns(store, Redactor(), memo=memo)  # errors no pack knows yet
        self._take(config, packs)
        self.trigger = Trigger(config.limits.max_samples, self.redactors)
        budget_window = max(
            (p.remedy.budget.within for p in self.pattern_by_id.values() if p.remedy), default=0.0
        )
        now = clock()
        self.trigger.restore(
            store.open_incidents(),
            store.cooldowns(now),
            store.fix_runs(now - budget_window),
            {key: p.within for key, p in self.pattern_by_id.items()},
        )
        self.tailer = self.new_tailer()
        self.follow_journals(config)
        self.lines_by_source: dict[str, int] = {}
        self.bytes_by_source: dict[str, int] = {}
        self.unsaved: Batch | None = None
        self._last_store_error = float("-inf")
        self._flushed: dict[tuple[str, str], tuple[int, int, int, float]] = {}
        self._joiners: dict[tuple[int, int], EventJoiner] = {}

    def adopt(self, config: Config, packs: list[Pack]) -> None:
        """A reload: new config and packs between records; incidents and positions stay.

        Flush the old matchers' statistics first (`flush_pattern_stats`): the new
        matchers count from zero.
        """
        self._take(config, packs)
        self._flushed = {}
        self.trigger.redactors = self.redactors
        self._quarantined.clear()

    def _take(self, config: Config, packs: list[Pack]) -> None:
        """Everything the per-record path looks up, built once per config and packs."""
        self.config = config
        self.packs = packs
        self.pack_by_name = {p.name: p for p in packs}
        self.pattern_by_id = {(p.pack, p.id): p for pack in packs for p in pack.patterns}
        self._shared: Shared = {}  # every matcher, by the packs it matches
        self.matchers = matchers_for(config, packs, self.memo, self._shared)
        # journal sources with a pack that names its units: a matcher per unit seen
        self._by_unit: dict[tuple[int, str], Matcher] = {}
        self._routed = {
            index
            for index, source in enumerate(config.sources)
            if source.journal is not None
            and any(p.units for p in packs if source.packs is None or p.name in source.packs)
        }
        self.unknowns.configure(config, packs, self.matchers)
        self.max_line = config.limits.max_line_bytes
        self.redactors = {p.name: Redactor(p.redact, entropy=p.redact_entropy) for p in packs}
        self._multiline = {
            index: (
                regex.compile(source.multiline.start) if source.multiline.start else None,
                regex.compile(source.multiline.continuation)
                if source.multiline.continuation
                else None,
            )
            for index, source in enumerate(config.sources)
            if source.multiline is not None
        }
        names = set(self.pack_by_name)
        pending = config.params.pending  # synced packs that have not arrived (yet)
        for source in config.sources:
            for name in source.packs or ():
                if name in names:
                    continue
                if name in pending or "*" in pending:
                    log.info("source %s names pack %r, not synced yet", source.path, name)
                else:
                    log.warning("source %s names pack %r, which is not loaded", source.path, name)

    def new_tailer(self, config: Config | None = None) -> Tailer:
        """A tailer for `config`'s sources from the committed checkpoints (StateError if the
        store cannot be read)."""
        config = config or self.config
        tailer = Tailer(
            config.sources,
            self.store.checkpoints(),
            config.limits.max_line_bytes,
            self.store.done_files(),
            monotonic=self.monotonic,
        )
        if self.exclude is not None:
            tailer.exclude.add(self.exclude)
        return tailer

    def follow_journals(self, config: Config) -> None:
        """A follower for each journal source, from its committed cursor (StateError if
        the store cannot be read); the ones running are stopped first."""
        self.stop_journals()
        marks = self.store.journal_marks()
        limits = config.limits
        self.journals = {}
        for index, source in enumerate(config.sources):
            if source.journal is None:
                continue
            mark = marks.get(source.name)
            joins = source.multiline is not None
            replay = bool(mark and mark.held and joins)
            follower = JournalFollower(
                source.journal,
                ((mark.replay if replay else mark.cursor) or None) if mark else None,
                # "" committed: the journal was empty when the source began
                from_start=source.start == "beginning" or (mark is not None and not mark.cursor),
                max_line=limits.max_line_bytes,
                wake=self.wake,
                at=replay,
                committed=mark.cursor if mark else "",
            )
            self.journals[index] = JournalStream(
                follower,
                mark,
                functools.partial(self._new_joiner, index) if joins else None,
                source.flush_after,
                self.monotonic,
            )

    def journal_status(self) -> dict[str, dict[str, Any]]:
        """Each journal source's follower and held events, by source name."""
        sources = self.config.sources
        return {sources[index].name: stream.status() for index, stream in self.journals.items()}

    def stop_journals(self) -> None:
        for stream in self.journals.values():
            stream.follower.stop()
        self.journals = {}

    def _new_joiner(self, index: int) -> EventJoiner:
        """A joiner by source `index`'s multiline rules (a file's, a journal stream's)."""
        multiline = self.config.sources[index].multiline
        assert multiline is not None
        start, continuation = self._multiline[index]
        return EventJoiner(
            start,
            continuation,
            multiline.max_lines,
            multiline.max_bytes,
            self.config.limits.regex_timeout,
        )

    def retail(self, tailer: Tailer) -> None:
        """Sources or limits changed: follow with `tailer` (made before anything was swapped)."""
        self._joiners.clear()
        self.tailer.close()
        self.tailer = tailer
        self.tailer.sweep()

    def pattern_totals(self) -> dict[tuple[str, str], tuple[tuple[int, int, int, float], bool]]:
        """Each pattern's (matches, confirms, timeouts, seconds) and whether it is
        quarantined, summed over the matchers it is in (sources with other packs, units)."""
        totals: dict[tuple[str, str], tuple[tuple[int, int, int, float], bool]] = {}
        for matcher in list(self._shared.values()):  # the scrape's thread: a copy
            for pattern, stats in matcher.pattern_stats():
                key = (pattern.pack, pattern.id)
                (hits, confirms, timeouts, seconds), quarantined = totals.get(
                    key, ((0, 0, 0, 0.0), False)
                )
                totals[key] = (
                    (
                        hits + stats.matches,
                        confirms + stats.confirms,
                        timeouts + stats.timeouts,
                        seconds + stats.seconds,
                    ),
                    quarantined or stats.quarantined,
                )
        return totals

    def flush_pattern_stats(self) -> None:
        """Store what each pattern cost since the last flush, and the unknown errors'
        templates; kept for the next try on error."""
        self.unknowns.save()
        rows = []
        flushed = {}
        for key, (now, quarantined) in self.pattern_totals().items():
            last = self._flushed.get(key, (0, 0, 0, 0.0))
            if now != last:
                deltas = (now[0] - last[0], now[1] - last[1], now[2] - last[2])
                rows.append((*key, *deltas, now[3] - last[3], quarantined))
                flushed[key] = now
        if not rows:
            return
        try:
            self.store.add_pattern_stats(rows, self.clock())
        except StateError as exc:
            log.error("cannot write pattern statistics (kept for the next try): %s", exc)
            return
        self._flushed.update(flushed)

    # passes ------------------------------------------------------------------------
    def pass_once(self, fixes_behind: bool = False) -> Produced:
        """Read one chunk from every file, match, and commit it all in one transaction."""
        if fixes_behind:
            return Produced()  # backpressure: reading waits; nothing is dropped
        held = Produced()
        if self.unsaved is not None:
            flushed = self._commit(Batch())
            if flushed is None:
                return held  # the database refuses writes: read nothing until it takes them
            held = flushed
        batch = Batch()
        read_any = self.tailer.read_all(self.config.limits.read_chunk_bytes, self._sink(batch))
        read_any |= self._read_journals(batch)
        batch.done.extend(self.tailer.take_finished())
        produced = self.commit(batch)
        produced.read_any = read_any
        produced.fixes[:0] = held.fixes
        produced.escalated |= held.escalated
        return produced

    def housekeeping(self) -> Produced:
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
        self._flush_journals(now, batch)
        return self.commit(batch)

    def commit(self, batch: Batch) -> Produced:
        """Commit a pass; if the database refuses (disk full, locked), keep it and say so.

        A refused batch is kept in memory and merged with what follows, and the
        reader stops reading until it is committed: nothing read is lost, and a
        crash meanwhile only means those lines are read again.
        """
        return self._commit(batch) or Produced()

    def _commit(self, batch: Batch) -> Produced | None:
        """What the committed batch produced, or None if the database refused it."""
        if self.unsaved is not None:
            self.unsaved.merge(batch)
            batch = self.unsaved
        produced = Produced()
        if not batch:
            return produced
        try:
            self.store.commit(batch, self.clock())
        except StateError as exc:
            self.unsaved = batch
            if self.monotonic() - self._last_store_error > STORE_ERROR_EVERY:
                self._last_store_error = self.monotonic()
                log.error("cannot write the state database, holding what was read: %s", exc)
            return None
        if self.unsaved is not None:
            log.info("the state database takes writes again")
        self.unsaved = None
        for incident in batch.incidents.values():
            if incident.status == Status.REMEDIATING:
                pattern = self.pattern_by_id[(incident.pack, incident.pattern)]
                pack = self.pack_by_name[pattern.pack]
                produced.fixes.append(FixJob(incident, pattern, pack))
        produced.escalated = bool(batch.escalations)
        return produced

    def _read_journals(self, batch: Batch) -> bool:
        """What each journal source's follower has read: matched as records, the last
        entry's cursor committed with what they caused."""
        read_any = False
        now = self.clock()
        for index, stream in self.journals.items():
            stream.follower.poll()
            before = stream.entries
            records = stream.take(JOURNAL_ENTRIES)
            if stream.entries == before:
                continue
            read_any = True
            name = self.config.sources[index].name
            self.lines_by_source[name] = self.lines_by_source.get(name, 0) + (
                stream.entries - before
            )
            self._match_entries(index, records, now, batch)
        return read_any

    def _unit_matcher(self, index: int, unit: str) -> Matcher:
        """Journal source `index`'s matcher for entries of `unit` (the packs naming it)."""
        matcher = self._by_unit.get((index, unit))
        if matcher is None:
            matcher = unit_matcher(self.config, index, unit, self.packs, self._shared, self.memo)
            if len(self._by_unit) < MAX_UNITS:
                self._by_unit[(index, unit)] = matcher
        return matcher

    def _flush_journals(self, now: float, batch: Batch) -> None:
        """The events held by streams gone quiet, matched; and every mark that moved."""
        for index, stream in self.journals.items():
            self._match_entries(index, stream.quiet(), now, batch)

    def _match_entries(self, index: int, records: list[Record], now: float, batch: Batch) -> None:
        """A journal source's records matched, with the journal's own fields (unless the
        pattern names the same), and its mark committed with what they caused."""
        source = self.config.sources[index]
        reading = _Journal(source.name, index)
        matcher = self.matchers[index]
        routed = index in self._routed
        for text, entry_fields in records:
            if routed:
                matcher = self._unit_matcher(index, entry_fields.get("unit", ""))
            hits = matcher.match(text)
            if hits:
                hits = [
                    (pattern, _with_journal(pattern, entry_fields, fields))
                    for pattern, fields in hits
                ]
                self._hits(reading, text, hits, now, batch)
            else:
                self.unknowns.feed_record(index, text, now)
        for used in self._shared.values() if routed else (matcher,):
            if used.quarantined:
                self._quarantine(used, now, batch)
        mark = self.journals[index].mark()
        if mark is not None:
            batch.cursors[source.name] = mark

    # the per-record path ---------------------------------------------------------------
    def _sink(self, batch: Batch) -> Sink:
        now = self.clock()

        def sink(followed: Followed, block: bytes, base: int) -> None:
            self._process(followed, block, now, batch, base)
            if followed.dirty:
                batch.checkpoints[followed.identity] = followed.checkpoint()

        return sink

    def _process(
        self, followed: _Reading, block: bytes, now: float, batch: Batch, base: int
    ) -> None:
        if not block:
            return
        self.observer.block(block)
        path = followed.path
        self.lines_by_source[path] = self.lines_by_source.get(path, 0) + block.count(b"\n")
        self.bytes_by_source[path] = self.bytes_by_source.get(path, 0) + len(block)
        if self.recovery is not None and path in self.watched:
            self.recovery(path, block)
        multiline = self.config.sources[followed.source].multiline
        if multiline is not None:
            joiner = self._joiners.get(followed.identity)
            if joiner is None:
                joiner = self._joiners[followed.identity] = self._new_joiner(followed.source)
            self._match_records(followed, joiner.feed(block, base, self.max_line), now, batch)
            if joiner.pending_start is not None:
                followed.hold_from(joiner.pending_start)
            return
        matcher = self.matchers[followed.source]
        found = matcher.scan(block, self.max_line)
        for _, line, hits in found:
            self._hits(followed, line, hits, now, batch)
        if self.unknowns.mines(followed.source):
            matched = {start for start, _, _ in found}
            self.unknowns.feed(followed.source, block, matched, now, self.max_line)
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
            else:
                self.unknowns.feed_record(followed.source, record, now)
        if matcher.quarantined:
            self._quarantine(matcher, now, batch)

    def _hits(
        self, followed: _Reading, record: str, hits: Sequence[Hit], now: float, batch: Batch
    ) -> None:
        for pattern, fields in hits:
            told = len(batch.not_holding)
            incident = self.trigger.feed(pattern, fields, record, followed.path, now, batch)
            if incident is not None:
                self._opened(incident, pattern, batch)
            if len(batch.not_holding) > told:
                self._not_holding(pattern, *batch.not_holding[-1], now, batch)

    def _not_holding(
        self,
        pattern: Pattern,
        incident_id: str,
        recurrences: int,
        resolved_at: float,
        now: float,
        batch: Batch,
    ) -> None:
        """A fix resolved and its problem came back: told now (`policy.not_holding`), with
        the fix's attempts and the lines before and since, not after the cooldown."""
        try:
            incident = batch.incidents.get(incident_id) or self.store.incident(incident_id)
        except StateError as exc:  # the database is failing: the next pass commits nothing
            log.error("cannot read incident %s to escalate it: %s", incident_id, exc)
            return
        if incident is None:
            return
        decision = policy.not_holding(pattern.escalate)
        incident.status, incident.outcome = decision.status, decision.outcome
        batch.incidents[incident_id] = incident
        log.warning(
            "the fix for %s/%s key=%r did not hold: %d match(es) within %.0fs of its resolution%s",
            pattern.pack,
            pattern.id,
            incident.key,
            recurrences,
            now - resolved_at,
            f"; escalating as {decision.wire}" if decision.wire else "",
        )
        if decision.wire is None:
            return
        update = batch.counts.get(incident_id)
        since = update.samples if update is not None else []
        event = events.of_incident(
            incident,
            pattern,
            self.pack_by_name[pattern.pack],
            self.config.host,
            decision.wire,
            decision.outcome or "",
        )
        # its own id: the incident may have been escalated already (escalate = "always")
        lines = (incident.samples + since)[-self.config.limits.max_samples :]
        batch.escalations.append(
            dataclasses.replace(
                event,
                id=f"{incident_id}:not-holding",
                count=incident.count + (update.added if update is not None else 0),
                last_seen=now,
                lines=lines,
            )
        )

    def _quarantine(self, matcher: Matcher, now: float, batch: Batch) -> None:
        """Patterns that kept timing out stop matching; their owner hears of it once."""
        for pattern in matcher.quarantined:
            key = (pattern.pack, pattern.id)
            if key in self._quarantined:
                continue
            self._quarantined.add(key)
            pack = self.pack_by_name[pattern.pack]
            stats = matcher.stats[matcher.patterns.index(pattern)]
            if stats.error:
                log.error(
                    "quarantined %s/%s: its regex cannot be compiled here (%s); it no longer"
                    " matches",
                    pattern.pack,
                    pattern.id,
                    stats.error,
                )
            else:
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
        """An incident opened: count it, and spool the escalation the trigger decided on."""
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
            {Wire.FLAPPING: "over its fix budget", Wire.ALWAYS: "the pattern says always"}.get(
                wire, "no remedy known"
            ),
        )
