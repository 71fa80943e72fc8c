from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import STARTED, Receiver, make_receiver


@pytest.fixture(autouse=True)
def no_agent_outlives_its_test() -> Iterator[None]:
    yield
    for agent in STARTED:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(timeout=10)
    STARTED.clear()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    server = make_receiver(tmp_path).start()
    yield server
    server.stop()
