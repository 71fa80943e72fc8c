"""The receiver's commands: `logmend receiver` (serve), `receiver token create|list|revoke`,
`receiver key add|list` and `receiver migrate`; their modules are imported when a
command runs, so a host without the receiver's extra can still run the agent."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import LogmendError

if TYPE_CHECKING:
    from agent.receiver.store import ReceiverStore


DB_ENV = "LOGMEND_RECEIVER_DB"
DB_PASSWORD_ENV = "LOGMEND_RECEIVER_DB_PASSWORD_FILE"  # noqa: S105 (a variable's name)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def _db_arguments(parser: argparse.ArgumentParser) -> None:
    """--db and its password file, defaulting to the environment (a systemd
    EnvironmentFile), so a URL is given once for the service and its commands."""
    parser.add_argument(
        "--db",
        default=os.environ.get(DB_ENV) or "receiver.db",
        help="a SQLite file, or postgresql://USER@HOST[:PORT]/DB[?sslmode=verify-full&...]"
        f" (default: ${DB_ENV}, else receiver.db)",
    )
    parser.add_argument(
        "--db-password-file",
        type=Path,
        default=_env_path(DB_PASSWORD_ENV),
        help=f"PostgreSQL: a file holding the password (default: ${DB_PASSWORD_ENV})",
    )


def cmd_receiver(args: argparse.Namespace) -> int:
    from agent.cli import setup_logging  # the command line's, shared
    from agent.receiver.serve import serve

    setup_logging()
    return serve(
        args.listen,
        _db_location(args.db),
        args.max_body,
        args.rate,
        args.burst,
        args.tls_cert,
        args.tls_key,
        args.client_ca,
        header_timeout=args.header_timeout,
        per_client=args.per_client,
        max_connections=args.max_connections,
        password_file=args.db_password_file,
    )


def cmd_receiver_migrate(args: argparse.Namespace) -> int:
    from agent.receiver.engine import is_url
    from agent.receiver.transfer import copy_sqlite_to

    if not args.source.is_file():
        raise LogmendError(f"{args.source}: no receiver database here (check --from)")
    if not is_url(args.target):
        raise LogmendError(f"--to: a postgresql:// URL, not {args.target!r}")
    for table, rows in copy_sqlite_to(args.source, args.target, args.db_password_file):
        print(f"{table}: {rows} row(s)")
    print("done: point the receivers at the new database (--db or $LOGMEND_RECEIVER_DB)")
    return 0


def _db_location(value: str) -> Path | str:
    from agent.receiver.engine import is_url

    return value if is_url(value) else Path(value)


MAX_TOKEN_LIFE = 3650 * 86400.0


def _receiver_store(args: argparse.Namespace, create: bool = False) -> ReceiverStore:
    """The receiver database, upgraded in place if older; what the upgrade did goes to
    stderr. Only `token create` may start a new SQLite file (and says so): a mistyped
    --db for `list` or `revoke` is an error, not an empty database (a PostgreSQL
    database must exist already: its server says if it does not)."""
    from agent.receiver.store import ReceiverStore

    db = _db_location(args.db)
    if isinstance(db, Path) and not db.exists():
        if not create:
            raise LogmendError(f"{db}: no receiver database here (check --db)")
        print(f"logmend receiver: {db}: created a new receiver database", file=sys.stderr)
    store = ReceiverStore(db, args.db_password_file)
    for note in store.notes:
        print(f"logmend receiver: {store.where}: {note}", file=sys.stderr)
    return store


def cmd_token_create(args: argparse.Namespace) -> int:
    from agent.receiver.scopes import Scope
    from agent.tomlsrc import parse_duration

    expires = None
    if args.expires is not None:
        seconds = parse_duration(args.expires)
        if seconds is None or seconds <= 0:
            raise LogmendError(f'--expires: not a duration like "30d" or "12h": {args.expires!r}')
        if seconds > MAX_TOKEN_LIFE:
            raise LogmendError("--expires: at most 3650d (leave it out for a token with no end)")
        expires = time.time() + seconds
    store = _receiver_store(args, create=True)
    try:
        token = store.create_token(
            Scope(args.scope), args.name or "", tuple(args.owner), tuple(args.host), expires
        )
    except ValueError as exc:
        raise LogmendError(f"token create: {exc}") from None
    finally:
        store.close()
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from agent.cli import local_time

    store = _receiver_store(args)
    rows = store.tokens()
    store.close()
    now = time.time()
    print(f"{'id':<13}{'name':<20}{'scope':<8}{'created':<21}{'state':<30}bound to")
    for row in rows:
        if row["revoked"] is not None:
            state = f"revoked {local_time(row['revoked'])}"
        elif row["expires"] is not None:
            ended = row["expires"] <= now
            state = ("expired " if ended else "expires ") + local_time(row["expires"])
        else:
            state = "live"
        bound = "; ".join(
            f"{what} {', '.join(values)}"
            for what, values in (("owners", row["owners"]), ("hosts", row["hosts"]))
            if values
        )
        print(
            f"{row['id']:<13}{row['name']:<20}{row['scope']:<8}{local_time(row['created']):<21}"
            f"{state:<30}{bound or 'every owner (admin)'}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    store = _receiver_store(args)
    try:
        name = store.revoke(args.id)
    except LookupError as exc:
        raise LogmendError(f"token revoke: {exc}") from None
    finally:
        store.close()
    print(f"revoked token {args.id} ({name}): refused from its next request")
    return 0


def cmd_key_add(args: argparse.Namespace) -> int:
    from agent.receiver.scopes import Forbidden
    from agent.signing import load_public

    found = [key for path in args.files for key in load_public(path)]
    store = _receiver_store(args)
    try:
        for key in found:
            added = store.add_key(key)
            print(f"{key.key_id} ({key.owner}): {'added' if added else 'already registered'}")
    except Forbidden as exc:
        raise LogmendError(f"receiver key add: {exc}") from None
    finally:
        store.close()
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    from agent.cli import local_time

    store = _receiver_store(args)
    rows = store.keys(None)
    store.close()
    for row in rows:
        print(f"{row['key_id']}  {row['owner']:<20} added {local_time(row['added'])}")
    return 0


def add_receiver_commands(sub: Any) -> None:
    """`logmend receiver ...`, on the command's subparsers."""
    receiver = sub.add_parser("receiver", help="the central escalation endpoint")
    receiver.add_argument(
        "--listen", default="127.0.0.1:8470", help="HOST:PORT to serve on (default 127.0.0.1:8470)"
    )
    _db_arguments(receiver)
    receiver.add_argument(
        "--max-body",
        type=int,
        default=4 * 1024 * 1024,
        help="largest request body in bytes (default 4 MiB); larger is 413",
    )
    receiver.add_argument(
        "--rate", type=float, default=50.0, help="requests a second per token (0: no limit)"
    )
    receiver.add_argument("--burst", type=int, default=100, help="requests a token may burst")
    receiver.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate")
    receiver.add_argument("--tls-key", type=Path, help="the certificate's key")
    receiver.add_argument(
        "--client-ca", type=Path, help="require client certificates signed by this CA (mTLS)"
    )
    receiver.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a request's headers may take (its body gets --body-timeout in the app)",
    )
    receiver.add_argument(
        "--per-client", type=int, default=64, help="connections one client address may hold"
    )
    receiver.add_argument(
        "--max-connections", type=int, default=4096, help="connections at once, in all"
    )
    receiver.set_defaults(func=cmd_receiver)
    receiver_sub = receiver.add_subparsers(dest="receiver_command")
    token = receiver_sub.add_parser("token", help="manage the receiver's tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create",
        help="create a token; prints it once",
        description="ingest: agents post for --host and --owner; read/write: one team's"
        " (--owner TEAM); admin: the central team, every owner",
    )
    create.add_argument(
        "--scope",
        required=True,
        choices=["ingest", "read", "write", "admin"],
        help="ingest: agents send; read: the console and API read; write: also act on"
        " escalations; admin: tokens and every owner",
    )
    create.add_argument(
        "--owner", action="append", default=[], help="an owner it is bound to (repeat; '*': any)"
    )
    create.add_argument(
        "--host", action="append", default=[], help="ingest: a host or pattern (repeat; '*': any)"
    )
    create.add_argument(
        "--name", help="what it submits under (default: its id); give a replacement the same"
    )
    create.add_argument("--expires", help='valid for this long, e.g. "90d" (default: no end)')
    _db_arguments(create)
    create.set_defaults(func=cmd_token_create)
    listing = token_sub.add_parser("list", help="every token: id, name, scope, state, bindings")
    _db_arguments(listing)
    listing.set_defaults(func=cmd_token_list)
    revoke = token_sub.add_parser("revoke", help="refuse a token from its next request")
    revoke.add_argument("id", help="the token's id, as `token list` shows it")
    _db_arguments(revoke)
    revoke.set_defaults(func=cmd_token_revoke)

    key = receiver_sub.add_parser("key", help="the teams' pack signing keys")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    add = key_sub.add_parser(
        "add",
        help="register a team's public key: bundles it signs may be published for the team",
        description="logmend receiver key add PREFIX.pub: each key of the file (from logmend"
        " pack keygen) for the team the file names; the team's write token may then publish"
        " packs signed with it",
    )
    add.add_argument("files", nargs="+", type=Path, metavar="KEYS", help="public key files")
    _db_arguments(add)
    add.set_defaults(func=cmd_key_add)
    keys = key_sub.add_parser("list", help="every registered key: id, team, when")
    _db_arguments(keys)
    keys.set_defaults(func=cmd_key_list)

    move = receiver_sub.add_parser(
        "migrate",
        help="copy a SQLite receiver's data into a new PostgreSQL database",
        description="Every table of the SQLite file (upgraded first, if older) is copied in one"
        " transaction into the PostgreSQL database, which must hold no receiver data yet;"
        " stop the receiver on the file first.",
    )
    move.add_argument("--from", dest="source", type=Path, required=True, help="the SQLite file")
    move.add_argument("--to", dest="target", required=True, help="postgresql://USER@HOST/DB")
    move.add_argument(
        "--db-password-file", type=Path, default=_env_path(DB_PASSWORD_ENV),
        help=f"the target's password (default: ${DB_PASSWORD_ENV})",
    )  # fmt: skip
    move.set_defaults(func=cmd_receiver_migrate)
