"""A pattern in several matchers (sources naming different packs, journal units) is
counted once per match: its statistics are summed over them before they are stored."""

from __future__ import annotations

import time

from agent.config import load_config
from agent.packs import load_pack
from agent.reader import Reader
from agent.state import Store
from tests.helpers import wait_for, write_pack

PACK = """\
[[pattern]]
id = "boom"
match = '''^boom (?P<n>\\d+)$'''
key = "{n}"
escalate = "never"

[[pattern.example]]
line = "boom 1"
"""


def test_a_pattern_two_sources_share_is_counted_once_per_match_across_flushes(tmp_path):
    packs = tmp_path / "packs"
    write_pack(packs, "web", PACK)
    write_pack(packs, "other", PACK.replace('"boom"', '"bang"').replace("boom", "bang"))
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("")
    b.write_text("")
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'[agent]\nhost = "h"\nstate_dir = "{tmp_path / "state"}"\npacks = ["{packs}"]\n'
        f'[[source]]\npath = "{a}"\npacks = ["web"]\n'
        f'[[source]]\npath = "{b}"\npacks = "*"\n'
    )
    config = load_config(config_file)
    loaded = [load_pack(packs / name, trust=False) for name in ("web", "other")]
    store = Store(tmp_path / "state.db")
    reader = Reader(config, loaded, store, clock=time.time)
    assert len({id(m) for m in reader.matchers}) == 2  # the two share pattern web/boom
    reader.tailer.sweep()  # both files followed from their end

    def matched(n: int) -> bool:
        reader.pass_once()
        return (
            sum(
                counts[0]
                for key, (counts, _) in reader.pattern_totals().items()
                if key[1] == "boom"
            )
            == n
        )

    def stored() -> int:
        return next(r["matches"] for r in store.pattern_stats() if r["pattern"] == "boom")

    with a.open("a") as out:
        out.write("boom 1\nboom 2\n")
    with b.open("a") as out:
        out.write("boom 3\nboom 4\nboom 5\n")
    assert wait_for(lambda: matched(5))
    reader.flush_pattern_stats()
    assert stored() == 5
    with b.open("a") as out:
        out.write("boom 6\n")
    assert wait_for(lambda: matched(6))
    reader.flush_pattern_stats()
    reader.flush_pattern_stats()  # nothing new: nothing added
    assert stored() == 6
    reader.tailer.close()
    store.close()
