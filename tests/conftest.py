from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import STARTED, STARTED_RECEIVERS, Receiver, make_receiver


@pytest.fixture(autouse=True)
def no_process_outlives_its_test() -> Iterator[None]:
    """Agents and receivers a test started and did not stop are killed when it ends (a
    failing assertion skips the test's own stop); those of module-scoped fixtures,
    started before the test, are left to their fixture."""
    agents, receivers = len(STARTED), len(STARTED_RECEIVERS)
    yield
    for proc in [a.proc for a in STARTED[agents:]] + [
        r.proc for r in STARTED_RECEIVERS[receivers:]
    ]:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    del STARTED[agents:]
    del STARTED_RECEIVERS[receivers:]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    server = make_receiver(tmp_path).start()
    yield server
    server.stop()
