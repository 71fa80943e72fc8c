"""Issue 20 with a real journald: started in a private mount namespace (its own /run,
its journal files in the test's folder), written to by `systemd-cat` as a service's
stderr would be, one entry per line; the agent reads it through journalctl, joins a
traceback logged line by line, and counts each entry once through a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import AgentProc, wait_for
from tests.test_journal_source import counted, held, journal_agent, samples

JOURNALD = Path("/lib/systemd/systemd-journald")
SETUP = """set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
mount --bind "$1" /run/log/journal
mount --bind "$2" /etc/systemd/journald.conf
exec {journald}
"""
CONF = (
    "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToConsole=no\n"
    "ForwardToWall=no\nRateLimitBurst=0\n"
)


def can_unshare() -> bool:
    if os.geteuid() != 0 or not JOURNALD.exists() or shutil.which("nsenter") is None:
        return False
    done = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10)
    return done.returncode == 0


needs_journald = pytest.mark.skipif(
    not can_unshare(), reason="root, unshare, nsenter and Debian's systemd (systemd-journald)"
)


class Journald:
    """A real journald in its own mount namespace; its files appear in `folder`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        conf = folder.parent / "journald.conf"
        conf.write_text(CONF)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             SETUP.format(journald=JOURNALD), "sh", str(folder), str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.folder = folder
        assert wait_for(lambda: any(folder.glob("*/system.journal")), 15), self.stderr()
        self.directory = next(folder.glob("*/system.journal")).parent

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def log(self, text: str, identifier: str = "shop") -> None:
        """`text`'s lines, each an entry, as a service's stderr reaches journald."""
        done = subprocess.run(
            ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "systemd-cat",
             f"--identifier={identifier}", "--priority=err"],
            input=text.encode(), capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def writer(self, identifier: str = "shop") -> subprocess.Popen[bytes]:
        """One process whose stderr lines reach journald as they are written (one
        stream: a traceback it logs line by line is joined)."""
        return subprocess.Popen(
            ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "systemd-cat",
             f"--identifier={identifier}", "--priority=err"],
            stdin=subprocess.PIPE,
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def journald(tmp_path) -> Iterator[Journald]:
    made = Journald(tmp_path / "journal")
    try:
        yield made
    finally:
        made.stop()


PACK = """\
[[pattern]]
id = "crash"
match = '''(?s)^Traceback \\(most recent call last\\):\\n.*\\n(?P<error>\\w+Error): (?P<what>[^\\n]*)$'''
key = "{error}"
escalate = "never"

[[pattern.example]]
line = "Traceback (most recent call last):\\n  x\\nKeyError: 1"

[[pattern]]
id = "refused"
match = '''^payment gateway refused order (?P<order>\\d+)$'''
key = "payments"
escalate = "never"

[[pattern.example]]
line = "payment gateway refused order 12"
"""

TRACEBACK = """Traceback (most recent call last):
  File "/srv/shop/app.py", line 10, in checkout
    pay(order)
ValueError: order 7 has no lines
"""


def shop_agent(tmp_path, journald: Journald, more: str = "", metrics: bool = False) -> AgentProc:
    """An agent on the real journald's entries of the `shop` identifier."""
    return journal_agent(
        tmp_path, journald.directory, PACK, more, metrics, select='identifiers = ["shop"]'
    )


@needs_journald
def test_a_real_journald_read_joined_and_counted_once_through_a_kill(tmp_path, journald):
    more = "flush_after = \"2s\"\nmultiline = { continuation = '^(?:\\s|\\w+Error:)' }\n"
    journald.log("payment gateway refused order 1\npayment gateway refused order 2\n")
    journald.log("not ours: payment gateway refused order 3\n", identifier="other")
    agent = shop_agent(tmp_path, journald, more).start()
    service = None
    try:
        assert wait_for(lambda: sum(counted(tmp_path).values()) == 2), agent.log()
        service = journald.writer()
        assert service.stdin is not None
        service.stdin.write(TRACEBACK.split("ValueError", maxsplit=1)[0].encode())
        service.stdin.flush()
        assert wait_for(lambda: "shop[" in held(tmp_path)), agent.log()
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        service.stdin.write(b"ValueError: order 7 has no lines\npayment gateway refused order 4\n")
        service.stdin.close()
        assert service.wait(timeout=30) == 0
        agent.start()
        assert wait_for(lambda: len(samples(tmp_path)) == 2), (samples(tmp_path), agent.log())
        crash = next(s for s in samples(tmp_path) if s[0] == "ValueError")
        assert crash[2] == [TRACEBACK.rstrip("\n")]
        assert wait_for(lambda: sum(counted(tmp_path).values()) == 4), agent.log()
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)
        if service is not None and service.poll() is None:
            service.kill()
            service.wait()


@needs_journald
def test_rotated_and_vacuumed_unread_entries_are_counted_as_lost(tmp_path, journald):
    """journald rotates (SIGUSR2) while the agent is stopped, and the archived file, with
    entries the agent never read, is vacuumed: the agent resumes at the oldest entry
    still there and says how many were lost (journald's sequence numbers go on across
    its files)."""
    journald.log("payment gateway refused order 1\n")
    agent = shop_agent(tmp_path, journald, metrics=True).start()
    try:
        assert wait_for(lambda: sum(counted(tmp_path).values()) == 1), agent.log()
        assert agent.stop() == 0
        journald.log("payment gateway refused order 2\npayment gateway refused order 3\n")
        journald.proc.send_signal(signal.SIGUSR2)  # rotate
        assert wait_for(lambda: any(journald.directory.glob("system@*.journal")), 15)
        journald.log("payment gateway refused order 4\n")
        for archived in journald.directory.glob("system@*.journal"):
            archived.unlink()  # vacuumed, orders 2 and 3 unread
        agent.start()
        assert wait_for(lambda: sum(counted(tmp_path).values()) == 2), agent.log()
        assert agent.saw("entries (of every unit) were vacuumed unread")
        line = next(line for line in agent.lines if "metrics on http://" in line)
        from tests.test_service import scrape

        source = (("source", f"journal:identifier=shop in {journald.directory}"),)
        lost = scrape(line.split("metrics on ", 1)[1])[
            ("logmend_journal_lost_entries_total", source)
        ]
        assert lost >= 2  # orders 2 and 3, and what journald logged of itself meanwhile
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)
