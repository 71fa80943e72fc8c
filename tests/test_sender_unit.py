"""Sender on fake time: batches, acknowledgements, backoff, Retry-After, parking, aggregation.

A real Store in tmp_path, an injected clock, and an httpx.MockTransport standing in
for the receiver (it answers from a plan, or fails on demand). The sender thread is
never started: each test calls send_due() itself at the times it chooses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from agent.config import Escalation
from agent.escalate import Sender
from agent.events import Event, recount
from agent.model import Batch, CountUpdate, Incident
from agent.policy import Wire
from agent.state import SpoolLimits, Store

URL = "https://receiver.test/v1/escalations"
TOKEN = "lm_test-token"
START = 1_700_000_000.0
Answer = Callable[[httpx.Request], httpx.Response]


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ack(request: httpx.Request) -> httpx.Response:
    """What the receiver says to a batch it stored: every id accepted."""
    ids = [e["id"] for e in msgpack.unpackb(request.content)["events"]]
    return httpx.Response(200, json={"accepted": ids, "duplicates": []})


def status(code: int, **headers: str) -> Answer:
    return lambda request: httpx.Response(code, headers=headers, text="no")


def fail(exc: type[httpx.TransportError]) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("the network said no", request=request)

    return answer


class FakeReceiver:
    """Answers each request with the next planned answer; acknowledges when the plan is empty."""

    def __init__(self) -> None:
        self.plan: list[Answer] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return (self.plan.pop(0) if self.plan else ack)(request)

    def events(self, index: int = -1) -> list[dict[str, Any]]:
        return list(msgpack.unpackb(self.requests[index].content)["events"])

    def ids(self) -> list[list[str]]:
        return [[e["id"] for e in msgpack.unpackb(r.content)["events"]] for r in self.requests]


class Rig:
    def __init__(self, tmp: Path, hold: float = 0.0, batch_size: int = 100) -> None:
        token = tmp / "token"
        token.write_text(TOKEN + "\n")
        self.store = Store(tmp / "state.db", spool=SpoolLimits(hold=hold), recount=recount)
        self.config = Escalation(
            url=URL,
            token_file=token,
            backoff_initial=1.0,
            backoff_max=8.0,
            batch_size=batch_size,
            aggregate=hold,
        )
        self.clock = Clock()
        self.receiver = FakeReceiver()
        self.sender = Sender(
            self.store,
            self.config,
            {"host": "h1", "version": "test"},
            transport=httpx.MockTransport(self.receiver),
            clock=self.clock,
        )

    def spool(self, *ids: str, count: int = 1) -> None:
        batch = Batch()
        batch.escalations = [event(i, count) for i in ids]
        self.store.commit(batch, self.clock())

    def wait(self) -> float:
        """How long until the spool's next item is due."""
        next_try = self.store.next_due()
        assert next_try is not None
        return next_try - self.clock()

    def tries(self) -> list[int]:
        return [item.tries for item in self.store.due(float("inf"), 1000)]

    def close(self) -> None:
        self.sender.client.close()
        self.store.close()


