"""Issue 20: the journal source's append-to-fix latency, idle CPU and backlog throughput,
each as a ratio against a baseline measured in the same run.

Usage: python -m bench.journal [--trials 100] [--idle-seconds 30] [--backlog 50000]
                                [--rounds 3] [--quiet-entries 3000]

Real journal files, written without journald by `systemd-journal-remote` fed the journal
export format on stdin (as tests/test_journal.py does), read by the real agent through
the real journalctl.

Latency: one systemd-journal-remote stays running for the section, as journald would,
and each trial's matching entry is written to its stdin pipe, the time taken just before
that write (so its start-up, ~10 ms a process, is in no figure); the fix script stamps
its own start; median and p99 of the difference, one trial at a time. Baselines: the
same writes until the agent's own journalctl command line, run alone, prints them (the
floor the journal's reader sets), and the agent following a file, the same message
appended (time taken just before the write), as bench/latency.py does.

Backlog: N entries (1% matching a pattern without a remedy) appear at once in what a
running agent follows: for the journal a new journal file renamed into the followed
folder (as a rotation makes one), for the file one append of the same lines; timed until
the state database holds the last entry's cursor (the file's end as its checkpoint).
Another baseline, the floor: the agent's journalctl command line, not following, dumping
them. Median of a few rounds, each with new agents.

Idle: an agent on a journal of a few thousand entries, read from the start, and one on a
file of the same lines, then nothing written, side by side for the same window; CPU of
each agent and of the journal one's journalctl child.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from agent.journal import JournalSpec, argv
from bench.latency import PACK, STAMP, rss_mb

REMOTE = next(
    (p for p in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
     if Path(p).exists()),
    None,
)  # fmt: skip
UNIT = "bench.service"
WARM = 1_000_000  # warm-up trials' numbers: the first fix's one-off costs are in no figure
BACKLOG_PACK = """[pack]
name = "backlog"
version = "1"
owner = "bench"

[[pattern]]
id = "hit"
match = '''^BACKLOG HIT (?P<n>\\d+)$'''
key = "hit"
escalate = "never"

[[pattern.example]]
line = "BACKLOG HIT 1"
"""


def poll(condition: Callable[[], Any], timeout: float, every: float = 0.005) -> Any:
    """`condition`'s value once truthy, or its last value when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


# -- the journal, written as journald would ------------------------------------------------


class JournalWriter:
    """One systemd-journal-remote writing `folder/NAME.journal` from its stdin."""

    def __init__(self, folder: Path, name: str) -> None:
        assert REMOTE is not None
        folder.mkdir(parents=True, exist_ok=True)
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [REMOTE, f"--output={folder / name}.journal", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.errors,
        )
        self.boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        self.n = 0

    def export(self, messages: Iterable[str]) -> bytes:
        out = bytearray()
        for message in messages:
            self.n += 1
            out += (
                f"__REALTIME_TIMESTAMP={time.time_ns() // 1000}\n"
                f"__MONOTONIC_TIMESTAMP={time.monotonic_ns() // 1000}\n"
                f"_BOOT_ID={self.boot}\n_SYSTEMD_UNIT={UNIT}\nSYSLOG_IDENTIFIER=bench\n"
                f"_PID=4242\nPRIORITY=6\n_HOSTNAME=bench-1\nMESSAGE={message}\n\n"
            ).encode()
        return bytes(out)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.returncode != 0:
            self.errors.seek(0)
            raise RuntimeError(f"systemd-journal-remote: {self.errors.read().decode()[-500:]}")
        self.errors.close()


