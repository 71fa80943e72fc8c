"""Review of issue 17 (broken packs apart, ignore rules, fixes that do not hold):
each test here is a bug found by attacking the change, and fails until it is fixed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent import events
from agent.match import Matcher
from agent.model import Batch
from agent.packs import Recurrence, load_pack
from agent.packset import load_packs_apart
from agent.receiver.limits import InvalidEvent, validate
from tests.helpers import (
    AgentProc,
    FaultServer,
    append,
    make_receiver,
    wait_for,
    write_config,
    write_pack,
)
from tests.test_ignore import with_ignore
from tests.test_isolation import GOOD
from tests.test_trigger_unit import PACK as TRIGGER_PACK
from tests.test_trigger_unit import (
    commit,
    feed,
    fixed_at,
    new_trigger,
    resolved_in_store,
    restored,
)

NOW = 1_700_000_000.0


def broken_folder(root: Path, name: str | bytes) -> Path:
    """A pack folder whose pack.toml cannot be parsed: its report is named after the folder."""
    folder = root / (os.fsdecode(name) if isinstance(name, bytes) else name)
    folder.mkdir(parents=True)
    (folder / "pack.toml").write_text("[pack\n")
    return folder


# broken packs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder",
    ["zz-\x1b[31mred\nFAKE", "zz-" + "x" * 220],
    ids=["control-characters", "long-name"],
)
def test_a_pack_error_named_after_its_folder_is_one_the_receiver_accepts(tmp_path, folder):
    """A broken pack whose name cannot be read is reported under its folder's name,
    unchecked (packs.py load_packs_apart): the receiver refuses the event (400), and
    the sender parks the whole batch it is in, other teams' escalations included."""
    broken_folder(tmp_path / "packs", folder)
    _, [broken] = load_packs_apart((tmp_path / "packs",), trust=False)
    event = events.decode(events.pack_error(broken, "test-host", NOW).encode())
    try:
        validate(event, 0, NOW)
    except InvalidEvent as exc:
        pytest.fail(f"the receiver refuses the pack-error event: {exc}")


def test_a_pack_error_of_a_valid_long_name_and_version_is_one_the_receiver_accepts(tmp_path):
    """Name and version of 64 characters each are valid (packs.NAME), but the event id
    pack-error:{name}:{version}:{digest}:{host} (events.py pack_error) passes the
    receiver's 200-character limit for a plain FQDN host."""
    write_pack(tmp_path / "packs", "p", GOOD.replace("match =", "mtach ="))
    toml = tmp_path / "packs" / "p" / "pack.toml"
    toml.write_text(
        toml.read_text()
        .replace('name = "p"', f'name = "{"n" * 64}"')
        .replace('version = "1.2.3"', f'version = "{"1" * 64}"')
    )
    _, [broken] = load_packs_apart((tmp_path / "packs",), trust=False)
    assert broken.name == "n" * 64
    host = "ip-10-20-30-40.eu-central-1.compute.internal"
    event = events.decode(events.pack_error(broken, host, NOW).encode())
    try:
        validate(event, 0, NOW)
    except InvalidEvent as exc:
        pytest.fail(f"the receiver refuses the pack-error event: {exc}")


def test_check_prints_no_control_characters_of_a_broken_pack_folder_name(tmp_path):
    """`logmend check` (and `status`) print a broken pack's name raw; that name is the
    folder's when pack.toml cannot be read, so an ESC reaches the admin's terminal."""
    broken_folder(tmp_path / "packs", "zz-\x1b]0;owned\x07")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check", str(tmp_path / "packs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "BROKEN" in done.stdout, done
    assert "\x1b" not in done.stdout


def test_a_pack_folder_with_a_non_utf8_name_does_not_stop_the_agent(tmp_path):
    """Every error of a broken pack names its file; events.pack_error encodes them to
    UTF-8 for its digest (events.py:138), which raises on the surrogate escape of a
    non-UTF-8 folder name, and _note_broken (daemon.py) catches only StateError: the
    agent dies at start (and on a reload it is half applied)."""
    packs = tmp_path / "packs"
    write_pack(packs, "good", GOOD)
    broken_folder(packs, b"zz-bad\xff")
    log = tmp_path / "app.log"
    log.touch()
    agent = AgentProc(write_config(tmp_path, [(str(log), None)], packs))
    try:
        agent.start()
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()


