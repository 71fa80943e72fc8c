"""Receiver storage, on SQLite or PostgreSQL (engine.py): tokens (hashed, scoped) and
escalations (idempotent by id).

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
import time
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.receiver.articles import ArticleStore
from agent.receiver.engine import POOL_SIZE, Conn, Engine, Row, Unavailable, open_engine
from agent.receiver.groups import GroupStore, Growth, growth
from agent.receiver.packstore import PackStore
from agent.receiver.schema import escalation_ref, migrate
from agent.receiver.scopes import Identity, Scope, binding_problem
from agent.receiver.storebase import (
    PAGE_BYTES,
    chunks,
    event_of,
    is_ref,
    keyed,
    locking,
    owned,
    rows_of,
    token_hash,
)
from agent.receiver.unknown import UnknownStore

__all__ = ["PAGE_BYTES", "ReceiverStore", "token_hash"]

Key = tuple[str, str, str, str]  # an escalation's: submitting name, owner, host, id


class ReceiverStore(GroupStore, PackStore, ArticleStore, UnknownStore):
    """Tokens, sessions and escalations; groups (GroupStore) and hosts (FleetStore) share
    its engine."""

    def __init__(
        self, location: str | Path, password_file: Path | None = None, pool_size: int = POOL_SIZE
    ) -> None:
        """`location`: a SQLite file's path, or a postgresql:// URL (its password, if
        any, in `password_file`)."""
        self._pruned = 0  # the hour the stats history was last pruned
        engine: Engine | None = None
        try:
            engine = open_engine(location, password_file, pool_size)
            self.notes = migrate(engine)
        except BaseException as exc:
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.close()
            if isinstance(exc, StateError):
                raise
            if not isinstance(exc, sqlite3.Error | Unavailable) and not _driver_error(exc):
                raise
            where = engine.where if engine is not None else str(location)
            raise StateError(
                f"{where}: cannot open the receiver database ({exc}); if it is damaged,"
                " restore it from a backup or move it aside to start an empty one"
            ) from exc
        self._engine = engine
        self.where = engine.where
        self.shared = engine.shared

    def writable(self) -> str | None:
        """Why the database cannot take a write now (for /healthz), or None if it can."""
        try:
            self._engine.write(
                lambda db: db.execute(
                    "INSERT INTO health VALUES (1, ?)"
                    " ON CONFLICT (one) DO UPDATE SET checked = excluded.checked",
                    (time.time(),),
                )
            )
        except (Unavailable, sqlite3.Error) as exc:
            return f"the database refuses writes: {exc}"
        except Exception as exc:
            if not _driver_error(exc):
                raise
            return f"the database refuses writes: {exc}"
        return None

    def close(self) -> None:
        self._engine.close()

    def take(self, key: str, rate: float, burst: int) -> float:
        """A token bucket kept in the database, so every receiver on it shares it:
        0 if a request may pass now (and takes a token), else seconds until one may.
        Timed by the database's clock, the one clock all receivers share."""

        def take(db: Conn) -> Row:
            refill = "least(?, buckets.level + greatest(0, excluded.at - buckets.at) * ?)"
            row: Row = db.execute(
                f"INSERT INTO buckets VALUES (?, ?, {db.clock}, 1)"  # noqa: S608
                " ON CONFLICT (token_id) DO UPDATE SET"
                f" level = CASE WHEN {refill} >= 1 THEN {refill} - 1 ELSE {refill} END,"
                f" granted = CASE WHEN {refill} >= 1 THEN 1 ELSE 0 END, at = excluded.at"
                " RETURNING level, granted",
                (key, burst - 1.0, *(float(burst), float(rate)) * 4),
            ).fetchone()
            return row

        row = self._engine.write(take)
        return 0.0 if row["granted"] else (1.0 - float(row["level"])) / rate

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
        row = (
            hashed,
            name or hashed[:12],
            str(scope),
            json.dumps(list(owners)),
            json.dumps(list(hosts)),
            time.time(),
            expires,
        )
        self._engine.write(
            lambda db: db.execute(
                "INSERT INTO tokens (hash, name, scope, owners, hosts, created, expires)"
                " VALUES (?,?,?,?,?,?,?)",
                row,
            )
        )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        """Every token by its id (the first 12 characters of its hash), never the token."""
        with self._engine.read() as db:
            rows = db.execute(
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

        Takes effect at once, on every receiver: every request checks the database.
        """
        if len(token_id) < 6 or not all(c in "0123456789abcdef" for c in token_id):
            raise LookupError("a token id is at least 6 hex characters, as `token list` shows")

        def revoke(db: Conn) -> str:
            rows = db.execute(  # hex only: no LIKE wildcard can be in it
                "SELECT hash, name FROM tokens WHERE hash LIKE ?", (token_id + "%",)
            ).fetchall()
            if len(rows) != 1:
                raise LookupError(
                    f"no token with id {token_id}"
                    if not rows
                    else f"{len(rows)} tokens start with {token_id}: give more of the id"
                )
            db.execute(
                "UPDATE tokens SET revoked=coalesce(revoked, ?) WHERE hash=?",
                (time.time(), rows[0]["hash"]),
            )
            return str(rows[0]["name"])

        return self._engine.write(revoke)

    def authenticate(self, token: str) -> Identity | None:
        """Who a live token (not revoked, not expired) is, or None; compared on hashes."""
        return self.identity(token_hash(token))

    def identity(self, hashed: str) -> Identity | None:
        """Who the live token with this hash is (a console session holds the hash, never
        the token), or None: revoked and expired tokens end their sessions at once."""
        with self._engine.read() as db:
            row = db.execute(
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
        hash is kept, so a copy of the database opens no session; every receiver on
        the database knows it."""
        session, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.time()

        def open_(db: Conn) -> None:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?)",
                (token_hash(session), token_hash(token), csrf, now + age),
            )

        self._engine.write(open_)
        return session, csrf

    def session(self, session: str) -> tuple[Identity, str] | None:
        """Who a live session is (its token live too) and its CSRF token, or None."""
        with self._engine.read() as db:
            row = db.execute(
                "SELECT token_hash, csrf, expires FROM sessions WHERE id_hash=?",
                (token_hash(session),),
            ).fetchone()
        if row is None or row["expires"] <= time.time():
            return None
        who = self.identity(row["token_hash"])
        return (who, str(row["csrf"])) if who is not None else None

    def close_session(self, session: str) -> None:
        self._engine.write(
            lambda db: db.execute("DELETE FROM sessions WHERE id_hash=?", (token_hash(session),))
        )

    def secret(self, name: str) -> str:
        """A random secret kept in the database (made on first use), so every receiver
        on it signs and checks the same session cookies."""

        def secret(db: Conn) -> str:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (name, secrets.token_hex(32)),
            )
            return str(
                db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()["value"]
            )

        return self._engine.write(secret)

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

        Several receivers may take the same batch at once: the insert waits for
        the other's, the row is then locked before its count is compared, and
        events are taken in key order, so two batches lock rows in one order.
        """
        now = time.time()
        ordered = sorted(events, key=lambda e: (e["owner"], e["fingerprint"], e["host"], e["id"]))

        def store(db: Conn) -> tuple[list[str], list[str]]:
            taken = self._store_batch(db, ordered, who, now)
            heard: dict[tuple[str, str], dict[str, str]] = {}
            for e in ordered:
                packs = heard.setdefault((e["owner"], e["host"]), {})
                packs[e["pack"]] = str(e.get("pack_version", ""))
            self._heard(db, heard, who.name, agent_version, now)
            accepted = [e["id"] for e, ok in zip(ordered, taken, strict=True) if ok]
            return accepted, [e["id"] for e, ok in zip(ordered, taken, strict=True) if not ok]

        accepted, duplicates = self._engine.write(store)
        order = {e["id"]: n for n, e in enumerate(events)}  # answered in the batch's order
        return sorted(accepted, key=order.__getitem__), sorted(duplicates, key=order.__getitem__)

    def _store_batch(
        self, db: Conn, ordered: list[dict[str, Any]], who: Identity, now: float
    ) -> list[bool]:
        """Whether each event (in key order) was stored or raised a stored count.

        New keys go in with one INSERT per chunk (ON CONFLICT DO NOTHING: it waits
        for another writer's insert of the same key, then skips it); the counts of
        the known ones are read and locked with one SELECT; rises are written in
        order. Their groups then grow once each (GroupStore._regroup).
        """
        firsts: dict[Key, int] = {}
        for n, e in enumerate(ordered):
            firsts.setdefault((who.name, e["owner"], e["host"], e["id"]), n)
        counts: dict[Key, int] = {}
        for chunk in chunks(list(firsts), 500):
            counts.update(self._insert_new(db, [ordered[firsts[k]] for k in chunk], who, now))
        taken = [False] * len(ordered)
        grown: dict[tuple[str, str], Growth] = {}

        def grow(e: dict[str, Any], new: int, more: int) -> None:
            key = (e["owner"], e["fingerprint"])
            if key not in grown:
                grown[key] = growth(e, now)
            grown[key].add(e, new, more, now)

        for key, n in firsts.items():
            if key in counts:  # inserted just now
                taken[n] = True
                grow(ordered[n], 1, counts[key])
        known = [k for k in firsts if k not in counts]
        for chunk in chunks(known, 500):
            with_, from_ = keyed("escalations", ("submitted_by", "owner", "host", "id"), chunk)
            for r in db.execute(
                f"{with_} SELECT t.submitted_by, t.owner, t.host, t.id, t.count {from_}"
                f"{locking(db)}",
                [v for k in chunk for v in k],
            ):
                counts[(r["submitted_by"], r["owner"], r["host"], r["id"])] = r["count"]
        rises: list[tuple[Any, ...]] = []
        for n, e in enumerate(ordered):
            key = (who.name, e["owner"], e["host"], e["id"])
            if firsts[key] == n and taken[n]:
                continue
            count, before = int(e.get("count", 1)), counts[key]
            if count <= before:
                continue  # a duplicate: changes nothing
            counts[key] = count
            taken[n] = True
            body, last = json.dumps(e), float(e.get("last_seen", now))
            rises.append((count, last, body, e["status"], str(e.get("severity", "error")), *key))
            grow(e, 0, count - before)
        if rises:
            db.executemany(
                "UPDATE escalations SET count=?, last_seen=greatest(last_seen, ?), body=?,"
                " status=?, severity=? WHERE submitted_by=? AND owner=? AND host=? AND id=?",
                rises,
            )
        self._regroup(db, grown, now)
        return taken

    def _insert_new(
        self, db: Conn, events: list[dict[str, Any]], who: Identity, now: float
    ) -> dict[Key, int]:
        """Insert the events whose key is new; their keys and counts."""
        args: list[Any] = []
        for e in events:
            key = (who.name, e["owner"], e["host"], e["id"])
            args += (*key, escalation_ref(*key), now, e["pack"], e["pattern"],
                     str(e.get("severity", "error")), e["status"], e["fingerprint"],
                     int(e.get("count", 1)), float(e.get("first_seen", now)),
                     float(e.get("last_seen", now)), json.dumps(e))  # fmt: skip
        return {
            (r["submitted_by"], r["owner"], r["host"], r["id"]): r["count"]
            for r in db.execute(
                f"INSERT INTO escalations VALUES {rows_of(15, events)} ON CONFLICT DO NOTHING"  # noqa: S608
                " RETURNING submitted_by, owner, host, id, count",
                args,
            ).fetchall()
        }

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
        more = False
        with self._engine.read() as db:
            for row in db.execute(
                f"SELECT body, received, submitted_by, ref FROM escalations {where}"  # noqa: S608
                " ORDER BY received DESC, submitted_by, id, owner, host LIMIT ? OFFSET ?",
                (*args, limit + 1, offset),
            ):
                budget -= len(row["body"])
                if len(page) == limit or (page and budget < 0):
                    more = True
                    break
                page.append(event_of(row))
        return page, more

    def get(self, ref: str, owners: tuple[str, ...] | None) -> dict[str, Any] | None:
        """One escalation by its receiver id, if one of the owners given owns it."""
        if not is_ref(ref):
            return None
        where, args = owned(owners, ["ref=?"], [ref])
        with self._engine.read() as db:
            row = db.execute(
                f"SELECT body, received, submitted_by, ref FROM escalations {where}",  # noqa: S608
                args,
            ).fetchone()
        return None if row is None else event_of(row)


def _driver_error(exc: BaseException) -> bool:
    """A PostgreSQL driver's error (psycopg is imported only for a postgresql:// URL)."""
    return type(exc).__module__.startswith(("psycopg", "psycopg_pool"))
