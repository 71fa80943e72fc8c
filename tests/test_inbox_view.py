"""The inbox's view from a URL: any query string is a view or a clear refusal, the SQL
it makes has a value for every placeholder, and a view's own URL gives it back."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.receiver.inbox import WINDOWS, BadView, InboxView, Sort, StateFilter

NOW = 1_800_000_000.0
names = st.sampled_from(
    ["state", "pattern", "pack", "host", "severity", "owner", "window", "sort", "page", "x"]
)
values = st.one_of(
    st.sampled_from([*StateFilter, *Sort, *WINDOWS, "1", "0", "10001", "-1", ""]),
    st.text(max_size=300),
)


@given(st.dictionaries(names, values, max_size=9))
def test_any_query_is_a_view_or_a_refusal_and_its_sql_is_whole(query):
    try:
        view = InboxView.parse(query)
    except BadView as exc:
        assert str(exc).split(":")[0] in query or "is not a valid" in str(exc)
        return
    clauses, args = view.where(NOW)
    assert sum(c.count("?") for c in clauses) == len(args)
    assert view.order().split()[0] in {"last_seen", "first_seen", "lines", "occurrences"}
    again = InboxView.parse(dict(parse_qsl(view.query(), keep_blank_values=True)))
    assert again == view


@pytest.mark.parametrize(
    "query",
    [{"state": "gone"}, {"sort": "id; DROP TABLE groups"}, {"window": "2y"}, {"page": "0"},
     {"page": "99999"}, {"pattern": "x" * 257}, {"host": "a\nb"}],
)  # fmt: skip
def test_a_value_outside_its_vocabulary_or_bounds_is_refused(query):
    with pytest.raises(BadView):
        InboxView.parse(query)


def test_defaults_stay_out_of_the_url():
    assert InboxView().query() == ""
    assert InboxView(pattern="oom").query(page=2) == "pattern=oom&page=2"
