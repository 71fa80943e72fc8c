from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ENGINE, STARTED, STARTED_RECEIVERS, Receiver, make_receiver
from tests.pg import Cluster, throwaway_cluster


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


ENGINES = tuple(os.environ.get("LOGMEND_TEST_ENGINES", "sqlite,postgresql").split(","))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engines(*kinds): run this receiver test on these engines only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses `engine` (a module's usefixtures) runs once per database engine."""
    if "engine" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engines")
        kinds = [k for k in ENGINES if marker is None or k in marker.args]
        metafunc.parametrize("engine", kinds, indirect=True, scope="module")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = throwaway_cluster()
    ENGINE.cluster = cluster
    yield cluster
    cluster.remove()


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The receiver database engine of the tests in this module, while they run."""
    kind: str = request.param
    if kind == "postgresql":
        request.getfixturevalue("pg_cluster")
    ENGINE.kind = kind
    yield kind
    ENGINE.kind = "sqlite"
