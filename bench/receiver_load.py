"""The central service under load: simulated agents through 1, 2 and 4 receivers, on
SQLite and on PostgreSQL; and the console's inbox over 1,000,000 escalations.

Usage: python -m bench.receiver_load [--agents 200] [--batches 6] [--batch 40]
                                     [--receivers 1,2,4] [--engines sqlite,postgresql]
                                     [--inbox-rows 1000000]

Each simulated agent (an asyncio task with its own connection, as agents have)
posts `--batches` batches of `--batch` escalations to the receivers in turn (as a
load balancer would spread them, no stickiness): each batch after the first
carries new events, 25% duplicates of events it sent already, and 25% of its
earlier events again with a higher count. A 503 or 429 is retried after a short
wait, as the agent's spool does; it is counted as an error once. At the end the
database is checked: every event stored once, each with its highest count, and
the groups' line totals equal to the sum of those counts (exactly once).

Everything runs on loopback: the receivers as real processes (`logmend
receiver`), PostgreSQL as a throwaway cluster (tests/pg.py: Debian's server, a
temp directory, an unprivileged user). Throughput is given as a ratio to one
receiver on SQLite, measured in the same run; the machine's cores bound what
more receivers can add (this project's has 2, shared by the receivers, the
database and the simulated agents).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack

from agent.receiver.engine import open_engine
from agent.receiver.inbox import InboxView
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore

PYTHON = sys.executable


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    events_sent: int = 0
    expected: dict[tuple[str, str], int] = field(default_factory=dict)  # (host, id) -> count


def start_receivers(db: str, count: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, urls = [], []
    for _ in range(count):
        proc = subprocess.Popen(
            [PYTHON, "-m", "agent", "receiver", "--listen", "127.0.0.1:0", "--db", db,
             "--rate", "0", "--per-client", "100000", "--max-connections", "8192"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"receiver did not start: {line}{proc.stdout.read()}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        procs.append(proc)
        urls.append(line.strip().rsplit(" ", 1)[1])
    return procs, urls


def event(host: str, n: int, count: int) -> dict[str, Any]:
    return {
        "id": f"e{n}", "host": host, "owner": f"team-{n % 20}", "pack": "web",
        "pattern": f"p{n % 50}", "fingerprint": f"fp{n % 500}", "status": "no-remedy",
        "severity": "error", "count": count, "first_seen": 1.7e9, "last_seen": 1.7e9 + count,
        "lines": [f"2026-11-29 error {n}: upstream timed out after 30s " + "x" * 120],
        "fields": {"n": str(n)},
    }  # fmt: skip


async def agent(
    number: int, urls: list[str], token: str, batches: int, size: int, load: Load
) -> None:
    rng = random.Random(number)
    host = f"host-{number:04d}"
    counts: dict[int, int] = {}
    next_id = 0
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/msgpack"}) as client:  # fmt: skip
        for b in range(batches):
            events: list[dict[str, Any]] = []
            fresh = size if b == 0 else size // 2
            for _ in range(fresh):
                counts[next_id] = 1
                events.append(event(host, next_id, 1))
                next_id += 1
            if b:
                known = rng.sample(sorted(counts), min(len(counts), size // 2))
                for k, n in enumerate(known):
                    if k % 2:  # a higher count
                        counts[n] += rng.randint(1, 5)
                    events.append(event(host, n, counts[n]))  # else a plain duplicate
            body = msgpack.packb({"agent": {"host": host, "version": "bench"}, "events": events})
            url = urls[(number + b) % len(urls)]
            while True:
                started = time.perf_counter()
                try:
                    answer = await client.post(f"{url}/v1/escalations", content=body)
                    code = answer.status_code
                except httpx.HTTPError:
                    code = 0
                if code == 200:
                    load.latencies.append(time.perf_counter() - started)
                    break
                load.errors[code] = load.errors.get(code, 0) + 1
                await asyncio.sleep(0.2)
            load.events_sent += len(events)
    for n, count in counts.items():
        load.expected[(host, f"e{n}")] = count


def run_load(db: str, receivers: int, agents: int, batches: int, size: int) -> dict[str, Any]:
    store = ReceiverStore(db)
    token = store.create_token(Scope.INGEST, "bench-fleet", ("*",), ("*",))
    store.close()
    procs, urls = start_receivers(db, receivers)
    load = Load()
    try:
        started = time.perf_counter()

        async def everyone() -> None:
            await asyncio.gather(
                *(agent(n, urls, token, batches, size, load) for n in range(agents))
            )

        asyncio.run(everyone())
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    engine = open_engine(db)
    with engine.read() as conn:
        stored = {
            (r["host"], r["id"]): r["count"]
            for r in conn.execute("SELECT host, id, count FROM escalations").fetchall()
        }
        lines = conn.execute("SELECT sum(lines) AS n, sum(occurrences) AS o FROM groups").fetchone()
    engine.close()
    exact = stored == load.expected and int(lines["n"]) == sum(load.expected.values())
    exact = exact and int(lines["o"]) == len(load.expected)
    ordered = sorted(load.latencies)
    return {
        "events/s": load.events_sent / elapsed,
        "requests/s": len(ordered) / elapsed,
        "p50 ms": 1000 * statistics.median(ordered),
        "p99 ms": 1000 * ordered[int(len(ordered) * 0.99) - 1],
        "errors": sum(load.errors.values()),
        "error codes": dict(sorted(load.errors.items())),
        "stored": len(stored),
        "exactly once": exact,
        "seconds": elapsed,
    }


def fill(db: str, rows: int, groups: int = 20_000, teams: int = 20) -> float:
    """`rows` escalations in `groups` groups of `teams` teams, written in the database
    itself (SQL's own row generators): the inbox's worst case is its data, not how it
    came in. Returns the seconds the fill took."""
    started = time.perf_counter()
    engine = open_engine(db)
    now = time.time()
    body = '{"lines": ["' + "x" * 300 + '"]}'

    def write(conn: Any) -> None:
        series = (
            "generate_series(0, ? - 1) AS s(n)"
            if conn.kind == "postgresql"
            else "(WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < ?)"
            " SELECT n FROM s) AS s"
        )
        conn.execute(
            "INSERT INTO escalations SELECT 'bench', 'team-' || (n % ?), 'host-' || (n % 5000),"
            " 'e' || n, 'r' || n, ? - (n % 86400) * 30.0, 'web', 'p' || (n % 200), 'error',"
            " 'no-remedy', 'fp' || (n % ?), 1 + n % 7, ? - 86400 * 30.0, ? - (n % 86400) * 30.0,"
            f" ? FROM {series}",
            (teams, now, groups, now, now, body, rows),
        )
        conn.execute(
            "INSERT INTO groups SELECT 'team-' || (n % ?), 'fp' || n, 'g' || n, 'web',"
            " 'p' || (n % 200), '', 'error', 'open', '', NULL, 0, ? - 86400 * 30.0,"
            " ? - (n % 86400) * 30.0, ?, ? / ?, 4 * ? / ?, NULL"
            f" FROM {series}",
            (teams, now, now, now, rows, groups, rows, groups, groups),
        )

    engine.write(write)
    with engine.read() as conn:  # the planner's statistics, as autovacuum would make them
        conn.execute("ANALYZE")
    engine.close()
    return time.perf_counter() - started


def inbox_times(db: str, rounds: int = 7) -> dict[str, float]:
    """The median time of the console's inbox query (store.inbox, what GET / runs) for an
    admin (every team) and for one team, default view and sorted by lines."""
    store = ReceiverStore(db)
    now = time.time()
    cases = {
        "admin, open, 7 days": (None, InboxView()),
        "one team, open, 7 days": (("team-3",), InboxView()),
        "one team, all, by lines": (("team-3",), InboxView.parse({"state": "all", "window": "all", "sort": "lines"})),
        "admin, one host, 30 days": (None, InboxView.parse({"host": "host-42", "window": "30d"})),
    }  # fmt: skip
    found: dict[str, float] = {}
    for name, (owners, view) in cases.items():
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            page, _ = store.inbox(owners, view, now)
            times.append(time.perf_counter() - started)
            assert page, name
        found[name] = 1000 * statistics.median(times)
    store.close()
    return found


@contextmanager
def databases(engines: list[str]) -> Iterator[Any]:
    """A new database per run: a SQLite file, or a database on a throwaway cluster."""
    tmp = Path(tempfile.mkdtemp(prefix="logmend-bench-"))
    cluster = None
    names = iter(range(1000))
    try:
        if "postgresql" in engines:
            from tests.pg import throwaway_cluster

            cluster = throwaway_cluster()

        def new(kind: str) -> str:
            if kind == "sqlite":
                return str(tmp / f"r{next(names)}.db")
            assert cluster is not None
            return str(cluster.new_database())

        yield new
    finally:
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--receivers", default="1,2,4")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--inbox-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    engines = args.engines.split(",")
    counts = [int(n) for n in args.receivers.split(",")]
    print(f"# Receiver load ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)\n")
    print(f"{args.agents} agents x {args.batches} batches x {args.batch} events"
          " (after the first batch: half new, a quarter duplicates, a quarter higher counts)\n")  # fmt: skip
    print("| engine | receivers | events/s | vs 1 on SQLite | requests/s | p50 ms | p99 ms |"
          " errors (retried) | stored | exactly once |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    with databases(engines) as new:
        baseline = None
        for kind in engines:
            for n in counts:
                r = run_load(new(kind), n, args.agents, args.batches, args.batch)
                baseline = baseline or r["events/s"]
                codes = ", ".join(f"{c or 'cut'}: {k}" for c, k in r["error codes"].items())
                print(
                    f"| {kind} | {n} | {r['events/s']:,.0f} | {r['events/s'] / baseline:.2f}x |"
                    f" {r['requests/s']:,.0f} | {r['p50 ms']:.0f} | {r['p99 ms']:.0f} |"
                    f" {r['errors']}{f' ({codes})' if codes else ''} | {r['stored']:,} |"
                    f" {'yes' if r['exactly once'] else 'NO'} |",
                    flush=True,
                )
        if args.inbox_rows:
            print(
                f"\n## The inbox over {args.inbox_rows:,} escalations (20,000 groups, 20 teams)\n"
            )
            print("| engine | fill s | " + " | ".join(
                ["admin, open, 7 days", "one team, open, 7 days", "one team, all, by lines",
                 "admin, one host, 30 days"]) + " |")  # fmt: skip
            print("|---|---|---|---|---|---|")
            for kind in engines:
                db = new(kind)
                ReceiverStore(db).close()
                filled = fill(db, args.inbox_rows)
                times = inbox_times(db)
                print(f"| {kind} | {filled:.0f} | " + " | ".join(f"{t:.0f} ms" for t in times.values()) + " |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
