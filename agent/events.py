"""The escalation event, as the receiver gets it, and its one encoding (msgpack).

Built here from an incident, a quarantined pattern or a spool overflow, and
encoded once; the store keeps the bytes it is given and asks `recount` for a
copy with new counts when more lines of an escalated incident arrive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from agent import __version__
from agent.hashing import blake2b
from agent.model import Incident
from agent.packs import Pack, Pattern
from agent.packset import BrokenPack
from agent.policy import Outcome, Wire


@dataclass(frozen=True, slots=True)
class Event:
    """One escalation; its id is stable across retries, so the receiver stores it once."""

    id: str
    fingerprint: str
    host: str
    pack: str
    pack_version: str
    owner: str
    pattern: str
    severity: str
    status: Wire
    outcome: str
    first_seen: float
    last_seen: float
    count: int
    key: str = ""
    source: str = ""
    lines: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    article: str = ""
    article_text: str = ""

    def to_wire(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        return out

    def encode(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)


def of_incident(
    incident: Incident, pattern: Pattern, pack: Pack, host: str, status: Wire, outcome: str
) -> Event:
    """The escalation of an incident; its id is the incident's."""
    return Event(
        id=incident.id,
        fingerprint=incident.fingerprint,
        host=host,
        pack=pack.name,
        pack_version=pack.version,
        owner=pack.owner,
        pattern=pattern.id,
        severity=pattern.severity,
        status=status,
        outcome=str(outcome),
        key=incident.key,
        first_seen=incident.first_seen,
        last_seen=incident.last_seen,
        count=incident.count,
        source=incident.source,
        lines=list(incident.samples),
        fields=dict(incident.fields),
        attempts=list(incident.attempts),
        article=pattern.article or "",
        article_text=pattern.article_text,
    )


def quarantined(pattern: Pattern, pack: Pack, host: str, timeouts: int, now: float) -> Event:
    """A pattern too slow to run: its id is stable, so each host reports it once per version."""
    fingerprint = f"quarantine:{pack.name}:{pattern.id}"
    return Event(
        id=f"{fingerprint}:{pack.version}:{host}",
        fingerprint=fingerprint,
        host=host,
        pack=pack.name,
        pack_version=pack.version,
        owner=pack.owner,
        pattern=pattern.id,
        severity="warning",
        status=Wire.QUARANTINED,
        outcome=Outcome.QUARANTINED,
        first_seen=now,
        last_seen=now,
        count=timeouts,
        article=pattern.article or "",
        article_text=f"The pattern's regex ran past its timeout {timeouts} times and was "
        "quarantined on this host: it no longer matches until the agent restarts. "
        "`logmend test PACK --log FILE` shows the time each pattern takes.",
    )


def spool_dropped(host: str, dropped: int, first: float, last: float) -> Event:
    """The spool was full and dropped its oldest events: the central team hears how many."""
    return Event(
        id=f"spool-drop:{host}:{first:.6f}",
        fingerprint=f"spool-drop:{host}",
        host=host,
        pack="logmend",
        pack_version=__version__,
        owner="logmend",
        pattern="spool-overflow",
        severity="error",
        status=Wire.SPOOL_OVERFLOW,
        outcome="dropped",
        key=host,
        first_seen=first,
        last_seen=last,
        count=dropped,
        article_text=f"The agent's spool reached its bounds while the receiver was out of "
        f"reach and dropped its {dropped} oldest escalation(s). Raise "
        "[escalation] spool_max_events / spool_max_bytes, or look at why delivery stalled.",
    )


MAX_PACK_ERRORS = 20  # lines of one pack's report; the count says how many there were


def pack_error(broken: BrokenPack, host: str, now: float) -> Event:
    """A pack that does not run on `host`. Its id is its errors' digest: one report per
    host for each way the pack is broken, however often the agent starts."""
    errors = [_text(str(e)) for e in broken.errors]
    digest = blake2b(
        "\0".join([broken.name, broken.version, host, *errors]).encode(), digest_size=16
    ).hexdigest()
    return Event(
        id=f"pack-error:{digest}",  # of a fixed length, whatever the names
        fingerprint=f"pack-error:{broken.name}",
        host=host,
        pack=broken.name,
        pack_version=broken.version,
        owner=broken.owner or "logmend",  # unreadable: the central team hears of it
        pattern="pack.toml",
        severity="error",
        status=Wire.PACK_ERROR,
        outcome="not-loaded",
        key=_text(str(broken.dir)),
        first_seen=now,
        last_seen=now,
        count=len(errors),
        lines=errors[:MAX_PACK_ERRORS],
        article_text=_text(
            f"The pack in {broken.dir} does not run on {host}: it failed to load or its "
            "examples failed. Every other pack runs without it. `logmend check "
            f"{broken.dir}` shows the same errors; fix them and reload the agent (SIGHUP)."
        ),
    )


def _text(value: str) -> str:
    """Text any receiver stores: a path that is not UTF-8 (a surrogate escape) is shown
    with backslashes, not an encoding error."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def decode(body: bytes) -> dict[str, Any]:
    """An encoded event as the mapping the wire batch carries."""
    return dict(msgpack.unpackb(body))


def recount(body: bytes, count: int, last_seen: float, lines: list[str]) -> bytes:
    """The same event with new counts: what the receiver hears when more lines arrive."""
    wire = decode(body)
    wire.update(count=count, last_seen=last_seen, lines=lines)
    return msgpack.packb(wire, use_bin_type=True)
