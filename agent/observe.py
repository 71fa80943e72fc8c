"""What the reader lets a test watch, injected rather than read inside the loop.

The production agent gets `Observer()`, which does nothing. Tests that drive
a real agent process ask for the two hooks through the environment, read once
at the command's edge (`from_environment`): every block read appended to a file
before its checkpoint commits (`LOGMEND_TEST_TEE`), and matching wedged while a
file exists (`LOGMEND_TEST_STALL`; `<file>.held` proves it is held).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path


class Observer:
    """Sees every block the reader reads, before it is matched; does nothing by default."""

    def block(self, block: bytes) -> None:
        """A block was read and is about to be matched."""


class TestHooks(Observer):
    """The environment-driven hooks of the black-box tests (tee and stall)."""

    __test__ = False  # not a pytest class

    def __init__(self, tee: str | None, stall: str | None) -> None:
        self._tee = os.open(tee, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if tee else None
        self._stall = stall

    def block(self, block: bytes) -> None:
        if self._stall is not None and os.path.exists(self._stall):
            Path(self._stall + ".held").touch()  # a wedged matcher, and proof of it
            while os.path.exists(self._stall):
                time.sleep(0.05)
        if self._tee is not None:
            os.write(self._tee, block)


def from_environment(env: Mapping[str, str]) -> Observer:
    tee, stall = env.get("LOGMEND_TEST_TEE"), env.get("LOGMEND_TEST_STALL")
    return TestHooks(tee, stall) if tee or stall else Observer()
