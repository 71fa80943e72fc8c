"""An optional sink that posts escalations to a Prometheus Alertmanager (API v2).

A key that escalated stays an alert while it cools down (matches are still
being counted into it): the alert is re-sent every `resend` seconds with
`endsAt` a few resends ahead (never past the cooldown), so Alertmanager
resolves it by itself if the agent goes away, as Prometheus does; and it is
ended at once when the key stops firing — its cooldown passed, or a later fix
resolved it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from agent import __version__
from agent.config import Alertmanager
from agent.courier import Courier
from agent.errors import StateError
from agent.packs import Pack, Pattern
from agent.state import Store

log = logging.getLogger("logmend.alerts")

DESCRIPTION_MAX = 2000


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def alert_of(
    row: dict[str, Any], pattern: Pattern, pack: Pack, host: str, ends: float
) -> dict[str, Any]:
    """One alert in the shape of Alertmanager's `postableAlert`."""
    lines = row["samples"]
    description = "\n".join(lines[:3])
    if pattern.article_text:
        description += "\n\n" + pattern.article_text
    return {
        "labels": {
            "alertname": f"logmend_{pattern.id}".replace("-", "_"),
            "pack": pack.name,
            "pattern": pattern.id,
            "host": host,
            "severity": pattern.severity,
            "owner": pack.owner,
            "key": row["key"],
            "fingerprint": row["fingerprint"],
        },
        "annotations": {
            "summary": f"{pack.name}/{pattern.id} on {host}: {row['outcome'] or row['status']}"
            f" ({row['count']} line(s))",
            "article": pattern.article or "",
            "description": description[:DESCRIPTION_MAX],
        },
        "startsAt": rfc3339(row["first_seen"]),
        "endsAt": rfc3339(ends),
        "generatorURL": f"logmend://{host}/{pack.name}/{pattern.id}",
    }


class AlertSink(Courier):
    name = "alerts"

    def __init__(
        self,
        store: Store,
        config: Alertmanager,
        host: str,
        patterns: dict[tuple[str, str], Pattern],
        packs: dict[str, Pack],
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.store = store
        self.config = config
        self.host = host
        self.patterns = patterns
        self.packs = packs
        self.clock = clock
        self._firing: dict[str, dict[str, Any]] = {}
        self.client = httpx.Client(
            timeout=config.timeout,
            transport=transport,
            headers={"User-Agent": f"logmend/{__version__}"},
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.push()
            except (httpx.HTTPError, StateError) as exc:
                log.warning("alertmanager not updated (%s); retrying", exc)
            self.wake.wait(timeout=self.config.resend)
            self.wake.clear()

    def push(self) -> int:
        """Send what fires now, and end what stopped firing; returns alerts sent."""
        now = self.clock()
        alerts: list[dict[str, Any]] = []
        firing: dict[str, dict[str, Any]] = {}
        for row in self.store.escalated_in_cooldown(now):
            pattern = self.patterns.get((row["pack"], row["pattern"]))
            if pattern is None:
                continue
            ends = min(row["until"], now + 4 * self.config.resend)
            alert = alert_of(row, pattern, self.packs[row["pack"]], self.host, ends)
            firing[row["fingerprint"]] = alert
            alerts.append(alert)
        for fingerprint, alert in self._firing.items():
            if fingerprint not in firing:
                alerts.append({**alert, "endsAt": rfc3339(now)})
        if not alerts:
            return 0
        response = self.client.post(f"{self.config.url}/api/v2/alerts", json=alerts)
        response.raise_for_status()
        self._firing = firing
        return len(alerts)
