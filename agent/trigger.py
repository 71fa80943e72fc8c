"""When a match becomes an incident: keys, thresholds, budgets, cooldowns, single-flight.

Pure logic over an injected clock value: the reader loop feeds hits and gets
back what to record. One fingerprint (pack, pattern, key) has at most one
incident open: waiting for its threshold, remediating, or cooling down.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

from agent import policy
from agent.hashing import blake2b
from agent.model import Batch, CountUpdate, Incident
from agent.packs import Pattern
from agent.policy import Status
from agent.redact import BUILTIN_REDACTOR, Redactor

FOREVER = float("inf")


def fingerprint_of(pack: str, pattern: str, key: str) -> str:
    return blake2b(f"{pack}\0{pattern}\0{key}".encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class _Active:
    incident_id: str
    until: float
    resolved_at: float | None = None  # its fix resolved then: later matches are recurrences
    recurred: int = 0  # matches since; once told, resolved_at is None


@dataclass(slots=True)
class _Waiting:
    incident: Incident
    within: float
    hits: deque[float]


class Trigger:
    def __init__(self, max_samples: int, redactors: dict[str, Redactor] | None = None) -> None:
        self.max_samples = max_samples
        self.redactors = redactors or {}
        self._waiting: dict[str, _Waiting] = {}
        self._active: dict[str, _Active] = {}
        self._runs: dict[str, deque[float]] = {}

    def restore(
        self,
        open_incidents: list[Incident],
        cooldowns: dict[str, tuple[float, str, float | None, int]],
        runs: list[tuple[str, float]],
        within: dict[tuple[str, str], float],
    ) -> None:
        """Rebuild from the state database after a restart.

        A waiting incident's hit times within its window are stored with it
        (`Incident.hits`), so a restart neither loses progress toward a
        threshold nor brings back hits that had left the window. A state file
        of a release before that has only the count: its hits are taken at
        the first and last sighting (it may reach the threshold a little early).
        """
        for fp, (until, incident_id, resolved_at, recurred) in cooldowns.items():
            self._active[fp] = _Active(incident_id, until, resolved_at, recurred)
        for incident in open_incidents:
            if incident.status == Status.WAITING:
                hits = deque(incident.hits) or deque(
                    [incident.first_seen] + [incident.last_seen] * (incident.count - 1)
                )
                window = within.get((incident.pack, incident.pattern), 0.0)
                self._waiting[incident.fingerprint] = _Waiting(incident, window, hits)
            else:
                self._active[incident.fingerprint] = _Active(incident.id, FOREVER)
        for fp, started in sorted(runs, key=lambda run: run[1]):
            self._runs.setdefault(fp, deque()).append(started)

    def finished(
        self, fingerprint: str, incident_id: str, until: float, resolved_at: float | None = None
    ) -> None:
        """A remedy ended: the key cools down until `until`; if it resolved (at
        `resolved_at`), matches of the key in its recurrence window are counted."""
        active = self._active.get(fingerprint)
        if active is not None and active.incident_id == incident_id:
            active.until = until
            active.resolved_at = resolved_at

    def feed(
        self,
        pattern: Pattern,
        fields: dict[str, str],
        line: str,
        source: str,
        now: float,
        batch: Batch,
    ) -> Incident | None:
        """Record one hit into `batch`; returns the incident if this hit opened one."""
        key = pattern.key.expand(fields)
        fp = fingerprint_of(pattern.pack, pattern.id, key)
        active = self._active.get(fp)
        if active is not None:
            if now < active.until:
                update = batch.counts.get(active.incident_id)
                if update is None:
                    update = batch.counts[active.incident_id] = CountUpdate()
                update.added += 1
                update.last_seen = now
                if len(update.samples) < self.max_samples:
                    update.samples.append(self._redactor(pattern)(line))
                self._recurred(fp, active, pattern, now, batch)
                return None
            del self._active[fp]
        if pattern.count == 1:
            return self._open(
                self._new(pattern, key, fp, fields, line, source, now), pattern, now, batch
            )
        waiting = self._waiting.get(fp)
        if waiting is not None:
            hits = waiting.hits
            while hits and hits[0] < now - pattern.within:
                hits.popleft()
            if not hits:
                waiting.incident.status = Status.EXPIRED
                batch.incidents[waiting.incident.id] = waiting.incident
                waiting = None
        if waiting is None:
            incident = self._new(pattern, key, fp, fields, line, source, now)
            incident.status = Status.WAITING
            waiting = self._waiting[fp] = _Waiting(incident, pattern.within, deque([now]))
        else:
            incident = waiting.incident
            waiting.hits.append(now)
            incident.count += 1
            incident.last_seen = now
            if len(incident.samples) < self.max_samples:
                incident.samples.append(self._redactor(pattern)(line))
        incident.hits = list(waiting.hits)  # stored, so a restart resumes the window exactly
        batch.incidents[incident.id] = incident
        if len(waiting.hits) < pattern.count:
            return None
        del self._waiting[fp]
        return self._open(incident, pattern, now, batch)

    def _recurred(
        self, fp: str, active: _Active, pattern: Pattern, now: float, batch: Batch
    ) -> None:
        """A match while cooling down after a fix resolved: a recurrence if within the
        pattern's window; at `count` of them the fix does not hold, told once (the count
        and the telling are stored with the cooldown: a restart neither forgets nor
        repeats them)."""
        resolved = active.resolved_at
        if resolved is None or now - resolved >= pattern.recurrence.within:
            return
        active.recurred += 1
        told = active.recurred >= pattern.recurrence.count
        batch.recurred[fp] = (active.recurred, told)
        if told:
            active.resolved_at = None  # no more counting until a fix resolves again
            batch.not_holding.append((active.incident_id, active.recurred, resolved))

    def expire(self, now: float, batch: Batch) -> None:
        """Waiting incidents whose window passed without reaching the threshold."""
        gone = [fp for fp, w in self._waiting.items() if w.incident.last_seen < now - w.within]
        for fp in gone:
            incident = self._waiting.pop(fp).incident
            incident.status = Status.EXPIRED
            batch.incidents[incident.id] = incident

    def _redactor(self, pattern: Pattern) -> Redactor:
        return self.redactors.get(pattern.pack, BUILTIN_REDACTOR)

    def _new(
        self,
        pattern: Pattern,
        key: str,
        fp: str,
        fields: dict[str, str],
        line: str,
        source: str,
        now: float,
    ) -> Incident:
        redact = self._redactor(pattern)
        return Incident(
            id=os.urandom(16).hex(),  # random, like uuid4().hex, without importing uuid
            fingerprint=fp,
            pack=pattern.pack,
            pattern=pattern.id,
            key=redact(key),
            source=source,
            status=Status.MATCHED,
            count=1,
            first_seen=now,
            last_seen=now,
            samples=[redact(line)],
            fields=redact.fields(fields),
            raw_fields=fields,
        )

    def _open(self, incident: Incident, pattern: Pattern, now: float, batch: Batch) -> Incident:
        """The threshold is met: remediate within budget, else escalate (or close) and cool down.

        The decision is `policy.opened`'s; the incident carries it (`status`,
        `outcome`, and `escalate_as` for the reader to build the event).
        """
        fp = incident.fingerprint
        remedy = pattern.remedy
        until = now + pattern.cooldown
        over_budget = False
        if remedy is not None:
            runs = self._runs.setdefault(fp, deque())
            while runs and runs[0] <= now - remedy.budget.within:
                runs.popleft()
            over_budget = len(runs) >= remedy.budget.runs
            if over_budget:
                until = runs[0] + remedy.budget.within
            else:
                runs.append(now)
                batch.runs.append((fp, now))
                until = FOREVER
        decision = policy.opened(pattern.escalate, remedy is not None, over_budget)
        incident.status, incident.outcome = decision.status, decision.outcome
        incident.escalate_as = decision.wire
        self._active[fp] = _Active(incident.id, until)
        if until != FOREVER:
            batch.cooldowns[fp] = (until, incident.id)
        batch.incidents[incident.id] = incident
        return incident
