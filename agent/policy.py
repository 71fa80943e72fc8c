"""Incident policy: the status vocabularies and the pure decisions between them.

An incident's status (where it is in its life), its outcome (how it ended)
and the wire status (what the owning team is told) are decided here and only
here, so the trigger, the reader and the fix loop cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """Where an incident is in its life (stored in the state database)."""

    MATCHED = "matched"
    WAITING = "waiting"  # for its threshold
    EXPIRED = "expired"  # the window passed below the threshold
    REMEDIATING = "remediating"
    VERIFYING = "verifying"
    RESOLVED = "resolved"
    FAILED = "failed"  # the fix failed and the pattern says never escalate
    ESCALATED = "escalated"
    CLOSED = "closed"  # recorded only (escalate = "never")


class Outcome(StrEnum):
    """How an incident ended."""

    NO_REMEDY = "no-remedy"
    RESOLVED = "resolved"
    REMEDY_FAILED = "remedy-failed"
    REJECTED_FIELD = "rejected-field"
    FLAPPING = "flapping"
    QUARANTINED = "quarantined"
    NOT_HOLDING = "fix-not-holding"  # resolved, then back within its window, enough times
    ALWAYS = "always"  # no fix to try; told because the pattern says always


class Wire(StrEnum):
    """What an escalation tells the owning team (the event's `status`)."""

    NO_REMEDY = "no-remedy"
    REMEDY_FAILED = "remedy-failed"
    REJECTED_FIELD = "rejected-field"
    ALWAYS = "always"
    FLAPPING = "flapping"
    QUARANTINED = "quarantined"
    SPOOL_OVERFLOW = "spool-overflow"
    PACK_ERROR = "pack-error"  # a pack that does not run on a host, and why
    FIX_NOT_HOLDING = "fix-not-holding"


class Escalate(StrEnum):
    """A pattern's `escalate` setting."""

    UNRESOLVED = "unresolved"
    ALWAYS = "always"
    NEVER = "never"


OPEN = (Status.WAITING, Status.REMEDIATING, Status.VERIFYING)
FIXING = (Status.REMEDIATING, Status.VERIFYING)


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    outcome: Outcome | None
    wire: Wire | None  # None: nothing to escalate
    why: str = ""


def opened(escalate: str, has_remedy: bool, over_budget: bool) -> Decision:
    """A threshold is met: fix it, or tell the owner now, or only record it."""
    if has_remedy and not over_budget:
        return Decision(Status.REMEDIATING, None, None)
    outcome = Outcome.FLAPPING if over_budget else Outcome.NO_REMEDY
    if escalate == Escalate.ALWAYS and not over_budget:
        outcome = Outcome.ALWAYS  # `status` says why it was told, not only that no fix ran
    if escalate == Escalate.NEVER:
        return Decision(Status.CLOSED, outcome, None)
    if over_budget:
        return Decision(Status.ESCALATED, outcome, Wire.FLAPPING, "over its fix budget")
    wire = Wire.ALWAYS if escalate == Escalate.ALWAYS else Wire.NO_REMEDY
    return Decision(
        Status.ESCALATED,
        outcome,
        wire,
        "always told" if outcome == Outcome.ALWAYS else "no remedy known",
    )


def finished(escalate: str, resolved: bool, rejected: bool) -> Decision:
    """A fix ended: resolved, failed, or refused a field (always told: someone is trying)."""
    if rejected:
        return Decision(Status.ESCALATED, Outcome.REJECTED_FIELD, Wire.REJECTED_FIELD)
    outcome = Outcome.RESOLVED if resolved else Outcome.REMEDY_FAILED
    if not resolved and escalate != Escalate.NEVER:
        return Decision(Status.ESCALATED, outcome, Wire.REMEDY_FAILED)
    if escalate == Escalate.ALWAYS:
        return Decision(Status.ESCALATED, outcome, Wire.ALWAYS)
    return Decision(Status.RESOLVED if resolved else Status.FAILED, outcome, None)


def not_holding(escalate: str) -> Decision:
    """A fix resolved, and its problem came back within the window often enough: the
    fix does not hold. The owner is told now, not after the cooldown (unless the
    pattern says never escalate)."""
    if escalate == Escalate.NEVER:
        return Decision(Status.FAILED, Outcome.NOT_HOLDING, None)
    return Decision(Status.ESCALATED, Outcome.NOT_HOLDING, Wire.FIX_NOT_HOLDING, "fix not holding")
