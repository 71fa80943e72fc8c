"""What the agent reports to its metrics endpoint, copied at scrape time.

Apart from agent.metrics so that an agent without a [metrics] section never
imports prometheus_client (memory: a few MiB a process, on every host).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the agent reports, copied at scrape time."""

    now: float
    lines_by_source: Mapping[str, int]
    bytes_by_source: Mapping[str, int]
    patterns: list[tuple[str, str, int, int]]  # pack, pattern, matches, regex timeouts
    fixes_resolved: int
    fixes_failed: int
    deliveries: Mapping[str, int] | None  # sent / failed / parked, when escalating
    reloads: Mapping[str, int]
    lag: list[tuple[str, int]]  # path, bytes behind its end
    incidents_by_status: Mapping[str, int] | None = None  # None: the state database failed
    spool: Mapping[str, Any] = field(default_factory=dict)
    packs_running: int = 0
    broken_packs: tuple[str, ...] = ()  # packs that do not run here (agent.examples.admit)
    unknown: list[tuple[str, int, int]] = field(default_factory=list)  # owner, templates, lines
    journals: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by source name
