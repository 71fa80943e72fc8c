"""docs/packs.md, "Write your first pack in ten minutes": every command, as written.

The section's blocks marked `<!-- walkthrough: run -->` are run by bash (`set -e`)
in a fresh folder, with `logmend` the command of this checkout; a block marked
`<!-- walkthrough: write PATH -->` is written to PATH. A step that fails or a
command that is not there fails the test, and the doc with it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "packs.md"
STEP = re.compile(r"<!-- walkthrough: (run|write (\S+)) -->\n```[a-z]*\n(.*?)```", re.S)


def walkthrough() -> list[tuple[str, str, str]]:
    text = DOC.read_text()
    start = text.index("## Write your first pack in ten minutes")
    section = text[start : text.index("\n## ", start + 1)]
    return [(m.group(1).split()[0], m.group(2) or "", m.group(3)) for m in STEP.finditer(section)]


def test_the_walkthrough_runs_as_written(tmp_path):
    steps = walkthrough()
    assert [kind for kind, _, _ in steps] == ["run", "write", "write", "run"]
    shim = tmp_path / "bin" / "logmend"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m agent "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{shim.parent}:/usr/bin:/bin", "PYTHONPATH": str(DOC.parent.parent)}
    said = []
    for kind, path, body in steps:
        if kind == "write":
            (work / path).write_text(body)
            continue
        done = subprocess.run(
            ["bash", "-e", "-c", body],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (body, done.stdout, done.stderr)
        said.append(done.stdout)
    last = said[-1]
    assert "1 example(s)" not in last and "2 example(s), 0 failed: ok" in last
    assert "line 1: redis/bgsave-fork-failed" in last  # test --log found the line
    assert "'bgsave']" in last and "# Redis cannot fork for a background save" in last  # explain
    assert "ok: redis 0.1.0 (owner team-cache), 1 pattern(s)" in last  # check
