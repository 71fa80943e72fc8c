"""The systemd journal as a source: entries read through the journal's own reader.

`journalctl --output=json --follow --all` (Vector's approach) reads the journal
files as journald writes them, rotates and vacuums them; the agent builds no C
extension and links no libsystemd. One follower per journal source runs it, and
a thread turns its lines into entries in a bounded queue: when the reader falls
behind, the queue fills, the thread waits, and journalctl waits on its pipe, so
nothing is dropped and memory stays bounded. A quiet journal costs a blocked
read. A journalctl that dies is started again after a backoff, from the cursor
of the last entry read, and said in `status` and the metrics.

Each entry carries its cursor; the reader commits the cursor of the last entry
it processed in the same transaction as what the entries caused, so a restart
resumes `--after-cursor` at the right entry. A cursor the journal no longer has
(vacuumed) resumes at the oldest entry still there; the sequence numbers of the
cursor and of that entry say how many were lost.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("logmend.journal")

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
FIELDS = {  # journal field -> the name a pattern's key, template and escalation see
    "_SYSTEMD_UNIT": "unit",
    "SYSLOG_IDENTIFIER": "identifier",
    "_PID": "pid",
    "PRIORITY": "priority",
    "_HOSTNAME": "hostname",
}
MAX_FIELD = 256  # characters of a unit, identifier ... (a field is attacker input too)
QUEUE = 10_000  # entries read ahead of the reader
JSON_SLACK = 64 * 1024  # a JSON line may be this much longer than its message


@dataclass(frozen=True, slots=True)
class JournalSpec:
    """`[[source]] journal = {units, identifiers, priority, directory}`."""

    units: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    priority: str = ""  # the least urgent taken: a name in PRIORITIES or 0-7
    directory: Path | None = None  # another journal than the system's (journalctl --directory)

    @property
    def name(self) -> str:
        """What keys its cursor, status and metrics: every setting that chooses entries."""
        parts = [",".join(self.units)] if self.units else []
        if self.identifiers:
            parts.append("identifier=" + ",".join(self.identifiers))
        if self.priority:
            parts.append(f"priority={self.priority}")
        where = f" in {self.directory}" if self.directory else ""
        return (" ".join(parts) or "all units") + where

    @property
    def globbed(self) -> bool:
        """Whether a unit is a glob: journalctl expands `--unit` globs once, at its start,
        against the units already in the journal (an instance started later would never
        be read, one not there yet makes it exit); such units are matched here instead."""
        return any(set(unit) & set("*?[") for unit in self.units)

    def wants(self, entry: Entry) -> bool:
        """Whether a globbed source takes an entry: of one of its units, or about one
        (systemd's own messages, PID 1's UNIT=), as journalctl's --unit would."""
        return any(
            fnmatchcase(entry.fields.get("unit", ""), glob)
            or (entry.about and fnmatchcase(entry.about, glob))
            for glob in self.units
        )


@dataclass(frozen=True, slots=True)
class Entry:
    cursor: str
    message: str
    fields: Mapping[str, str]
    garbage: bool = False  # a MESSAGE that is binary or past the line limit, or no JSON
    about: str = ""  # the unit systemd (PID 1) speaks of, its UNIT= field
    wanted: bool = True  # False: read (its cursor counts) but not the source's


def argv(
    spec: JournalSpec,
    cursor: str | None,
    from_start: bool,
    journalctl: str,
    at: bool = False,
    machine: str = "",
) -> list[str]:
    """journalctl's arguments: follow from after `cursor` (or at it, `at`), else from the
    journal's start (`from_start`) or its end.

    `--merge`: since systemd 250, `--follow` alone implies `--boot` (this boot only),
    so a cursor of the boot before would skip what was logged between the agent's
    stop and the reboot, and the new boot's first entry (Vector #18068, systemd
    #38912). Merged, the system journal would take other machines' journals too
    (journal-remote's): the follower names this host's folder as `directory`, or, with
    none, `machine` keeps it to this host's entries."""
    args = [journalctl, "--output=json", "--follow", "--merge", "--all", "--no-pager", "--quiet"]
    if spec.directory is not None:
        args.append(f"--directory={spec.directory}")
    elif machine:
        args.append(f"_MACHINE_ID={machine}")
    args += filters(spec)
    if cursor:
        args.append(f"--cursor={cursor}" if at else f"--after-cursor={cursor}")
    elif from_start:
        args.append("--no-tail")
    else:
        args.append("--lines=0")
    return args


