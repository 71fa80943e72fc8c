"""Trigger on fake time: thresholds, windows, keys, cooldowns, budgets, restore, redaction.

No agent, no subprocess, no sleep: every hit is fed with an explicit `now` into a
real Batch, from real patterns loaded from a pack written to tmp_path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Batch, CountUpdate, Incident
from agent.packs import Pack, Pattern, load_pack
from agent.redact import Redactor
from agent.state import Store
from agent.trigger import Trigger, fingerprint_of
from tests.helpers import write_pack

SOURCE = "/var/log/app.log"

PACK = r"""
[[pattern]]
id = "once"
match = '^once (?P<svc>\w+)'
key = "{svc}"
cooldown = "60s"
[[pattern.example]]
line = "once a"

[[pattern]]
id = "burst"
match = '^burst (?P<svc>\w+)'
key = "{svc}"
cooldown = "60s"
[pattern.when]
count = 3
within = "10s"
[[pattern.example]]
line = "burst a"

[[pattern]]
id = "fix"
match = '^fix (?P<svc>\w+)'
key = "{svc}"
[pattern.fields]
svc = { type = "word" }
[pattern.remedy]
run = ["scripts/fix.sh", "{svc}"]
cooldown = "30s"
budget = { runs = 2, within = "100s" }
[[pattern.example]]
line = "fix a"

[[pattern]]
id = "login"
match = '^login (?P<user>\S+)'
key = "{user}"
[[pattern.example]]
line = "login bob"

