"""A million lines, rotations every few thousand, the agent killed and restarted: none lost.

The writer appends numbered lines as fast as it can and rotates by rename or by
copytruncate (alternately, gzipping some copies) every 5,000 lines; the agent
is SIGKILLed and restarted while it reads. The agent's test hook
(LOGMEND_TEST_TEE) appends every record it reads to a file before the
checkpoint that covers it commits, so duplicates may follow a kill but a
missing number is a lost line.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import AgentProc, wait_for, write_config, write_pack

TOTAL = 1_000_000
WRITER = """
import gzip, os, shutil, sys, time
path, total, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rotation = 0
handle = open(path, "a")
for start in range(0, total, 500):
    handle.write("".join(f"stress line {n:07d} some payload to make it realistic\\n"
                         for n in range(start, min(total, start + 500))))
    handle.flush()
    time.sleep(0.004)  # about 8 s in all, so the kills land while it writes
    if (start + 500) % every == 0:
        rotation += 1
        copy = f"{path}.{rotation}"
        if rotation % 2:
            handle.close()
            os.rename(path, copy)
            handle = open(path, "a")
        else:
            shutil.copyfile(path, copy)
            os.truncate(path, 0)
            if rotation % 4 == 0:
                with open(copy, "rb") as src, gzip.open(copy + ".gz", "wb") as dst:
                    dst.write(src.read())
                os.unlink(copy)
handle.close()
print(rotation)
"""


def test_a_million_lines_through_rotations_and_kills(tmp_path: Path):
    packs = tmp_path / "packs"
    write_pack(
        packs,
        "none",
        """\
[[pattern]]
id = "never"
match = \'\'\'this text is in no line\'\'\'
article = "articles/a.md"

[[pattern.example]]
line = "this text is in no line"
""",
    )
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    log.touch()
    config = write_config(tmp_path, [(str(log), None)], packs)
    tee = tmp_path / "tee"
    os.environ["LOGMEND_TEST_TEE"] = str(tee)
    try:
        agent = AgentProc(config).start()
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(log), str(TOTAL), "5000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        kills = 0
        rng = random.Random(7)
        while writer.poll() is None and kills < 5:
            time.sleep(rng.uniform(0.2, 0.8))
            agent.stop(signal.SIGKILL)
            kills += 1
            agent.start()
        rotations = int(writer.communicate(timeout=300)[0])

        def delivered() -> set[int]:
            seen = set()
            with tee.open("rb") as handle:
                for line in handle:
                    if line.startswith(b"stress line "):
                        seen.add(int(line[12:19]))
            return seen

        got: set[int] = set()

        def complete() -> bool:
            nonlocal got
            got = delivered()
            return len(got) >= TOTAL

        wait_for(complete, timeout=120, every=1.0)
        assert agent.stop() == 0
    finally:
        del os.environ["LOGMEND_TEST_TEE"]
    records = sum(1 for _ in tee.open("rb"))
    lost = TOTAL - len(got)
    print(
        f"\nwritten {TOTAL}, delivered {len(got)} distinct ({records} records with duplicates "
        f"after kills), lost {lost}; {rotations} rotations, {kills} SIGKILLs"
    )
    missing = sorted(set(range(TOTAL)) - got)
    ranges = [(n, n) for n in missing[:1]]
    for n in missing[1:]:
        ranges[-1] = (ranges[-1][0], n) if n == ranges[-1][1] + 1 else ranges[-1]
        if n != ranges[-1][1]:
            ranges.append((n, n))
    assert lost == 0, f"missing ranges {ranges[:20]}"
    assert kills >= 3 and rotations >= 150
