"""The tailer against a model of the file, driven by random sequences of what happens to logs.

Real files and a real state database on one side, a list of written lines on
the other. Whatever the sequence of writes, partial writes, rotations by
rename, copytruncates, truncates, deletes, rewrites on the same inode, clean
restarts and crashes, every line written is delivered (unless it was destroyed
before anyone could read it: truncated away with no copy, or rewritten while
the agent was down), lines of one file arrive in the order they were written,
and a line arrives twice only after a crash.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.config import Source
from agent.model import Batch
from agent.records import decode_lines
from agent.state import Store
from agent.tail import Followed, Tailer

CHUNK = 64  # small reads, so files are often read part-way


class TailerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tail-model-"))
        self.path = self.dir / "app.log"
        self.path.touch()
        self.store = Store(self.dir / "state.db")
        self.serial = 0
        self.file_id = 0
        self.rotations = 0
        self.written: list[tuple[str, int]] = []  # (line, file it was written to)
        self.in_file: list[str] = []  # complete lines now in app.log (for destruction)
        self.partial = ""
        self.lost_ok: set[str] = set()
        self.delivered: list[str] = []
        self.crashed = False
        self.deleted: set[int] = set()
        self.batch = Batch()
        self.tailer = self._new_tailer()

    # -- the agent side -------------------------------------------------------------
    def _new_tailer(self) -> Tailer:
        tailer = Tailer(
            (Source(path=str(self.path), start="beginning"),),
            self.store.checkpoints(),
            1 << 20,
            self.store.done_files(),
        )
        self.tailer = tailer
        self._housekeeping()  # as the agent does right after its first sweep
        self._commit()
        return tailer

    def _sink(self, followed: Followed, block: bytes, base: int) -> None:
        self.delivered.extend(decode_lines(block))
        if followed.dirty:
            self.batch.checkpoints[followed.identity] = followed.checkpoint()

    def _housekeeping(self) -> None:
        def before_release(followed: Followed) -> None:
            self.batch.checkpoints.pop(followed.identity, None)

        self.tailer.sweep()
        self.tailer.release_idle(CHUNK, self._sink, before_release)
        recovered, released, finished = self.tailer.take_recovered()
        for _, _, block in recovered:
            self.delivered.extend(decode_lines(block))
        self.batch.forget.extend(released)
        self.batch.done.extend(finished)
        for checkpoint in self.tailer.new_checkpoints():
            self.batch.checkpoints[(checkpoint.dev, checkpoint.ino)] = checkpoint

    def _commit(self) -> None:
        self.batch.done.extend(self.tailer.take_finished())  # as each pass of the agent does
        self.store.commit(self.batch, time.time())
        self.batch = Batch()

    # -- the writer side ------------------------------------------------------------
    def _line(self) -> str:
        self.serial += 1
        return f"L{self.serial:05d}"

    @rule(count=st.integers(1, 6))
    def write(self, count: int) -> None:
        lines = [self._line() for _ in range(count)]
        text = "".join(line + "\n" for line in lines)
        if self.partial:  # this write finishes the line already begun in the file
            lines[0] = self.partial + lines[0]
            self.partial = ""
        with self.path.open("a") as handle:
            handle.write(text)
        self.written.extend((line, self.file_id) for line in lines)
        self.in_file.extend(lines)

    @precondition(lambda self: not self.partial)
    @rule()
    def write_partial(self) -> None:
        self.partial = self._line() + "-"
        with self.path.open("a") as handle:
            handle.write(self.partial)

    def _finish_partial(self) -> None:
        """Writers finish their line before a rotation takes the file away."""
        if self.partial:
            self.write(1)

    @rule()
    def rotate_by_rename(self) -> None:
        self._finish_partial()
        self.rotations += 1
        os.rename(self.path, self.dir / f"app.log.{self.rotations}")
        self.path.touch()
        self.sweep()  # the new file's creation wakes the agent (file events)
        self.file_id += 1
        self.in_file = []

    @rule(compress=st.booleans())
    def copytruncate(self, compress: bool) -> None:
        self._finish_partial()
        # logrotate runs long after the agent first looked at the file; it may have read
        # only part of it, the copy must provide the rest
        self.tailer.read_all(CHUNK, self._sink)
        self._commit()  # each pass of the agent commits what it read
        self.rotations += 1
        copy = self.dir / f"app.log.{self.rotations}"
        shutil.copyfile(self.path, copy)
        with self.path.open("r+") as handle:
            handle.truncate(0)
        if compress:
            import gzip

            with copy.open("rb") as src, gzip.open(f"{copy}.gz", "wb") as dst:
                dst.write(src.read())
            copy.unlink()
        self.file_id += 1
        self.in_file = []

    @rule()
    def truncate_without_copy(self) -> None:
        self._finish_partial()
        with self.path.open("r+") as handle:
            handle.truncate(0)
        self.lost_ok.update(self.in_file)  # destroyed: only what was already read survives
        self.file_id += 1
        self.in_file = []

    @rule()
    def delete_and_recreate(self) -> None:
        self._finish_partial()
        self.sweep()  # the agent holds the file open, as after any sweep
        self.deleted.add(self.file_id)
        self.path.unlink()
        self.path.touch()
        self.sweep()  # the new file's creation wakes the agent (file events)
        self.file_id += 1
        self.in_file = []

    # -- the agent's life -----------------------------------------------------------
    @rule(rounds=st.integers(1, 4))
    def read(self, rounds: int) -> None:
        for _ in range(rounds):
            self.tailer.read_all(CHUNK, self._sink)
        self._commit()

    @rule()
    def sweep(self) -> None:
        self._housekeeping()
        self._commit()

    def _stopping(self) -> None:
        """A deleted file lives only while the agent holds it: what it had not read is gone."""
        delivered = set(self.delivered)
        self.lost_ok.update(
            line
            for line, file_id in self.written
            if file_id in self.deleted and line not in delivered
        )

    @rule()
    def restart(self) -> None:
        self._commit()
        self._stopping()
        self.tailer.close()
        self.tailer = self._new_tailer()

    @rule(rounds=st.integers(0, 3))
    def crash(self, rounds: int) -> None:
        for _ in range(rounds):  # read on, but die before committing it
            self.tailer.read_all(CHUNK, self._sink)
        self.batch = Batch()
        self.crashed = True
        self._stopping()
        self.tailer.close()
        self.tailer = self._new_tailer()

    @rule()
    def rewrite_same_inode_while_down(self) -> None:
        self._finish_partial()
        self._commit()
        self._stopping()
        self.tailer.close()
        size = self.path.stat().st_size
        lines = []
        while sum(len(line) + 1 for line in lines) < size + 1:
            lines.append(self._line())
        with self.path.open("r+") as handle:  # same inode, other content, as long or longer
            handle.truncate(0)
            handle.write("".join(line + "\n" for line in lines))
        self.lost_ok.update(self.in_file)
        self.file_id += 1
        self.written.extend((line, self.file_id) for line in lines)
        self.in_file = list(lines)
        self.tailer = self._new_tailer()

    @invariant()
    def no_duplicates_without_a_crash(self) -> None:
        if not self.crashed:
            assert len(self.delivered) == len(set(self.delivered))

    def teardown(self) -> None:
        try:
            self._finish_partial()
            for _ in range(3):  # sweep and drain, as the running agent would
                self._housekeeping()
                while self.tailer.read_all(1 << 16, self._sink):
                    pass
            self.tailer.flush_quiet(lambda f: 0.0, self._sink)
            delivered = set(self.delivered)
            missing = [
                line
                for line, _ in self.written
                if line not in delivered and line not in self.lost_ok
            ]
            assert not missing, f"lost {missing[:10]}"
            first_seen: dict[str, int] = {}
            for index, line in enumerate(self.delivered):
                first_seen.setdefault(line, index)
            by_file: dict[int, list[str]] = {}
            for line, file_id in self.written:
                by_file.setdefault(file_id, []).append(line)
            for lines in by_file.values():
                order = [first_seen[line] for line in lines if line in first_seen]
                assert order == sorted(order), "lines of one file out of order"
        finally:
            self.tailer.close()
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TailerModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, database=None
)
test_tailer_against_a_model_of_the_file = TailerModel.TestCase


def test_a_copy_read_whole_after_a_restart_is_not_read_again_for_an_old_checkpoint():
    """Found by the model: a copytruncate copy of a file whose head was known but not read
    was read once as "written while down" and again as the copy of that checkpoint."""
    model = TailerModel()
    model.rewrite_same_inode_while_down()
    model.truncate_without_copy()
    model.write(count=1)
    model.copytruncate(compress=False)
    model.rotate_by_rename()
    model.rewrite_same_inode_while_down()
    model.no_duplicates_without_a_crash()
    model.teardown()


def test_a_rotated_file_on_a_reused_inode_of_equal_size_is_read():
    """Found by the stress test: a rotated file read to its end was remembered by device,
    inode and size; a file rotated in while the agent was down got the same (freed) inode
    and, with lines of one width, the same size, and was skipped as already read."""
    model = TailerModel()
    model.write(count=3)
    model.read(rounds=3)
    model.rotate_by_rename()
    for _ in range(3):
        model.sweep()  # the rotated file is read to its end and let go: it is done
    done = model.store.done_files()
    old = model.dir / "app.log.1"
    assert (old.stat().st_ino, old.stat().st_size) in {(d[1], d[2]) for d in done}
    model._commit()
    model.tailer.close()  # the agent is down from here
    inode = old.stat().st_ino
    old.unlink()  # compressed away, as logrotate does
    os.rename(model.path, model.dir / "app.log.2")  # the file we had a checkpoint of
    lines = [model._line() for _ in range(3)]  # as wide as the first file's lines
    model.path.write_text("".join(line + "\n" for line in lines))  # on the freed inode
    rotated = model.dir / "app.log.3"
    os.rename(model.path, rotated)  # and rotated away before the agent is back
    model.path.touch()
    model.file_id += 1
    model.written.extend((line, model.file_id) for line in lines)
    if rotated.stat().st_ino != inode:
        model.teardown()
        pytest.skip("the file system did not reuse the inode")
    model.tailer = model._new_tailer()
    model.teardown()  # asserts that nothing written was lost
