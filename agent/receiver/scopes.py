"""Who a receiver token is and what it may do: the multi-tenant policy, with no I/O.

Every request is made by an `Identity` (from its token). An *ingest* token is
what agents use: it may post escalations and statistics for the hosts and the
owners it was created for, nothing else, and reads nothing. A *read* or
*write* token is a team's: it sees that team's rows only (write will also
change them). An *admin* token is the central team's: it sees every team but
does not ingest, so an agent's token leaking never gives a view of all teams.
The owner of what an agent posts is decided here, from the token, never
trusted from the body.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum

ANY = "*"
AGENT_OWNER = "logmend"  # the agent's own events (a spool overflow): the central team's
MAX_LABEL = 256
RESERVED_NAME = "receiver"  # who the receiver's own actions are by


class Scope(StrEnum):
    INGEST = "ingest"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


class Action(StrEnum):
    INGEST = "ingest"  # POST escalations and statistics
    READ = "read"  # GET escalations, statistics, the page
    WRITE = "write"  # change a team's escalations (acknowledge, resolve), publish packs
    FETCH = "fetch"  # GET a pack bundle: agents (ingest) and the team's people alike


ALLOWED: dict[Scope, frozenset[Action]] = {
    Scope.INGEST: frozenset({Action.INGEST, Action.FETCH}),
    Scope.READ: frozenset({Action.READ, Action.FETCH}),
    Scope.WRITE: frozenset({Action.READ, Action.WRITE, Action.FETCH}),
    Scope.ADMIN: frozenset({Action.READ, Action.WRITE, Action.FETCH}),
}


class Forbidden(Exception):
    """Authenticated, but not allowed: answered 403 with this message."""


@dataclass(frozen=True)
class Identity:
    """A live token: its id (never the token), name, scope and what it is bound to.

    `name` is the namespace of what it submits: a replacement token given the
    same name goes on updating the same escalations; no other name can touch them.
    """

    token_id: str
    name: str
    scope: Scope
    owners: tuple[str, ...] = ()  # ingest: may report for ("*" any); read/write: the team
    hosts: tuple[str, ...] = ()  # ingest: host names or shell patterns it may report for

    def require(self, action: Action) -> None:
        if action not in ALLOWED[self.scope]:
            raise Forbidden(f"{_a(self.scope)} token may not {action}: {_HINT[action]}")

    def visible_owners(self) -> tuple[str, ...] | None:
        """The owners whose rows this identity sees; None for all (admin)."""
        return None if self.scope is Scope.ADMIN else self.owners

    def check_host(self, host: str, where: str) -> None:
        if not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts):
            raise Forbidden(
                f"{where}: token {self.name!r} may not report for host {host!r}"
                f" (it may for {', '.join(self.hosts)})"
            )

    def single_owner(self) -> bool:
        """Whether the token names exactly one owner (what an ownerless post goes to)."""
        return len(self.owners) == 1 and self.owners[0] != ANY

    def owner_for(self, claimed: str, where: str) -> str:
        """The owner to store: the claimed one if the token may report for it.

        An empty claim (a pack that names no owner) goes to the token's only
        owner when it has exactly one; any other claim outside the token's
        owners is refused, so no agent can file into another team's inbox.
        Every ingest token may report the agent's own events (owner
        "logmend"), which only admins see.
        """
        if not claimed:  # filed under the token's owner, if it names exactly one
            if self.single_owner():
                return self.owners[0]
            raise Forbidden(
                f"{where}: names no owner, and token {self.name!r} is not bound to exactly one"
            )
        if ANY in self.owners or claimed in self.owners or claimed == AGENT_OWNER:
            return claimed
        raise Forbidden(
            f"{where}: token {self.name!r} may not report for owner {claimed!r}"
            f" (it may for {', '.join(self.owners)})"
        )


def _a(scope: Scope) -> str:
    return f"an {scope}" if scope[0] in "aeiou" else f"a {scope}"


_HINT = {
    Action.INGEST: "agents post with an ingest token",
    Action.READ: "reading takes a team's read or write token, or an admin token",
    Action.WRITE: "changing escalations takes a team's write token, or an admin token",
    Action.FETCH: "any live token fetches the bundles of packs it may see",
}


def binding_problem(
    scope: Scope, owners: tuple[str, ...], hosts: tuple[str, ...], name: str = ""
) -> str | None:
    """Why a token cannot be created with this name and these bindings, or None.

    Checked when a token is created, so every stored token means one thing.
    """
    if name == RESERVED_NAME:
        return f"{RESERVED_NAME!r} is the receiver's own name in timelines"
    for value in (*owners, *hosts, *((name,) if name else ())):
        if not value or len(value) > MAX_LABEL or not value.isprintable() or value != value.strip():
            return f"{value!r} is not a name: printable, no surrounding spaces, 1..256 characters"
    if scope is Scope.INGEST:
        if not owners:
            return "an ingest token needs --owner (each owner it may report for, or '*')"
        if not hosts:
            return "an ingest token needs --host (each host or pattern like 'web-*', or '*')"
        return None
    if hosts:
        return f"a {scope} token reads no hosts' data by name: --host is for ingest tokens"
    if scope is Scope.ADMIN:
        return "an admin token sees every owner: no --owner" if owners else None
    if len(owners) != 1 or ANY in owners[0]:
        return f"a {scope} token is one team's: exactly one --owner, without '*'"
    if owners[0] == AGENT_OWNER:
        return f"the agents' own reports (owner {AGENT_OWNER}) are the central team's: use admin"
    return None
