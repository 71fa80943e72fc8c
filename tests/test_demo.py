"""The README's first command: `logmend demo` works, ends with a summary, exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def test_demo_runs_end_to_end_in_under_30_seconds():
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 30
    out = result.stdout
    assert "fixed on the host (tier 1): 2" in out
    # resolved on the first try: the verify run is not counted as an attempt
    assert re.findall(r"INFO resolved \S+ key=.* after (\d+) attempt", out) == ["1", "1"]
    assert "nginx/temp-dir-missing" in out and "postgresql/stale-postmaster-pid" in out
    assert "as the receiver holds them: 3" in out
    assert "postgresql/stale-postmaster-pid remedy-failed" in out
    assert "nginx/upstream-timeout no-remedy count=5" in out
    assert "gunicorn/worker-killed-oom always" in out
    assert "nginx/temp-dir-missing fixed on the host 1 time(s) on 1 host(s)" in out
