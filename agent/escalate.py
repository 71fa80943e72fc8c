"""Escalations: building the event, and sending the spool to the receiver.

The sender is the only network client. It takes due events from the spool,
posts them as one msgpack batch on a reused connection, and deletes only what
the receiver acknowledged. Network errors and 5xx back off with jitter, 429 and
503 honour Retry-After, and a batch refused for good (400, 413, 422) is parked
where `logmend status` shows it and `logmend spool retry` resends it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgpack

from agent import __version__
from agent.config import Escalation
from agent.errors import ConfigError, ConfigErrors
from agent.packs import Pack, Pattern
from agent.state import Incident, SpoolItem, Store

log = logging.getLogger("logmend.escalate")

PERMANENT = frozenset({400, 413, 422})
THROTTLED = frozenset({429, 503})


def build_event(
    incident: Incident, pattern: Pattern, pack: Pack, host: str, status: str, outcome: str
) -> dict[str, Any]:
    """The wire form of one escalation; its id is the incident's, stable across retries."""
    return {
        "id": incident.id,
        "fingerprint": incident.fingerprint,
        "host": host,
        "pack": pack.name,
        "pack_version": pack.version,
        "owner": pack.owner,
        "pattern": pattern.id,
        "severity": pattern.severity,
        "status": status,
        "outcome": outcome,
        "key": incident.key,
        "first_seen": incident.first_seen,
        "last_seen": incident.last_seen,
        "count": incident.count,
        "source": incident.source,
        "lines": list(incident.samples),
        "fields": dict(incident.fields),
        "attempts": list(incident.attempts),
        "article": pattern.article or "",
        "article_text": pattern.article_text,
    }


def quarantine_event(
    pattern: Pattern, pack: Pack, host: str, timeouts: int, now: float
) -> dict[str, Any]:
    """A pattern too slow to run: its id is stable, so each host reports it once per version."""
    fingerprint = f"quarantine:{pack.name}:{pattern.id}"
    return {
        "id": f"{fingerprint}:{pack.version}:{host}",
        "fingerprint": fingerprint,
        "host": host,
        "pack": pack.name,
        "pack_version": pack.version,
        "owner": pack.owner,
        "pattern": pattern.id,
        "severity": "warning",
        "status": "quarantined",
        "outcome": "quarantined",
        "key": "",
        "first_seen": now,
        "last_seen": now,
        "count": timeouts,
        "source": "",
        "lines": [],
        "fields": {},
        "attempts": [],
        "article": pattern.article or "",
        "article_text": f"The pattern's regex ran past its timeout {timeouts} times and was "
        "quarantined on this host: it no longer matches until the agent restarts. "
        "`logmend test PACK --log FILE` shows the time each pattern takes.",
    }


def retry_after(response: httpx.Response, now: float) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def read_token(config: Escalation) -> str:
    """The bearer token from its file; an unreadable or empty file is a config error."""
    if config.token_file is None:
        return ""
    try:
        token = config.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors(
            [ConfigError(config.token_file, "escalation.token_file", None, f"cannot read: {exc}")]
        ) from exc
    if not token:
        raise ConfigErrors(
            [ConfigError(config.token_file, "escalation.token_file", None, "the file is empty")]
        )
    return token


@dataclass
class SenderStats:
    sent: int = 0
    duplicates: int = 0
    failures: int = 0
    parked: int = 0


class Sender:
    """Delivers the spool; runs on its own thread, woken when something is spooled."""

    def __init__(
        self,
        store: Store,
        config: Escalation,
        agent_info: dict[str, Any],
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.agent_info = agent_info
        self.clock = clock
        self.stats = SenderStats()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._failures = 0
        token = read_token(config)
        headers = {
            "Content-Type": "application/msgpack",
            "Accept": "application/json",
            "User-Agent": f"logmend/{__version__}",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(headers=headers, timeout=config.timeout, transport=transport)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sender", daemon=True)
        self._thread.start()

    def stop(self, flush_seconds: float) -> None:
        """Stop after one last bounded attempt to deliver what is due."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_seconds)
        self.client.close()

    def _loop(self) -> None:
        while True:
            try:
                delay = self.send_due()
            except Exception:
                log.exception("sender failed; retrying")
                delay = 1.0
            if self._stop.is_set():
                return
            self.wake.wait(timeout=delay)
            self.wake.clear()

    def send_due(self) -> float:
        """Send every due batch; returns how long to wait before looking again."""
        while True:
            now = self.clock()
            items = self.store.due(now, self.config.batch_size)
            if not items:
                next_try = self.store.next_due()
                return 5.0 if next_try is None else max(0.05, min(5.0, next_try - now))
            if not self.send(items, now) or self._stop.is_set():
                return 0.05

    def send(self, items: list[SpoolItem], now: float) -> bool:
        """Post one batch; True when the receiver took it (or refused it for good)."""
        body = msgpack.packb(
            {"agent": self.agent_info, "events": [msgpack.unpackb(i.body) for i in items]},
            use_bin_type=True,
        )
        seqs = [i.seq for i in items]
        try:
            response = self.client.post(self.config.url, content=body)
        except httpx.HTTPError as exc:
            self._later(seqs, now, None, f"{type(exc).__name__}: {exc}")
            return False
        code = response.status_code
        if 200 <= code < 300:
            self._failures = 0
            self.store.delivered(seqs)
            try:
                answer = response.json()
                self.stats.duplicates += len(answer.get("duplicates", []))
            except ValueError:
                pass
            self.stats.sent += len(seqs)
            log.info("escalated %d event(s) to %s", len(seqs), self.config.url)
            return True
        reason = f"HTTP {code}: {response.text[:200]}"
        if code in PERMANENT:
            self.stats.parked += len(seqs)
            self.store.park(seqs, reason)
            log.error("receiver refused %d event(s) for good, parked: %s", len(seqs), reason)
            return True
        self._later(seqs, now, retry_after(response, now) if code in THROTTLED else None, reason)
        return False

    def _later(self, seqs: list[int], now: float, wait: float | None, reason: str) -> None:
        self._failures += 1
        self.stats.failures += 1
        if wait is None:
            ceiling = min(self.config.backoff_max, self.config.backoff_initial * 2**self._failures)
            wait = random.uniform(
                self.config.backoff_initial, max(self.config.backoff_initial, ceiling)
            )
        self.store.retry_later(seqs, now + wait, reason)
        log.warning("escalation delivery failed (%s); retrying in %.1fs", reason, wait)
