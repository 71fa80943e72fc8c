from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Receiver, make_receiver


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    server = make_receiver(tmp_path).start()
    yield server
    server.stop()
