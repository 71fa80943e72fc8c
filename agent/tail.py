"""Follow files: discovery by glob, rotation, truncation, identity, reading bytes.

A file is known by (device, inode) plus a hash of the bytes just before the
saved offset, as Fluent Bit does: the inode finds it again after a rename, the
hash tells a reused inode or a truncated file from the one we were reading.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from agent.config import Source
from agent.hashing import blake2b
from agent.model import Checkpoint
from agent.records import LineSplitter

Sink = Callable[["Followed", bytes, int], None]  # (file, block of lines, offset of its 1st byte)
MARKER_BYTES = 64
CLOCK_SLACK = 2.0  # file times come from a coarse kernel clock; err towards reading again
MAX_COPIES = 5
MAX_RECOVERED = 256 * 1024 * 1024


def marker_of(fd: int, offset: int) -> bytes:
    """A hash of the bytes just before `offset` (never the bytes: they may hold secrets)."""
    start = max(0, offset - MARKER_BYTES)
    return _hash(os.pread(fd, offset - start, start) if offset else b"")


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
    line_end: int = 0
    marker: bytes = b""
    rotated: bool = False
    dirty: bool = False
    idle_sweeps: int = 0
    last_data: float = 0.0
    mtime: int = 0
    head: bytes = b""
    head_len: int = 0
    used_copies: list[Done] = field(default_factory=list)
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def read(self, limit: int) -> bytes | None:
        """A block of the complete lines in the next chunk (maybe b""); None at end of file."""
        try:
            st = os.fstat(self.fd)
        except OSError:
            return None
        size = st.st_size
        if size < self.offset:
            return self._truncated()
        if st.st_mtime_ns != self.mtime:
            # written since we last looked: check it is still the file we were reading
            # (a copytruncate followed by new lines can grow it past our offset again)
            self.mtime = st.st_mtime_ns
            if self.committed:
                if marker_of(self.fd, self.committed) != self.marker:
                    return self._truncated()
            elif self._head_changed(size):
                return self._truncated()
        if size == self.offset:
            return None
        data = os.pread(self.fd, min(limit, size - self.offset), self.offset)
        if not data:
            return None
        start = self.offset
        self.offset += len(data)
        self.last_data = self.monotonic()
        last = data.rfind(b"\n")
        if last >= 0:
            self.committed = self.line_end = start + last + 1
            self.marker = marker_of(self.fd, self.committed)
            self.dirty = True
        return self.splitter.feed(data)

    def flush_partial(self) -> bytes:
        """The held partial line as a record of its own, once the writer has gone quiet."""
        block = self.splitter.flush()
        if block or self.splitter.skipping:
            self.splitter.reset()
            self.committed = self.line_end = self.offset
            self.marker = marker_of(self.fd, self.committed)
            self.dirty = True
        return block

    def _head_changed(self, size: int) -> bool:
        """Before a first complete line, the file is known by its first bytes."""
        if self.head_len and (
            size < self.head_len or _hash(os.pread(self.fd, self.head_len, 0)) != self.head
        ):
            return True
        if size > self.head_len and self.head_len < MARKER_BYTES:
            self.head_len = min(size, MARKER_BYTES)
            self.head = _hash(os.pread(self.fd, self.head_len, 0))
            self.dirty = True  # worth a checkpoint: the file can now be told apart
        return False

    def _truncated(self) -> bytes:
        """The file shrank under us (copytruncate): finish from the copy, then start over."""
        rest = b""
        if self.committed:
            copy = find_copy(self.path, self.committed, self.marker, exclude=self.identity)
        else:
            copy = find_copy(self.path, 0, self.head, exclude=self.identity, head_len=self.head_len)
        if copy is not None:
            self.splitter.reset()
            rest = self.splitter.feed(copy[1]) + self.splitter.flush()
            done = done_entry(copy[0])
            if done is not None:
                self.used_copies.append(done)
        self.splitter.reset()
        self.offset = self.committed = self.line_end = self.head_len = 0
        self.marker = marker_of(self.fd, 0)
        self.dirty = True
        with contextlib.suppress(OSError):
            self._head_changed(os.fstat(self.fd).st_size)  # know the new content from now
        return rest

    def hold_from(self, offset: int) -> None:
        """Keep the checkpoint at `offset`: bytes after it (a pending event) are not done yet."""
        if offset < self.committed:
            self.committed = offset
            self.marker = marker_of(self.fd, offset)

    def checkpoint(self) -> Checkpoint:
        self.dirty = False
        if self.committed == 0 and self.head_len:
            return Checkpoint(self.dev, self.ino, self.path, 0, self.head, self.head_len)
        return Checkpoint(self.dev, self.ino, self.path, self.committed, self.marker)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def find_copy(
    path: str,
    offset: int,
    marker: bytes,
    exclude: tuple[int, int] | None = None,
    head_len: int = 0,
    taken: Collection[str] = (),
) -> tuple[str, bytes] | None:
    """The bytes after `offset` of a rotated copy of `path` whose prefix is what we read.

    Looks at the newest few siblings named like rotations of `path` (app.log.1,
    app.log-20240301, app.log.1.gz, ...); a copy qualifies only if the bytes
    before `offset` hash to `marker`, so a copy of other content is never used.
    """
    if offset <= 0 and head_len <= 0:
        return None  # nothing seen yet: no bytes to know our file by
    candidates = sorted(_siblings(path), key=lambda pair: pair[1].st_mtime, reverse=True)
    for entry, st in candidates[:MAX_COPIES]:
        try:
            if (exclude is not None and (st.st_dev, st.st_ino) == exclude) or entry.path in taken:
                continue
            if entry.name.endswith(".gz"):
                with _gunzip(entry.path) as handle:
                    data = handle.read(offset + MAX_RECOVERED)
            elif st.st_size >= offset:
                with open(entry.path, "rb") as handle:
                    data = handle.read(offset + MAX_RECOVERED)
            else:
                continue
        except (OSError, EOFError):  # gzip.BadGzipFile is an OSError
            continue
        known = data[:head_len] if offset == 0 else data[max(0, offset - MARKER_BYTES) : offset]
        if len(data) >= max(offset, head_len) and _hash(known) == marker:
            return entry.path, data[offset:]
    return None


def _siblings(path: str) -> list[tuple[os.DirEntry[str], os.stat_result]]:
    """Files named like rotations of `path`, with their stat; ones that vanish are skipped."""
    directory, base = os.path.split(path)
    out: list[tuple[os.DirEntry[str], os.stat_result]] = []
    try:
        entries = list(os.scandir(directory or "."))
    except OSError:
        return out
    for entry in entries:
        if entry.name.startswith(base) and entry.name != base:
            try:
                if entry.is_file():
                    out.append((entry, entry.stat()))
            except OSError:
                continue
    return out


def _gunzip(path: str) -> BinaryIO:
    import gzip  # compressed copies are read only when catching up: not a cost of every start

    return gzip.open(path, "rb")  # type: ignore[return-value]


def _read_whole(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with _gunzip(path) as handle:
                return handle.read(MAX_RECOVERED)
        with open(path, "rb") as handle:
            return handle.read(MAX_RECOVERED)
    except (OSError, EOFError):  # gzip.BadGzipFile is an OSError
        return b""


def _find_inode(directory: str, identity: tuple[int, int]) -> str | None:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            if (
                entry.inode() == identity[1]
                and entry.is_file()
                and entry.stat().st_dev == identity[0]
            ):
                return entry.path
        except OSError:
            continue
    return None


def _hash(data: bytes) -> bytes:
    return blake2b(data, digest_size=16).digest()


HEAD_BYTES = 4096
Done = tuple[int, int, int, bytes, str]
"""A rotated file read to its end: (device, inode, size, hash of its first bytes, path)."""


def head_of(path: str) -> bytes:
    """The hash of a file's first bytes as stored on disk (compressed or not)."""
    try:
        with open(path, "rb") as handle:
            return _hash(handle.read(HEAD_BYTES))
    except OSError:
        return b""