[[redact]]
match = 'pin=(?P<secret>\d+)'
"""


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    root = tmp_path_factory.mktemp("packs")
    return load_pack(write_pack(root, "ops", PACK, {"fix.sh": "#!/bin/sh\n"}), trust=False)


@pytest.fixture(scope="module")
def patterns(pack: Pack) -> dict[str, Pattern]:
    return {p.id: p for p in pack.patterns}


def new_trigger(pack: Pack, max_samples: int = 10) -> Trigger:
    """As the daemon builds it: one Redactor per pack."""
    return Trigger(max_samples, {pack.name: Redactor(pack.redact, entropy=pack.redact_entropy)})


def feed(
    trigger: Trigger, pattern: Pattern, line: str, now: float, batch: Batch
) -> Incident | None:
    found = pattern.regex.match(line)
    assert found is not None, line
    return trigger.feed(pattern, found.groupdict(), line, SOURCE, now, batch)


def fp(pattern: Pattern, key: str) -> str:
    return fingerprint_of(pattern.pack, pattern.id, key)


# ---------------------------------------------------------------------------------------


def test_count_one_opens_at_once_and_escalates_with_a_cooldown(pack, patterns):
    trigger, batch = new_trigger(pack), Batch()
    once = patterns["once"]
    incident = feed(trigger, once, "once web", 100.0, batch)
    assert incident is not None
    assert (incident.status, incident.outcome, incident.count) == ("escalated", "no-remedy", 1)
    assert incident.escalate_as == "no-remedy"  # decided once, here; the reader only spools it
    assert (incident.pack, incident.pattern, incident.key, incident.source) == (
        "ops",
        "once",
        "web",
        SOURCE,
    )
    assert (incident.first_seen, incident.last_seen) == (100.0, 100.0)
    assert incident.samples == ["once web"]
    assert incident.fields == {"svc": "web"} and incident.raw_fields == {"svc": "web"}
    assert incident.fingerprint == fp(once, "web")
    assert batch.incidents == {incident.id: incident}
    assert batch.cooldowns == {incident.fingerprint: (160.0, incident.id)}
    assert batch.runs == [] and batch.counts == {}


def test_threshold_waits_for_the_nth_hit_within_the_window(pack, patterns):
    trigger = new_trigger(pack)
    burst = patterns["burst"]
    first = Batch()
    assert feed(trigger, burst, "burst web", 0.0, first) is None
    [waiting] = first.incidents.values()
    assert (waiting.status, waiting.count, waiting.first_seen) == ("waiting", 1, 0.0)
    second = Batch()
    assert feed(trigger, burst, "burst web", 5.0, second) is None
    assert list(second.incidents) == [waiting.id]
    assert (waiting.status, waiting.count, waiting.last_seen) == ("waiting", 2, 5.0)
    third = Batch()
    opened = feed(trigger, burst, "burst web", 10.0, third)  # 0.0 is still inside [0, 10]
    assert opened is waiting
    assert (opened.status, opened.count, opened.first_seen, opened.last_seen) == (
        "escalated",
        3,
        0.0,
        10.0,
    )
    assert opened.samples == ["burst web"] * 3
    assert third.cooldowns == {opened.fingerprint: (70.0, opened.id)}


def test_hits_that_leave_the_window_stop_counting_toward_the_threshold(pack, patterns):
    trigger = new_trigger(pack)
    burst = patterns["burst"]
    assert feed(trigger, burst, "burst web", 0.0, Batch()) is None
    assert feed(trigger, burst, "burst web", 8.0, Batch()) is None
    batch = Batch()
    assert feed(trigger, burst, "burst web", 15.0, batch) is None  # 0.0 left: 8, 15
    [incident] = batch.incidents.values()
    assert (incident.status, incident.count) == ("waiting", 3)
    opened = feed(trigger, burst, "burst web", 17.0, Batch())  # 8, 15, 17 within 10 s
    assert opened is incident
    assert (opened.status, opened.count, opened.first_seen) == ("escalated", 4, 0.0)


def test_a_waiting_incident_expires_once_its_window_passes(pack, patterns):
    trigger = new_trigger(pack)
    burst = patterns["burst"]
    start = Batch()
    feed(trigger, burst, "burst web", 0.0, start)
    feed(trigger, burst, "burst db", 3.0, start)
    web, db = start.incidents.values()
    quiet = Batch()
    trigger.expire(10.0, quiet)  # web's last hit is exactly one window old: still waiting
    assert quiet.incidents == {} and web.status == "waiting"
    gone = Batch()
    trigger.expire(10.5, gone)
    assert gone.incidents == {web.id: web} and web.status == "expired"
    assert db.status == "waiting"
    again = Batch()
    assert feed(trigger, burst, "burst web", 11.0, again) is None
    [fresh] = again.incidents.values()
    assert fresh.id != web.id and (fresh.status, fresh.count, fresh.first_seen) == (
        "waiting",
        1,
        11.0,
    )


def test_a_hit_after_the_window_without_a_sweep_expires_the_old_one_in_the_same_batch(
    pack, patterns
):
    trigger = new_trigger(pack)
    burst = patterns["burst"]
    first = Batch()
    feed(trigger, burst, "burst web", 0.0, first)
    [old] = first.incidents.values()
    batch = Batch()
    assert feed(trigger, burst, "burst web", 20.0, batch) is None
    assert len(batch.incidents) == 2
    new = next(i for i in batch.incidents.values() if i.id != old.id)
    assert (old.status, old.count) == ("expired", 1)
    assert (new.status, new.count, new.first_seen) == ("waiting", 1, 20.0)


def test_key_templates_keep_keys_apart(pack, patterns):
    trigger = new_trigger(pack)
    burst = patterns["burst"]
    for now, svc in [(0.0, "web"), (1.0, "db"), (2.0, "web"), (3.0, "db")]:
        assert feed(trigger, burst, f"burst {svc}", now, Batch()) is None
    batch = Batch()
    opened = feed(trigger, burst, "burst web", 4.0, batch)
    assert opened is not None and opened.key == "web" and opened.count == 3
    assert opened.fingerprint == fp(burst, "web") != fp(burst, "db")
    assert [i.key for i in batch.incidents.values()] == ["web"]
    # db is still waiting at two hits: its third opens it
    db = feed(trigger, burst, "burst db", 5.0, Batch())
    assert db is not None and (db.key, db.count, db.first_seen) == ("db", 3, 1.0)
    # the same key under another pattern is another fingerprint
    assert fp(patterns["once"], "web") != fp(burst, "web")


def test_hits_during_cooldown_are_counted_on_the_incident_and_open_nothing(pack, patterns):
    trigger = new_trigger(pack, max_samples=2)
    once = patterns["once"]
    first = feed(trigger, once, "once web", 0.0, Batch())
    assert first is not None
    batch = Batch()
    for now in (10.0, 20.0, 59.5):
        assert feed(trigger, once, f"once web at {now}", now, batch) is None
    assert batch.incidents == {} and batch.cooldowns == {}
    assert batch.counts == {
        first.id: CountUpdate(
            added=3, last_seen=59.5, samples=["once web at 10.0", "once web at 20.0"]
        )
    }
    # another key is not cooling down
    other = feed(trigger, once, "once db", 30.0, Batch())
    assert other is not None and other.id != first.id
    # at the cooldown's end a new incident opens, with its own cooldown
    later = Batch()
    second = feed(trigger, once, "once web", 60.0, later)
    assert second is not None and second.id != first.id
    assert second.status == "escalated" and later.counts == {}
    assert later.cooldowns == {second.fingerprint: (120.0, second.id)}


def test_a_remediating_incident_counts_hits_until_finished_sets_its_cooldown(pack, patterns):
    trigger = new_trigger(pack)
    fix = patterns["fix"]
    batch = Batch()
    incident = feed(trigger, fix, "fix web", 0.0, batch)
    assert incident is not None and incident.status == "remediating"
    assert batch.runs == [(incident.fingerprint, 0.0)]
    assert batch.cooldowns == {}  # no end yet: the fix has not finished
    during = Batch()
    assert feed(trigger, fix, "fix web", 1000.0, during) is None
    assert during.counts[incident.id].added == 1
    trigger.finished(incident.fingerprint, "some-other-incident", 5.0)  # not this one: ignored
    assert feed(trigger, fix, "fix web", 1001.0, Batch()) is None
    trigger.finished(incident.fingerprint, incident.id, 1050.0)
    cooling = Batch()
    assert feed(trigger, fix, "fix web", 1049.0, cooling) is None
    assert cooling.counts[incident.id].added == 1
    after = Batch()
    again = feed(trigger, fix, "fix web", 1050.0, after)
    assert again is not None and again.id != incident.id and again.status == "remediating"
    assert after.runs == [(incident.fingerprint, 1050.0)]


def test_over_budget_the_key_escalates_as_flapping_until_the_oldest_run_leaves(pack, patterns):
    trigger = new_trigger(pack)
    fix = patterns["fix"]  # budget: 2 runs within 100 s; cooldown 30 s
    statuses = []
    for now in (0.0, 30.0):
        incident = feed(trigger, fix, "fix web", now, Batch())
        assert incident is not None
        statuses.append(incident.status)
        trigger.finished(incident.fingerprint, incident.id, now + 30.0)
    assert statuses == ["remediating", "remediating"]
    batch = Batch()
    flapping = feed(trigger, fix, "fix web", 60.0, batch)
    assert flapping is not None
    assert (flapping.status, flapping.outcome) == ("escalated", "flapping")
    assert batch.runs == []  # nothing runs
    assert batch.cooldowns == {flapping.fingerprint: (100.0, flapping.id)}  # 0 + 100
    cooling = Batch()
    assert feed(trigger, fix, "fix web", 99.9, cooling) is None
    assert cooling.counts[flapping.id].added == 1
    # the budget is per key: another key still gets its fix
    other = feed(trigger, fix, "fix db", 61.0, Batch())
    assert other is not None and other.status == "remediating"
    back = Batch()
    fixed = feed(trigger, fix, "fix web", 100.0, back)  # the run at 0 left the window
    assert fixed is not None and fixed.status == "remediating"
    assert back.runs == [(fixed.fingerprint, 100.0)]


def commit(store: Store, batch: Batch, now: float) -> None:
    store.commit(batch, now)


def restored(store: Store, pack: Pack, now: float) -> Trigger:
    """A trigger rebuilt from the state database the way the daemon does at start."""
    trigger = new_trigger(pack)
    window = max(p.remedy.budget.within for p in pack.patterns if p.remedy)
    trigger.restore(
        store.open_incidents(),
        store.cooldowns(now),
        store.fix_runs(now - window),
        {(p.pack, p.id): p.within for p in pack.patterns},
    )
    return trigger


def test_a_restart_keeps_waiting_progress_cooldowns_remedies_and_budgets(tmp_path, pack, patterns):
    store = Store(tmp_path / "state.db")
    trigger = new_trigger(pack)
    fix, once, burst = patterns["fix"], patterns["once"], patterns["burst"]
    # fix web: two runs (0 and 30), each finished with a 30 s cooldown
    for now in (0.0, 30.0):
        batch = Batch()
        incident = feed(trigger, fix, "fix web", now, batch)
        assert incident is not None and incident.status == "remediating"
        commit(store, batch, now)
        store.finish_incident(
            incident.id, "resolved", "resolved", [], now + 30.0, incident.fingerprint, None, now + 1
        )
        trigger.finished(incident.fingerprint, incident.id, now + 30.0)
    # once web: escalated at 33, cooling until 93
    batch = Batch()
    escalated = feed(trigger, once, "once web", 33.0, batch)
    assert escalated is not None
    commit(store, batch, 33.0)
    # fix db: remediating, not finished when the agent stops
    batch = Batch()
    running = feed(trigger, fix, "fix db", 35.0, batch)
    assert running is not None and running.status == "remediating"
    commit(store, batch, 35.0)
    # burst web: two of three hits
    waiting_id = ""
    for now in (34.0, 36.0):
        batch = Batch()
        feed(trigger, burst, "burst web", now, batch)
        [waiting] = batch.incidents.values()
        waiting_id = waiting.id
        commit(store, batch, now)
    store.close()

    store = Store(tmp_path / "state.db")
    after = restored(store, pack, 37.0)
    # the third burst hit within the window opens the incident it already was
    opened = feed(after, burst, "burst web", 40.0, Batch())
    assert opened is not None and opened.id == waiting_id
    assert (opened.status, opened.count, opened.first_seen) == ("escalated", 3, 34.0)
    # once web still cools down: counted on the escalated incident
    cooling = Batch()
    assert feed(after, once, "once web", 50.0, cooling) is None
    assert list(cooling.counts) == [escalated.id]
    # fix db is still being fixed: counted, not run again
    busy = Batch()
    assert feed(after, fix, "fix db", 1000.0, busy) is None
    assert list(busy.counts) == [running.id]
    # fix web: its two runs are remembered, so the third is over budget
    batch = Batch()
    flapping = feed(after, fix, "fix web", 60.0, batch)
    assert flapping is not None and (flapping.status, flapping.outcome) == ("escalated", "flapping")
    assert batch.cooldowns == {flapping.fingerprint: (100.0, flapping.id)}
    # and the count of the cooling incident reaches the store
    commit(store, cooling, 50.0)
    stored = store.incident(escalated.id)
    assert stored is not None and (stored.count, stored.last_seen) == (2, 50.0)
    assert stored.samples == ["once web", "once web"]
    store.close()


def test_a_restart_does_not_open_what_a_steady_sub_threshold_rate_never_opened(
    tmp_path, pack, patterns
):
    burst = patterns["burst"]  # 3 hits within 10 s
    store = Store(tmp_path / "state.db")
    steady = new_trigger(pack)
    for now in (0.0, 6.0, 12.0, 18.0):  # one every 6 s: never 3 within 10 s
        batch = Batch()
        assert feed(steady, burst, "burst web", now, batch) is None
        commit(store, batch, now)
    assert feed(steady, burst, "burst web", 24.0, Batch()) is None  # without a restart
    after = restored(store, pack, 19.0)
    store.close()
    assert feed(after, burst, "burst web", 24.0, Batch()) is None


def test_samples_keys_and_fields_are_redacted_with_the_packs_rules(pack, patterns):
    trigger = new_trigger(pack, max_samples=5)
    login = patterns["login"]
    incident = feed(trigger, login, "login pin=4321 password=hunter2", 0.0, Batch())
    assert incident is not None
    assert incident.samples == ["login pin=[REDACTED] password=[REDACTED]"]
    assert incident.key == "pin=[REDACTED]"
    assert incident.fields == {"user": "pin=[REDACTED]"}
    assert incident.raw_fields == {"user": "pin=4321"}  # for the fix only; never stored
    assert incident.fingerprint == fp(login, "pin=4321")  # the key itself, not its mask
    batch = Batch()
    assert feed(trigger, login, "login pin=4321 again pin=99", 1.0, batch) is None
    assert batch.counts[incident.id].samples == ["login pin=[REDACTED] again pin=[REDACTED]"]
    # without the pack's redactor only the built-in rules apply
    plain = Trigger(5).feed(
        login, {"user": "x"}, "login x pin=4321 password=hunter2", SOURCE, 0.0, Batch()
    )
    assert plain is not None and plain.samples == ["login x pin=4321 password=[REDACTED]"]


# ---------------------------------------------------------------------------------------


def expected_openings(times: list[int], count: int, within: int, cooldown: int) -> list[int]:
    """Indexes of the hits that open an incident, said directly: a hit opens one when no
    cooldown is active and `count` hits since the last opening that did not fall in a
    cooldown lie within `within` seconds before it (inclusive)."""
    opened: list[int] = []
    last, until = -1, float("-inf")
    for i, t in enumerate(times):
        if t < until:
            continue
        eligible = [
            j for j in range(last + 1, i + 1) if times[j] >= until and times[j] >= t - within
        ]
        if len(eligible) >= count:
            opened.append(i)
            last, until = i, t + cooldown
    return opened


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 8), min_size=1, max_size=40),
    count=st.integers(1, 4),
    within=st.integers(0, 20),
    cooldown=st.integers(0, 30),
    expire_every=st.one_of(st.none(), st.integers(1, 5)),
)
def test_an_incident_opens_exactly_when_count_hits_fall_within_the_window_outside_cooldown(
    pack, patterns, gaps, count, within, cooldown, expire_every
):
    pattern = dataclasses.replace(
        patterns["burst"], count=count, within=float(within), cooldown=float(cooldown)
    )
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    trigger = new_trigger(pack)
    opened: list[int] = []
    incidents: dict[str, Incident] = {}
    added = 0
    for i, t in enumerate(times):
        batch = Batch()
        if expire_every is not None and i % expire_every == 0:
            trigger.expire(float(t), batch)  # a sweep never changes what opens
        if feed(trigger, pattern, "burst web", float(t), batch) is not None:
            opened.append(i)
        incidents.update(batch.incidents)
        added += sum(u.added for u in batch.counts.values())
    assert opened == expected_openings(times, count, within, cooldown)
    # every hit is accounted for exactly once: on an incident, or as a count update
    assert sum(i.count for i in incidents.values()) + added == len(times)
    assert sum(i.status == "escalated" for i in incidents.values()) == len(opened)


# recurrences: a fix that resolved and did not hold (issue 17, item 4) ------------------


def fixed_at(trigger: Trigger, fix: Pattern, line: str, now: float, done: float) -> Incident:
    """A fix opened at `now` that resolved at `done` (cooling down for 30 s)."""
    incident = feed(trigger, fix, line, now, Batch())
    assert incident is not None and incident.status == "remediating"
    trigger.finished(incident.fingerprint, incident.id, done + 30.0, resolved_at=done)
    return incident


def test_a_match_soon_after_a_resolved_fix_says_the_fix_does_not_hold(pack, patterns):
    fix = patterns["fix"]
    assert (fix.recurrence.count, fix.recurrence.within) == (1, 30.0)  # when.count, cooldown
    trigger = new_trigger(pack)
    incident = fixed_at(trigger, fix, "fix web", 0.0, 5.0)
    back = Batch()
    assert feed(trigger, fix, "fix web", 9.0, back) is None
    assert back.not_holding == [(incident.id, 1, 5.0)]
    assert back.counts[incident.id].added == 1
    again = Batch()  # told once per resolution, not once per line
    assert feed(trigger, fix, "fix web", 10.0, again) is None
    assert again.not_holding == [] and again.counts[incident.id].added == 1


def test_other_keys_unresolved_fixes_and_late_matches_are_not_recurrences(pack, patterns):
    fix = patterns["fix"]
    trigger = new_trigger(pack)
    fixed_at(trigger, fix, "fix web", 0.0, 5.0)
    other = Batch()
    assert feed(trigger, fix, "fix db", 6.0, other) is not None  # another key: its own fix
    assert other.not_holding == []
    failed = feed(trigger, fix, "fix api", 7.0, Batch())
    assert failed is not None
    trigger.finished(failed.fingerprint, failed.id, 40.0, resolved_at=None)  # did not resolve
    after_failure = Batch()
    feed(trigger, fix, "fix api", 8.0, after_failure)
    assert after_failure.not_holding == []


def test_the_window_and_count_are_the_patterns(tmp_path):
    body = PACK.replace(
        'budget = { runs = 2, within = "100s" }',
        'budget = { runs = 2, within = "100s" }\n[pattern.recurrence]\ncount = 3\nwithin = "10s"',
    )
    pack = load_pack(write_pack(tmp_path, "ops", body, {"fix.sh": "#!/bin/sh\n"}), trust=False)
    fix = next(p for p in pack.patterns if p.id == "fix")
    assert (fix.recurrence.count, fix.recurrence.within) == (3, 10.0)
    trigger = new_trigger(pack)
    incident = fixed_at(trigger, fix, "fix web", 0.0, 100.0)
    seen = []
    for now in (101.0, 102.0, 109.0, 111.0, 129.0):  # the last two are past the 10 s window
        batch = Batch()
        feed(trigger, fix, "fix web", now, batch)
        seen.append(batch.not_holding)
    assert seen == [[], [], [(incident.id, 3, 100.0)], [], []]


def resolved_in_store(db: Path, pack: Pack, fix: Pattern) -> tuple[Store, Incident]:
    """`fix web` opened at 0 and resolved at 5 (cooling until 35), as the state has it."""
    store = Store(db)
    batch = Batch()
    incident = feed(new_trigger(pack), fix, "fix web", 0.0, batch)
    assert incident is not None
    commit(store, batch, 0.0)
    store.finish_incident(
        incident.id, "resolved", "resolved", [], 35.0, incident.fingerprint, None, 5.0,
        resolved=True,
    )  # fmt: skip
    return store, incident


def test_a_restart_keeps_counting_recurrences_of_a_resolved_fix(tmp_path, pack, patterns):
    fix = patterns["fix"]
    store, incident = resolved_in_store(tmp_path / "state.db", pack, fix)
    store.close()
    store = Store(tmp_path / "state.db")
    after = restored(store, pack, 6.0)
    back = Batch()
    assert feed(after, fix, "fix web", 7.0, back) is None
    assert back.not_holding == [(incident.id, 1, 5.0)]
    store.close()


def test_a_recurrence_needs_a_remedy(tmp_path):
    from tests.test_packs import errors_of

    errors = errors_of(
        tmp_path,
        "[[pattern]]\nid = \"x\"\nmatch = '^x'\n[pattern.recurrence]\ncount = 2\n"
        '[[pattern.example]]\nline = "x"\n',
    )
    assert any(
        key == "pattern[0].recurrence" and "only a pattern with a remedy" in message
        for key, _, message in errors
    ), errors


def test_an_always_pattern_with_no_fix_is_told_as_always_not_as_no_remedy():
    """Issue 17: `status` listed an `always` escalation as `no-remedy`."""
    from agent import policy

    always = policy.opened("always", has_remedy=False, over_budget=False)
    assert (always.status, always.outcome, always.wire) == ("escalated", "always", "always")
    unresolved = policy.opened("unresolved", has_remedy=False, over_budget=False)
    assert (unresolved.outcome, unresolved.wire) == ("no-remedy", "no-remedy")
    flapping = policy.opened("always", has_remedy=True, over_budget=True)
    assert (flapping.outcome, flapping.wire) == ("flapping", "flapping")
