"""No value one client sends may break the receiver for the others (issue 13, strict input).

Hostile values through the real app in process: each is a 4xx naming the field,
the listing and the page keep working for everyone, and bodies that would expand
in memory are refused by the decoder's own bounds.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.receiver.limits import MAX_COUNT
from tests.helpers import wire_event as event
from tests.test_receiver_app import ESCALATIONS, STATS, Api

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.usefixtures("engine"),  # each test on SQLite and on PostgreSQL
]


@pytest.fixture
def api(tmp_path: Path):
    made = Api(tmp_path, rate=0)
    yield made
    made.close()


def everyone_still_served(api: Api) -> None:
    assert api.client.get(ESCALATIONS, headers=api.auth(api.admin)).status_code == 200
    assert api.client.get(STATS, headers=api.auth(api.admin)).status_code == 200
    assert api.client.get("/", headers=api.auth(api.admin)).status_code == 200
    assert api.client.get("/tier1", headers=api.auth(api.admin)).status_code == 200


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"last_seen": 1e300}, "events[0].last_seen"),
        ({"first_seen": float("nan")}, "events[0].first_seen"),
        ({"first_seen": -1.0}, "events[0].first_seen"),
        ({"count": -3}, "events[0].count"),
        ({"count": True}, "events[0].count"),
        ({"count": 2**53 + 1}, "events[0].count"),
        ({"host": "db\ud800"}, "events[0].host"),
        ({"owner": "x" * 10_000}, "events[0].owner"),
        ({"lines": "not a list"}, "events[0].lines"),
        ({"lines": [1, 2]}, "events[0].lines[0]"),
        ({"fields": {"a": 5}}, "events[0].fields.a"),
        ({"lines": ["x" * 600_000, "y" * 600_000]}, "events[0]"),  # past the per-event cap
    ],
)
def test_a_hostile_value_is_a_4xx_naming_the_field_and_breaks_nothing(api, over, field):
    body = json.dumps({"events": [event(1, **over)]}, allow_nan=True).encode()
    answer = api.raw(body, "application/json")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith(field)
    everyone_still_served(api)


def test_sums_past_64_bits_cannot_break_the_page(api):
    """Many events at the largest count: SQLite's sum() would overflow; the page must not."""
    events = [event(n, count=MAX_COUNT, fingerprint="one-group") for n in range(1100)]
    assert api.post({"events": events}).status_code == 200
    everyone_still_served(api)
    # one group, its lines past 2**63
    inbox = api.client.get("/?window=all", headers=api.auth(api.admin)).text
    assert inbox.count('class="group"') == 1


def test_stats_counts_past_the_bound_are_refused(api):
    row = {"pack": "p", "pattern": "q", "matches": 2**63 - 1}
    answer = api.post({"host": "h", "stats": [row, row]}, path=STATS)
    assert answer.status_code == 422
    assert answer.json()["error"] == "stats[0].matches must be between 0 and 2**53"
    everyone_still_served(api)


@pytest.mark.parametrize(
    "body",
    [
        b"\x81\xa6events\xdd" + (3_000_000).to_bytes(4, "big") + b"\x80" * 3_000_000,  # 3 MB of {}
        msgpack.packb({"events": [{str(n): n for n in range(20_000)}]}),  # a map past it
        b"\x91" * 100_000 + b"\xc0",  # nested 100,000 deep
        msgpack.packb({"events": [], "x": b"\0" * 2_000_000}),  # bin past the string bound
    ],
    ids=["long-array", "wide-map", "deep", "big-bin"],
)
def test_a_body_that_would_expand_in_memory_is_refused_by_the_decoder(api, body):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer = api.raw(body)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert answer.status_code in (400, 413), answer.text
    assert grown_mb < 100
    everyone_still_served(api)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),  # msgpack's bin; JSON gets its repr
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "host",
                "owner",
                "pack",
                "pattern",
                "status",
                "fingerprint",
                "count",
                "first_seen",
                "last_seen",
                "lines",
                "fields",
                "attempts",
                "key",
                "severity",
            ]
        ),
        values,
        max_size=8,
    )
)
def test_no_event_body_whatsoever_gets_a_500(api, over):
    doc = {"events": [event(1, **over)]}
    body = json.dumps(doc, allow_nan=True, default=repr).encode()
    answer = api.raw(body, "application/json")
    assert answer.status_code in (200, 400, 413, 422), answer.text
    try:
        packed = msgpack.packb(doc)
    except (OverflowError, ValueError):
        packed = None  # an integer past 64 bits has no msgpack form
    if packed is not None:
        answer = api.raw(packed)
        assert answer.status_code in (200, 400, 413, 422), answer.text
    assert api.client.get(ESCALATIONS, headers=api.auth(api.admin)).status_code == 200


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_no_bytes_whatsoever_get_a_500(api, body):
    for kind in ("application/msgpack", "application/json"):
        answer = api.raw(b"\x81\xa6events" + body, kind)
        assert answer.status_code in (200, 400, 413, 422), answer.text
        answer = api.raw(body, kind)
        assert answer.status_code in (200, 400, 413, 422), answer.text


def test_every_answer_forbids_caching_framing_and_scripts(api):
    """Escalations carry log lines and fix output: nothing is cached; the page runs no script."""
    assert api.post({"events": [event(1, pattern="<script>alert(1)</script>")]}).status_code == 200
    for answer in (
        api.client.get("/", headers=api.auth(api.admin)),
        api.client.get("/"),  # a redirect to the login page
        api.client.get(ESCALATIONS, headers=api.auth(api.admin)),
        api.client.get(ESCALATIONS),  # a 401 too
        api.client.get("/healthz"),
    ):
        assert answer.headers["cache-control"] == "no-store"
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src" not in policy  # none allowed, by default-src
        assert answer.headers["x-content-type-options"] == "nosniff"
    page = api.client.get("/?window=all", headers=api.auth(api.admin)).text
    assert "&lt;script&gt;alert(1)" in page and "<script>" not in page  # shown, escaped
