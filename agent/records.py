"""Bytes into lines: blocks of complete lines, CRLF, bounded length, decoding.

The splitter hands out *blocks*: runs of complete lines, each ending in a
newline, exactly as they were read, so the matcher can scan many lines at once
and decode only the few that matter. It keeps at most `max_line` bytes of an
unfinished line, so a "line" of a gigabyte with no newline costs no more
memory than a short one: the first `max_line` bytes become a record, the rest
is skipped up to the next newline.
"""

from __future__ import annotations

from typing import Any

_NL = b"\n"
_CR = 13


class LineSplitter:
    """Feeds raw bytes, returns blocks of complete lines; holds the partial last line."""

    __slots__ = ("max_line", "pending", "skipping", "truncated")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.pending = b""
        self.skipping = False
        self.truncated = 0

    def reset(self) -> None:
        self.pending = b""
        self.skipping = False

    def feed(self, data: bytes) -> bytes:
        """The lines `data` completes, as one block (b"" when none)."""
        last = data.rfind(_NL)
        if last < 0:
            return self._hold(data)
        head = data[: last + 1]
        rest = data[last + 1 :]
        if self.skipping:
            head = head[head.find(_NL) + 1 :]
            self.skipping = False
        elif self.pending:
            head = self.pending + head
        self.pending = b""
        cut = self._hold(rest)
        return head + cut if cut else head

    def flush(self) -> bytes:
        """The held partial line as a block of one record (when a file is let go)."""
        if not self.pending:
            return b""
        line = self.pending[: self.max_line]
        self.pending = b""
        return line + _NL

    def _hold(self, data: bytes) -> bytes:
        if self.skipping or not data:
            return b""
        self.pending += data
        # one byte of slack: a line of exactly max_line bytes may still end in "\r\n"
        if len(self.pending) <= self.max_line + 1:
            return b""
        self.truncated += 1
        line = self.pending[: self.max_line]
        self.pending = b""
        self.skipping = True
        return line + _NL


def split_block(block: bytes) -> list[bytes]:
    parts = block.split(_NL)
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def decode_line(block: bytes, start: int, end: int, max_line: int) -> str:
    """The text of block[start:end] without its CR, cut to max_line bytes.

    A cut record also drops a final CR, so a record is the same whether the
    line was cut while held (no newline yet) or found whole in a block.
    """
    if end > start and block[end - 1] == _CR:
        end -= 1
    if end - start > max_line:
        end = start + max_line
        if block[end - 1] == _CR:
            end -= 1
    return block[start:end].decode("utf-8", "replace")


def decode_lines(block: bytes, max_line: int = 1 << 30) -> list[str]:
    """Every line of a block as text (for per-record paths and tests)."""
    return [decode_line(raw, 0, len(raw), max_line) for raw in split_block(block)]


class EventJoiner:
    """Joins lines into multiline events (tracebacks, stack traces, panics).

    With `start`, a line matching it begins an event and other lines continue
    it; with `continuation`, a line matching it continues the event and other
    lines begin one. An event longer than `max_lines` or `max_bytes` is cut and
    the rest of its continuation lines are dropped (counted in `dropped`).
    """

    def __init__(
        self,
        start: Any,
        continuation: Any,
        max_lines: int,
        max_bytes: int,
        timeout: float = 0.1,
    ) -> None:
        self.start = start
        self.continuation = continuation
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.lines: list[str] = []
        self.size = 0
        self.pending_start: int | None = None
        self.overflow = False
        self.dropped = 0

    def _begins(self, line: str) -> bool:
        try:
            if self.start is not None:
                return self.start.search(line, timeout=self.timeout) is not None
            return self.continuation.search(line, timeout=self.timeout) is None
        except TimeoutError:
            return True

    def feed(self, block: bytes, base: int, max_line: int) -> list[str]:
        """Events completed by the lines of `block`, whose first byte is at file offset `base`."""
        events: list[str] = []
        position = 0
        for raw in split_block(block):
            line = decode_line(raw, 0, len(raw), max_line)
            self.feed_line(line, base + position, events)
            position += len(raw) + 1
        return events

    def feed_line(self, line: str, offset: int, events: list[str]) -> None:
        """One line (of a file, at `offset`; or a journal entry, numbered): the events it
        completes appended to `events`."""
        if not self.lines and not self.overflow:
            self._begin(line, offset)
        elif self._begins(line):
            if self.lines:
                events.append(self._emit())
            self.overflow = False
            self._begin(line, offset)
        elif self.overflow:
            self.dropped += 1
        else:
            self.lines.append(line)
            self.size += len(line) + 1
            if len(self.lines) >= self.max_lines or self.size >= self.max_bytes:
                events.append(self._emit())
                self.overflow = True

    def _begin(self, line: str, offset: int) -> None:
        self.lines = [line]
        self.size = len(line)
        self.pending_start = offset

    def _emit(self) -> str:
        text = "\n".join(self.lines)
        if len(text) > self.max_bytes:
            text = text[: self.max_bytes]
        self.lines = []
        self.size = 0
        self.pending_start = None
        return text

    def flush(self) -> list[str]:
        """The event held so far, once the file has gone quiet."""
        self.overflow = False
        return [self._emit()] if self.lines else []
