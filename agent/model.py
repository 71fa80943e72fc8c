"""The records that flow between the stages: checkpoints, incidents, batches, spool items.

Plain data, no I/O: the tailer, the trigger, the reader pass, the fix loop
and the store all speak these, so none of them imports another's module for
its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.policy import Outcome, Status, Wire


class Spoolable(Protocol):
    """What the store spools: an id the receiver dedupes by, and the bytes to send."""

    @property
    def id(self) -> str: ...

    def encode(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a file was read to; `marker` hashes the bytes before `offset`, or, while
    nothing is committed yet (offset 0), the file's first `head_len` bytes."""

    dev: int
    ino: int
    path: str
    offset: int
    marker: bytes
    head_len: int = 0
    updated: float = 0.0


@dataclass(slots=True)
class Incident:
    """An incident as stored; mutable only inside the reader loop before commit."""

    id: str
    fingerprint: str
    pack: str
    pattern: str
    key: str
    source: str
    status: Status
    count: int
    first_seen: float
    last_seen: float
    samples: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    outcome: Outcome | None = None
    raw_fields: dict[str, str] | None = None  # unredacted, for the fix; never stored
    escalate_as: Wire | None = None  # decided when it opened; never stored
    hits: list[float] = field(default_factory=list)  # while waiting: hit times in the window


@dataclass(slots=True)
class CountUpdate:
    added: int = 0
    last_seen: float = 0.0
    samples: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SpoolItem:
    seq: int
    id: str
    body: bytes
    tries: int


@dataclass(frozen=True, slots=True)
class JournalMark:
    """Where a journal source resumes: after `cursor`, the last entry it read; or, while
    multiline events are held, at `replay`, the first entry of the oldest one, joining
    again only the entries of the held events (`held`: stream -> its event's first
    entry) up to `cursor`, so each entry is matched once whatever is killed."""

    cursor: str
    replay: str = ""
    held: tuple[tuple[str, str], ...] = ()


@dataclass
class Batch:
    """Everything one pass of the reader produced, committed atomically."""

    checkpoints: dict[tuple[int, int], Checkpoint] = field(default_factory=dict)
    cursors: dict[str, JournalMark] = field(default_factory=dict)  # journal source -> mark
    incidents: dict[str, Incident] = field(default_factory=dict)
    runs: list[tuple[str, float]] = field(default_factory=list)
    counts: dict[str, CountUpdate] = field(default_factory=dict)
    cooldowns: dict[str, tuple[float, str]] = field(default_factory=dict)
    escalations: list[Spoolable] = field(default_factory=list)
    forget: list[tuple[int, int]] = field(default_factory=list)
    done: list[tuple[int, int, int, bytes, str]] = field(default_factory=list)
    opened: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # incidents, escalated
    # fixes that resolved and did not hold: (incident id, matches since, resolved at)
    not_holding: list[tuple[str, int, float]] = field(default_factory=list)
    # fingerprint -> (recurrences so far, told): kept with its cooldown across restarts
    recurred: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def merge(self, later: Batch) -> None:
        """Fold a later batch into this one (while the database refuses writes)."""
        self.checkpoints.update(later.checkpoints)
        self.cursors.update(later.cursors)
        self.incidents.update(later.incidents)
        self.runs.extend(later.runs)
        for incident_id, update in later.counts.items():
            mine = self.counts.setdefault(incident_id, CountUpdate())
            mine.added += update.added
            mine.last_seen = max(mine.last_seen, update.last_seen)
            mine.samples.extend(update.samples)
        self.cooldowns.update(later.cooldowns)
        self.not_holding.extend(later.not_holding)
        self.recurred.update(later.recurred)
        self.escalations.extend(later.escalations)
        self.forget.extend(later.forget)
        self.done.extend(later.done)
        for key, (incidents, escalated) in later.opened.items():
            mine_opened = self.opened.setdefault(key, [0, 0])
            mine_opened[0] += incidents
            mine_opened[1] += escalated

    def __bool__(self) -> bool:
        return bool(
            self.checkpoints
            or self.cursors
            or self.incidents
            or self.runs
            or self.counts
            or self.cooldowns
            or self.recurred
            or self.escalations
            or self.forget
            or self.done
        )