def last_cursor(folder: Path) -> str:
    done = subprocess.run(
        ["journalctl", f"--directory={folder}", f"--unit={UNIT}", "--output=json", "--lines=1",
         "--no-pager", "--quiet"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return str(json.loads(done.stdout)["__CURSOR"])


def journalctl_children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            following = b"--follow" in (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        parent = int(text.rsplit(")", 1)[1].split()[1])
        if comm == "journalctl" and parent == pid and following:  # not a one-off lookup
            found.append(int(stat.parent.name))
    return found


def kill_if_journalctl(pid: int) -> None:
    try:
        if "(journalctl)" in Path(f"/proc/{pid}/stat").read_text():
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


# -- the agent -----------------------------------------------------------------------------


class Agent:
    """`python -m agent run -c CONFIG` in a folder of its own, with both packs."""

    def __init__(self, root: Path, source: str) -> None:
        self.root = root
        self.on_journal = source.startswith("journal")
        self.stamps = root / "stamps"
        pack = root / "packs" / "latency"
        (pack / "scripts").mkdir(parents=True, exist_ok=True)
        (pack / "pack.toml").write_text(PACK.replace("OUT", str(self.stamps)))
        script = pack / "scripts" / "stamp.sh"
        script.write_text(STAMP)
        script.chmod(0o755)
        (root / "packs" / "backlog").mkdir()
        (root / "packs" / "backlog" / "pack.toml").write_text(BACKLOG_PACK)
        self.config = root / "agent.toml"
        self.config.write_text(
            f'[agent]\nstate_dir = "{root / "state"}"\npacks = ["{root / "packs"}"]\n'
            f'allow_root = ["latency"]\n[[source]]\n{source}\npacks = ["latency", "backlog"]\n'
        )
        self.log: collections.deque[bytes] = collections.deque(maxlen=20)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kids: set[int] = set()

    def start(self) -> Agent:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if b" running: " in line:
                # keep draining its log, or a full pipe would stall the agent being measured
                threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
                return self
        raise RuntimeError(f"agent did not start: {self.tail()}")

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.log.append(line)

    def tail(self) -> str:
        return b"".join(self.log).decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def journalctl(self) -> int | None:
        """The journalctl that follows for it (once it is running)."""
        kids = journalctl_children(self.pid)
        self.kids.update(kids)
        return kids[0] if len(kids) == 1 else None

    def running_kids(self) -> list[int]:
        return [kid for kid in self.kids if Path(f"/proc/{kid}").exists()]

    def fixed(self) -> dict[str, float]:
        try:
            text = self.stamps.read_text()
        except FileNotFoundError:
            return {}
        return dict((n, float(t)) for n, t in (line.split() for line in text.splitlines()))

    def committed(self, query: str) -> list[Any]:
        db = self.root / "state" / "state.db"
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                return [row[0] for row in conn.execute(query)]
        except sqlite3.Error:
            return []

    def stop(self) -> None:
        if self.proc is None:
            return
        self.journalctl()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for kid in self.kids:  # its own session: a killed agent would leave it following
            kill_if_journalctl(kid)


# -- latency -------------------------------------------------------------------------------


def trials(
    count: int, write: Callable[[str], object], seen: Callable[[], dict[str, float]]
) -> list[float]:
    """Milliseconds from each write until `seen` has its number, one trial at a time,
    after warm-up writes until one is seen (the reader is following by then)."""
    deadline = time.monotonic() + 60
    for k in range(1000):
        write(f"LATENCY TRIGGER {WARM + k}")
        if poll(lambda: str(WARM + k) in seen(), 2.0):  # noqa: B023 (called at once)
            break
        if time.monotonic() > deadline:
            raise RuntimeError("no warm-up line came through in 60 s")
    delays = []
    for n in range(count):
        time.sleep(random.uniform(0.02, 0.05))  # pacing, off any timer's beat
        sent = time.time()
        write(f"LATENCY TRIGGER {n}")
        got = poll(lambda: seen().get(str(n)), 10.0)  # noqa: B023 (called at once)
        if got:
            delays.append((got - sent) * 1000)
    return sorted(delays)


def p99(delays: list[float]) -> float:
    return delays[min(len(delays) - 1, int(len(delays) * 0.99))]


def latency_floor(folder: Path, writer: JournalWriter, count: int) -> list[float]:
    """The agent's own journalctl command line, alone: each entry until it prints it."""
    args = argv(JournalSpec(units=(UNIT,), directory=folder), None, False, "journalctl")
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    arrived: dict[str, float] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time()
            message = json.loads(line).get("MESSAGE", "")
            if isinstance(message, str) and message.startswith("LATENCY TRIGGER "):
                arrived[message.split()[-1]] = now

    threading.Thread(target=read, daemon=True).start()
    try:
        if not poll(lambda: follows(proc.pid), 10.0):
            raise RuntimeError("journalctl did not open the journal")
        return trials(count, lambda m: writer.write(writer.export([m])), lambda: arrived)
    finally:
        proc.kill()
        proc.wait()


def latency_agent_journal(
    root: Path, folder: Path, writer: JournalWriter, count: int
) -> list[float]:
    agent = Agent(root, journal_source(folder, "end"))
    try:
        agent.start()
        return trials(count, lambda m: writer.write(writer.export([m])), agent.fixed)
    finally:
        agent.stop()


def latency_agent_file(root: Path, count: int) -> list[float]:
    root.mkdir(parents=True)
    log = root / "bench.log"
    log.write_text("first line\n")
    agent = Agent(root, f'path = "{log}"')
    handle = log.open("ab", buffering=0)
    try:
        agent.start()
        return trials(count, lambda m: handle.write(f"{m}\n".encode()), agent.fixed)
    finally:
        handle.close()
        agent.stop()


# -- backlog and idle ------------------------------------------------------------------------


def backlog(count: int) -> Iterable[str]:
    for i in range(count):
        if i % 100 == 50:
            yield f"BACKLOG HIT {i}"
        else:
            yield f"worker {i % 7} served GET /items/{i} in {i % 250} ms status=200"


def follows(pid: int) -> bool:
    """Whether journalctl has the journal open and waits on inotify (it is following)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        links = [os.readlink(fds / fd) for fd in os.listdir(fds)]
    except OSError:
        return False
    return "anon_inode:inotify" in links and any(link.endswith(".journal") for link in links)


def read_backlog(
    agent: Agent, put: Callable[[], object], done: Callable[[], bool], count: int
) -> tuple[float, float, float, int]:
    """(seconds, CPU seconds of the agent, of its journalctl; matches counted) from `put`
    of the backlog into what the running agent follows until `done`."""
    try:
        agent.start()
        if agent.on_journal:
            kid = poll(agent.journalctl, 30.0)
            if not kid or not poll(lambda: follows(kid), 30.0):
                raise RuntimeError(f"the agent's journalctl is not following: {agent.tail()}")

        def cpu() -> tuple[float, float]:
            return cpu_exact(agent.pid), sum(map(cpu_exact, agent.running_kids()))

        cpu0, t0 = cpu(), time.monotonic()
        put()
        if not poll(done, max(60.0, count / 500), every=0.01):
            raise RuntimeError(f"backlog not read in time: {agent.tail()}")
        seconds, cpu1 = time.monotonic() - t0, cpu()
        hits = agent.committed(
            "SELECT COALESCE(SUM(count), 0) FROM incidents WHERE pattern = 'hit'"
        )
        return seconds, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], hits[0] if hits else 0
    finally:
        agent.stop()


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def cpu_exact(pid: int) -> float:
    """CPU seconds of a process's threads from their schedstat, in nanoseconds: a quiet
    agent spends less than one of /proc/PID/stat's 10 ms ticks in many seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def dump_seconds(folder: Path) -> float:
    """The agent's journalctl command line over `folder`, not following: its output read."""
    args = [a for a in argv(JournalSpec((UNIT,), directory=folder), None, True, "journalctl")
            if a != "--follow"]  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=300, check=True)
    return time.monotonic() - t0


def latency(root: Path, count: int) -> tuple[list[float], list[float], list[float]]:
    """(journalctl floor, agent on the journal, agent on a file) delays in ms."""
    live = root / "live"
    writer = JournalWriter(live, "live")
    try:  # journalctl --lines=0 --follow wants entries there already
        writer.write(writer.export(f"before the trials {n}" for n in range(10)))
        if not poll(lambda: last_cursor_or_none(live), 10.0, every=0.05):
            raise RuntimeError("systemd-journal-remote wrote nothing")
        floor = latency_floor(live, writer, count)
        journal = latency_agent_journal(root / "agent-journal", live, writer, count)
    finally:
        writer.close()
    return floor, journal, latency_agent_file(root / "agent-file", count)


def write_journal(folder: Path, name: str, lines: list[str]) -> None:
    writer = JournalWriter(folder, name)
    try:
        for at in range(0, len(lines), 5000):
            writer.write(writer.export(lines[at : at + 5000]))
    finally:
        writer.close()


def backlog_round(root: Path, lines: list[str]) -> dict[str, Any]:
    """The backlog read by an agent on the journal, one on a file, and journalctl alone."""
    staging, folder = root / "staging", root / "journal"
    write_journal(folder, "seed", [f"seed {n}" for n in range(10)])  # followed before
    write_journal(staging, "backlog", lines)
    cursor = last_cursor(staging)
    got: dict[str, Any] = {"dump": dump_seconds(staging)}
    on_journal = Agent(root / "agent-journal", journal_source(folder, "end"))
    got["journal"] = read_backlog(
        on_journal,
        lambda: (staging / "backlog.journal").rename(folder / "backlog.journal"),
        lambda: cursor in on_journal.committed("SELECT cursor FROM journal_cursors"),
        len(lines),
    )
    log = root / "bench.log"
    log.write_text("".join(f"seed {n}\n" for n in range(10)))
    data = "".join(f"{line}\n" for line in lines).encode()
    size = log.stat().st_size + len(data)
    on_file = Agent(root / "agent-file", f'path = "{log}"')
    got["file"] = read_backlog(
        on_file,
        lambda: append(log, data),
        lambda: size in on_file.committed("SELECT offset FROM checkpoints"),
        len(lines),
    )
    return got


def idle(root: Path, count: int, seconds: float) -> dict[str, Any]:
    """CPU (ms a minute) and RSS of an agent following a quiet journal, with its
    journalctl, and of one following a quiet file, side by side; `count` entries read."""
    lines = list(backlog(count))
    folder, log = root / "journal", root / "quiet.log"
    write_journal(folder, "quiet", lines)
    cursor = last_cursor(folder)
    log.write_text("".join(f"{line}\n" for line in lines))
    size = log.stat().st_size
    on_journal = Agent(root / "agent-journal", journal_source(folder, "beginning"))
    on_file = Agent(root / "agent-file", f'path = "{log}"\nstart = "beginning"')
    got: dict[str, Any] = {}
    try:
        on_journal.start()
        on_file.start()
        if not poll(
            lambda: (
                cursor in on_journal.committed("SELECT cursor FROM journal_cursors")
                and size in on_file.committed("SELECT offset FROM checkpoints")
            ),
            60.0,
            every=0.05,
        ):
            raise RuntimeError(f"not read: {on_journal.tail()} {on_file.tail()}")
        kid = on_journal.journalctl()
        if kid is None:
            raise RuntimeError(f"no single journalctl under the agent: {on_journal.tail()}")
        pids = (on_journal.pid, kid, on_file.pid)
        time.sleep(2)  # let the last commits and start-up work settle before idling
        before, t0 = [cpu_exact(p) for p in pids], time.monotonic()
        time.sleep(seconds)  # the idle window itself
        after, elapsed = [cpu_exact(p) for p in pids], time.monotonic() - t0
        got["idle"] = [(a - b) / elapsed * 60_000 for a, b in zip(after, before, strict=True)]
        got["rss"] = [rss_mb(p) for p in pids]
        got["rss_file"] = rss_file_mb(kid)
    finally:
        on_journal.stop()
        on_file.stop()
    return got


def journal_source(folder: Path, start: str) -> str:
    return f'journal = {{ directory = "{folder}", units = ["{UNIT}"] }}\nstart = "{start}"'


def rss_file_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="of the backlog (median)")
    parser.add_argument("--quiet-entries", type=int, default=3000, help="read before idling")
    args = parser.parse_args()
    if REMOTE is None or shutil.which("journalctl") is None:
        print("needs systemd-journal-remote and journalctl (Debian: systemd-journal-remote)")
        return 1
    with tempfile.TemporaryDirectory(prefix="logmend-journal-") as tmp:
        root = Path(tmp)
        floor, journal, file = latency(root, args.trials)
        if not (floor and journal and file):
            print(f"no trial came through: floor {len(floor)}, journal {len(journal)}, "
                  f"file {len(file)}")  # fmt: skip
            return 1
        lines = list(backlog(args.backlog))
        rounds = [backlog_round(root / f"backlog-{k}", lines) for k in range(args.rounds)]
        got = idle(root / "idle", args.quiet_entries, args.idle_seconds)
    print(report(args, floor, journal, file, rounds, got))
    return 0


def last_cursor_or_none(folder: Path) -> str | None:
    try:
        return last_cursor(folder)
    except (subprocess.CalledProcessError, ValueError, KeyError):
        return None


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "—"


def report(
    args: argparse.Namespace,
    floor: list[float],
    journal: list[float],
    file: list[float],
    rounds: list[dict[str, Any]],
    got: dict[str, Any],
) -> str:
    n = args.backlog
    jm, fm, flm = (statistics.median(d) for d in (journal, file, floor))

    def med(key: str, at: int | None = None) -> float:
        return float(statistics.median(r[key] if at is None else r[key][at] for r in rounds))

    j_s, j_cpu, jctl_cpu, f_s, f_cpu = (med("journal", 0), med("journal", 1), med("journal", 2),
                                        med("file", 0), med("file", 1))  # fmt: skip
    j_rate, f_rate, dump_rate = n / j_s, n / f_s, n / med("dump")
    hits = [f"{r['journal'][3]}/{r['file'][3]}" for r in rounds]
    idle, rss = got["idle"], got["rss"]
    j_idle = idle[0] + idle[1]
    rows = [
        ("append-to-fix latency, median, vs the file source", f"{jm:.1f} ms", f"{fm:.1f} ms",
         ratio(jm, fm)),
        ("append-to-fix latency, p99, vs the file source", f"{p99(journal):.1f} ms",
         f"{p99(file):.1f} ms", ratio(p99(journal), p99(file))),
        ("append-to-fix latency, median, vs journalctl printing it (floor)", f"{jm:.1f} ms",
         f"{flm:.2f} ms", ratio(jm, flm)),
        ("append-to-fix latency, p99, vs journalctl printing it (floor)",
         f"{p99(journal):.1f} ms", f"{p99(floor):.2f} ms", ratio(p99(journal), p99(floor))),
        ("trials: fixes / entries (baselines: file fixes; journalctl printed)",
         f"{len(journal)} / {args.trials}",
         f"{len(file)} / {args.trials}; {len(floor)} / {args.trials}", ""),
        (f"idle CPU, quiet source ({args.quiet_entries:,} read), {args.idle_seconds:.0f} s, "
         "agent + journalctl vs agent",
         f"{j_idle:.1f} ms/min ({idle[0]:.1f} + {idle[1]:.1f})", f"{idle[2]:.1f} ms/min",
         ratio(j_idle, idle[2])),
        ("idle RSS, agent + journalctl vs agent",
         f"{rss[0]:.0f} + {rss[1]:.0f} MB (of it {got['rss_file']:.0f} MB mapped files)",
         f"{rss[2]:.0f} MB", ratio(rss[0] + rss[1], rss[2])),
        (f"backlog of {n:,} (1% matching) at once, median of {len(rounds)}, vs the file",
         f"{j_rate:,.0f} entries/s ({j_s:.2f} s)", f"{f_rate:,.0f} lines/s ({f_s:.3f} s)",
         ratio(j_rate, f_rate)),
        ("backlog, vs journalctl alone dumping it (floor)", f"{j_rate:,.0f} entries/s",
         f"{dump_rate:,.0f} entries/s ({med('dump'):.2f} s)", ratio(j_rate, dump_rate)),
        ("backlog CPU, agent + journalctl vs agent",
         f"{j_cpu + jctl_cpu:.2f} s ({j_cpu:.2f} + {jctl_cpu:.2f})", f"{f_cpu:.2f} s",
         ratio(j_cpu + jctl_cpu, f_cpu)),
        (f"backlog matches counted, journal/file each round (of {n // 100})", ", ".join(hits),
         "", ""),
    ]  # fmt: skip
    table = "\n".join(f"| {' | '.join(row)} |" for row in rows)
    return (
        "| measure | journal source | baseline | ratio |\n|---|---|---|---|\n"
        f"{table}\n\n"
        "Entries are written to the stdin of one systemd-journal-remote kept running (as "
        "journald would be); the time is taken just before that write, the same place for "
        "the agent and for the journalctl floor, so the writer's start-up (~10 ms a process) "
        "is in neither. The floor is the agent's own journalctl command line, alone, its "
        "lines read by a Python thread. The file baseline appends the same message to a "
        "followed file. Backlog: the journal's as a new journal file renamed into the "
        "followed folder (as a rotation makes one), the file's as one append of the same "
        "lines; timed until the state database has the last cursor / offset. Idle: both agents "
        "side by side, what was there read, nothing written. CPU from the threads' "
        "/proc/PID/task/*/schedstat (ns; /proc/PID/stat counts 10 ms ticks)."
    )


if __name__ == "__main__":
    raise SystemExit(main())