def event(incident_id: str, count: int = 1) -> Event:
    return Event(
        incident_id,
        "fp",
        "h1",
        "ops",
        "1",
        "team",
        "p",
        "error",
        Wire.NO_REMEDY,
        "x",
        1.0,
        1.0,
        count,
        lines=["x"],
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


@pytest.fixture
def ceilings(rig: Rig) -> list[tuple[float, float]]:
    """Jitter made exact: the sender's injected uniform(a, b) returns b and records (a, b)."""
    calls: list[tuple[float, float]] = []

    def top(a: float, b: float) -> float:
        calls.append((a, b))
        return b

    rig.sender.backoff.uniform = top
    return calls


# ---------------------------------------------------------------------------------------


def test_a_due_batch_goes_as_msgpack_with_the_token_and_leaves_the_spool_when_answered(rig):
    rig.spool("e1", "e2")
    rig.receiver.plan = [
        lambda request: httpx.Response(200, json={"accepted": ["e1"], "duplicates": ["e2"]})
    ]
    assert rig.sender.send_due() == 5.0  # nothing left: look again in 5 s
    [request] = rig.receiver.requests
    assert (request.method, str(request.url)) == ("POST", URL)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/msgpack"
    assert request.headers["user-agent"].startswith("logmend/")
    assert msgpack.unpackb(request.content) == {
        "agent": {"host": "h1", "version": "test"},
        "events": [event("e1").to_wire(), event("e2").to_wire()],
    }
    assert rig.store.due(float("inf"), 100) == []
    assert rig.store.spool_summary()["queued"] == 0
    assert (rig.sender.stats.sent, rig.sender.stats.duplicates) == (2, 1)


def test_the_spool_goes_in_batches_of_batch_size_oldest_first(tmp_path):
    rig = Rig(tmp_path, batch_size=2)
    try:
        rig.spool("e1", "e2", "e3")
        rig.spool("e4", "e5")
        assert rig.sender.send_due() == 5.0
        assert rig.receiver.ids() == [["e1", "e2"], ["e3", "e4"], ["e5"]]
        assert rig.store.spool_summary()["queued"] == 0
    finally:
        rig.close()


def test_an_answer_that_is_not_json_still_counts_as_delivered(rig):
    rig.spool("e1")
    rig.receiver.plan = [lambda request: httpx.Response(200, text="ok")]
    rig.sender.send_due()
    assert rig.store.spool_summary()["queued"] == 0 and rig.sender.stats.sent == 1


def test_an_id_the_receiver_did_not_acknowledge_stays_in_the_spool(rig):
    rig.spool("e1", "e2")
    rig.receiver.plan = [
        lambda request: httpx.Response(200, json={"accepted": ["e1"], "duplicates": []})
    ]
    rig.sender.send_due()
    assert [item.id for item in rig.store.due(float("inf"), 100)] == ["e2"]


def test_a_403_deletes_what_the_receiver_took_and_keeps_what_the_token_may_not_send(
    rig, ceilings, caplog
):
    """A token bound to other owners or hosts: what it may send is stored and leaves the
    spool; the rest stays, backs off, and goes again once the token allows it."""
    rig.spool("e1", "e2", "e3")
    refusal = "events[1]: token 'web' may not report for owner 'team-b' (it may for team-a)"
    rig.receiver.plan = [
        lambda request: httpx.Response(
            403,
            json={
                "error": refusal + " (and 1 more)",
                "accepted": ["e1"],
                "duplicates": [],
                "refused": {"e2": refusal, "e3": refusal},
            },
        ),
        status(403),  # a token of the wrong scope: names nothing, so nothing is deleted
    ]
    assert rig.sender.send_due() == 0.05
    assert [item.id for item in rig.store.due(float("inf"), 100)] == ["e2", "e3"]
    assert rig.sender.stats.sent == 1 and rig.sender.stats.parked == 0
    assert refusal in caplog.text
    rig.clock.now += rig.wait()
    rig.sender.send_due()
    assert [item.id for item in rig.store.due(float("inf"), 100)] == ["e2", "e3"]
    assert ceilings[-1] == (1.0, 4.0)  # backing off, like any failure
    rig.clock.now += rig.wait()
    rig.sender.send_due()  # the token now allows them: the plan is empty, all acknowledged
    assert rig.store.spool_summary()["queued"] == 0 and rig.sender.stats.sent == 3


def test_server_and_network_errors_back_off_exponentially_up_to_the_maximum(rig, ceilings):
    rig.spool("e1")
    rig.receiver.plan = [
        status(500),
        fail(httpx.ConnectError),
        status(502),
        fail(httpx.ReadTimeout),
        status(500),
    ]
    waits = []
    for _ in range(5):
        assert rig.sender.send_due() == 0.05  # failed: the loop looks again soon
        waits.append(rig.wait())
        assert rig.store.due(rig.clock() + waits[-1] - 0.001, 100) == []  # not due before
        rig.clock.now += waits[-1]
    assert ceilings == [(1.0, 2.0), (1.0, 4.0), (1.0, 8.0), (1.0, 8.0), (1.0, 8.0)]
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert rig.tries() == [5]
    assert rig.sender.stats.failures == 5
    assert len(rig.receiver.requests) == 5  # one request per due time, no more
    # a delivery resets the backoff: the next failure waits from the start again
    rig.sender.send_due()
    assert rig.store.spool_summary()["queued"] == 0
    rig.spool("e2")
    rig.receiver.plan = [status(503)]
    rig.sender.send_due()
    assert ceilings[-1] == (1.0, 2.0) and rig.wait() == 2.0


def test_backoff_jitter_stays_within_initial_and_the_doubling_ceiling(rig):
    rig.sender.backoff.uniform = random.Random(7).uniform  # seeded: the same run every time
    rig.spool("e1")
    rig.receiver.plan = [status(500)] * 40
    waits = []
    for failure in range(1, 41):
        rig.sender.send_due()
        wait = rig.wait()
        assert 1.0 <= wait <= min(8.0, 2.0**failure), (failure, wait)
        waits.append(wait)
        rig.clock.now += wait
    assert len(set(waits)) > 10  # jittered, not a fixed schedule
    assert max(waits[3:]) > 4.0  # the ceiling did grow past the second step


@pytest.mark.parametrize("code", [429, 503])
def test_throttling_honours_retry_after_in_seconds(rig, ceilings, code):
    rig.spool("e1")
    rig.receiver.plan = [status(code, **{"Retry-After": "7"})]
    assert rig.sender.send_due() == 0.05
    assert rig.wait() == 7.0 and ceilings == []  # no jitter: the server said when
    rig.clock.now += 6.9
    assert rig.sender.send_due() == pytest.approx(0.1)
    assert len(rig.receiver.requests) == 1
    rig.clock.now += 0.1
    rig.sender.send_due()
    assert len(rig.receiver.requests) == 2 and rig.store.spool_summary()["queued"] == 0


@pytest.mark.parametrize("code", [429, 503])
def test_throttling_honours_retry_after_as_an_http_date(rig, ceilings, code):
    rig.spool("e1")
    when = formatdate(START + 30, usegmt=True)
    rig.receiver.plan = [status(code, **{"Retry-After": when})]
    rig.sender.send_due()
    assert rig.wait() == 30.0 and ceilings == []


def test_retry_after_in_the_past_means_now(rig):
    rig.spool("e1")
    rig.receiver.plan = [status(429, **{"Retry-After": formatdate(START - 60, usegmt=True)})]
    rig.sender.send_due()
    assert rig.wait() == 0.0


@pytest.mark.parametrize(
    ("code", "headers"),
    [(429, {}), (503, {"Retry-After": "soon"}), (500, {"Retry-After": "600"})],
    ids=["429-without", "503-unreadable", "500-is-not-throttling"],
)
def test_without_a_usable_retry_after_the_backoff_applies(rig, ceilings, code, headers):
    rig.spool("e1")
    rig.receiver.plan = [status(code, **headers)]
    rig.sender.send_due()
    assert ceilings == [(1.0, 2.0)] and rig.wait() == 2.0


@pytest.mark.parametrize("code", [400, 413, 422])
def test_a_batch_refused_for_good_is_parked_shown_and_brought_back_by_unpark(rig, code):
    rig.spool("e1", "e2")
    rig.receiver.plan = [status(code)]
    assert rig.sender.send_due() == 5.0  # parked counts as handled: nothing is due
    assert rig.store.spool_summary() == {
        "queued": 0,
        "parked": 2,
        "oldest": None,
        "parked_error": f"HTTP {code}: no",
        "dropped": 0,
    }
    assert rig.store.due(float("inf"), 100) == [] and rig.store.next_due() is None
    assert rig.sender.stats.parked == 2 and rig.sender.stats.failures == 0
    # parked events do not hold up new ones
    rig.spool("e3")
    rig.sender.send_due()
    assert rig.receiver.ids() == [["e1", "e2"], ["e3"]]
    assert rig.store.unpark() == 2
    assert [item.id for item in rig.store.due(rig.clock(), 100)] == ["e1", "e2"]
    assert rig.tries() == [1, 1]
    rig.sender.send_due()
    assert rig.receiver.ids()[-1] == ["e1", "e2"]
    assert rig.store.spool_summary()["queued"] == rig.store.spool_summary()["parked"] == 0


def test_an_aggregated_event_waits_for_its_time_and_goes_once_with_the_newest_count(tmp_path):
    rig = Rig(tmp_path, hold=5.0)
    try:
        incident = Incident("e1", "fp", "ops", "p", "k", "/log", "escalated", 1, START, START)
        batch = Batch()
        batch.incidents[incident.id] = incident
        batch.escalations = [event("e1")]
        rig.store.commit(batch, START)
        assert rig.store.next_due() == START + 5.0
        assert rig.sender.send_due() == 5.0 and rig.receiver.requests == []
        rig.clock.now = START + 3.0
        more = Batch()
        more.counts["e1"] = CountUpdate(added=2, last_seen=START + 3.0, samples=["y", "z"])
        rig.store.commit(more, rig.clock())
        assert rig.store.next_due() == START + 5.0  # an update does not push it back
        assert rig.sender.send_due() == 2.0 and rig.receiver.requests == []
        rig.clock.now = START + 4.99
        rig.sender.send_due()
        assert rig.receiver.requests == []
        rig.clock.now = START + 5.0
        assert rig.sender.send_due() == 5.0
        [sent] = rig.receiver.events()
        assert (sent["id"], sent["count"], sent["last_seen"]) == ("e1", 3, START + 3.0)
        assert len(rig.receiver.requests) == 1
    finally:
        rig.close()


def test_send_due_says_how_long_to_wait_for_the_next_item(rig):
    assert rig.sender.send_due() == 5.0  # empty spool
    rig.spool("e1")
    rig.store.retry_later([rig.store.due(rig.clock(), 1)[0].seq], START + 2.0, "test")
    assert rig.sender.send_due() == 2.0
    rig.store.retry_later([rig.store.due(float("inf"), 1)[0].seq], START + 100.0, "test")
    assert rig.sender.send_due() == 5.0  # capped: the loop looks again at least every 5 s
    assert rig.receiver.requests == []


def test_a_retry_after_of_infinity_does_not_stall_the_batch_for_ever(rig):
    rig.spool("e1")
    rig.receiver.plan = [status(503, **{"Retry-After": "inf"})]
    rig.sender.send_due()
    assert math.isfinite(rig.wait())
