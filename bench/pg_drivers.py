"""Which PostgreSQL driver for the receiver: psycopg 3 (what it uses) against asyncpg.

Usage: python -m bench.pg_drivers [--transactions 3000] [--threads 4]

Both run the store's shape of work on a throwaway cluster (tests/pg.py): one
transaction per event that inserts it unless its key is known (ON CONFLICT DO
NOTHING), locks and reads the row, and upserts its group, as `ReceiverStore.store`
does; then a read of one row by key, as every request's token check does. psycopg
runs from `--threads` threads sharing its pool (the store's model: Starlette's
thread pool); asyncpg from as many tasks sharing its pool, on one event loop.
Each figure is the best of three rounds; asyncpg is measured only if installed
(`pip install asyncpg`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

DDL = """
CREATE TABLE IF NOT EXISTS e (k TEXT PRIMARY KEY, n BIGINT NOT NULL, g TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS g (g TEXT PRIMARY KEY, lines BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS t (h TEXT PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO t VALUES ('abc', 'fleet') ON CONFLICT DO NOTHING;
"""


def with_psycopg(url: str, transactions: int, threads: int, tag: str) -> tuple[float, float]:
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(url, min_size=threads, max_size=threads, open=True,
                          kwargs={"autocommit": True, "row_factory": dict_row})  # fmt: skip

    def write(i: int) -> None:
        with pool.connection() as conn, conn.transaction():
            key = f"{tag}{i}"
            conn.execute(
                "INSERT INTO e VALUES (%s, 1, %s) ON CONFLICT DO NOTHING", (key, f"g{i % 50}")
            )
            conn.execute("SELECT n FROM e WHERE k = %s FOR UPDATE", (key,)).fetchone()
            conn.execute(
                "INSERT INTO g VALUES (%s, 1) ON CONFLICT (g) DO UPDATE SET lines = g.lines + 1",
                (f"g{i % 50}",),
            )

    def read(_: int) -> None:
        with pool.connection() as conn:
            conn.execute("SELECT name FROM t WHERE h = %s", ("abc",)).fetchone()

    try:
        with ThreadPoolExecutor(threads) as ex:
            started = time.perf_counter()
            list(ex.map(write, range(transactions)))
            writes = transactions / (time.perf_counter() - started)
            started = time.perf_counter()
            list(ex.map(read, range(transactions)))
            reads = transactions / (time.perf_counter() - started)
    finally:
        pool.close()
    return writes, reads


def with_asyncpg(url: str, transactions: int, tasks: int, tag: str) -> tuple[float, float]:
    import asyncpg  # type: ignore[import-not-found]

    async def run() -> tuple[float, float]:
        pool = await asyncpg.create_pool(url, min_size=tasks, max_size=tasks)
        queue = list(range(transactions))

        async def writer() -> None:
            while queue:
                i = queue.pop()
                async with pool.acquire() as conn, conn.transaction():
                    key = f"{tag}{i}"
                    await conn.execute(
                        "INSERT INTO e VALUES ($1, 1, $2) ON CONFLICT DO NOTHING", key, f"g{i % 50}"
                    )
                    await conn.fetchrow("SELECT n FROM e WHERE k = $1 FOR UPDATE", key)
                    await conn.execute(
                        "INSERT INTO g VALUES ($1, 1) ON CONFLICT (g) DO UPDATE SET lines = g.lines + 1",
                        f"g{i % 50}",
                    )

        async def reader(count: int) -> None:
            for _ in range(count):
                async with pool.acquire() as conn:
                    await conn.fetchrow("SELECT name FROM t WHERE h = $1", "abc")

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(tasks)))
        writes = transactions / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(reader(transactions // tasks) for _ in range(tasks)))
        reads = transactions / (time.perf_counter() - started)
        await pool.close()
        return writes, reads

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    from tests.pg import throwaway_cluster

    cluster = throwaway_cluster()
    try:
        url = cluster.new_database()
        cluster.psql(DDL, url.rsplit("/", 1)[1].split("?")[0])
        drivers: dict[str, Callable[[str, int, int, str], tuple[float, float]]] = {
            "psycopg 3 (threads, pool)": with_psycopg
        }
        try:
            import asyncpg  # noqa: F401

            drivers["asyncpg (tasks, pool)"] = with_asyncpg
        except ImportError:
            print("asyncpg is not installed: psycopg alone\n")
        best: dict[str, tuple[float, float]] = {}
        for round_ in range(3):
            for name, run in drivers.items():
                w, r = run(url, args.transactions, args.threads, f"{round_}{name[:3]}")
                old = best.get(name, (0.0, 0.0))
                best[name] = (max(old[0], w), max(old[1], r))
        base = best["psycopg 3 (threads, pool)"]
        print("| driver | write transactions/s | vs psycopg | token reads/s | vs psycopg |")
        print("|---|---|---|---|---|")
        for name, (w, r) in best.items():
            print(f"| {name} | {w:,.0f} | {w / base[0]:.2f}x | {r:,.0f} | {r / base[1]:.2f}x |")
    finally:
        cluster.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
