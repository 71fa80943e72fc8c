"""The README's first command: `logmend demo` works, ends with a summary, exits 0."""

from __future__ import annotations

import re
import shutil
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


def test_demo_keep_leaves_the_console_up_with_a_token_to_log_in_until_stopped():
    import signal
    import threading

    import httpx

    from tests.helpers import wait_for

    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    try:
        assert wait_for(lambda: any("Ctrl-C to stop it" in line for line in lines), timeout=60)
        [console] = [line for line in lines if line.startswith("the console: ")]
        found = re.search(r"(http://127\.0\.0\.1:\d+)/login .*token: (lm_\S+)\)", console)
        assert found, console
        url, token = found.groups()
        with httpx.Client(base_url=url) as client:
            form = client.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            client.post("/login", data={"csrf": csrf.group(1), "token": token})
            inbox = client.get("/?window=all&state=all")
            assert inbox.status_code == 200
            assert "stale-postmaster-pid" in inbox.text and "upstream-timeout" in inbox.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert wait_for(lambda: any(line.startswith("kept /") for line in lines))
    finally:
        if proc.poll() is None:
            proc.kill()
        for line in lines:
            if line.startswith("kept /tmp/logmend-demo-"):
                shutil.rmtree(line.split(" ", 1)[1].strip(), ignore_errors=True)
