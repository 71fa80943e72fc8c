"""Issue 17, item 5: `logmend pack new NAME` scaffolds a pack that is proven at once.

With the real CLI: the folder it writes passes `logmend test` and `check`, is
explained by `explain`, its CI snippet runs the same commands, and it writes
nothing over what is there nor anything a hostile name could steer.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def logmend(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_a_new_pack_passes_test_check_and_explain_at_once(tmp_path):
    done = logmend("pack", "new", "redis", "--owner", "team-cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pack = tmp_path / "redis"
    assert sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()) == [
        "articles/example-error.md",
        "ci/logmend.yml",
        "pack.toml",
        "scripts/fix.sh",
    ]
    assert f"next: edit {Path('redis') / 'pack.toml'}, then: logmend test redis" in done.stdout
    tested = logmend("test", "redis", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 example(s), 0 failed: ok" in tested.stdout
    checked = logmend("check", "redis", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok: redis 0.1.0 (owner team-cache), 1 pattern(s)" in checked.stdout
    explained = logmend("explain", "redis", "ERROR example failure in cache", cwd=tmp_path)
    assert "redis/example-error (owner team-cache)" in explained.stdout
    assert "# Example failure in a component" in explained.stdout


def test_the_fix_stub_changes_nothing_and_the_ci_snippet_runs_the_same_proof(tmp_path):
    logmend("pack", "new", "redis", "--owner", "team-cache", cwd=tmp_path)
    script = tmp_path / "redis" / "scripts" / "fix.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    before = sorted(os.listdir(tmp_path))
    ran = subprocess.run([str(script), "cache"], capture_output=True, text=True, cwd=tmp_path)
    assert (ran.returncode, ran.stdout) == (0, "would mend cache\n")
    assert sorted(os.listdir(tmp_path)) == before
    ci = (tmp_path / "redis" / "ci" / "logmend.yml").read_text().splitlines()
    runs = [line.split("- run: ", 1)[1] for line in ci if line.lstrip().startswith("- run: ")]
    assert runs == [
        "pip install logmend",
        "logmend test redis",
        "logmend check redis",
        "logmend pack build redis -o redis.lmpack",
    ]
    for command in runs[1:]:  # as CI runs them, in the checkout
        done = logmend(*command.split()[1:], cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    assert (tmp_path / "redis.lmpack").stat().st_size > 0


def test_nothing_is_overwritten_and_names_are_plain(tmp_path):
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "pack.toml").write_text("mine")
    done = logmend("pack", "new", "redis", "--owner", "team-cache", cwd=tmp_path)
    assert done.returncode == 1 and "is already there; nothing was written" in done.stderr
    assert (tmp_path / "redis" / "pack.toml").read_text() == "mine"
    for name in ("../escape", "a/b", "-rf", "x\x1b[2J", ""):
        done = logmend("pack", "new", "--owner", "t", "--", name, cwd=tmp_path)
        assert done.returncode != 0, name
        assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["redis"]
    done = logmend("pack", "new", "ok", "--owner", "team with spaces", cwd=tmp_path)
    assert done.returncode == 1 and "owner 'team with spaces' is not a plain name" in done.stderr