def filters(spec: JournalSpec) -> list[str]:
    """journalctl's arguments that choose the source's entries (not globbed units)."""
    args = [] if spec.globbed else [f"--unit={unit}" for unit in spec.units]
    args += [f"--identifier={name}" for name in spec.identifiers]
    if spec.priority:
        args.append(f"--priority={spec.priority}")
    return args


def parse(line: bytes, max_line: int) -> Entry | None:
    """One line of journalctl's JSON as an entry; None when it names no cursor (then it
    is no entry at all)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("__CURSOR"), str):
        return None
    message, garbage = _message(doc.get("MESSAGE"), max_line)
    fields = {}
    for name, key in FIELDS.items():
        value = doc.get(name)
        if isinstance(value, str) and value.isprintable():
            fields[key] = value[:MAX_FIELD]
    about = doc.get("UNIT") if doc.get("_PID") == "1" else None
    about = about[:MAX_FIELD] if isinstance(about, str) and about.isprintable() else ""
    return Entry(doc["__CURSOR"], message, fields, garbage, about)


def _message(value: Any, max_line: int) -> tuple[str, bool]:
    """The MESSAGE as text: a string as it is, binary (a list of byte values) decoded
    with replacement and marked garbage, as a line of a file that is no text would be;
    past `max_line` bytes cut and marked."""
    if isinstance(value, list):
        try:
            raw = bytes(v for v in value if isinstance(v, int) and 0 <= v < 256)
        except ValueError:
            raw = b""
        return raw[:max_line].decode("utf-8", "replace"), True
    if not isinstance(value, str):
        return "", True  # absent or null: journalctl could not show it
    if len(value) > max_line // 4 and len(value.encode("utf-8", "surrogatepass")) > max_line:
        return value.encode("utf-8", "surrogatepass")[:max_line].decode("utf-8", "ignore"), True
    return value, False


def seqnum(cursor: str) -> tuple[str, int] | None:
    """(sequence number id, sequence number) of a cursor, if it says them."""
    parts = dict(p.split("=", 1) for p in cursor.split(";") if "=" in p)
    try:
        return parts["s"], int(parts["i"], 16)
    except (KeyError, ValueError):
        return None


def lost_between(cursor: str, first: str) -> int | None:
    """How many entries lie between a resumed cursor and the first entry read after it
    (vacuumed); None when the two are of different sequences and no count is known."""
    before, after = seqnum(cursor), seqnum(first)
    if before is None or after is None or before[0] != after[0]:
        return None
    return max(0, after[1] - before[1] - 1)


class ProbeResult(StrEnum):
    ENTRY = "entry"
    EMPTY = "empty"  # journalctl ran and showed nothing
    REFUSED = "refused"  # journalctl would not take the cursor
    FAILED = "failed"  # journalctl could not run, or failed otherwise


@dataclass
class FollowerState:
    """What `status` and the metrics say of a journal source."""

    running: bool = False
    starts: int = 0
    exits: int = 0
    last_error: str = ""
    lost: int = 0  # entries vacuumed before they were read (when the journal can tell)
    resumed_oldest: int = 0  # times the cursor was gone and reading began at the oldest
    garbage: int = 0
    entries: int = 0
    bytes: int = 0  # of journalctl's JSON read
    lines: list[str] = field(default_factory=list)  # journalctl's last words on stderr


class JournalFollower:
    """One journal source: journalctl run, restarted, and read into a bounded queue."""

    def __init__(
        self,
        spec: JournalSpec,
        cursor: str | None,
        from_start: bool,
        max_line: int,
        wake: threading.Event,
        journalctl: str = "journalctl",
        spawn: Callable[[Sequence[str]], subprocess.Popen[bytes]] | None = None,
        backoff: tuple[float, float] = (1.0, 60.0),  # seconds: the first wait, the longest
        monotonic: Callable[[], float] = time.monotonic,
        at: bool = False,  # begin at `cursor`, not after it (a held event read again)
        committed: str = "",  # with `at`: the last entry committed (lost counts after it)
    ) -> None:
        self.spec = spec
        self._at = at and bool(cursor)
        self._committed = committed
        if spec.directory is None:  # this host's own journal folder (see argv)
            self.machine = machine_id()
            self.spec = replace(spec, directory=system_journal(self.machine))
        else:
            self.machine = ""
        self.anchor: str | None = None  # "from now on", resolved: the cursor, "" if empty
        self.from_start = from_start
        self.max_line = max_line
        self.wake = wake
        self.journalctl = journalctl
        self.spawn = spawn or _spawn
        self.backoff = backoff  # doubling, no jitter: one journalctl per source, no herd
        self._failures = 0
        self.monotonic = monotonic
        self.state = FollowerState()
        self.entries: queue.Queue[Entry] = queue.Queue(QUEUE)
        self._read_cursor = cursor  # of the last entry read from journalctl
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._gone = False  # the cursor was vacuumed: read from the oldest entry
        self._next_start = 0.0

    # lifecycle ---------------------------------------------------------------------
    def poll(self) -> None:
        """Start journalctl if it is not running and its backoff has passed (the reader
        calls this every pass; a quiet journal costs nothing here)."""
        if self._stopping.is_set():
            return
        if self._proc is not None:
            if self._proc.poll() is None or (self._thread and self._thread.is_alive()):
                return  # running, or its last lines still on their way to the queue
            self._ended()
        if self.monotonic() < self._next_start:
            return
        self._start()

    def _start(self) -> None:
        cursor = self._read_cursor
        if cursor:
            if not self._check_still_there(cursor):
                return  # journalctl cannot run: again after the backoff
            cursor = self._read_cursor  # None if it was gone: from the oldest entry
        elif not self.from_start and not self._gone:
            # "from now on": after the journal's last entry now, resolved once (and
            # committed: `anchor`), so a restart or an empty journal's first entries
            # lose nothing (journalctl --lines=0 shows none of a file that appears later)
            # of the source's own entries: journalctl --after-cursor of an entry its
            # filters leave out skips the first one they take (systemd 252)
            found, last = self._probe("--lines=1", *filters(self.spec))
            if found in (ProbeResult.FAILED, ProbeResult.REFUSED):
                self._failed(f"cannot find the journal's end: {last}")
                return
            if isinstance(last, Entry):
                self._read_cursor = cursor = self.anchor = last.cursor
            else:
                self.from_start, self.anchor = True, ""  # empty: everything to come is new
        args = argv(
            self.spec,
            cursor,
            self.from_start or self._gone,  # a cursor gone: from the oldest
            self.journalctl,
            self._at,
            self.machine,
        )
        try:
            proc = self.spawn(args)
        except OSError as exc:
            self._failed(f"cannot run {self.journalctl}: {exc}")
            return
        self._proc = proc
        self.state.running = True
        self.state.starts += 1
        self._thread = threading.Thread(
            target=self._read, args=(proc,), name="journal", daemon=True
        )
        self._thread.start()

    def _ended(self) -> None:
        """journalctl exited (or was killed): said, and started again after a backoff."""
        proc, self._proc = self._proc, None
        assert proc is not None
        self.state.exits += 1
        words = " ".join(self.state.lines[-3:])
        self._failed(f"journalctl exited with {proc.returncode}" + (f": {words}" if words else ""))

    def _failed(self, why: str) -> None:
        self.state.running = False
        self.state.last_error = why
        self._failures += 1
        first, longest = self.backoff
        wait = min(longest, first * 2 ** min(self._failures - 1, 30))
        self._next_start = self.monotonic() + wait
        log.error("journal source %s: %s; again in %.1fs", self.name, why, wait)

    def _check_still_there(self, cursor: str) -> bool:
        """Whether the journal still has the entry `cursor` names (False: journalctl
        cannot run). journalctl, asked to follow after a cursor it no longer has, starts
        near it, not at the oldest entry, and what lies between would be lost unsaid;
        one it cannot read makes it exit, again at every restart. Either way reading
        starts at the oldest entry, and the sequence numbers say how many were vacuumed
        unread (of every unit: the journal does not say whose they were)."""
        found, first = self._probe(f"--cursor={cursor}")
        if found == ProbeResult.FAILED:
            self._failed(f"cannot look the cursor up: {first}")
            return False
        if isinstance(first, Entry) and first.cursor == cursor:
            return True
        since = self._committed if self._at and self._committed else cursor
        lost = lost_between(since, first.cursor) if isinstance(first, Entry) else None
        if lost is not None and self._at and since == cursor:
            lost += 1  # the entry it was to begin at is gone too
        self.state.lost += lost or 0
        self.state.resumed_oldest += 1
        self._read_cursor, self._at, self._gone = None, False, True
        if found == ProbeResult.REFUSED:
            why = f"journalctl cannot read its cursor ({first}): resuming at the oldest entry"
        else:
            why = (
                "its cursor is no longer in the journal (vacuumed or rotated away); resuming"
                " at the oldest entry still there; "
                + (
                    f"{lost} entries (of every unit) were vacuumed unread"
                    if lost is not None
                    else "how many were vacuumed unread is not known (another sequence)"
                )
            )
        self.state.last_error = why
        log.warning("journal source %s: %s", self.name, why)
        return True

    def _probe(self, *where: str) -> tuple[ProbeResult, Entry | str | None]:
        """The first entry `journalctl <where>` shows, not following, of any unit (only
        its cursor: a huge entry is no longer line), or what went wrong."""
        args = [self.journalctl, "--output=json", "--output-fields=_BOOT_ID", "--no-pager"]
        args += ["--quiet", "--merge", *where]
        if self.spec.directory is not None:
            args.append(f"--directory={self.spec.directory}")
        elif self.machine:
            args.append(f"_MACHINE_ID={self.machine}")
        try:
            proc = self.spawn(args)
        except OSError as exc:
            return ProbeResult.FAILED, f"cannot run {self.journalctl}: {exc}"
        assert proc.stdout is not None and proc.stderr is not None
        try:
            entry = parse(proc.stdout.readline(JSON_SLACK), self.max_line)
            if entry is not None:
                return ProbeResult.ENTRY, entry
            code = proc.wait(timeout=60)
            words = proc.stderr.read(2000).decode("utf-8", "replace").strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            return ProbeResult.FAILED, f"journalctl: {exc}"
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        if code == 0:
            return ProbeResult.EMPTY, None
        if "cursor" in words.lower():
            return ProbeResult.REFUSED, words[:300]
        return ProbeResult.FAILED, f"journalctl exited with {code}: {words[:300]}"

    @property
    def name(self) -> str:
        return self.spec.name

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            while self._thread.is_alive():  # it may wait on a full queue
                self._drain()
                self._thread.join(timeout=0.05)

    def _drain(self) -> None:
        try:
            while True:
                self.entries.get_nowait()
        except queue.Empty:
            return

    # reading -------------------------------------------------------------------------
    def take(self, most: int) -> list[Entry]:
        """Up to `most` entries, without waiting."""
        out: list[Entry] = []
        try:
            while len(out) < most:
                out.append(self.entries.get_nowait())
        except queue.Empty:
            pass
        return out

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=self._stderr, args=(proc.stderr,), daemon=True).start()
        limit = self.max_line + JSON_SLACK
        for line in _lines(proc.stdout, limit):
            self.state.bytes += len(line)
            entry = parse(line, self.max_line) if line else None
            if entry is None:
                self.state.garbage += (
                    1  # an oversized or unreadable line: the next cursor covers it
                )
                continue
            if self.spec.globbed and not self.spec.wants(entry):
                entry = replace(entry, wanted=False)  # its cursor moves the mark on
            self._failures = 0
            self._at = False  # from now on, after the last entry read
            if entry.garbage:
                self.state.garbage += 1
            self._read_cursor = entry.cursor
            self.state.entries += 1
            while not self._stopping.is_set():
                try:
                    self.entries.put(entry, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self.wake.set()

    def _stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            text = raw.decode("utf-8", "replace").strip()[:300]
            if text:
                self.state.lines = [*self.state.lines[-9:], text]


def _lines(stream: IO[bytes], limit: int) -> Any:
    """The stream's lines; one longer than `limit` is skipped whole and given as b""."""
    while True:
        line = stream.readline(limit)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) >= limit:
            while True:  # the rest of the oversized line
                rest = stream.readline(limit)
                if not rest or rest.endswith(b"\n"):
                    break
            yield b""
            continue
        yield line


def machine_id(path: Path = Path("/etc/machine-id")) -> str:
    """This host's machine id (its journal's files are named by it), or "" if unknown."""
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else ""


def system_journal(
    machine: str, roots: tuple[Path, ...] = (Path("/var/log/journal"), Path("/run/log/journal"))
) -> Path | None:
    """This host's journal folder: the persistent one if the host keeps one, else the
    volatile one; None when neither is there (then `_MACHINE_ID=` keeps to this host).
    Not the system journal as a whole: merged, that is every machine's folder, and a
    container's, linked in, is written by the container's root, _MACHINE_ID and all."""
    if not machine:
        return None
    return next((root / machine for root in roots if (root / machine).is_dir()), None)


def _spawn(args: Sequence[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a SIGINT to the agent's group is the agent's to pass on
    )
