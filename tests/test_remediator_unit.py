"""run_remedy and Remediator with an injected runner and an injected sleep: no process, no wait.

The runner records every call and answers from a script (runners are injected by
design); the sleep records each wait and returns at once, or holds until the test
lets it go. Concurrency is observed with runners that block on threading.Events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.fixes import FixJob, Remediator
from agent.model import Incident
from agent.packs import Pack, Pattern, Remedy, load_pack
from agent.remedy import SAFE_PATH, Attempt, Identity, Outcome
from agent.retry import run_remedy
from tests.helpers import write_pack

PATTERN = r"""
[[pattern]]
id = "down"
match = '^down (?P<svc>[a-z]+) (?P<noise>\S+)'
key = "{svc}"
[pattern.fields]
svc = { type = "word" }
[pattern.remedy]
run = ["scripts/fix.sh", "--service", "{svc}"]
verify = ["scripts/check.sh", "{svc}"]
attempts = 5
timeout = "7s"
backoff = { initial = "2s", max = "10s" }
[[pattern.example]]
line = "down web x"
"""
SCRIPTS = {"fix.sh": "#!/bin/sh\nexit 0\n", "check.sh": "#!/bin/sh\nexit 0\n"}
TIMEOUT = 5.0  # for threading waits only: each one ends as soon as its event is set


@dataclass(frozen=True)
class Call:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    timeout: float
    identity: Identity | None


class ScriptedRunner:
    """Records each call; answers with the next scripted exit code (None: timed out), else 0."""

    def __init__(self, *codes: int | None) -> None:
        self.codes = list(codes)
        self.calls: list[Call] = []

    def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        identity: Identity | None = None,
    ) -> Attempt:
        self.calls.append(Call(list(argv), dict(env), cwd, timeout, identity))
        code = self.codes.pop(0) if self.codes else 0
        return Attempt(
            argv=tuple(argv),
            started=float(len(self.calls)),
            duration=0.0,
            exit_code=code,
            signal=None,
            timed_out=code is None,
            stdout=f"call {len(self.calls)}",
            stderr="",
        )


class Waits:
    """An injected sleep: records how long it was asked to wait and returns at once."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pack]:
    """ops: the pack of the run_remedy tests; a (one fix at a time), b and c for the limits."""
    root = tmp_path_factory.mktemp("packs")
    return {
        "ops": load_pack(write_pack(root, "ops", PATTERN, SCRIPTS), trust=False),
        "a": load_pack(
            write_pack(root, "a", "max_concurrent_fixes = 1\n" + PATTERN, SCRIPTS), trust=False
        ),
        "b": load_pack(write_pack(root, "b", PATTERN, SCRIPTS), trust=False),
        "c": load_pack(write_pack(root, "c", PATTERN, SCRIPTS), trust=False),
    }


@pytest.fixture(scope="module")
def pack(packs: dict[str, Pack]) -> Pack:
    return packs["ops"]


@pytest.fixture(scope="module")
def pattern(pack: Pack) -> Pattern:
    [only] = pack.patterns
    return only


def remedy_of(pattern: Pattern, **changes: Any) -> Remedy:
    assert pattern.remedy is not None
    return dataclasses.replace(pattern.remedy, **changes)


def remedy(
    pattern: Pattern,
    pack: Pack,
    runner: ScriptedRunner,
    fields: dict[str, str] | None = None,
    changes: dict[str, Any] | None = None,
    **options: Any,
) -> Outcome:
    return asyncio.run(
        run_remedy(
            pattern,
            remedy_of(pattern, **(changes or {})),
            {"svc": "web", "noise": "x"} if fields is None else fields,
            pack.dir,
            runner,
            **options,
        )
    )


def script(pack: Pack, name: str) -> str:
    return str((pack.dir / "scripts" / name).resolve())


# run_remedy ------------------------------------------------------------------------------


def test_a_failing_fix_is_tried_attempts_times_with_exponential_backoff_and_jitter(pattern, pack):
    runner, waits = ScriptedRunner(1, 1, 1, 1, 1), Waits()
    outcome = remedy(pattern, pack, runner, changes={"verify": None}, sleep=waits)
    assert not outcome.resolved and outcome.rejected is None
    assert outcome.tries == 5 and len(runner.calls) == 5
    assert [a.exit_code for a in outcome.attempts] == [1, 1, 1, 1, 1]
    # initial 2 s doubling to the 10 s maximum, each plus up to `initial` of jitter
    assert len(waits.seconds) == 4
    for wait, base in zip(waits.seconds, [2.0, 4.0, 8.0, 10.0], strict=True):
        assert base <= wait <= base + 2.0, waits.seconds
    assert all(2.0 <= w <= 10.0 + 2.0 for w in waits.seconds)


