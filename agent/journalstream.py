"""A journal source between its follower and the matcher: entries joined into events.

An entry is a whole record, but a program that logs a traceback one line per
write leaves one entry per line; the source's multiline rules (the same as
files') join them, one joiner per stream (unit and PID: two workers of one unit
do not interleave their tracebacks). A held event is the one place where a
restart could lose or repeat lines, so the mark committed with each pass says
where the oldest held event began (`replay`) and which streams held what: after
a restart, reading begins there again, the held streams' entries are joined
again, and every other entry up to the last one committed is skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from agent.journal import Entry, JournalFollower, seqnum
from agent.model import JournalMark
from agent.records import EventJoiner

MAX_STREAMS = 512  # joiners held at once; past it, the one fed longest ago is flushed

Record = tuple[str, Mapping[str, str]]  # an event's text and its first entry's fields


def stream_of(entry: Entry) -> str:
    """The stream an entry belongs to: its unit (or identifier) and process."""
    fields = entry.fields
    return f"{fields.get('unit') or fields.get('identifier', '')}[{fields.get('pid', '')}]"


class _Held:
    """One stream's joiner, with what its held event began with."""

    __slots__ = ("fed", "fields", "first", "joiner", "number")

    def __init__(self, joiner: EventJoiner) -> None:
        self.joiner = joiner
        self.fields: Mapping[str, str] = {}
        self.first = ""  # the held event's first entry's cursor
        self.number = 0  # and its place in the read order
        self.fed = 0.0


class JournalStream:
    """Entries from a follower as records to match, and the mark that resumes them."""

    def __init__(
        self,
        follower: JournalFollower,
        mark: JournalMark | None,
        joiner: Callable[[], EventJoiner] | None,  # the source's multiline rules, if any
        flush_after: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.follower = follower
        self.new_joiner = joiner
        self.flush_after = flush_after
        self.monotonic = monotonic
        self._held: OrderedDict[str, _Held] = OrderedDict()  # least recently fed first
        self._number = 0
        self._last = mark.cursor if mark else ""
        self._changed = False
        self._anchored = mark is not None  # else "from now on" is committed once resolved
        # replaying: (the last entry committed, the held streams' first entries, those begun)
        self._replay: tuple[str, dict[str, str], set[str]] | None = None
        if mark and mark.held and joiner is not None:
            self._replay = (mark.cursor, dict(mark.held), set())
        self.entries = 0  # read, for the metrics

    # reading ---------------------------------------------------------------------------
    def take(self, most: int) -> list[Record]:
        """What the follower read since, as records (joined events, when the source joins)."""
        entries = self.follower.take(most)
        if not entries:
            return []
        self.entries += len(entries)
        self._changed = True
        if self.new_joiner is None:
            self._last = entries[-1].cursor
            return [(entry.message, entry.fields) for entry in entries if entry.wanted]
        records: list[Record] = []
        for entry in entries:
            if self._replay is not None:
                skipped = self._skipped(entry, self._replay)
                if self._replay is not None:
                    if not skipped and entry.wanted:
                        self._feed(entry, records)  # the held event, as it was
                    continue  # the mark stays where it was committed until past it
                if skipped:
                    self._last = entry.cursor
                    continue
            self._last = entry.cursor
            if entry.wanted:
                self._feed(entry, records)
        return records

    def _skipped(self, entry: Entry, replay: tuple[str, dict[str, str], set[str]]) -> bool:
        """While replaying: whether the entry was matched before the restart (skipped) or
        belongs to an event held then (joined again)."""
        last, held, begun = replay
        if entry.cursor != last and _beyond(entry.cursor, last):
            self._replay = None  # past the last entry committed (or of another journal)
            return False
        if entry.cursor == last:
            self._replay = None
        stream = stream_of(entry)
        if stream in begun:
            return False
        if held.get(stream) == entry.cursor:
            begun.add(stream)
            return False
        return True

    def _feed(self, entry: Entry, records: list[Record]) -> None:
        stream = stream_of(entry)
        held = self._held.get(stream)
        if held is not None:
            self._held.move_to_end(stream)
        else:
            if len(self._held) >= MAX_STREAMS:
                self._flush(next(iter(self._held)), records)  # the least recently fed
            assert self.new_joiner is not None
            held = self._held[stream] = _Held(self.new_joiner())
        self._number += 1
        fields = held.fields or entry.fields
        done: list[str] = []
        held.joiner.feed_line(entry.message, self._number, done)
        records.extend((text, fields) for text in done)
        if held.joiner.pending_start == self._number:  # this entry began an event
            held.fields, held.first, held.number = entry.fields, entry.cursor, self._number
        held.fed = self.monotonic()

    def quiet(self) -> list[Record]:
        """The held events of streams quiet for `flush_after` seconds, as records."""
        records: list[Record] = []
        if self._replay is not None:
            return records  # nothing moves until the replay is past the mark
        now = self.monotonic()
        for stream in [s for s, h in self._held.items() if now - h.fed >= self.flush_after]:
            self._flush(stream, records)
        return records

    def _flush(self, stream: str, records: list[Record]) -> None:
        held = self._held.pop(stream)
        records.extend((text, held.fields) for text in held.joiner.flush())
        self._changed = True

    # the mark --------------------------------------------------------------------------
    def mark(self) -> JournalMark | None:
        """Where to resume, if it moved since the last call (to commit with the batch)."""
        if self._replay is not None:
            return None  # replaying: what was committed still holds
        if not self._anchored and self.follower.anchor is not None:
            self._anchored = True
            if not self._last:  # nothing read yet: where "from now on" began
                return JournalMark(self.follower.anchor)
        if not self._changed or not self._last:
            return None
        self._changed = False
        pending = sorted(
            (h.number, stream, h.first) for stream, h in self._held.items() if h.joiner.lines
        )
        if not pending:
            return JournalMark(self._last)
        return JournalMark(
            self._last, pending[0][2], tuple((stream, first) for _, stream, first in pending)
        )

    def status(self) -> dict[str, Any]:
        """What `logmend status` and the metrics say of this source."""
        state = self.follower.state
        return {
            "running": state.running,
            "starts": state.starts,
            "restarts": state.exits,
            "last_error": state.last_error,
            "lost": state.lost,
            "resumed_oldest": state.resumed_oldest,
            "garbage": state.garbage,
            "entries": self.entries,
            "bytes": state.bytes,
            "held": sum(1 for h in self._held.values() if h.joiner.lines),
        }


def _beyond(cursor: str, last: str) -> bool:
    """Whether `cursor` comes after `last` by their sequence numbers; an entry of another
    sequence (another journal) is taken as beyond, so a replay never skips forever."""
    here, there = seqnum(cursor), seqnum(last)
    if here is None or there is None:
        return True  # a cursor that says no sequence (edited by hand): stop replaying
    return here[0] != there[0] or here[1] > there[1]
