"""The escalation workflow on fake time: every action from every state, recurrence and
regressions, snoozes that end, and a model-based property over any sequence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.receiver.workflow import (
    MAX_SNOOZE,
    PEOPLE_VERBS,
    Action,
    Group,
    State,
    Verb,
    WorkflowError,
    act,
    recurred,
)

NOW = 1_800_000_000.0


def group(state: State, until: float | None = None) -> Group:
    return Group(state=state, snoozed_until=until)


@pytest.mark.parametrize(
    ("state", "verb", "after"),
    [
        (State.OPEN, Verb.ACKNOWLEDGE, State.ACKNOWLEDGED),
        (State.OPEN, Verb.RESOLVE, State.RESOLVED),
        (State.ACKNOWLEDGED, Verb.RESOLVE, State.RESOLVED),
        (State.ACKNOWLEDGED, Verb.REOPEN, State.OPEN),
        (State.RESOLVED, Verb.REOPEN, State.OPEN),
        (State.SNOOZED, Verb.RESOLVE, State.RESOLVED),
        (State.SNOOZED, Verb.REOPEN, State.OPEN),
        (State.OPEN, Verb.SNOOZE, State.SNOOZED),
        (State.ACKNOWLEDGED, Verb.SNOOZE, State.SNOOZED),
    ],
)
def test_each_action_moves_the_group_as_a_team_expects(state, verb, after):
    before = group(state, NOW + 60 if state is State.SNOOZED else None)
    done = act(before, Action(verb, until=NOW + 3600), NOW)
    assert done.state is after
    assert (done.snoozed_until is not None) == (after is State.SNOOZED)


@pytest.mark.parametrize(
    ("state", "verb", "why"),
    [
        (State.ACKNOWLEDGED, Verb.ACKNOWLEDGE, "only an open group can be acknowledged"),
        (State.RESOLVED, Verb.ACKNOWLEDGE, "only an open group"),
        (State.RESOLVED, Verb.RESOLVE, "resolved already"),
        (State.OPEN, Verb.REOPEN, "open already"),
        (State.RESOLVED, Verb.SNOOZE, "cannot be snoozed"),
    ],
)
def test_an_action_that_does_not_apply_says_why(state, verb, why):
    with pytest.raises(WorkflowError, match=why):
        act(group(state), Action(verb, until=NOW + 60), NOW)


@pytest.mark.parametrize("until", [None, NOW, NOW - 1, NOW + MAX_SNOOZE + 1])
def test_a_snooze_ends_in_the_future_within_90_days(until):
    with pytest.raises(WorkflowError, match="a snooze ends in the future"):
        act(group(State.OPEN), Action(Verb.SNOOZE, until=until), NOW)


def test_notes_and_assignees_are_bounded_and_change_no_state():
    g = group(State.ACKNOWLEDGED)
    assert act(g, Action(Verb.NOTE, note="looking"), NOW) == g
    with pytest.raises(WorkflowError):
        act(g, Action(Verb.NOTE, note="  "), NOW)
    with pytest.raises(WorkflowError):
        act(g, Action(Verb.NOTE, note="x" * 4001), NOW)
    assert act(g, Action(Verb.ASSIGN, assignee=" dana "), NOW).assignee == "dana"
    assert act(g, Action(Verb.ASSIGN, assignee=""), NOW).assignee == ""  # unassign
    with pytest.raises(WorkflowError):
        act(g, Action(Verb.ASSIGN, assignee="a\nb"), NOW)


def test_the_receivers_own_verbs_are_not_a_persons():
    for verb in (Verb.REGRESSED, Verb.WOKE):
        with pytest.raises(WorkflowError, match="not something a person does"):
            act(group(State.OPEN), Action(verb), NOW)


def test_a_resolved_group_that_recurs_reopens_as_a_regression():
    back, verb = recurred(group(State.RESOLVED), NOW)
    assert (back.state, back.regression, verb) == (State.OPEN, True, Verb.REGRESSED)


def test_a_snooze_holds_until_its_end_then_the_group_is_open():
    snoozed = group(State.SNOOZED, NOW + 60)
    assert recurred(snoozed, NOW) == (snoozed, None)  # still snoozed: counts only
    assert snoozed.shown_state(NOW + 59) is State.SNOOZED
    assert snoozed.shown_state(NOW + 60) is State.OPEN  # ended, before anything recurs
    woke, verb = recurred(snoozed, NOW + 61)
    assert (woke.state, woke.snoozed_until, woke.regression, verb) == (
        State.OPEN,
        None,
        False,
        Verb.WOKE,
    )
    # acting on an ended snooze treats it as open
    assert act(snoozed, Action(Verb.ACKNOWLEDGE), NOW + 61).state is State.ACKNOWLEDGED


@pytest.mark.parametrize("state", [State.OPEN, State.ACKNOWLEDGED])
def test_an_open_or_acknowledged_group_that_recurs_stays_as_it_is(state):
    assert recurred(group(state), NOW) == (group(state), None)


steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(sorted(PEOPLE_VERBS)), st.floats(-100, 1e7)),
        st.tuples(st.just("recur"), st.floats(0, 1e6)),
    ),
    max_size=30,
)


@given(steps)
def test_any_sequence_keeps_the_groups_invariants(sequence):
    """Whatever people and recurrences do: a snoozed group has an end; a group that is
    not snoozed has none; a group is a regression from the recurrence of a resolved
    group until a person resolves it again."""
    g, now, regressed = Group(), NOW, False
    for verb, value in sequence:
        now += 1.0
        if verb == "recur":
            was_resolved = g.state is State.RESOLVED
            g, said = recurred(g, now + value)
            regressed |= was_resolved
            assert (said is Verb.REGRESSED) == was_resolved
            continue
        try:
            g = act(g, Action(Verb(verb), assignee="x", note="n", until=now + value), now)
        except WorkflowError:
            continue
        if verb == Verb.RESOLVE:
            regressed = False
        assert (g.state is State.SNOOZED) == (g.snoozed_until is not None)
        assert g.regression == regressed
