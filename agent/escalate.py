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
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import msgpack

from agent import __version__
from agent.config import Escalation
from agent.courier import Backoff, Courier, bounded_retry_after
from agent.errors import ConfigError, ConfigErrors
from agent.events import decode, spool_dropped
from agent.model import SpoolItem
from agent.state import Store
from agent.unknown import wire_rows

log = logging.getLogger("logmend.escalate")

PERMANENT = frozenset({400, 413, 422})
THROTTLED = frozenset({429, 503})
UNKNOWN_BATCH = 200  # templates per POST /v1/unknown


def tls_context(config: Escalation) -> ssl.SSLContext | bool:
    """Verified by default; a CA bundle and a client certificate (mutual TLS) if configured."""
    if not config.tls_verify and config.client_cert is None:
        return False
    where = "escalation.ca_file"
    try:
        context = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None else None
        )
        if not config.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.client_cert is not None:
            where = "escalation.client_cert"
            context.load_cert_chain(
                str(config.client_cert),
                str(config.client_key) if config.client_key is not None else None,
            )
    except (OSError, ssl.SSLError) as exc:
        path = config.client_cert if where.endswith("cert") else config.ca_file
        raise ConfigErrors([ConfigError(path or "", where, None, f"cannot load: {exc}")]) from exc
    return context


def stats_url(url: str, name: str = "stats") -> str:
    """Beside the escalations endpoint: .../v1/escalations -> .../v1/stats (or `name`)."""
    base, found, _ = url.rpartition("/v1/escalations")
    return f"{base}/v1/{name}" if found else url.rstrip("/") + f"/v1/{name}"


def retry_after(response: httpx.Response, now: float) -> float | None:
    """Retry-After in seconds or as an HTTP date; None if absent, unreadable or infinite."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return bounded_retry_after(float(value))
    except ValueError:
        pass
    try:
        return bounded_retry_after(parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, OverflowError):
        return None


def _acknowledged(response: httpx.Response) -> tuple[set[str] | None, int]:
    """The ids a 2xx answer names (accepted or duplicate; None if it names none at all),
    and how many of them were duplicates."""
    try:
        answer = response.json()
    except ValueError:
        return None, 0
    if not isinstance(answer, dict) or not ("accepted" in answer or "duplicates" in answer):
        return None, 0
    accepted, duplicates = answer.get("accepted") or [], answer.get("duplicates") or []
    ids = [i for i in (*accepted, *duplicates) if isinstance(i, str)]
    return set(ids), len(duplicates)


def _refusal(response: httpx.Response) -> str:
    """What a 403 says (its "error"), or the start of its body."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])[:300]
    return response.text[:200]


def read_token(config: Escalation) -> str:
    """The bearer token from its file; an unreadable or empty file is a config error."""
    if config.token_file is None:
        return ""
    return read_token_file(config.token_file, "escalation.token_file")


def read_token_file(path: Path, key: str) -> str:
    """A bearer token from the file `key` names; unreadable or empty: a config error."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors([ConfigError(path, key, None, f"cannot read: {exc}")]) from exc
    if not token:
        raise ConfigErrors([ConfigError(path, key, None, "the file is empty")])
    problem = token_file_problem(path)
    if problem:  # `logmend check` refuses it; a running agent keeps working and says so
        log.warning("%s: %s", path, problem)
    return token


def token_file_problem(path: Path) -> str | None:
    """Why the token's file lets others read the token, or None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        return f"the token is readable by others (mode {mode & 0o777:o}): chmod 600 {path}"
    return None


@dataclass
class SenderStats:
    sent: int = 0
    duplicates: int = 0
    failures: int = 0
    parked: int = 0


