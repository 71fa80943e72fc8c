"""Receiver storage on SQLite: tokens (hashed, scoped) and escalations (idempotent by id).

Every read takes the owners the caller may see (None: all) and every write
the identity that makes it, so tenancy is enforced where the rows are, not
only in the routes.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.receiver.fleet import FleetStore
from agent.receiver.groups import GroupStore
from agent.receiver.schema import escalation_ref, migrate
from agent.receiver.scopes import Identity, Scope, binding_problem
from agent.receiver.storebase import PAGE_BYTES, event_of, owned, token_hash

__all__ = ["PAGE_BYTES", "ReceiverStore", "token_hash"]


class ReceiverStore(GroupStore, FleetStore):
    """Tokens, sessions and escalations; groups (GroupStore) and hosts (FleetStore) share
    its connection and lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._pruned = 0  # the hour the stats history was last pruned
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self.notes = migrate(self._db, str(path))
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._db.close()
            if not isinstance(exc, sqlite3.Error):
                raise

            raise StateError(
                f"{path}: cannot open the receiver database ({exc}); if it is damaged,"
                " restore it from a backup or move it aside to start an empty one"
            ) from exc

    def writable(self) -> str | None:
        """Why the database cannot take a write now (for /healthz), or None if it can."""
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO health VALUES (1, ?)", (time.time(),))
        except sqlite3.Error as exc:
            return f"the database refuses writes: {exc}"
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create_token(
        self,
        scope: Scope,
        name: str = "",
        owners: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        expires: float | None = None,
    ) -> str:
        """A new token (shown once) for `scope`, bound to `owners` and `hosts`.

        `name` defaults to the token's id; raises ValueError for a binding
        the scope cannot have (see scopes.binding_problem).
        """
        problem = binding_problem(scope, owners, hosts, name)
        if problem is not None:
            raise ValueError(problem)
        token = "lm_" + secrets.token_urlsafe(32)
        hashed = token_hash(token)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (hash, name, scope, owners, hosts, created, expires)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    hashed,
                    name or hashed[:12],
                    str(scope),
                    json.dumps(list(owners)),
                    json.dumps(list(hosts)),
                    time.time(),
                    expires,
                ),
            )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        """Every token by its id (the first 12 characters of its hash), never the token."""
        with self._lock:
            rows = self._db.execute(
                "SELECT substr(hash, 1, 12) AS id, name, scope, owners, hosts, created, expires,"
                " revoked FROM tokens ORDER BY created"
            ).fetchall()
        listed = []
        for row in rows:
            item = dict(row)
            item["owners"], item["hosts"] = json.loads(row["owners"]), json.loads(row["hosts"])
            listed.append(item)
        return listed

    def revoke(self, token_id: str) -> str:
        """Revoke the one token whose id starts with `token_id`; returns its name.

        Takes effect at once: every request checks the database.
        """
        if len(token_id) < 6 or not all(c in "0123456789abcdef" for c in token_id):
            raise LookupError("a token id is at least 6 hex characters, as `token list` shows")
        with self._lock:
            rows = self._db.execute(
                "SELECT hash, name FROM tokens WHERE substr(hash, 1, ?) = ?",
                (len(token_id), token_id),
            ).fetchall()
            if len(rows) != 1:
                raise LookupError(
                    f"no token with id {token_id}"
                    if not rows
                    else f"{len(rows)} tokens start with {token_id}: give more of the id"
                )
            self._db.execute(
                "UPDATE tokens SET revoked=coalesce(revoked, ?) WHERE hash=?",
                (time.time(), rows[0]["hash"]),
            )
        return str(rows[0]["name"])

    def authenticate(self, token: str) -> Identity | None:
        """Who a live token (not revoked, not expired) is, or None; compared on hashes."""
        return self.identity(token_hash(token))

    def identity(self, hashed: str) -> Identity | None:
        """Who the live token with this hash is (a console session holds the hash, never
        the token), or None: revoked and expired tokens end their sessions at once."""
        with self._lock:
            row = self._db.execute(
                "SELECT hash, name, scope, owners, hosts, expires, revoked FROM tokens"
                " WHERE hash=?",
                (hashed,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], hashed):
            return None
        if row["revoked"] is not None or (
            row["expires"] is not None and row["expires"] <= time.time()
        ):
            return None
        return Identity(
            token_id=hashed[:12],
            name=str(row["name"]),
            scope=Scope(row["scope"]),
            owners=tuple(json.loads(row["owners"])),
            hosts=tuple(json.loads(row["hosts"])),
        )

    def open_session(self, token: str, age: float) -> tuple[str, str]:
        """A console session for a live token: (its id, its CSRF token). Only the id's
        hash is kept, so a copy of the database opens no session."""
        session, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.time()
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            self._db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?)",
                (token_hash(session), token_hash(token), csrf, now + age),
            )
        return session, csrf

    def session(self, session: str) -> tuple[Identity, str] | None:
        """Who a live session is (its token live too) and its CSRF token, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT token_hash, csrf, expires FROM sessions WHERE id_hash=?",
                (token_hash(session),),
            ).fetchone()
        if row is None or row["expires"] <= time.time():
            return None
        who = self.identity(row["token_hash"])
        return (who, str(row["csrf"])) if who is not None else None

    def close_session(self, session: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id_hash=?", (token_hash(session),))

    def secret(self, name: str) -> str:
        """A random secret kept in the database (made on first use), so every receiver
        on it signs and checks the same session cookies."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, secrets.token_hex(32))
            )
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
        return str(row["value"])

    def store(
        self, events: list[dict[str, Any]], who: Identity, agent_version: str = ""
    ) -> tuple[list[str], list[str]]:
        """Insert each event once under `who`'s name; returns (accepted ids, duplicate ids).

        An escalation's key is (submitting token's name, owner, host, id): the
        same id from another name, for another owner or from another host is
        another escalation, so none can overwrite or pre-claim another's, and a
        stored row's owner and host never change. An event sent again with a
        higher count (more matches since it was first sent) updates the stored
        one; anything else with a known key is a duplicate and changes nothing.
        Owners must be decided already.
        """
        accepted: list[str] = []
        duplicates: list[str] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    count = int(e.get("count", 1))
                    key = (who.name, e["owner"], e["host"], e["id"])
                    before = self._db.execute(
                        "SELECT count FROM escalations"
                        " WHERE submitted_by=? AND owner=? AND host=? AND id=?",
                        key,
                    ).fetchone()
                    if before is not None:
                        if before["count"] >= count:
                            duplicates.append(e["id"])
                            continue
                        self._db.execute(
                            "UPDATE escalations SET count=?, last_seen=max(last_seen, ?), body=?,"
                            " status=?, severity=?"
                            " WHERE submitted_by=? AND owner=? AND host=? AND id=?",
                            (
                                count,
                                float(e.get("last_seen", now)),
                                json.dumps(e),
                                e["status"],
                                str(e.get("severity", "error")),
                                *key,
                            ),
                        )
                        accepted.append(e["id"])
                        self._recur(e, now, new=0, more=count - before["count"])
                        continue
                    self._db.execute(
                        "INSERT INTO escalations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            *key,
                            escalation_ref(*key),
                            now,
                            e["pack"],
                            e["pattern"],
                            str(e.get("severity", "error")),
                            e["status"],
                            e["fingerprint"],
                            count,
                            float(e.get("first_seen", now)),
                            float(e.get("last_seen", now)),
                            json.dumps(e),
                        ),
                    )
                    accepted.append(e["id"])
                    self._recur(e, now, new=1, more=count)
                heard: dict[tuple[str, str], dict[str, str]] = {}
                for e in events:
                    packs = heard.setdefault((e["owner"], e["host"]), {})
                    packs[e["pack"]] = str(e.get("pack_version", ""))
                for (owner, host), packs in heard.items():
                    self._heard(owner, host, who.name, agent_version, packs, now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself
                    self._db.execute("ROLLBACK")
                raise
        return accepted, duplicates

    def query(
        self,
        filters: dict[str, str],
        owners: tuple[str, ...] | None,
        limit: int = 500,
        offset: int = 0,
        budget: int = PAGE_BYTES,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of escalations, newest first, of the owners given, matching `filters`,
        and whether more follow.

        At most `limit` rows and, past the first, `budget` bytes of stored
        bodies: a page of big events ends early instead of filling memory.
        """
        where, args = owned(owners, [f"{k}=?" for k in filters], list(filters.values()))
        page: list[dict[str, Any]] = []
        with self._lock:
            cursor = self._db.execute(
                f"SELECT body, received, submitted_by, ref FROM escalations {where}"  # noqa: S608
                " ORDER BY received DESC, submitted_by, id LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            )
            more = False
            for row in cursor:
                budget -= len(row["body"])
                if len(page) == limit or (page and budget < 0):
                    more = True
                    break
                page.append(event_of(row))
            cursor.close()
        return page, more

    def get(self, ref: str, owners: tuple[str, ...] | None) -> dict[str, Any] | None:
        """One escalation by its receiver id, if one of the owners given owns it."""
        where, args = owned(owners, ["ref=?"], [ref])
        with self._lock:
            row = self._db.execute(
                f"SELECT body, received, submitted_by, ref FROM escalations {where}",  # noqa: S608
                args,
            ).fetchone()
        return None if row is None else event_of(row)
