"""What tier 1 did over a window, added up from hourly cumulative totals: deltas,
resets, the baseline before the window, bars, and the hosts where fixes fail most."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.receiver.tier1 import FIELDS, added_up

START = 500_000  # an hour number


def snap(hour: int, host: str = "h1", pattern: str = "p", **totals: int) -> dict[str, Any]:
    return {
        "owner": "team-a",
        "pack": "nginx",
        "pattern": pattern,
        "host": host,
        "hour": hour,
        **dict.fromkeys(FIELDS, 0),
        **totals,
    }


def test_totals_are_what_grew_in_the_window_counted_from_the_last_report_before_it():
    base = [snap(START - 5, incidents=10, resolved=8, failed=2)]
    rows = [
        snap(START + 1, incidents=12, resolved=9, failed=3),
        snap(START + 3, incidents=15, resolved=12, failed=3),
    ]
    result = added_up(rows, base, START, "24h")
    [p] = result.patterns
    assert (p.totals["incidents"], p.totals["resolved"], p.totals["failed"]) == (5, 4, 1)
    assert p.rate == 0.8
    assert result.bars[1]["resolved"] == 1 and result.bars[3]["resolved"] == 3
    assert result.failing == [("team-a", "h1", 1)]


def test_a_host_that_appears_in_the_window_counts_from_zero_and_a_reset_counts_all():
    rows = [
        snap(START, host="new", incidents=2, resolved=2),
        snap(START + 1, host="reset", incidents=50, resolved=40, failed=10),
        snap(START + 2, host="reset", incidents=3, resolved=1, failed=2),  # state reset
    ]
    base = [snap(START - 1, host="reset", incidents=45, resolved=37, failed=8)]
    [p] = added_up(rows, base, START, "24h").patterns
    assert p.hosts == {"new", "reset"}
    assert p.totals["incidents"] == 2 + 5 + 3 and p.totals["failed"] == 2 + 2


def test_days_are_bars_of_24_hours_and_no_incident_is_no_rate():
    rows = [snap(START + 30, resolved=0, matches=7)]
    result = added_up(rows, [], START, "7d")
    assert len(result.bars) == 7 and result.hours_a_bar == 24
    assert result.patterns[0].rate is None and result.patterns[0].totals["matches"] == 7


@given(st.lists(st.integers(0, 50), min_size=1, max_size=20), st.integers(0, 100))
def test_monotonic_totals_add_up_to_the_last_less_the_baseline(steps, baseline):
    """Whatever the hours, for an agent that never resets, the window's total is its
    last report less the one before the window, and the bars hold all of it."""
    running, rows = baseline, []
    for hour, step in enumerate(steps):
        running += step
        rows.append(snap(START + hour, resolved=running))
    result = added_up(rows, [snap(START - 1, resolved=baseline)], START, "24h")
    assert result.total("resolved") == running - baseline
    assert sum(bar["resolved"] for bar in result.bars) == running - baseline
