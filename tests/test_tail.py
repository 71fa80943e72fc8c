"""The tailer on real files: start positions, rotation by rename, copytruncate, restarts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent.config import Source
from agent.records import decode_lines
from agent.tail import Tailer, marker_of
from tests.helpers import append


def drain(tailer: Tailer) -> list[str]:
    out: list[str] = []
    for followed in tailer:
        while (block := followed.read(7)) is not None:  # tiny chunks on purpose
            out.extend(decode_lines(block))
    return out


def tailer_for(pattern: str, start: str = "end", saved=None) -> Tailer:
    tailer = Tailer((Source(path=pattern, start=start),), dict(saved or {}), 1024)
    tailer.sweep()
    return tailer


def test_present_at_start_from_end_later_from_start(tmp_path):
    log = tmp_path / "a.log"
    append(log, "old 1", "old 2")
    log.open("a").write("partial")  # a partial last line is not skipped
    tailer = tailer_for(f"{tmp_path}/*.log")
    append(log, " line")
    append(tmp_path / "b.log", "new file 1")
    tailer.sweep()
    assert sorted(drain(tailer)) == ["new file 1", "partial line"]


def test_start_beginning_reads_existing_files(tmp_path):
    append(tmp_path / "a.log", "one", "two")
    assert drain(tailer_for(f"{tmp_path}/*.log", start="beginning")) == ["one", "two"]


def test_rename_rotation_reads_old_file_to_its_end(tmp_path):
    log = tmp_path / "app.log"
    append(log, "before")
    tailer = tailer_for(str(log), start="beginning")
    assert drain(tailer) == ["before"]
    writer = log.open("a")
    os.rename(log, tmp_path / "app.log.1")
    writer.write("late write to the old file\n")
    writer.flush()
    append(log, "in the new file")
    tailer.sweep()
    got = drain(tailer)
    assert sorted(got) == ["in the new file", "late write to the old file"]
    rotated = [f for f in tailer if f.rotated]
    assert len(rotated) == 1 and rotated[0].ino == (tmp_path / "app.log.1").stat().st_ino


def test_copytruncate_restarts_from_zero(tmp_path):
    log = tmp_path / "app.log"
    append(log, "a" * 50, "b" * 50)
    tailer = tailer_for(str(log), start="beginning")
    assert len(drain(tailer)) == 2
    with log.open("r+") as handle:
        handle.truncate(0)
    append(log, "after truncate")
    assert drain(tailer) == ["after truncate"]


def test_restart_resumes_at_checkpoint(tmp_path):
    log = tmp_path / "app.log"
    append(log, "one", "two")
    tailer = tailer_for(str(log), start="beginning")
    assert drain(tailer) == ["one", "two"]
    [followed] = list(tailer)
    saved = followed.checkpoint()
    tailer.close()
    append(log, "three")
    again = tailer_for(str(log), saved={(saved.dev, saved.ino): saved})
    assert drain(again) == ["three"]


def test_reused_inode_with_other_content_starts_over(tmp_path):
    log = tmp_path / "app.log"
    append(log, "original content here")
    tailer = tailer_for(str(log), start="beginning")
    drain(tailer)
    [followed] = list(tailer)
    saved = followed.checkpoint()
    tailer.close()
    with log.open("r+") as handle:  # same inode, different bytes before the offset
        handle.seek(0)
        handle.write("REPLACED content here\nmore\n")
    again = tailer_for(str(log), saved={(saved.dev, saved.ino): saved})
    assert drain(again) == ["REPLACED content here", "more"]


def test_rotated_while_agent_was_down(tmp_path):
    log = tmp_path / "app.log"
    append(log, "seen")
    tailer = tailer_for(str(log), start="beginning")
    drain(tailer)
    [followed] = list(tailer)
    saved = followed.checkpoint()
    tailer.close()
    append(log, "written before rotation")
    os.rename(log, tmp_path / "app.log.1")
    append(log, "written after rotation")
    again = tailer_for(str(log), saved={(saved.dev, saved.ino): saved})
    assert sorted(drain(again)) == ["written after rotation", "written before rotation"]


def test_marker_of_empty_and_tiny_files(tmp_path):
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    fd = os.open(empty, os.O_RDONLY)
    try:
        # an empty file and a file read from its start share the marker of no bytes
        assert marker_of(fd, 0) == hashlib.blake2b(b"", digest_size=16).digest()
    finally:
        os.close(fd)
    tiny = tmp_path / "t"
    tiny.write_bytes(b"x\n")
    fd = os.open(tiny, os.O_RDONLY)
    try:
        assert marker_of(fd, 2) != marker_of(fd, 0)
    finally:
        os.close(fd)


def test_file_reached_through_a_symlink(tmp_path):
    real = tmp_path / "real.log"
    append(real, "x")
    link = tmp_path / "link.log"
    link.symlink_to(real)
    tailer = tailer_for(str(link))
    append(real, "through the link")
    assert drain(tailer) == ["through the link"]


def test_deleted_file_is_marked_for_release(tmp_path):
    log = tmp_path / "gone.log"
    append(log, "x")
    tailer = tailer_for(str(log), start="beginning")
    drain(tailer)
    Path(log).unlink()
    tailer.sweep()
    [followed] = list(tailer)
    assert followed.rotated
    tailer.release(followed)
    assert list(tailer) == []