def test_a_reload_that_meets_a_non_utf8_pack_folder_does_not_stop_the_agent(tmp_path):
    """The same on SIGHUP: Agent.reload calls _note_broken after reader.adopt, outside
    its guard (daemon.py reload), so the exception ends the agent's main loop with the
    new packs half swapped in."""
    packs = tmp_path / "packs"
    write_pack(packs, "good", GOOD)
    log = tmp_path / "app.log"
    log.touch()
    agent = AgentProc(write_config(tmp_path, [(str(log), None)], packs))
    agent.start()
    try:
        broken_folder(packs, b"zz-bad\xff")
        os.kill(agent.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: agent.saw("reloaded: ") or agent.proc.poll() is not None)
        assert agent.proc.poll() is None, agent.log()
    finally:
        if agent.proc.poll() is None:
            agent.stop()


def test_two_packs_of_one_name_do_not_let_the_first_folder_take_the_name(tmp_path):
    """A name two packs claim goes to the pack whose folder sorts first (packs.py
    load_packs_apart: first come, first kept): a pack dropped in `aaa/` saying
    name = "good" runs as the good team's pack (its sources, its host params) and the
    real one is set aside as broken. Before issue 17 the agent refused both."""
    packs = tmp_path / "packs"
    write_pack(packs, "good", GOOD, owner="team-good")
    write_pack(packs, "aaa", GOOD, owner="team-evil")
    toml = packs / "aaa" / "pack.toml"
    toml.write_text(toml.read_text().replace('name = "aaa"', 'name = "good"'))
    running, _ = load_packs_apart((packs,), trust=False)
    assert [(p.name, p.owner) for p in running if p.name == "good"] in ([], [("good", "team-good")])


def test_an_unowned_pack_error_is_delivered_with_a_fleet_token(tmp_path):
    """A pack.toml that cannot be read gives a pack-error with owner "" (events.py
    pack_error, from BrokenPack.owner): the receiver files an ownerless event only under
    a token bound to exactly one owner, so with a fleet token (any owner) it is 403
    and retried forever, never reaching anyone. The agent's own reports go to owner
    "logmend" (events.spool_dropped)."""
    receiver = make_receiver(tmp_path).start()
    try:
        packs = tmp_path / "packs"
        write_pack(packs, "good", GOOD)
        (packs / "zz-noise").mkdir()
        (packs / "zz-noise" / "pack.toml").write_bytes(b"\x00\xff[pack\n")
        log = tmp_path / "app.log"
        log.touch()
        agent = AgentProc(write_config(tmp_path, [(str(log), None)], packs, receiver))
        agent.start()
        try:
            got = wait_for(lambda: receiver.escalations(status="pack-error") or None, 10)
            assert got, agent.log()
        finally:
            agent.stop()
    finally:
        receiver.stop()


def test_a_broken_packs_report_does_not_park_another_teams_escalation(tmp_path):
    """The receiver refuses a batch with one invalid event as a whole (400) and the
    sender parks every event in it: an unacceptable pack-error (see the folder-name
    test above) takes another team's escalation down with it."""
    receiver = make_receiver(tmp_path).start()
    fault = FaultServer(receiver.url)
    fault.plan = ["hang"]  # the first send (the pack-error alone) waits for the second
    try:
        packs = tmp_path / "packs"
        write_pack(packs, "good", GOOD.replace('escalate = "never"', 'escalate = "always"'))
        broken_folder(packs, "zz-" + "x" * 220)
        log = tmp_path / "app.log"
        log.touch()
        config = write_config(
            tmp_path, [(str(log), None)], packs, receiver, url=fault.url, escalation=""
        )
        agent = AgentProc(config)
        agent.start()
        try:
            assert wait_for(lambda: fault.seen == ["hang"])
            append(log, "disk full on sdz")
            assert wait_for(lambda: agent.saw("escalat") or None)
            fault.release.set()  # the hung send fails; the retry carries both events
            got = wait_for(lambda: receiver.escalations(pack="good") or None, 10)
            assert got, agent.log()
        finally:
            agent.stop()
    finally:
        fault.stop()
        receiver.stop()


# ignore rules ---------------------------------------------------------------------------


