"""File events wake the reader early (agent/filewatch.py): real inotify on real folders."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import filewatch
from agent.config import Source
from agent.filewatch import folders_of, watch_sources


def source(path: Path | str) -> Source:
    return Source(path=str(path))


def woken(wake: threading.Event, timeout: float = 5.0) -> bool:
    return wake.wait(timeout)


@contextmanager
def watching(*paths: Path, poll: float = 1.0) -> Iterator[threading.Event]:
    """A watch on the paths' folders (which must start), stopped after; its wake event."""
    wake = threading.Event()
    watch = watch_sources(tuple(source(p) for p in paths), wake, poll)
    assert watch is not None
    try:
        yield wake
    finally:
        watch.stop()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_folders_are_the_first_folder_without_a_wildcard(tmp_path):
    sources = (
        source(tmp_path / "a" / "app.log"),
        source(tmp_path / "b" / "*.log"),
        source(tmp_path / "c" / "*" / "x[0-9].log"),
    )
    assert folders_of(sources) == {tmp_path / "a", tmp_path / "b", tmp_path / "c"}


def test_an_append_a_create_and_a_rename_each_wake_the_reader(tmp_path):
    log_file = tmp_path / "app.log"
    log_file.write_text("")
    with watching(log_file) as wake:
        assert not wake.wait(0.2)  # nothing changed: no wake
        for change in (
            lambda: log_file.open("a").write("line\n"),
            lambda: (tmp_path / "other.log").write_text("x\n"),
            lambda: log_file.rename(tmp_path / "app.log.1"),
        ):
            wake.clear()
            change()
            assert woken(wake)


def test_a_burst_of_events_is_read_whole_and_never_blocks_the_writer(tmp_path):
    log_file = tmp_path / "app.log"
    with watching(log_file) as wake:
        with log_file.open("a") as out:
            for n in range(20_000):  # more events than the kernel queues by default (16,384)
                out.write(f"{n}\n")
                out.flush()
        assert woken(wake)
        wake.clear()
        log_file.open("a").write("after the overflow\n")
        assert woken(wake)  # an overflowed queue still wakes


def test_stop_ends_the_thread_and_closes_every_descriptor(tmp_path):
    before = open_fds()
    threads = threading.active_count()
    watch = watch_sources((source(tmp_path / "app.log"),), threading.Event(), 1.0)
    assert watch is not None
    assert threading.active_count() == threads + 1
    watch.stop()
    watch.stop()  # twice is harmless
    assert threading.active_count() == threads
    assert open_fds() == before


def test_missing_folders_are_skipped_and_none_at_all_means_polling(tmp_path, caplog):
    caplog.set_level(logging.INFO, "logmend")
    before = open_fds()
    wake = threading.Event()
    assert watch_sources((source(tmp_path / "nowhere" / "app.log"),), wake, 1.0) is None
    assert open_fds() == before
    (tmp_path / "file").write_text("")
    assert watch_sources((source(tmp_path / "file" / "app.log"),), wake, 1.0) is None
    assert open_fds() == before
    watch = watch_sources(
        (source(tmp_path / "nowhere" / "a.log"), source(tmp_path / "b.log")), wake, 1.0
    )
    assert watch is not None
    try:
        (tmp_path / "b.log").write_text("x\n")
        assert woken(wake)
    finally:
        watch.stop()
    assert "file events unavailable" not in caplog.text  # a folder not there yet is normal


def refusing(path: Path, code: int) -> type:
    """libc's inotify, but adding a watch on `path` fails with errno `code`."""
    real = filewatch.ctypes.CDLL(None, use_errno=True)

    class Refusing:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.inotify_init1 = real.inotify_init1

        def inotify_add_watch(self, fd: int, folder: bytes, mask: int) -> int:
            if folder == os.fsencode(path):
                filewatch.ctypes.set_errno(code)
                return -1
            return int(real.inotify_add_watch(fd, folder, mask))

    return Refusing


def test_a_denied_folder_is_named_and_the_others_still_wake(tmp_path, monkeypatch, caplog):
    """(root reads any folder, so the denial is libc's answer, made to order)"""
    caplog.set_level(logging.INFO, "logmend")
    denied = tmp_path / "denied"
    denied.mkdir()
    monkeypatch.setattr(filewatch.ctypes, "CDLL", refusing(denied, errno.EACCES))
    wake = threading.Event()
    watch = watch_sources((source(denied / "app.log"), source(tmp_path / "open.log")), wake, 1.0)
    assert watch is not None
    try:
        assert f"watching {denied}: Permission denied" in caplog.text
        (tmp_path / "open.log").write_text("x\n")
        assert woken(wake)
    finally:
        watch.stop()


def test_without_inotify_in_libc_the_agent_polls(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "logmend")

    class NoInotify:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

    monkeypatch.setattr(filewatch.ctypes, "CDLL", NoInotify)
    assert watch_sources((source(tmp_path / "a.log"),), threading.Event(), 2.0) is None
    assert "no inotify" in caplog.text and "polling every 2.0s" in caplog.text


def test_the_watch_limit_reached_is_reported_not_fatal(tmp_path, monkeypatch, caplog):
    """A host out of inotify watches (fs.inotify.max_user_watches) still runs, polling."""
    caplog.set_level(logging.INFO, "logmend")
    monkeypatch.setattr(filewatch.ctypes, "CDLL", refusing(tmp_path, errno.ENOSPC))
    before = open_fds()
    assert watch_sources((source(tmp_path / "a.log"),), threading.Event(), 1.0) is None
    assert "No space left on device" in caplog.text
    assert open_fds() == before


def test_a_wake_comes_well_before_the_sweep(tmp_path):
    """The point of it all: with a long sweep interval, a line is seen in milliseconds."""
    log_file = tmp_path / "app.log"
    log_file.write_text("")
    with watching(log_file, poll=30.0) as wake:
        started = time.monotonic()
        log_file.open("a").write("line\n")
        assert woken(wake, 2.0)
        assert time.monotonic() - started < 1.0
