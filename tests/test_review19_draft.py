"""Review of 854a5a0 (issue 19, item 3): the draft GET /v1/unknown/{ref} prints must
pass `logmend test` as printed, for realistic templates. Each case runs the real path:
lines -> the agent's miner (Drain, redaction, the state row) -> wire_rows -> the
receiver's validation and store -> unknown_one's draft -> a pack -> `logmend test`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.drain import Drain
from agent.receiver.scopes import Scope
from agent.receiver.store import ReceiverStore
from agent.receiver.unknown import validate_unknown
from agent.redact import Redactor
from agent.unknown import wire_rows
from tests.helpers import write_pack


def drafted(lines: list[str], tmp: Path) -> dict:
    """The receiver's view of the (one) template these lines make on a host."""
    redact = Redactor()
    drain = Drain(redact=redact)
    for line in lines:
        drain.add(line, time.time())
    assert len(drain.templates) == 1, [t.text for t in drain.templates.values()]
    rows = [  # as Unknowns.save keeps them and Store.unknown_unsent reads them
        {"owner": "team-web", "id": t.id, "tokens": json.dumps(redact(t.text).split()),
         "count": t.count, "first_seen": t.first_seen, "last_seen": t.last_seen,
         "samples": json.dumps(t.samples), "known": ""}
        for t in drain.templates.values()
    ]  # fmt: skip
    host, checked = validate_unknown({"host": "h1", "templates": wire_rows(rows)}, time.time())
    store = ReceiverStore(str(tmp / "receiver.db"))
    try:
        who = store.authenticate(store.create_token(Scope.INGEST, "a", ("*",), ("*",)))
        assert who is not None
        store.store_unknown(who, host, checked)
        [item], _ = store.unknown(("team-web",))
        found = store.unknown_one(("team-web",), item["ref"])
        assert found is not None
        return found
    finally:
        store.close()


CASES = {
    # an emoji (any character past the BMP) in a sample: json.dumps writes it as a
    # surrogate pair (\ud83d\ude00), which TOML refuses ("not a Unicode scalar value")
    "emoji-in-sample": [
        "ERROR upload failed for 😀 user bob",
        "ERROR upload failed for 😀 user al",
    ],
    # ANSI colours (ESC) in the line: raw in the '''literal''' match and the # comment,
    # where TOML allows no control character
    "ansi-colours": ["\x1b[31mERROR\x1b[0m connection refused to db"] * 2,
    "del-character": ["ERROR bad byte \x7f in request"] * 2,
    # a line of more than 64 words: Drain keeps the first 64 tokens (MAX_TOKENS), the
    # draft is anchored with \s*$, the sample has all its words
    "more-than-64-words": ["ERROR " + " ".join(f"w{i}" for i in range(80))],
    # a long line with a variable part: the template and the sample are clipped at
    # 2,000 characters each, at different places (<NUM> is longer than "1")
    "clipped-long-line": [f"ERROR {n} " + "x" * 2500 for n in (1, 22)],
    # a quoted secret with a space: the sample redacts the quoted value whole, the
    # generalised template (quote cut by <*>) redacts to the next space only
    "quoted-secret": ['ERROR login password="my secret a"', 'ERROR login password="my secret b"'],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_draft_passes_logmend_test_as_printed(tmp_path, case):
    found = drafted(CASES[case], tmp_path)
    pack = write_pack(tmp_path / "packs", "web", found["draft"], owner="team-web")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "test", str(pack)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, found["draft"][:600] + "\n---\n" + done.stdout + done.stderr