def test_an_ignore_rule_that_keeps_timing_out_is_not_tried_on_every_line_forever():
    """A pattern's own regex is quarantined after max_timeouts; an ignore rule that
    times out (match.py Matcher._ignored) is tried again on every line the pattern
    matches, for ever: each such line costs up to 16 timeouts, and nobody is told."""
    p = with_ignore(r"^(?P<x>a+)!", [r"^(a|aa)+$"])
    matcher = Matcher([p], timeout=0.02, max_timeouts=3)
    for _ in range(8):
        matcher.match("a" * 40 + "!")
    (stats,) = [s for _, s in matcher.pattern_stats()]
    assert stats.timeouts <= 3, f"{stats.timeouts} timeouts of one ignore rule, none quarantined"


# recurrences ----------------------------------------------------------------------------


@pytest.fixture
def fix_pack(tmp_path):
    return load_pack(write_pack(tmp_path, "ops", TRIGGER_PACK, {"fix.sh": "#!/bin/sh\n"}), False)


def fix_of(pack, **recurrence):
    fix = next(p for p in pack.patterns if p.id == "fix")
    if recurrence:
        fix = dataclasses.replace(fix, recurrence=Recurrence(**recurrence))
    return fix


def test_a_fix_that_did_not_hold_is_told_once_not_again_after_each_restart(tmp_path, fix_pack):
    """Told once per resolution: but nothing records that it was told. After a restart
    the cooldown row still has its resolution time (state.py cooldowns.resolved) and
    _Active.recurred starts at 0 (trigger.py restore), so the next match escalates the
    same incident as fix-not-holding again, and again after every restart."""
    fix = fix_of(fix_pack)
    store, _ = resolved_in_store(tmp_path / "state.db", fix_pack, fix)
    told = []
    for now in (6.0, 7.0, 8.0):  # a match, a restart, a match, a restart, a match
        trigger = restored(store, fix_pack, now)
        batch = Batch()
        feed(trigger, fix, "fix web", now, batch)
        commit(store, batch, now)
        told += batch.not_holding
    store.close()
    assert len(told) == 1, told


def test_recurrences_before_a_restart_still_count_after_it(tmp_path, fix_pack):
    """recurrence.count = 2: one match before a restart and one after are two matches
    within the window, but _Active.recurred is not kept (trigger.py restore): never
    told until two more come after the restart."""
    fix = fix_of(fix_pack, count=2, within=30.0)
    store, _ = resolved_in_store(tmp_path / "state.db", fix_pack, fix)
    before = restored(store, fix_pack, 6.0)
    first = Batch()
    feed(before, fix, "fix web", 6.0, first)
    commit(store, first, 6.0)
    assert first.not_holding == []
    after = restored(store, fix_pack, 7.0)  # the restart
    second = Batch()
    feed(after, fix, "fix web", 7.0, second)
    store.close()
    assert [n for _, n, _ in second.not_holding] == [2]


def test_a_reload_that_lowers_recurrence_count_still_tells(fix_pack):
    """_recurred tells when recurred == count (trigger.py): a reload from count = 3 to
    count = 2 after two recurrences leaves recurred past the new count, and the fix
    that does not hold is never told however often it comes back."""
    trigger = new_trigger(fix_pack)
    old = fix_of(fix_pack, count=3, within=30.0)
    fixed_at(trigger, old, "fix web", 0.0, 5.0)
    for now in (6.0, 7.0):
        batch = Batch()
        feed(trigger, old, "fix web", now, batch)
        assert batch.not_holding == []
    new = fix_of(fix_pack, count=2, within=30.0)  # SIGHUP: the pack now says count = 2
    told = []
    for now in (8.0, 9.0, 10.0):
        batch = Batch()
        feed(trigger, new, "fix web", now, batch)
        told += batch.not_holding
    assert len(told) == 1, told


def test_a_recurrence_window_longer_than_the_remedy_cooldown_is_refused(tmp_path):
    """recurrence.within = "100s" with the remedy's 30 s cooldown: recurrences are only
    counted while the key cools down (after it a match runs the fix again), so the
    window would be cut short in silence. The loader refuses it, naming the cooldown."""
    from tests.test_packs import errors_of

    body = TRIGGER_PACK.replace(
        'budget = { runs = 2, within = "100s" }',
        'budget = { runs = 2, within = "100s" }\n[pattern.recurrence]\nwithin = "100s"',
    )
    errors = errors_of(tmp_path, body)
    assert any(
        key == "pattern[2].recurrence.within" and "longer than the remedy's cooldown (30s)" in m
        for key, _, m in errors
    ), errors
