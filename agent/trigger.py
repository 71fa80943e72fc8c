"""When a match becomes an incident: keys, thresholds, cooldowns, single-flight.

Pure logic over an injected clock value: the reader loop feeds hits and gets
back what to record; the same fingerprint never has two incidents open.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from dataclasses import dataclass

from agent.packs import Pattern
from agent.state import Batch, CountUpdate, Incident

FOREVER = float("inf")


def fingerprint_of(pack: str, pattern: str, key: str) -> str:
    return hashlib.blake2b(f"{pack}\0{pattern}\0{key}".encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class _Active:
    incident_id: str
    until: float


class Trigger:
    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._windows: dict[str, deque[float]] = {}
        self._active: dict[str, _Active] = {}

    def restore(
        self, open_incidents: list[Incident], cooldowns: dict[str, tuple[float, str]]
    ) -> None:
        """Rebuild from the state database after a restart."""
        for fp, (until, incident_id) in cooldowns.items():
            self._active[fp] = _Active(incident_id, until)
        for incident in open_incidents:
            self._active[incident.fingerprint] = _Active(incident.id, FOREVER)

    def finished(self, fingerprint: str, incident_id: str, until: float) -> None:
        """A remedy ended: the key cools down until `until`."""
        active = self._active.get(fingerprint)
        if active is not None and active.incident_id == incident_id:
            active.until = until

    def feed(
        self,
        pattern: Pattern,
        fields: dict[str, str],
        line: str,
        source: str,
        now: float,
        batch: Batch,
    ) -> Incident | None:
        """Record one hit into `batch`; returns the new incident if this hit opened one."""
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
                    update.samples.append(line)
                return None
            del self._active[fp]
        window = self._windows.get(fp)
        if pattern.count > 1:
            if window is None:
                window = self._windows[fp] = deque()
            window.append(now)
            while window and window[0] < now - pattern.within:
                window.popleft()
            if len(window) < pattern.count:
                return None
            first = window[0]
            count = len(window)
            del self._windows[fp]
        else:
            first, count = now, 1
        incident = Incident(
            id=uuid.uuid4().hex,
            fingerprint=fp,
            pack=pattern.pack,
            pattern=pattern.id,
            key=key,
            source=source,
            status="remediating" if pattern.remedy else "escalated",
            count=count,
            first_seen=first,
            last_seen=now,
            samples=[line],
            fields=fields,
        )
        until = FOREVER if pattern.remedy else now + pattern.cooldown
        self._active[fp] = _Active(incident.id, until)
        if not pattern.remedy:
            batch.cooldowns[fp] = (until, incident.id)
        batch.incidents.append(incident)
        return incident
