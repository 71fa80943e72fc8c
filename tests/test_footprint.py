"""What the agent does not load until it needs it (issue 16: peak RSS with 1,000 patterns).

An idle agent with no [escalation] and no [metrics] has not imported httpx,
prometheus_client, asyncio or tenacity, nor mapped OpenSSL in: the fix loop
starts with the first fix, the sinks where they are configured. The fix then
still runs, and the loop with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import RECORD_SCRIPT, AgentProc, agent_with_pack, append, wait_for

LAZY = ("httpx", "prometheus_client", "asyncio", "tenacity", "ssl", "hashlib", "_hashlib")
# pack bundles: only where they are built, verified or synced
BUNDLES = ("cryptography", "tarfile", "agent.bundle", "agent.signing")
# needed only on an error, for a compressed rotation, or not at all: 1 MiB between them
RARE = ("difflib", "gzip", "socket", "uuid")
# argparse's help width (shutil, with bz2 and lzma) and watchdog's ctypes.util (tempfile,
# random): 1.3 MiB between them, for nothing the agent uses (agent.cli.HelpFormatter,
# agent.filewatch)
NEVER = ("shutil", "bz2", "lzma", "tempfile", "random", "ctypes.util", "watchdog")


def test_importing_the_agent_and_its_cli_loads_none_of_what_waits():
    code = (
        "import sys, agent.daemon, agent.cli, agent.packtest\n"
        "agent.cli.build_parser().format_help()\n"
        f"print(sorted(m for m in {LAZY + RARE + NEVER + BUNDLES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


PACK = """\
user = "root"

[[pattern]]
id = "stuck"
match = '''^queue stuck (?P<q>\\w+)$'''
key = "{q}"
escalate = "never"

[pattern.fields]
q = { type = "word" }

[pattern.remedy]
run = ["scripts/record.sh", "OUT/fix", "{q}"]
attempts = 1

[[pattern.example]]
line = "queue stuck q1"
"""


def fixing_agent(tmp_path: Path) -> tuple[AgentProc, Path, Path]:
    """An agent whose pack fixes `queue stuck Q` by recording its argv in OUT (root)."""
    out = tmp_path / "out"
    out.mkdir()
    agent, log = agent_with_pack(
        tmp_path,
        PACK.replace("OUT", str(out)),
        {"record.sh": RECORD_SCRIPT.format(exit_code=0)},
        agent_extra='allow_root = ["ops"]\n',
    )
    return agent, log, out


def test_the_fix_loop_and_openssl_wait_for_the_first_fix_which_still_runs(tmp_path):
    agent, log, out = fixing_agent(tmp_path)
    agent.start()
    assert agent.proc is not None
    idle = mapped(agent.proc.pid)
    assert "_asyncio" not in idle and "libssl" not in idle and "libcrypto" not in idle, [
        line for line in idle.splitlines() if "ssl" in line or "crypto" in line or "asyncio" in line
    ]
    assert "_bz2" not in idle and "_lzma" not in idle  # shutil is not imported (NEVER)
    append(log, "queue stuck q7")
    assert wait_for(lambda: (out / "fix.0.argv").exists()), agent.log()
    assert (out / "fix.0.argv").read_bytes() == b"q7\0"
    assert wait_for(lambda: agent.saw("resolved")), agent.log()
    assert "_asyncio" in mapped(agent.proc.pid)  # the loop started with the fix
    append(log, "queue stuck q8")  # and keeps taking fixes
    assert wait_for(lambda: (out / "fix.1.argv").exists()), agent.log()
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_a_cold_load_learns_each_regex_and_holds_none_of_them(tmp_path):
    """Compiling a pattern to learn its groups must not keep it: a compiled regex
    holds about 5 KiB, and most patterns never see a candidate line."""
    from agent.derived import Memo
    from agent.packs import load_pack

    pack_dir = tmp_path / "p"
    pack_dir.mkdir()
    (pack_dir / "pack.toml").write_text(
        '[pack]\nname = "p"\nowner = "t"\n'
        + "".join(
            f'[[pattern]]\nid = "p{n}"\nmatch = "^(?P<code>E{n}) (?P<rest>.*)$"\n'
            f'[[pattern.example]]\nline = "E{n} went wrong"\n'
            for n in range(50)
        )
    )
    pack = load_pack(pack_dir, trust=False, memo=Memo())
    assert all(p.lazy._compiled is None for p in pack.patterns)
    assert pack.patterns[7].lazy.groups == ("code", "rest")
    assert pack.patterns[7].regex.search("E7 went wrong")["rest"] == "went wrong"
    assert pack.patterns[7].lazy._compiled is not None  # compiled on first use, then kept