def test_the_jitter_is_random_not_a_fixed_schedule(pattern, pack):
    firsts = set()
    for _ in range(20):
        waits = Waits()
        remedy(pattern, pack, ScriptedRunner(1, 0), changes={"verify": None}, sleep=waits)
        [wait] = waits.seconds
        assert 2.0 <= wait <= 4.0
        firsts.add(wait)
    assert len(firsts) > 5


def test_a_fix_that_succeeds_stops_the_retries(pattern, pack):
    runner, waits = ScriptedRunner(1, None, 0), Waits()  # fails, times out, succeeds
    seen: list[Attempt] = []
    outcome = remedy(
        pattern, pack, runner, changes={"verify": None}, sleep=waits, on_attempt=seen.append
    )
    assert outcome.resolved and outcome.tries == 3
    assert [(a.exit_code, a.timed_out) for a in outcome.attempts] == [
        (1, False),
        (None, True),
        (0, False),
    ]
    assert list(outcome.attempts) == seen
    assert len(runner.calls) == 3 and len(waits.seconds) == 2


def test_verify_runs_after_a_fix_that_worked_and_a_failing_verify_is_a_failed_try(pattern, pack):
    runner, waits = ScriptedRunner(0, 1, 1, 0, 0), Waits()  # fix ok, verify no; fix no; ok, ok
    verifying: list[bool] = []
    outcome = remedy(
        pattern, pack, runner, sleep=waits, on_verifying=lambda: verifying.append(True)
    )
    assert outcome.resolved and outcome.tries == 3
    assert [a.phase for a in outcome.attempts] == ["fix", "verify", "fix", "fix", "verify"]
    assert [c.argv for c in runner.calls] == [
        [script(pack, "fix.sh"), "--service", "web"],
        [script(pack, "check.sh"), "web"],
        [script(pack, "fix.sh"), "--service", "web"],
        [script(pack, "fix.sh"), "--service", "web"],
        [script(pack, "check.sh"), "web"],
    ]
    assert len(verifying) == 2  # once per verify run, none for the fix that failed
    assert len(waits.seconds) == 2


def test_a_verify_that_never_passes_spends_every_attempt(pattern, pack):
    runner = ScriptedRunner(0, 1, 0, 1)
    outcome = remedy(pattern, pack, runner, changes={"attempts": 2}, sleep=Waits())
    assert not outcome.resolved and outcome.tries == 2
    assert [a.phase for a in outcome.attempts] == ["fix", "verify", "fix", "verify"]


def test_a_passed_deadline_starts_no_new_try(pattern, pack):
    runner, waits = ScriptedRunner(1, 1, 1, 1, 1), Waits()
    outcome = remedy(pattern, pack, runner, changes={"verify": None, "deadline": 0.0}, sleep=waits)
    assert not outcome.resolved and outcome.tries == 1
    assert len(runner.calls) == 1 and waits.seconds == []


def test_waiting_between_tries_holds_no_slot(pattern, pack):
    events: list[str] = []

    @asynccontextmanager
    async def slot() -> AsyncIterator[None]:
        events.append("take")
        yield
        events.append("give")

    async def sleep(seconds: float) -> None:
        events.append("wait")

    remedy(pattern, pack, ScriptedRunner(1, 0, 1, 0, 0), sleep=sleep, slot=slot)
    # fix fails | fix ok, verify fails | fix ok, verify ok: fix and verify share one slot
    assert events == ["take", "give", "wait", "take", "give", "wait", "take", "give"]


