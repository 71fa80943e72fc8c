"""File events only wake the reader early; the periodic stat sweep stays the truth.

Linux inotify, called in libc: one thread waits on the inotify descriptor and sets
the reader's wake event when anything changes in a folder a source watches. The
events themselves are read and dropped, so a queue overflow needs no handling:
any readable byte is a wake, and the sweep finds what changed.

watchdog did this job until issue 16. Its inotify observer imports ctypes.util,
and that pulls in shutil, bz2, lzma, tempfile and random: 1.8 MiB resident, and
two threads, to parse events we threw away. Where inotify is missing (not Linux,
a container without it, the watch limit reached), the agent polls every
`sweep_interval`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import threading
from pathlib import Path

from agent.config import Source

log = logging.getLogger("logmend")

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
READ_SIZE = 64 * 1024  # events of a burst, read and dropped at once: one wake for all


class FolderWatch:
    """An inotify descriptor on some folders and the thread that wakes the reader."""

    def __init__(self, fd: int, wake: threading.Event) -> None:
        self._fd = fd
        self._wake = wake
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="logmend-file-events", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()  # not select(): the agent may hold over 1,024 descriptors
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_read in ready:
                return
            try:
                os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.warning("file events stopped (%s); polling only", exc)
                return
            self._wake.set()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        os.write(self._stop_write, b"\0")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._stop_read, self._stop_write):
            os.close(fd)


def folders_of(sources: tuple[Source, ...]) -> set[Path]:
    """The folder each source's files appear in: a glob's first folder with no wildcard."""
    folders = set()
    for source in sources:
        if not source.path:
            continue  # the journal: its follower wakes the reader itself
        folder = Path(source.path).parent
        while any(ch in str(folder) for ch in "*?["):
            folder = folder.parent
        folders.add(folder)
    return folders


def watch_sources(
    sources: tuple[Source, ...], wake: threading.Event, poll: float
) -> FolderWatch | None:
    """Start watching the sources' folders; the watch (to stop), or None if unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        log.info("file events unavailable (no inotify); polling every %.1fs", poll)
        return None
    fd = init(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        _unavailable(ctypes.get_errno(), "inotify_init1", poll)
        return None
    watched = 0
    for folder in sorted(folders_of(sources)):
        if add(fd, os.fsencode(folder), CHANGES | IN_ONLYDIR) >= 0:
            watched += 1
            continue
        code = ctypes.get_errno()
        if code not in (errno.ENOENT, errno.ENOTDIR):  # not there yet: the sweep finds it
            _unavailable(code, f"watching {folder}", poll)  # the watch limit, a denied folder
    if not watched:
        os.close(fd)
        return None
    watch = FolderWatch(fd, wake)
    watch.start()
    return watch


def _unavailable(code: int, what: str, poll: float) -> None:
    log.warning(
        "file events unavailable (%s: %s); polled every %.1fs", what, os.strerror(code), poll
    )
