"""How a team works an escalation group: acknowledge, assign, note, resolve, snooze, reopen.

A *group* is every escalation of one owner with the same fingerprint (pack,
pattern and key): the same problem, on any number of hosts. People act on the
group; the receiver acts on it when the problem comes back. A group a person
resolved that recurs reopens as a *regression*, as Sentry does; a snoozed one
reopens when its snooze ends or, like any, stays as it is. Pure: the store
records what this decides, with who and when.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

MAX_NOTE = 4000
MAX_SNOOZE = 90 * 86400.0


class State(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class Verb(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    ASSIGN = "assign"
    NOTE = "note"
    RESOLVE = "resolve"
    REOPEN = "reopen"
    SNOOZE = "snooze"
    SILENCE = "silence"  # its pattern, on a host or everywhere, for a while
    UNSILENCE = "unsilence"
    REGRESSED = "regressed"  # the receiver's: a resolved group came back
    WOKE = "woke"  # the receiver's: a snooze ended with the problem still coming


PEOPLE_VERBS = frozenset(
    {
        Verb.ACKNOWLEDGE,
        Verb.ASSIGN,
        Verb.NOTE,
        Verb.RESOLVE,
        Verb.REOPEN,
        Verb.SNOOZE,
        Verb.SILENCE,
        Verb.UNSILENCE,
    }
)


class WorkflowError(ValueError):
    """An action the group's state does not allow: answered 409, saying why."""


class BadAction(WorkflowError):
    """An action with a value out of bounds (a note, an assignee, a snooze's end): 422."""


@dataclass(frozen=True)
class Group:
    state: State = State.OPEN
    assignee: str = ""
    snoozed_until: float | None = None
    regression: bool = False

    def shown_state(self, now: float) -> State:
        """A snooze that has ended reads as open, before anything recurs."""
        if self.state is State.SNOOZED and (self.snoozed_until or 0.0) <= now:
            return State.OPEN
        return self.state


@dataclass(frozen=True)
class Action:
    """What a person asked: a verb and what it needs (an assignee, a note, an end, the
    host a silence is for ("" everywhere), the silence to lift)."""

    verb: Verb
    assignee: str = ""
    note: str = ""
    until: float | None = None
    host: str = ""
    silence: int | None = None


def act(group: Group, action: Action, now: float) -> Group:
    """The group after a person's action; raises WorkflowError if it does not apply."""
    verb, state = action.verb, group.shown_state(now)
    if verb not in PEOPLE_VERBS:
        raise BadAction(f"{verb!r} is not something a person does")
    if "\0" in action.note or (not action.note.isascii() and not _utf8(action.note)):
        raise BadAction("a note is text: no NUL character, no lone surrogate")
    if verb is Verb.NOTE:
        if not action.note.strip() or len(action.note) > MAX_NOTE:
            raise BadAction(f"a note is 1 to {MAX_NOTE} characters")
        return group
    if verb is Verb.SILENCE:  # the store keeps the silence; the group's state is its own
        if action.until is None or not now < action.until <= now + MAX_SNOOZE:
            raise BadAction("a silence ends in the future, at most 90 days from now")
        if len(action.host) > 256 or not action.host.isprintable():
            raise BadAction("a silence's host is a printable name of at most 256 characters")
        if len(action.note) > MAX_NOTE:
            raise BadAction(f"a silence's reason is at most {MAX_NOTE} characters")
        return group
    if verb is Verb.UNSILENCE:
        if action.silence is None:
            raise BadAction("say which silence to lift")
        return group
    if verb is Verb.ASSIGN:
        if len(action.assignee) > 256 or not action.assignee.isprintable():
            raise BadAction("an assignee is a printable name of at most 256 characters")
        return dataclasses.replace(group, assignee=action.assignee.strip())
    if verb is Verb.ACKNOWLEDGE:
        if state is not State.OPEN:
            raise WorkflowError(f"only an open group can be acknowledged; this one is {state}")
        return dataclasses.replace(group, state=State.ACKNOWLEDGED, snoozed_until=None)
    if verb is Verb.RESOLVE:
        if state is State.RESOLVED:
            raise WorkflowError("this group is resolved already")
        # resolved again: it is no longer a regression until it comes back
        return dataclasses.replace(
            group, state=State.RESOLVED, snoozed_until=None, regression=False
        )
    if verb is Verb.REOPEN:
        if state is State.OPEN:
            raise WorkflowError("this group is open already")
        return dataclasses.replace(group, state=State.OPEN, snoozed_until=None)
    # snooze
    if action.until is None or not now < action.until <= now + MAX_SNOOZE:
        raise BadAction("a snooze ends in the future, at most 90 days from now")
    if state is State.RESOLVED:
        raise WorkflowError("a resolved group cannot be snoozed; reopen it first")
    return dataclasses.replace(group, state=State.SNOOZED, snoozed_until=action.until)


def recurred(group: Group, now: float) -> tuple[Group, Verb | None]:
    """The group after its problem was reported again, and what the receiver records.

    Resolved by a person: back to open, as a regression. Snoozed past its end:
    open. Open, acknowledged or still snoozed: unchanged (the counts grow).
    """
    if group.state is State.RESOLVED:
        return dataclasses.replace(group, state=State.OPEN, regression=True), Verb.REGRESSED
    if group.state is State.SNOOZED and (group.snoozed_until or 0.0) <= now:
        return dataclasses.replace(group, state=State.OPEN, snoozed_until=None), Verb.WOKE
    return group, None


def _utf8(text: str) -> bool:
    """Whether `text` can be stored (a JSON body can carry a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