def test_only_declared_fields_reach_the_fix_in_argv_and_environment(pattern, pack):
    runner = ScriptedRunner()
    who = Identity("nobody", 65534, 65534)
    fields = {"svc": "web", "noise": "$(reboot)", "smuggled": "x"}
    outcome = remedy(
        pattern, pack, runner, fields, changes={"verify": None}, sleep=Waits(), identity=who
    )
    assert outcome.resolved
    [call] = runner.calls
    assert call.argv == [script(pack, "fix.sh"), "--service", "web"]
    assert call.env == {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": "/",
        "LOGMEND_PACK": "ops",
        "LOGMEND_PATTERN": "down",
        "LOGMEND_FIELD_SVC": "web",
    }
    assert (call.cwd, call.timeout, call.identity) == (pack.dir, 7.0, who)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"svc": "web;reboot", "noise": "x"}, "svc: "),
        ({"svc": "we\nb", "noise": "x"}, "svc: contains a control character"),
        ({"noise": "x"}, "svc: no value captured"),
    ],
    ids=["not-a-word", "control-character", "missing"],
)
def test_a_field_that_fails_its_constraint_runs_nothing_and_is_not_retried(
    pattern, pack, fields, reason
):
    runner, waits = ScriptedRunner(), Waits()
    outcome = remedy(pattern, pack, runner, fields, sleep=waits)
    assert runner.calls == [] and waits.seconds == []
    assert not outcome.resolved and outcome.tries == 0
    assert outcome.rejected is not None and outcome.rejected.startswith(reason)
    [refusal] = outcome.attempts
    assert (refusal.phase, refusal.argv) == ("check", ("check-fields",))
    assert refusal.stderr == f"refused, nothing ran: {outcome.rejected}"


# Remediator ------------------------------------------------------------------------------


class GatedRunner:
    """Blocks each run whose service has a gate until the gate opens; tracks concurrency.

    Services are named after their pack's letter (aone, atwo, bone, ...)."""

    def __init__(self, codes: dict[str, list[int]] | None = None) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.codes = codes or {}
        self.changed = threading.Condition()
        self.running: list[str] = []
        self.log: list[str] = []
        self.most = 0
        self.most_by_pack: dict[str, int] = {}

    def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        identity: Identity | None = None,
    ) -> Attempt:
        name, pack = argv[-1], env["LOGMEND_PACK"]
        assert name[0] == pack
        with self.changed:
            self.running.append(name)
            self.log.append(f"start {name}")
            self.most = max(self.most, len(self.running))
            here = sum(n[0] == pack for n in self.running)
            self.most_by_pack[pack] = max(self.most_by_pack.get(pack, 0), here)
            self.changed.notify_all()
        gate = self.gates.get(name)
        if gate is not None:
            assert gate.wait(TIMEOUT), f"{name} was never let go"
        codes = self.codes.get(name, [])
        code = codes.pop(0) if codes else 0
        with self.changed:
            self.running.remove(name)
            self.log.append(f"end {name}")
            self.changed.notify_all()
        return Attempt(tuple(argv), 0.0, 0.0, code, None, False, "", "")

    def wait_running(self, count: int) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.running) == count, TIMEOUT), self.log
            return sorted(self.running)


