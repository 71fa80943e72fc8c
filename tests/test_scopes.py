"""The tenancy policy on its own: what each scope may do, whose rows it sees, and which
owner an agent's event is filed under. No receiver, no database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.receiver.scopes import (
    AGENT_OWNER,
    ALLOWED,
    Action,
    Forbidden,
    Identity,
    Scope,
    binding_problem,
)


def ingest(owners: tuple[str, ...] = ("team-a",), hosts: tuple[str, ...] = ("web-*",)) -> Identity:
    return Identity("abc123abc123", "web-fleet", Scope.INGEST, owners, hosts)


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("action", list(Action))
def test_each_scope_may_do_exactly_its_actions(scope, action):
    who = Identity("id", "n", scope, ("team-a",) if scope is not Scope.ADMIN else ())
    allowed = {  # every live token may fetch the bundles of the packs it may see
        Scope.INGEST: {Action.INGEST, Action.FETCH},
        Scope.READ: {Action.READ, Action.FETCH},
        Scope.WRITE: {Action.READ, Action.WRITE, Action.FETCH},
        Scope.ADMIN: {Action.READ, Action.WRITE, Action.FETCH},
    }[scope]
    if action in allowed:
        who.require(action)
    else:
        article = "an" if scope in (Scope.INGEST, Scope.ADMIN) else "a"
        with pytest.raises(Forbidden, match=f"^{article} {scope} token may not {action}"):
            who.require(action)
    assert set(ALLOWED[scope]) == allowed


def test_a_team_sees_its_own_rows_and_an_admin_every_row():
    assert Identity("i", "n", Scope.READ, ("team-a",)).visible_owners() == ("team-a",)
    assert Identity("i", "n", Scope.ADMIN).visible_owners() is None


def test_hosts_are_matched_by_name_or_pattern_case_sensitively():
    who = ingest(hosts=("web-*", "db-01"))
    for host in ("web-1", "web-", "db-01"):
        who.check_host(host, "host")
    for host in ("db-02", "WEB-1", "xweb-1", "db-01.evil"):
        with pytest.raises(Forbidden, match=f"may not report for host {host!r}"):
            who.check_host(host, "events[0]")


def test_the_owner_is_the_tokens_not_the_bodys():
    who = ingest(owners=("team-a", "team-c"))
    assert who.owner_for("team-a", "e") == "team-a"
    assert who.owner_for(AGENT_OWNER, "e") == AGENT_OWNER  # the agent's own spool report
    with pytest.raises(Forbidden, match=r"events\[2\]: token 'web-fleet' may not report for owner"):
        who.owner_for("team-b", "events[2]")
    with pytest.raises(Forbidden):  # two owners: an empty claim is not guessed
        who.owner_for("", "e")
    assert ingest(owners=("team-a",)).owner_for("", "e") == "team-a"
    assert ingest(owners=("*",)).owner_for("anyone", "e") == "anyone"
    with pytest.raises(Forbidden, match="names no owner"):  # '*' is not one owner
        ingest(owners=("*",)).owner_for("", "e")


@given(st.text(max_size=20), st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
def test_an_owner_outside_the_token_is_never_filed(claimed, owners):
    """Whatever an agent claims, what is stored is one of the token's owners or the
    agent's own (only admins see it); a '*' token is the only one that takes any."""
    who = ingest(owners=tuple(owners))
    try:
        stored = who.owner_for(claimed, "e")
    except Forbidden:
        assert not claimed or (
            claimed not in owners and "*" not in owners and claimed != AGENT_OWNER
        )
        return
    assert stored and (stored in owners or stored == AGENT_OWNER or "*" in owners)


@pytest.mark.parametrize(
    ("scope", "owners", "hosts", "problem"),
    [
        (Scope.INGEST, (), ("*",), "needs --owner"),
        (Scope.INGEST, ("a",), (), "needs --host"),
        (Scope.READ, ("a", "b"), (), "exactly one --owner"),
        (Scope.WRITE, ("*",), (), "without '*'"),
        (Scope.READ, ("team-*",), (), "without '*'"),
        (Scope.READ, (), (), "exactly one --owner"),
        (Scope.READ, ("a",), ("h",), "--host is for ingest tokens"),
        (Scope.ADMIN, ("a",), (), "no --owner"),
        (Scope.INGEST, (" a",), ("*",), "is not a name"),
        (Scope.INGEST, ("a\n",), ("*",), "is not a name"),
        (Scope.INGEST, ("a",), ("",), "is not a name"),
        (Scope.INGEST, ("x" * 257,), ("*",), "is not a name"),
    ],
)
def test_a_token_that_would_mean_two_things_is_never_created(scope, owners, hosts, problem):
    found = binding_problem(scope, owners, hosts)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    ("scope", "owners", "hosts"),
    [
        (Scope.INGEST, ("team-a", "team-b"), ("web-*", "db-01")),
        (Scope.INGEST, ("*",), ("*",)),
        (Scope.READ, ("team-a",), ()),
        (Scope.WRITE, ("team-a",), ()),
        (Scope.ADMIN, (), ()),
    ],
)
def test_well_bound_tokens_are_created(scope, owners, hosts):
    assert binding_problem(scope, owners, hosts) is None
