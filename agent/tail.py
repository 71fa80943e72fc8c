"""Follow files: discovery by glob, rotation, truncation, identity, reading bytes.

A file is known by (device, inode) plus a hash of the bytes just before the
saved offset, as Fluent Bit does: the inode finds it again after a rename, the
hash tells a reused inode or a truncated file from the one we were reading.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from agent.config import Source
from agent.records import LineSplitter
from agent.state import Checkpoint

MARKER_BYTES = 64


def marker_of(fd: int, offset: int) -> bytes:
    start = max(0, offset - MARKER_BYTES)
    data = os.pread(fd, offset - start, start) if offset else b""
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(eq=False)
class Followed:
    """One open file: where we read, where the last complete line ended."""

    path: str
    source: int
    fd: int
    dev: int
    ino: int
    offset: int
    splitter: LineSplitter
    committed: int = 0
    rotated: bool = False
    dirty: bool = False
    idle_sweeps: int = 0

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def read(self, limit: int) -> bytes | None:
        """A block of the complete lines in the next chunk (maybe b""); None at end of file."""
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            return None
        if size < self.offset:
            self.offset = self.committed = 0
            self.splitter.reset()
        if size == self.offset:
            return None
        data = os.pread(self.fd, min(limit, size - self.offset), self.offset)
        if not data:
            return None
        start = self.offset
        self.offset += len(data)
        last = data.rfind(b"\n")
        if last >= 0:
            self.committed = start + last + 1
            self.dirty = True
        return self.splitter.feed(data)

    def checkpoint(self) -> Checkpoint:
        self.dirty = False
        return Checkpoint(
            self.dev, self.ino, self.path, self.committed, marker_of(self.fd, self.committed)
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Tailer:
    """Finds the files of every source and keeps one Followed per file identity."""

    def __init__(
        self,
        sources: tuple[Source, ...],
        checkpoints: dict[tuple[int, int], Checkpoint],
        max_line: int,
    ) -> None:
        self.sources = sources
        self.max_line = max_line
        self.saved = checkpoints
        self.known_paths = {c.path for c in checkpoints.values()}
        self.files: dict[tuple[int, int], Followed] = {}
        self.by_path: dict[str, Followed] = {}
        self.released: list[tuple[int, int]] = []
        self._started = False

    def __iter__(self) -> Iterator[Followed]:
        return iter(list(self.files.values()))

    def sweep(self) -> None:
        """Re-evaluate globs and stat every file; the source of truth over inotify."""
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            for path in sorted(glob.glob(source.path)):
                if path in seen:
                    continue
                seen.add(path)
                self._visit(path, index, source)
        for followed in list(self.files.values()):
            if followed.path not in seen or self.by_path.get(followed.path) is not followed:
                followed.rotated = True
        if not self._started:
            self._recover_rotated()
            self._started = True

    def _visit(self, path: str, index: int, source: Source) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if not os.path.isfile(path):
            return
        identity = (st.st_dev, st.st_ino)
        current = self.files.get(identity)
        if current is not None:
            if current.path != path:
                self.by_path.pop(current.path, None)
                current.path = path
            current.rotated = False
            self.by_path[path] = current
            return
        previous = self.by_path.get(path)
        if previous is not None:
            previous.rotated = True
        from_start = self._started or path in self.known_paths or source.start == "beginning"
        self._open(path, index, identity, None if from_start else st.st_size)

    def _open(
        self, path: str, index: int, identity: tuple[int, int], at_end: int | None
    ) -> Followed | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            os.close(fd)
            return None
        offset = 0
        saved = self.saved.pop(identity, None)
        if saved is not None and saved.offset <= st.st_size:
            if marker_of(fd, saved.offset) == saved.marker:
                offset = saved.offset
        elif saved is None and at_end is not None:
            offset = at_end
            # start after the last complete line so a partial tail is not cut
            if offset:
                tail = os.pread(fd, min(offset, 65536), max(0, offset - 65536))
                cut = tail.rfind(b"\n")
                offset = offset - len(tail) + cut + 1 if cut >= 0 else offset
        followed = Followed(
            path=path,
            source=index,
            fd=fd,
            dev=identity[0],
            ino=identity[1],
            offset=offset,
            committed=offset,
            splitter=LineSplitter(self.max_line),
            dirty=saved is None or offset != saved.offset,
        )
        self.files[identity] = followed
        self.by_path[path] = followed
        return followed

    def _recover_rotated(self) -> None:
        """Files renamed while the agent was down: find their inode beside the old path."""
        for identity, saved in list(self.saved.items()):
            if identity in self.files:
                continue
            directory = os.path.dirname(saved.path) or "."
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.inode() == identity[1] and entry.is_file():
                        st = entry.stat()
                        if st.st_dev != identity[0]:
                            continue
                except OSError:
                    continue
                source = self._source_of(saved.path)
                followed = self._open(entry.path, source, identity, None)
                if followed is not None:
                    followed.rotated = True
                    self.by_path.pop(entry.path, None)
                break

    def _source_of(self, path: str) -> int:
        for index, source in enumerate(self.sources):
            if fnmatch.fnmatch(path, source.path):
                return index
        return 0

    def release(self, followed: Followed) -> None:
        """Let go of a rotated file that has been read to its end."""
        followed.close()
        self.files.pop(followed.identity, None)
        if self.by_path.get(followed.path) is followed:
            del self.by_path[followed.path]
        self.released.append(followed.identity)

    def close(self) -> None:
        for followed in self.files.values():
            followed.close()
        self.files.clear()
        self.by_path.clear()
