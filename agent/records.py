"""Bytes into lines: splitting, CRLF, bounded length, decoding with replacement.

The splitter keeps at most `max_line` bytes of an unfinished line, so a
"line" of a gigabyte with no newline costs no more memory than a short one.
"""

from __future__ import annotations

_NL = b"\n"


class LineSplitter:
    """Feeds raw bytes, returns complete lines; holds the partial last line."""

    __slots__ = ("max_line", "pending", "skipping", "truncated")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.pending = b""
        self.skipping = False
        self.truncated = 0

    def reset(self) -> None:
        self.pending = b""
        self.skipping = False

    def feed(self, data: bytes) -> list[str]:
        """Lines completed by `data`, decoded; over-long ones cut to `max_line` bytes."""
        last = data.rfind(_NL)
        if last < 0:
            return self._hold(data)
        head = data[:last]
        rest = data[last + 1 :]
        if self.skipping:
            first = head.find(_NL)
            head = head[first + 1 :] if first >= 0 else None  # type: ignore[assignment]
            self.skipping = False
        if head is None:
            lines: list[str] = []
        else:
            if self.pending:
                head = self.pending + head
            if len(head) > self.max_line:
                lines = [self._cut(raw) for raw in head.split(_NL)]
            else:
                text = head.decode("utf-8", "replace")
                lines = text.split("\n")
                if "\r" in text:
                    lines = [line.removesuffix("\r") for line in lines]
        self.pending = b""
        lines.extend(self._hold(rest))
        return lines

    def flush(self) -> list[str]:
        """The held partial line as a record (used when a file is let go)."""
        if not self.pending:
            return []
        line = self._cut(self.pending)
        self.pending = b""
        return [line]

    def _cut(self, raw: bytes) -> str:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self.max_line:
            self.truncated += 1
            raw = raw[: self.max_line]
        return raw.decode("utf-8", "replace")

    def _hold(self, data: bytes) -> list[str]:
        if self.skipping or not data:
            return []
        self.pending += data
        # one byte of slack: a line of exactly max_line bytes may still end in "\r\n"
        if len(self.pending) <= self.max_line + 1:
            return []
        self.truncated += 1
        line = self.pending[: self.max_line].decode("utf-8", "replace")
        self.pending = b""
        self.skipping = True
        return [line]