class Finished:
    """The Remediator's callbacks: how each job ended, its attempts, its verify notices."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.reports: list[tuple[str, str]] = []
        self.verifying: list[str] = []
        self.done: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def event(self, name: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(name, threading.Event())

    def finish(self, job: FixJob, outcome: Outcome) -> None:
        self.outcomes[job.incident.key] = outcome
        self.event(job.incident.key).set()

    def report(self, job: FixJob, attempt: Attempt) -> None:
        self.reports.append((job.incident.key, attempt.phase))

    def on_verifying(self, job: FixJob) -> None:
        self.verifying.append(job.incident.key)

    def wait(self, *names: str) -> None:
        for name in names:
            assert self.event(name).wait(TIMEOUT), f"{name} never finished"


def job(pack: Pack, service: str) -> FixJob:
    """A job as the daemon submits it: the redacted fields stored, the raw ones for the fix."""
    [pattern] = pack.patterns
    incident = Incident(
        id=f"incident-{service}",
        fingerprint=f"fp-{service}",
        pack=pack.name,
        pattern=pattern.id,
        key=service,
        source="/var/log/app.log",
        status="remediating",
        count=1,
        first_seen=0.0,
        last_seen=0.0,
        fields={"svc": "[REDACTED]", "noise": "x"},
        raw_fields={"svc": service, "noise": "x"},
    )
    return FixJob(incident, pattern, pack)


def without_verify(pack: Pack) -> Pack:
    patterns = tuple(
        dataclasses.replace(p, remedy=remedy_of(p, verify=None)) for p in pack.patterns
    )
    return dataclasses.replace(pack, patterns=patterns)


@dataclass
class Harness:
    remediator: Remediator
    finished: Finished
    packs: dict[str, Pack]

    def submit(self, *services: str) -> None:
        for service in services:
            self.remediator.submit(job(self.packs[service[0]], service))


@pytest.fixture
def start_remediator(packs: dict[str, Pack]) -> Iterator[Callable[..., Harness]]:
    started: list[Remediator] = []

    def start(
        runner: GatedRunner,
        global_limit: int,
        sleep: Callable[[float], Any] | None = None,
        verify: bool = False,
    ) -> Harness:
        finished = Finished()
        chosen = {n: p if verify else without_verify(p) for n, p in packs.items()}
        remediator = Remediator(
            runner,
            global_limit,
            list(chosen.values()),
            {},
            finish=finished.finish,
            verifying=finished.on_verifying,
            report=finished.report,
            sleep=sleep or Waits(),
        )
        remediator.start()
        started.append(remediator)
        return Harness(remediator, finished, chosen)

    yield start
    for remediator in started:
        assert remediator.stop(1.0)


def test_a_pack_limit_of_one_lets_other_packs_use_the_remaining_global_slot(start_remediator):
    runner = GatedRunner()
    gate = threading.Event()
    runner.gates = {"aone": gate, "atwo": gate}
    rig = start_remediator(runner, global_limit=2)
    rig.submit("aone", "atwo", "bone")
    rig.finished.wait("bone")  # b took the second slot while a's second fix waits for a's one
    with runner.changed:
        assert len([n for n in runner.running if n.startswith("a")]) == 1
        assert sum(line.startswith("start a") for line in runner.log) == 1
    gate.set()
    rig.finished.wait("aone", "atwo")
    assert runner.most_by_pack == {"a": 1, "b": 1}
    assert all(rig.finished.outcomes[n].resolved for n in ("aone", "atwo", "bone"))


def test_the_global_limit_bounds_fixes_across_packs(start_remediator):
    runner = GatedRunner()
    gate = threading.Event()
    runner.gates = {"bone": gate, "cone": gate, "btwo": gate}
    rig = start_remediator(runner, global_limit=2)
    rig.submit("bone", "cone", "btwo")
    assert len(runner.wait_running(2)) == 2
    gate.set()
    rig.finished.wait("bone", "cone", "btwo")
    assert runner.most == 2
    starts = [i for i, line in enumerate(runner.log) if line.startswith("start")]
    ends = [i for i, line in enumerate(runner.log) if line.startswith("end")]
    assert len(starts) == len(ends) == 3
    assert starts[2] > ends[0]  # the third began only once one of the first two had ended


def test_a_global_limit_of_one_runs_fixes_one_after_another(start_remediator):
    runner = GatedRunner()
    gate = threading.Event()
    runner.gates = {"bone": gate}
    rig = start_remediator(runner, global_limit=1)
    rig.submit("bone", "cone")
    assert runner.wait_running(1) == ["bone"]
    gate.set()
    rig.finished.wait("bone", "cone")
    assert runner.log == ["start bone", "end bone", "start cone", "end cone"]
    assert runner.most == 1


def test_a_fix_waiting_to_retry_holds_no_slot(start_remediator):
    waits: list[float] = []
    held: list[asyncio.Future[None]] = []
    asleep = threading.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        held.append(future)
        asleep.set()
        await future

    runner = GatedRunner({"bone": [1, 0]})  # fails once, then works
    rig = start_remediator(runner, global_limit=1, sleep=sleep)
    rig.submit("bone")
    assert asleep.wait(TIMEOUT)
    rig.submit("cone")
    rig.finished.wait("cone")  # ran in the only slot while bone waits to retry
    assert "bone" not in rig.finished.outcomes
    assert runner.log == ["start bone", "end bone", "start cone", "end cone"]
    [future] = held
    future.get_loop().call_soon_threadsafe(future.set_result, None)
    rig.finished.wait("bone")
    outcome = rig.finished.outcomes["bone"]
    assert outcome.resolved and outcome.tries == 2
    assert len(waits) == 1 and 2.0 <= waits[0] <= 4.0
    assert runner.log[-2:] == ["start bone", "end bone"]


def test_the_remediator_fixes_with_the_raw_fields_and_reports_each_step(start_remediator):
    runner = GatedRunner({"bone": [0, 1, 0, 0]})  # fix ok, verify fails; fix ok, verify ok
    rig = start_remediator(runner, global_limit=2, verify=True)
    rig.submit("bone")
    rig.finished.wait("bone")
    outcome = rig.finished.outcomes["bone"]
    assert outcome.resolved and outcome.tries == 2
    assert [a.argv[-1] for a in outcome.attempts] == ["bone"] * 4  # not "[REDACTED]"
    assert [a.phase for a in outcome.attempts] == ["fix", "verify", "fix", "verify"]
    assert rig.finished.reports == [
        ("bone", "fix"),
        ("bone", "verify"),
        ("bone", "fix"),
        ("bone", "verify"),
    ]
    assert rig.finished.verifying == ["bone", "bone"]
