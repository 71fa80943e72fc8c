"""Recording how fixes go: each try logged, verifying marked, the end decided and stored.

Called on the fix loop's thread. How an incident ends is `policy.finished`'s
decision; the ledger stores it with its escalation in one transaction, and
hands the key's cooldown back to the reader (the only thread that touches the
trigger) through a queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent import events, policy
from agent.fixes import FixJob
from agent.policy import Status
from agent.redact import BUILTIN_REDACTOR, Redactor
from agent.remedy import Attempt, Outcome
from agent.state import Store

log = logging.getLogger("logmend")


@dataclass
class Counters:
    """Fix outcomes since start, for the metrics endpoint."""

    resolved: int = 0
    failed: int = 0


class FixLedger:
    def __init__(
        self,
        store: Store,
        host: str,
        redactors: Callable[[], Mapping[str, Redactor]],
        clock: Callable[[], float],
        wake: threading.Event,
        escalated: Callable[[], None],
    ) -> None:
        self.store = store
        self.host = host
        self.redactors = redactors
        self.clock = clock
        self.wake = wake
        self.escalated = escalated
        self.counters = Counters()
        self.cooled: queue.SimpleQueue[tuple[str, str, float, float | None]] = queue.SimpleQueue()

    def report(self, job: FixJob, attempt: Attempt) -> None:
        """One run of a fix or its verify, logged with its argv redacted."""
        if attempt.phase == "check":
            return  # a refused field is logged once, with its reason, when the fix ends
        if attempt.phase == "recovery":  # what was seen, never more
            seen = attempt.stdout
            how = f"line seen: {self._redactor(job)(seen)!r}" if seen else attempt.stderr
        elif attempt.timed_out:
            how = "timed out"
        elif attempt.signal is not None:
            how = f"signal {attempt.signal}"
        elif attempt.exit_code is None:  # it never ran; the runner says why
            how = self._redactor(job)(attempt.stderr.strip() or "could not start")
        else:
            how = f"exit {attempt.exit_code}"
        log.info(
            "%s %s: %s -> %s",
            attempt.phase,
            job.pattern.qualified,
            self._redactor(job)(" ".join(attempt.argv[1:]) or attempt.argv[0]),
            how,
        )

    def _redactor(self, job: FixJob) -> Redactor:
        """The pack's redactor; the built-in one if a reload dropped the pack mid-fix."""
        return self.redactors().get(job.pack.name, BUILTIN_REDACTOR)

    def verifying(self, job: FixJob) -> None:
        self.store.set_status(job.incident.id, Status.VERIFYING, self.clock())

    def finish(self, job: FixJob, outcome: Outcome) -> None:
        """Record how a fix ended; its escalation is spooled in the same transaction."""
        incident, pattern, pack = job.incident, job.pattern, job.pack
        remedy = pattern.remedy
        assert remedy is not None
        now = self.clock()
        redact = self._redactor(job)
        attempts = [redact.attempt(a.as_dict()) for a in outcome.attempts]
        fresh = self.store.incident(incident.id) or incident
        fresh.attempts = attempts
        decision = policy.finished(pattern.escalate, outcome.resolved, outcome.rejected is not None)
        assert decision.outcome is not None
        escalation = (
            events.of_incident(fresh, pattern, pack, self.host, decision.wire, decision.outcome)
            if decision.wire
            else None
        )
        until = now + remedy.cooldown
        self.store.finish_incident(
            incident.id,
            decision.status,
            decision.outcome,
            attempts,
            until,
            incident.fingerprint,
            escalation,
            now,
            resolved=outcome.resolved,
        )
        resolved_at = now if outcome.resolved else None
        self.cooled.put((incident.fingerprint, incident.id, until, resolved_at))
        self.wake.set()
        self._log(job, outcome, redact)
        if escalation is not None:
            log.info("escalating %s key=%r: %s", pattern.qualified, incident.key, decision.wire)
        self.escalated()  # sinks wake: something to send, or an alert of this key may end

    def _log(self, job: FixJob, outcome: Outcome, redact: Redactor) -> None:
        qualified, key = job.pattern.qualified, job.incident.key
        if outcome.rejected is not None:  # a forged or unexpected value: the owner is told
            self.counters.failed += 1
            log.warning("refused to fix %s key=%r: %s", qualified, key, redact(outcome.rejected))
        elif outcome.resolved:
            self.counters.resolved += 1
            log.info("resolved %s key=%r after %d attempt(s)", qualified, key, outcome.tries)
        else:
            self.counters.failed += 1
            log.warning(
                "fix for %s key=%r failed after %d attempt(s)", qualified, key, outcome.tries
            )