class Sender(Courier):
    """Delivers the spool; runs on its own thread, woken when something is spooled."""

    name = "sender"

    def __init__(
        self,
        store: Store,
        config: Escalation,
        agent_info: dict[str, Any],
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        owners: dict[str, str] | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.monotonic = monotonic
        self.backoff = Backoff(config.backoff_initial, config.backoff_max, uniform)
        self.store = store
        self.config = config
        self.agent_info = agent_info
        self.clock = clock
        self.owners = owners or {}
        self._next_stats = 0.0
        self._told_older = False  # said once that the receiver takes no unknown errors
        self.heartbeat = monotonic()  # the loop is alive (not wedged) as of this
        self.grace = 3 * config.timeout + 10.0
        self.stats = SenderStats()
        self.token = token = read_token(config)
        headers = {
            "Content-Type": "application/msgpack",
            "Accept": "application/json",
            "User-Agent": f"logmend/{__version__}",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(
            headers=headers, timeout=config.timeout, transport=transport, verify=tls_context(config)
        )

    def _loop(self) -> None:
        while True:
            self.heartbeat = self.monotonic()
            try:
                self.report_drops()
                delay = self.send_due()
                if self.clock() >= self._next_stats:
                    self.send_stats()
                    self.send_unknown()
                delay = min(delay, max(0.05, self._next_stats - self.clock()))
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

    def report_drops(self) -> None:
        drops = self.store.spool_drops()
        if drops is not None:
            dropped, first, last = drops
            log.error("the spool was full: %d oldest escalation(s) dropped; reporting it", dropped)
            event = spool_dropped(self.agent_info["host"], dropped, first, last)
            self.store.report_drops(event, dropped, self.clock())

    def send_stats(self) -> bool:
        """Post cumulative per-pattern totals: what tier 1 fixed, as well as what it could not."""
        self._next_stats = self.clock() + self.config.stats_interval
        rows = [
            {
                "pack": r["pack"],
                "owner": self.owners.get(r["pack"], ""),
                "pattern": r["pattern"],
                "matches": r["matches"],
                "incidents": r["incidents"],
                "resolved": r["resolved"],
                "failed": r["failed"],
                "escalated": r["escalated"],
            }
            for r in self.store.pattern_stats()
        ]
        if not rows:
            return True
        body = msgpack.packb(
            {"host": self.agent_info["host"], "at": self.clock(), "stats": rows}, use_bin_type=True
        )
        try:
            response = self.client.post(stats_url(self.config.url), content=body)
        except httpx.HTTPError as exc:
            log.debug("statistics not sent (%s); they are totals, the next send carries them", exc)
            return False
        return 200 <= response.status_code < 300

    def send_unknown(self, batches: int = 10) -> bool:
        """Post the templates of errors no pack knows yet that changed since the receiver
        last took them, as cumulative counts keyed by host, owner and template: a post
        that is lost or sent twice counts nothing twice. True when nothing is left."""
        for _ in range(batches):
            rows = self.store.unknown_unsent(UNKNOWN_BATCH)
            if not rows:
                return True
            body = msgpack.packb(
                {"host": self.agent_info["host"], "at": self.clock(), "templates": wire_rows(rows)},
                use_bin_type=True,
            )
            try:
                response = self.client.post(stats_url(self.config.url, "unknown"), content=body)
            except httpx.HTTPError as exc:
                log.debug("unknown errors not sent (%s); kept for the next send", exc)
                return False
            if not 200 <= response.status_code < 300:
                older = response.status_code in (404, 405)  # a receiver from before them
                (log.debug if older and self._told_older else log.warning)(
                    "the receiver did not take %d unknown error template(s), kept for the"
                    " next send: HTTP %d: %s%s",
                    len(rows), response.status_code, _refusal(response),
                    " (a receiver older than this agent?)" if older else "",
                )  # fmt: skip
                self._told_older = self._told_older or older
                return False
            self.store.unknown_acked(rows)
        return False

    def send(self, items: list[SpoolItem], now: float) -> bool:
        """Post one batch; True when the receiver took it (or refused it for good)."""
        body = msgpack.packb(
            {"agent": self.agent_info, "events": [decode(i.body) for i in items]},
            use_bin_type=True,
        )
        seqs = [i.seq for i in items]
        self.heartbeat = self.monotonic()
        try:
            response = self.client.post(self.config.url, content=body)
        except httpx.HTTPError as exc:
            self._later(seqs, now, None, f"{type(exc).__name__}: {exc}")
            return False
        code = response.status_code
        if 200 <= code < 300:
            self.backoff.reset()
            taken, duplicates = _acknowledged(response)
            self.stats.duplicates += duplicates
            done = [i.seq for i in items if taken is None or i.id in taken]
            self.store.delivered(done)
            self.stats.sent += len(done)
            log.info("escalated %d event(s) to %s", len(done), self.config.url)
            rest = sorted(set(seqs) - set(done))
            if rest:  # only what the receiver named is gone; the rest goes again
                self._later(rest, now, None, "the receiver did not acknowledge them")
                return False
            return True
        reason = f"HTTP {code}: {response.text[:200]}"
        if code == 403:  # this token may not report some of them: keep those, retry later
            taken, duplicates = _acknowledged(response)
            done = [i.seq for i in items if taken is not None and i.id in taken]
            self.store.delivered(done)
            self.stats.sent += len(done)
            self.stats.duplicates += duplicates
            log.error(
                "receiver refused %d event(s) this agent's token may not report; kept, they go"
                " again once the token allows them: %s",
                len(seqs) - len(done),
                _refusal(response),
            )
            self._later(sorted(set(seqs) - set(done)), now, None, reason)
            return False
        if code in PERMANENT:
            self.stats.parked += len(seqs)
            self.store.park(seqs, reason)
            log.error("receiver refused %d event(s) for good, parked: %s", len(seqs), reason)
            return True
        self._later(seqs, now, retry_after(response, now) if code in THROTTLED else None, reason)
        return False

    def _later(self, seqs: list[int], now: float, wait: float | None, reason: str) -> None:
        self.stats.failures += 1
        self.backoff.fail()  # counted even when the server said when
        if wait is None:
            wait = self.backoff.wait()
        self.store.retry_later(seqs, now + wait, reason)
        log.warning("escalation delivery failed (%s); retrying in %.1fs", reason, wait)
