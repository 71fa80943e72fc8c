"""Issue 17, item 4: a fix that does not hold is news.

A match of a key whose fix resolved within the pattern's recurrence window is a
recurrence; the count-th one escalates the incident as `fix-not-holding`, with
the fix's attempts and the lines, at once instead of after the cooldown. With
the real agent, fix scripts and receiver.
"""

from __future__ import annotations

from tests.helpers import append, status, wait_for, wait_len
from tests.test_remediation import make_agent, runs


def test_a_problem_back_right_after_its_fix_resolved_is_escalated_at_once(tmp_path, receiver):
    agent, log, out = make_agent(tmp_path, receiver)  # sticky: a 1 h cooldown
    agent.start()
    append(log, "queue stuck q1")
    assert wait_for(lambda: agent.saw("resolved ops/sticky")), agent.log()
    assert receiver.escalations(pattern="sticky") == []  # it resolved: nobody told
    append(log, "queue stuck q1 again")
    [event] = wait_len(lambda: receiver.escalations(pattern="sticky"), 1)
    assert event["status"] == "fix-not-holding"
    assert [(a["phase"], a["exit_code"]) for a in event["attempts"]] == [("fix", 0)]
    assert event["lines"] == ["queue stuck q1", "queue stuck q1 again"]
    assert event["count"] == 2
    assert agent.saw("the fix for ops/sticky key='q1' did not hold: 1 match(es) within")
    assert "escalating as fix-not-holding" in agent.log()
    # told once; the cooldown still holds the fix back (the budget is for flapping)
    append(log, "queue stuck q1 third")
    assert wait_for(lambda: status(agent.config)["spool"]["queued"] == 0)
    assert wait_for(
        lambda: any(c["key"] == "q1" and c["count"] == 3 for c in status(agent.config)["cooldowns"])
    )
    assert len(receiver.escalations(pattern="sticky")) == 1
    assert runs(out / "sticky") == 1
    recent = {i["key"]: i for i in status(agent.config)["recent"] if i["pattern"] == "sticky"}
    assert (recent["q1"]["status"], recent["q1"]["outcome"]) == ("escalated", "fix-not-holding")
    assert agent.stop() == 0


def test_a_restart_between_the_fix_and_its_return_still_tells(tmp_path, receiver):
    agent, log, _ = make_agent(tmp_path, receiver)
    agent.start()
    append(log, "queue stuck q7")
    assert wait_for(lambda: agent.saw("resolved ops/sticky")), agent.log()
    assert agent.stop() == 0
    agent.start()
    append(log, "queue stuck q7")
    [event] = wait_len(lambda: receiver.escalations(pattern="sticky"), 1)
    assert event["status"] == "fix-not-holding" and event["fields"] == {"q": "q7"}
    assert agent.stop() == 0
