"""Issue 20, item 4: journal entries joined into events per stream (unit and PID) by
the source's multiline rules, and the mark that resumes them: a model of kills at every
pass, checked against a run that is never killed (hypothesis)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.journal import Entry
from agent.journalstream import MAX_STREAMS, JournalStream, stream_of
from agent.model import JournalMark
from agent.records import EventJoiner

START = regex.compile(r"^\S")  # an indented line continues the event before it


def entry(n: int, message: str, pid: str = "1", unit: str = "app.service") -> Entry:
    return Entry(f"s=abc;i={n:x};b=boot", message, {"unit": unit, "pid": pid})


@dataclass
class Feed:
    """A follower whose entries are given: take() hands out the next ones."""

    entries: list[Entry]
    at: int = 0
    anchor: str | None = None  # the follower's "from now on", never resolved here
    taken: list[int] = field(default_factory=list)

    def take(self, most: int) -> list[Entry]:
        out = self.entries[self.at : self.at + most]
        self.at += len(out)
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stream(entries: list[Entry], mark: JournalMark | None = None, clock=None, joins=True):
    start = 0
    if mark is not None:
        cursors = [e.cursor for e in entries]
        start = cursors.index(mark.replay) if mark.held else cursors.index(mark.cursor) + 1
    feed = Feed(entries, start)
    made = JournalStream(
        feed,  # type: ignore[arg-type]
        mark,
        (lambda: EventJoiner(START, None, 50, 64 * 1024)) if joins else None,
        flush_after=5.0,
        monotonic=clock or Clock(),
    )
    return made


def run(made: JournalStream, sizes: list[int], clock: Clock) -> list[tuple[list, JournalMark]]:
    """Passes of the given sizes: the records and the mark of each."""
    passes = []
    for size in sizes:
        records = made.take(size)
        mark = made.mark()
        passes.append((records, mark))
    clock.now += 10
    passes.append((made.quiet(), made.mark()))
    return passes


def records_of(passes) -> Counter:
    return Counter((text, fields["pid"]) for records, _ in passes for text, fields in records)


def test_a_traceback_logged_line_by_line_is_one_event_per_process():
    entries = [
        entry(1, "Traceback (most recent call last):", pid="1"),
        entry(2, "Traceback (most recent call last):", pid="2"),
        entry(3, '  File "a.py", line 1', pid="1"),
        entry(4, '  File "b.py", line 2', pid="2"),
        entry(5, "ValueError: one", pid="1"),
        entry(6, "KeyError: two", pid="2"),
    ]
    clock = Clock()
    made = stream(entries, clock=clock)
    got = made.take(100)
    assert got == [
        ('Traceback (most recent call last):\n  File "a.py", line 1', {"unit": "app.service", "pid": "1"}),
        ('Traceback (most recent call last):\n  File "b.py", line 2', {"unit": "app.service", "pid": "2"}),
    ]  # fmt: skip
    mark = made.mark()
    assert mark == JournalMark(
        entries[-1].cursor, entries[4].cursor, (("app.service[1]", entries[4].cursor),
                                                ("app.service[2]", entries[5].cursor))
    )  # fmt: skip
    clock.now += 4.9
    assert made.quiet() == []
    clock.now += 0.2
    assert sorted(t for t, _ in made.quiet()) == ["KeyError: two", "ValueError: one"]
    assert made.mark() == JournalMark(entries[-1].cursor)
    assert made.mark() is None  # it has not moved since


def test_without_multiline_every_entry_is_a_record_and_the_mark_its_cursor():
    entries = [entry(n, f"line {n}") for n in range(1, 4)]
    made = stream(entries, joins=False)
    assert [t for t, _ in made.take(2)] == ["line 1", "line 2"]
    assert made.mark() == JournalMark(entries[1].cursor)
    assert made.mark() is None


def test_an_event_held_across_a_restart_is_joined_whole_and_the_rest_not_again():
    entries = [
        entry(1, "Traceback A", pid="1"),
        entry(2, "plain B1", pid="2"),
        entry(3, "  at A.1", pid="1"),
        entry(4, "plain B2", pid="2"),  # completes B1
        entry(5, "  at A.2", pid="1"),
        entry(6, "plain B3", pid="2"),
    ]
    clock = Clock()
    first = stream(entries, clock=clock)
    assert [t for t, _ in first.take(4)] == ["plain B1"]
    mark = first.mark()
    assert mark is not None and mark.replay == entries[0].cursor
    # killed here, with that mark committed; started again from it
    again = stream(entries, mark, clock)
    assert again.take(100) == [("plain B2", {"unit": "app.service", "pid": "2"})]
    clock.now += 10
    assert sorted(t for t, _ in again.quiet()) == ["Traceback A\n  at A.1\n  at A.2", "plain B3"]


def test_streams_past_the_bound_are_flushed_oldest_first_not_held_without_end():
    clock = Clock()
    entries = []
    for n in range(MAX_STREAMS + 1):
        entries.append(entry(n + 1, f"start {n}", pid=str(n)))
    made = stream(entries, clock=clock)
    records = []
    for _ in entries:
        records += made.take(1)
        clock.now += 0.001
    assert [t for t, _ in records] == ["start 0"]
    assert len(made._held) == MAX_STREAMS


def test_streams_are_unit_and_process():
    assert stream_of(entry(1, "x", pid="7", unit="a.service")) == "a.service[7]"
    assert stream_of(Entry("c", "x", {"identifier": "cron"})) == "cron[]"


lines = st.sampled_from(["Traceback", "  at x", "  at y", "Error: z", "plain"])


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.tuples(lines, st.sampled_from("123")), min_size=1, max_size=40),
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=20),
    kill=st.integers(0, 20),
    sizes_after=st.lists(st.integers(1, 7), min_size=1, max_size=20),
)
def test_a_kill_after_any_committed_pass_matches_each_event_once(
    messages, sizes, kill, sizes_after
):
    """Exactly once: the records of the passes committed before a kill and of the run
    after it are the records of a run never killed."""
    entries = [entry(n + 1, m, pid=p) for n, (m, p) in enumerate(messages)]
    whole_clock = Clock()
    whole = records_of(run(stream(entries, clock=whole_clock), [10_000], whole_clock))
    assert sum(whole.values()) >= 1

    clock = Clock()
    first = stream(entries, clock=clock)
    committed: list = []
    mark = None
    for size in sizes[: kill or 1]:
        records = first.take(size)
        moved = first.mark()
        committed.append((records, moved))
        mark = moved or mark
    # the kill: nothing after the last committed pass survives but the mark
    again = stream(entries, mark, clock)
    after = run(again, sizes_after + [10_000], clock)
    assert records_of(committed) + records_of(after) == whole


def test_a_replay_from_a_cursor_that_says_no_sequence_ends_rather_than_skip_forever():
    entries = [entry(1, "Traceback A", pid="1"), entry(2, "plain B", pid="2")]
    mark = JournalMark(
        "edited-by-hand", entries[0].cursor, (("app.service[1]", entries[0].cursor),)
    )
    made = stream(entries, mark)
    assert made.take(10) == []  # A joined again; B not skipped: the replay is over
    moved = made.mark()
    assert moved is not None and [s for s, _ in moved.held] == ["app.service[1]", "app.service[2]"]