def done_entry(path: str) -> Done | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, head_of(path), path)


class Tailer:
    """Finds the files of every source and keeps one Followed per file identity."""

    def __init__(
        self,
        sources: tuple[Source, ...],
        checkpoints: dict[tuple[int, int], Checkpoint],
        max_line: int,
        done: set[tuple[int, int, int, bytes]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monotonic = monotonic
        self.sources = sources
        self.max_line = max_line
        self.saved = checkpoints
        self.known_paths = {c.path for c in checkpoints.values()}
        self.files: dict[tuple[int, int], Followed] = {}
        self.by_path: dict[str, Followed] = {}
        self.released: list[tuple[int, int]] = []
        self.recovered: list[tuple[int, str, bytes]] = []
        self.consumed: set[str] = set()  # rotated copies already read at start
        # rotated files read to their end, as (dev, ino, size, head hash): an inode and a
        # size alone are reused (equal-sized rotations of fixed-width lines), content is not
        self.done = done or set()
        self.finished: list[Done] = []  # newly done, to persist
        self.exclude: set[tuple[int, int]] = set()  # never followed: the agent's own log
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
        if identity in self.exclude:
            return
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
        resumed = False
        if saved is not None:
            if saved.head_len:
                resumed = (
                    st.st_size >= saved.head_len
                    and _hash(os.pread(fd, saved.head_len, 0)) == saved.marker
                )
            elif saved.offset <= st.st_size and marker_of(fd, saved.offset) == saved.marker:
                offset = saved.offset
                resumed = True
            if not resumed:
                # another file on a reused inode (or the same one truncated): what we had
                # not read may survive in a rotated copy of the file we were reading
                self._recover_copy(saved, index, exclude=identity)
        elif at_end is not None:
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
            line_end=offset,
            marker=marker_of(fd, offset),
            splitter=LineSplitter(self.max_line),
            dirty=not resumed,
            last_data=self.monotonic(),
            monotonic=self.monotonic,
        )
        if offset == 0:
            followed._head_changed(st.st_size)  # know it by its first bytes from the start
        self.files[identity] = followed
        self.by_path[path] = followed
        return followed

    def _recover_rotated(self) -> None:
        """Files rotated while the agent was down: read what was left of them.

        A renamed file is found by its inode beside its old path; a file already
        compressed or copied away is found by the hash of the bytes we had read.
        """
        checkpoints = list(self.saved.values())
        self._read_rotated_while_down(checkpoints)
        for identity, saved in list(self.saved.items()):
            if identity in self.files:
                continue
            source = self._source_of(saved.path)
            entry = _find_inode(os.path.dirname(saved.path) or ".", identity)
            if entry is not None:
                followed = self._open(entry, source, identity, None)
                if followed is not None:
                    followed.rotated = True
                    if self.by_path.get(entry) is followed:
                        del self.by_path[entry]
                    continue
            self._recover_copy(saved, source)
            self.saved.pop(identity, None)
            self.released.append(identity)

    def _read_rotated_while_down(self, checkpoints: list[Checkpoint]) -> None:
        """Files that were created and rotated away while the agent was down.

        Rotation siblings of a followed path (app.log.3, app.log-2024..., .gz too)
        changed after our last checkpoint of that path and unknown by inode were
        written while we were not looking: read them whole, oldest first, or from
        our offset when one is a copy of the file we were reading.
        """
        known = {(c.dev, c.ino) for c in checkpoints}
        by_path: dict[str, list[Checkpoint]] = {}
        for checkpoint in checkpoints:
            by_path.setdefault(checkpoint.path, []).append(checkpoint)
        for path, saved in by_path.items():
            since = max(c.updated for c in saved)
            stats = _siblings(path)
            fresh = sorted(
                (
                    (e, st)
                    for e, st in stats
                    if st.st_mtime >= since - CLOCK_SLACK
                    and (st.st_dev, st.st_ino) not in known
                    and (st.st_dev, st.st_ino, st.st_size, head_of(e.path)) not in self.done
                ),
                key=lambda p: p[1].st_mtime,
            )
            source = self._source_of(path)
            for entry, st in fresh:
                if entry.path in self.consumed:
                    continue
                self.consumed.add(entry.path)
                self.finished.append(
                    (st.st_dev, st.st_ino, st.st_size, head_of(entry.path), entry.path)
                )
                data = _read_whole(entry.path)
                if not data:
                    continue
                start = 0
                for checkpoint in saved:
                    end = checkpoint.offset
                    if (
                        0 < end <= len(data)
                        and _hash(data[max(0, end - MARKER_BYTES) : end]) == checkpoint.marker
                    ):
                        start = max(start, end)
                splitter = LineSplitter(self.max_line)
                block = splitter.feed(data[start:]) + splitter.flush()
                if block:
                    self.recovered.append((source, entry.path, block))

    def _recover_copy(
        self, saved: Checkpoint, source: int, exclude: tuple[int, int] | None = None
    ) -> None:
        # a copy already read whole (as written while we were down) is not read again
        found = find_copy(
            saved.path, saved.offset, saved.marker, exclude, saved.head_len, self.consumed
        )
        if found is not None:
            self.consumed.add(found[0])
            done = done_entry(found[0])
            if done is not None:
                self.finished.append(done)
            rest = found[1]
            splitter = LineSplitter(self.max_line)
            self.recovered.append((source, saved.path, splitter.feed(rest) + splitter.flush()))

    def _source_of(self, path: str) -> int:
        for index, source in enumerate(self.sources):
            if fnmatch.fnmatch(path, source.path):
                return index
        return 0

    # the reading cycle, shared by the agent and the tests -----------------------------
    def read_all(self, chunk: int, sink: Sink) -> bool:
        """One chunk from every file into `sink`; True if any file had new bytes."""
        read_any = False
        for followed in self:
            base = followed.line_end
            block = self._read(followed, chunk)
            if block is None:
                continue
            read_any = True
            followed.idle_sweeps = 0
            sink(followed, block, base)
        return read_any

    def _read(self, followed: Followed, chunk: int) -> bytes | None:
        block = followed.read(chunk)
        if followed.used_copies:  # copies it finished from are done: not read again at start
            self.finished.extend(followed.used_copies)
            followed.used_copies.clear()
        return block

    def release_idle(
        self, chunk: int, sink: Sink, before_release: Callable[[Followed], None]
    ) -> None:
        """Rotated or deleted files, read to their end and quiet for two sweeps, are let go."""
        for followed in self:
            if not followed.rotated:
                continue
            followed.idle_sweeps += 1
            if followed.idle_sweeps < 2:
                continue
            base = followed.line_end
            block = self._read(followed, chunk)
            if block is not None:  # still being written to: not yet
                followed.idle_sweeps = 0
                sink(followed, block, base)
                continue
            sink(followed, followed.flush_partial(), followed.line_end)
            before_release(followed)
            self.release(followed)

    def flush_quiet(self, quiet_for: Callable[[Followed], float], sink: Sink) -> list[Followed]:
        """Partial last lines of files quiet for long enough become records; returns those files."""
        now = self.monotonic()
        quiet = [f for f in self if now - f.last_data >= quiet_for(f)]
        for followed in quiet:
            if followed.splitter.pending or followed.splitter.skipping:
                sink(followed, followed.flush_partial(), followed.line_end)
        return quiet

    def new_checkpoints(self) -> list[Checkpoint]:
        """Checkpoints of files whose position changed outside a read (newly opened ones),
        so a file is known by its inode from the moment it is followed."""
        return [f.checkpoint() for f in self if f.dirty]

    def take_finished(self) -> list[Done]:
        finished, self.finished = self.finished, []
        return finished

    def take_recovered(
        self,
    ) -> tuple[list[tuple[int, str, bytes]], list[tuple[int, int]], list[Done]]:
        """Rests of files rotated away unread, identities whose checkpoints may go, and
        rotated files now read to their end (so a restart does not read them again)."""
        recovered, released, finished = self.recovered, self.released, self.finished
        self.recovered, self.released, self.finished = [], [], []
        return recovered, released, finished

    def release(self, followed: Followed) -> None:
        """Let go of a rotated file that has been read to its end."""
        with contextlib.suppress(OSError):
            size = os.fstat(followed.fd).st_size
            head = _hash(os.pread(followed.fd, HEAD_BYTES, 0))
            self.finished.append((followed.dev, followed.ino, size, head, followed.path))
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
