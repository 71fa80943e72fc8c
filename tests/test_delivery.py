"""Escalations arrive exactly once through faults; nothing secret is stored or sent."""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trustme

from tests.helpers import (
    AgentProc,
    FaultServer,
    Receiver,
    agent_with_pack,
    append,
    cli,
    free_port,
    make_receiver,
    status,
    wait_for,
    wait_len,
)

# The fix runs as root: pytest's tmp_path (root's, mode 0700) is out of reach of "nobody".
PACK = """\
user = "root"

[[redact]]
match = '''\\b\\d{3}-\\d{2}-\\d{4}\\b'''

[[pattern]]
id = "boom"
match = '''boom (?P<n>\\d+)'''
key = "{n}"
cooldown = "1h"

[[pattern.example]]
line = "boom 1"

[[pattern]]
id = "leaky"
match = '''^request failed: (?P<detail>.*)'''
key = "{detail}"
escalate = "always"

[pattern.fields]
detail = { allow = '''[ -~]+''' }  # printable ASCII: the planted secrets must reach the fix

[pattern.remedy]
run = ["scripts/echo.sh", "{detail}"]
attempts = 1

[[pattern.example]]
line = "request failed: x"
"""

ECHO = '#!/bin/sh\necho "fixing: $*"\necho "stderr: $*" >&2\n'


def setup_agent(
    tmp: Path, receiver: Receiver, url: str | None = None, escalation: str = ""
) -> tuple[AgentProc, Path]:
    return agent_with_pack(
        tmp,
        PACK,
        {"echo.sh": ECHO},
        receiver,
        url=url,
        escalation=escalation,
        agent_extra='allow_root = ["ops"]\n',
    )


def booms(receiver: Receiver, count: int) -> list[dict]:
    return wait_len(lambda: receiver.escalations(pattern="boom"), count, timeout=30)


def assert_once(events: list[dict], keys: list[str]) -> None:
    assert sorted(e["key"] for e in events) == sorted(keys)
    assert len({e["id"] for e in events}) == len(events)


def spool(config: Path) -> dict:
    return dict(status(config)["spool"])


def test_receiver_down_for_the_whole_run_then_up_everything_arrives_once(tmp_path):
    port = free_port()
    receiver = make_receiver(tmp_path)
    receiver.port = port
    agent, log = setup_agent(tmp_path, receiver, url=f"http://127.0.0.1:{port}")
    agent.start()
    keys = [str(n) for n in range(50)]
    append(log, *(f"boom {k}" for k in keys))
    assert wait_for(lambda: spool(agent.config)["queued"] == 50), agent.log()
    assert agent.stop() == 0  # and a restart in between, for good measure
    agent.start()
    receiver.start()
    try:
        events = booms(receiver, 50)
        assert_once(events, keys)
        assert wait_for(lambda: spool(agent.config)["queued"] == 0)
        assert agent.stop() == 0
        assert len(receiver.escalations(pattern="boom")) == 50
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("plan", "escalation"),
    [
        (["500"] * 4, ""),
        (["429:1"], ""),
        (["503:1", "503:1"], ""),
        (["hang"], 'timeout = "500ms"\n'),
        (["reset"], ""),
    ],
    ids=["500s", "429-retry-after", "503-retry-after", "hanging", "reset-mid-body"],
)
def test_faults_delay_but_never_lose_or_duplicate(tmp_path, receiver, plan, escalation):
    fault = FaultServer(receiver.url)
    fault.plan = list(plan)
    agent, log = setup_agent(tmp_path, receiver, url=fault.url, escalation=escalation)
    agent.start()
    try:
        keys = [str(n) for n in range(30)]
        append(log, *(f"boom {k}" for k in keys))
        assert_once(booms(receiver, 30), keys)
        assert fault.seen[: len(plan)] == plan and fault.seen[len(plan)] == "forward"
        if plan[0].startswith(("429", "503")):
            assert agent.saw("retrying in 1.0s") >= 1, agent.log()
        assert agent.stop() == 0
        assert len(receiver.escalations(pattern="boom")) == 30
    finally:
        fault.stop()


def test_agent_killed_while_a_batch_is_in_flight_stores_it_once(tmp_path, receiver):
    fault = FaultServer(receiver.url)
    fault.plan = ["forward-then-hang"]
    agent, log = setup_agent(tmp_path, receiver, url=fault.url)
    agent.start()
    try:
        keys = [str(n) for n in range(20)]
        append(log, *(f"boom {k}" for k in keys))
        assert fault.forwarded_and_hanging.wait(20)
        assert len(receiver.escalations(pattern="boom")) == 20  # stored; the agent never heard
        agent.stop(signal.SIGKILL)
        agent.start()
        assert wait_for(lambda: len(fault.seen) >= 2 and spool(agent.config)["queued"] == 0)
        assert_once(receiver.escalations(pattern="boom"), keys)
        assert agent.stop() == 0
    finally:
        fault.stop()


def test_a_refused_batch_is_parked_shown_and_sent_again_by_command(tmp_path, receiver):
    fault = FaultServer(receiver.url)
    fault.plan = ["400"]
    agent, log = setup_agent(tmp_path, receiver, url=fault.url)
    agent.start()
    try:
        append(log, "boom 1", "boom 2")
        assert wait_for(lambda: spool(agent.config)["parked"] == 2), agent.log()
        shown = cli("status", "-c", str(agent.config))
        assert "2 parked (last error: HTTP 400" in shown
        assert receiver.escalations(pattern="boom") == []
        cli("spool", "retry", "-c", str(agent.config))
        assert_once(booms(receiver, 2), ["1", "2"])
        assert agent.stop() == 0
    finally:
        fault.stop()


def test_a_full_spool_drops_the_oldest_counts_them_and_reports_the_drop(tmp_path):
    port = free_port()
    receiver = make_receiver(tmp_path)
    receiver.port = port
    agent, log = setup_agent(
        tmp_path, receiver, url=f"http://127.0.0.1:{port}", escalation="spool_max_events = 10\n"
    )
    agent.start()
    append(log, *(f"boom {n}" for n in range(25)))
    assert wait_for(lambda: spool(agent.config)["dropped"] == 15), agent.log()
    assert spool(agent.config)["queued"] == 10
    receiver.start()
    try:
        assert_once(booms(receiver, 10), [str(n) for n in range(15, 25)])
        [report] = wait_len(lambda: receiver.escalations(pattern="spool-overflow"), 1)
        assert report["count"] == 15 and report["owner"] == "logmend"
        assert wait_for(lambda: spool(agent.config)["dropped"] == 0)
        assert agent.stop() == 0
    finally:
        receiver.stop()


SECRETS = {
    "Authorization: Bearer SECRETTOKEN123abc": "SECRETTOKEN123abc",
    "GET https://admin:HUNTER2pw@db.internal/x": "HUNTER2pw",
    "password=Sup3rS3cret! user=bob": "Sup3rS3cret!",
    "used key AKIAABCDEFGHIJKLMNOP": "AKIAABCDEFGHIJKLMNOP",
    "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtand0In0.c2lnbmF0dXJlLXNlY3JldA": (
        "c2lnbmF0dXJlLXNlY3JldA"
    ),
    "card 4111 1111 1111 1111 declined": "4111 1111 1111 1111",
    "Cookie: session=COOKIESECRET99": "COOKIESECRET99",
    "customer 123-45-6789 not found": "123-45-6789",
    "-----BEGIN RSA PRIVATE KEY-----MIIEPRIVATEKEYBYTES": "MIIEPRIVATEKEYBYTES",
    "api_token: tok_live_XYZ987": "tok_live_XYZ987",
    # issue 11: formats an attacker review found passing unmasked
    "git push https://ghp_GhPaT0123456789abcdefGHIJKLMNOPqrstu@github.com/o/r.git": (
        "GhPaT0123456789abcdef"
    ),
    "oauth gho_GhOaUtH123456789abcdefGHIJKLMNOPqrs": "GhOaUtH123456789abcdef",
    "app ghu_GhUsEr0123456789abcdefGHIJKLMNOPqrst": "GhUsEr0123456789abcdef",
    "install ghs_GhSeRvEr123456789abcdefGHIJKLMNOPqr": "GhSeRvEr123456789abcdef",
    "refresh ghr_GhReFrEsH12345678abcdefGHIJKLMNOPqr": "GhReFrEsH12345678abcdef",
    "fine github_pat_11AAAAAAA0FineGrained_0123456789abcdefghijklmnopqrstuvwxyzABCDEF": (
        "FineGrained_0123456789abcdef"
    ),
    "slack xoxb-1234567890123-1234567890123-SlAcKbOtSeCrEt0123456789": "SlAcKbOtSeCrEt",
    "slack xoxp-1234567890-1234567890-1234567890-5lackUserSecret0123456789ab": "5lackUserSecret",
    "slack xoxa-2-SlackLegacyWorkspace99": "SlackLegacyWorkspace99",
    "slack xapp-1-A0123456789-1234567890123-5lackAppSecret0123456789": "5lackAppSecret",
    "maps AIzaSyGoOgLeKeY0123456789abcdefghijklm": "GoOgLeKeY0123456789",
    "charge sk_live_51StRiPeLiVe0123456789abcdefgh": "StRiPeLiVe0123456789",
    "charge rk_live_51StRiPeReStRiCt0123456789abc": "StRiPeReStRiCt0123456789",
    "charge sk_test_4StRiPeTeSt0123456789abcdef": "StRiPeTeSt0123456789",
    "llm sk-proj-OpEnAiPrOj0123456789_abcdefghijklmnopqrstuvwxyz": "OpEnAiPrOj0123456789",
    "llm sk-OpEnAiLeGaCy0123456789T3BlbkFJabcdefghijklmnop": "OpEnAiLeGaCy0123456789",
    "publish npm_NpMtOkEn0123456789abcdefghijABCDEFGH": "NpMtOkEn0123456789",
    "mail SG.SeNdGrIdId0123456789ab.SeNdGrIdSeCrEt0123456789abcdefghijklmnopqrs": (
        "SeNdGrIdSeCrEt0123456789"
    ),
    "upstream said bearer BeArErOnLy.0123-456_789 twice": "BeArErOnLy.0123-456_789",
    "exec: deploy --password CliPassWord42 --user bob": "CliPassWord42",
    "exec: deploy --password=CliPassEquals42": "CliPassEquals42",
    "exec: sshpass -p SshPassSecret42 ssh root@db1 uptime": "SshPassSecret42",
    "azure AccountName=acct;AccountKey=AzUrEaCcOuNtKeY0123+abc/def==;EndpointSuffix=x": (
        "AzUrEaCcOuNtKeY0123"
    ),
    "creds wJalrXUtnFEMI/K7MDENG/bPxRfiCYbareAWS901 loaded": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYbareAWS901",
    "GET https://user:p@ssAtSecret@host/x": "ssAtSecret",
}
# multi-line events, from a second (multiline) source: PEM blocks whose body follows BEGIN
PEM_BODY = "MIIEowIBAAKCAQEAPeMbOdYlInEoNe0123456789abcdefghijklmnopqrstuvwx"
PEM_TAIL = "VTLw7onLRnrq0PeMbOdYlInEtWo9876543210ABCDEFGHIJKLMNOPQRSTUVWXyz"
MULTILINE_EVENTS = [
    ["request failed: -----BEGIN RSA PRIVATE KEY-----", PEM_BODY, "-----END RSA PRIVATE KEY-----"],
    ["request failed: -----BEGIN OPENSSH PRIVATE KEY-----", PEM_TAIL],  # END never came
]
MULTILINE_SOURCE = """
[[source]]
path = "{path}"
packs = ["ops"]
flush_after = "300ms"
[source.multiline]
start = '''^request failed:'''
"""


def test_planted_secrets_reach_neither_the_state_database_nor_the_wire(tmp_path, receiver):
    fault = FaultServer(receiver.url)
    multi = tmp_path / "multi.log"
    multi.touch()
    agent, log = agent_with_pack(
        tmp_path,
        PACK,
        {"echo.sh": ECHO},
        receiver,
        url=fault.url,
        extra=MULTILINE_SOURCE.format(path=multi),
        agent_extra='allow_root = ["ops"]\n',
    )
    agent.start()
    expected = len(SECRETS) + len(MULTILINE_EVENTS)
    try:
        append(log, *(f"request failed: {line}" for line in SECRETS))
        append(multi, *(line for event in MULTILINE_EVENTS for line in event))
        events = wait_len(lambda: receiver.escalations(pattern="leaky"), expected)
        assert len(events) == expected
        for event in events:
            assert "[REDACTED]" in event["lines"][0] and "[REDACTED]" in event["key"]
            assert event["attempts"][0]["stdout"].startswith("fixing: ")
        assert agent.stop() == 0
    finally:
        fault.stop()
    state = tmp_path / "state"
    raw = b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith("state.db"))
    wire = b"".join(fault.bodies)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob(receiver.db.name + "*"))
    answer = json.dumps(receiver.escalations(pattern="leaky"))
    assert wire and raw and stored
    for secret in [*SECRETS.values(), PEM_BODY, PEM_TAIL]:
        assert secret.encode() not in raw, f"{secret} in the state database"
        assert secret.encode() not in wire, f"{secret} sent"
        assert secret.encode() not in stored, f"{secret} in the receiver's database"
        assert secret not in answer, f"{secret} in the receiver's answer"
        assert secret not in agent.log(), f"{secret} in the agent's log"


def test_a_pack_that_sets_redact_entropy_masks_a_lone_key_body_line(tmp_path, receiver):
    """A PEM body line with no BEGIN has no shape a rule knows; only the entropy rule catches it."""
    agent, log = agent_with_pack(
        tmp_path, "redact_entropy = 4.0\n" + PACK, {"echo.sh": ECHO}, receiver
    )
    agent.start()
    append(log, f"request failed: {PEM_BODY}")
    [event] = wait_len(lambda: receiver.escalations(pattern="leaky"), 1)
    assert event["lines"] == ["request failed: [REDACTED]"] and event["key"] == "[REDACTED]"
    assert agent.stop() == 0
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("state.db*"))
    assert raw and PEM_BODY.encode() not in raw


def test_self_heal_statistics_reach_the_receiver(tmp_path, receiver):
    agent, log = setup_agent(tmp_path, receiver, escalation='stats_interval = "200ms"\n')
    agent.start()
    append(log, "boom 1", "boom 1", "request failed: a", "request failed: b")

    def stats() -> dict:
        answer = receiver_get(receiver, "/v1/stats")
        return {row["pattern"]: row for row in answer["stats"]}

    def settled() -> bool:
        rows = stats()
        return (
            "leaky" in rows
            and rows["leaky"]["resolved"] == 2
            and rows.get("boom", {}).get("matches") == 2
        )

    assert wait_for(settled, 20), json.dumps(stats())
    rows = stats()
    assert rows["boom"]["incidents"] == 1 and rows["boom"]["escalated"] == 1
    assert rows["leaky"]["incidents"] == 2 and rows["leaky"]["failed"] == 0
    assert rows["leaky"]["owner"] == "team-test" and rows["leaky"]["hosts"] == 1
    assert agent.stop() == 0


def receiver_get(receiver: Receiver, path: str) -> dict:
    import httpx

    answer = httpx.get(
        receiver.url + path, headers={"Authorization": f"Bearer {receiver.admin}"}, timeout=5
    )
    answer.raise_for_status()
    return dict(answer.json())


def test_a_disk_that_refuses_writes_is_reported_and_nothing_is_lost(tmp_path, receiver):
    agent, log = setup_agent(tmp_path, receiver)
    agent.start()
    append(log, "boom 0")
    assert wait_len(lambda: receiver.escalations(pattern="boom"), 1)
    assert agent.proc is not None
    pid = agent.proc.pid
    unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, unlimited[1]))  # every write fails: EFBIG
    try:
        append(log, *(f"boom {n}" for n in range(1, 40)))
        assert wait_for(lambda: agent.saw("cannot write the state database"), 20), agent.log()
        assert agent.proc.poll() is None
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
    assert wait_for(lambda: agent.saw("the state database takes writes again"), 20), agent.log()
    assert_once(booms(receiver, 40), [str(n) for n in range(40)])
    assert agent.stop() == 0


def test_escalation_updates_carry_new_counts_under_the_same_id(tmp_path, receiver):
    agent, log = setup_agent(tmp_path, receiver, escalation='aggregate = "300ms"\n')
    agent.start()
    append(log, *(["boom 7"] * 1000))
    assert wait_for(
        lambda: [e["count"] for e in receiver.escalations(pattern="boom")] == [1000], 20
    ), receiver.escalations(pattern="boom")
    append(log, *(["boom 7"] * 500))
    assert wait_for(
        lambda: [e["count"] for e in receiver.escalations(pattern="boom")] == [1500], 20
    )
    requests = agent.saw("escalated 1 event(s)")
    assert 2 <= requests <= 6, agent.log()  # a handful of requests, not 1,500
    assert agent.stop() == 0


def test_tls_with_a_private_ca_and_mutual_tls(tmp_path):
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("logmend-agent")
    files = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("server.pem", server.cert_chain_pems[0]),
        ("server.key", server.private_key_pem),
        ("client.pem", client.cert_chain_pems[0]),
        ("client.key", client.private_key_pem),
    ):
        files[name] = tmp_path / name
        blob.write_to_path(str(files[name]))
    receiver = make_receiver(tmp_path)
    receiver.args = (
        "--tls-cert",
        str(files["server.pem"]),
        "--tls-key",
        str(files["server.key"]),
        "--client-ca",
        str(files["ca.pem"]),
    )
    receiver.start()
    assert receiver.url.startswith("https://")

    def stored() -> int:
        with sqlite3.connect(receiver.db) as db:
            return int(db.execute("SELECT count(*) FROM escalations").fetchone()[0])

    try:
        no_cert, log = setup_agent(
            tmp_path / "a", receiver, escalation=f'ca_file = "{files["ca.pem"]}"\n'
        )
        no_cert.start()
        append(log, "boom 1")
        assert wait_for(lambda: no_cert.saw("escalation delivery failed"), 20), no_cert.log()
        assert stored() == 0
        assert no_cert.stop() == 0
        untrusted, log = setup_agent(tmp_path / "b", receiver)  # system CAs only
        untrusted.start()
        append(log, "boom 2")
        assert wait_for(lambda: untrusted.saw("CERTIFICATE_VERIFY_FAILED"), 20), untrusted.log()
        assert untrusted.stop() == 0 and stored() == 0
        good, log = setup_agent(
            tmp_path / "c",
            receiver,
            escalation=f'ca_file = "{files["ca.pem"]}"\nclient_cert = "{files["client.pem"]}"\n'
            f'client_key = "{files["client.key"]}"\n',
        )
        good.start()
        append(log, "boom 3")
        assert wait_for(lambda: stored() == 1, 20), good.log()
        assert good.stop() == 0
    finally:
        receiver.stop()


ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@pytest.mark.skipif(not Path(ALERTMANAGER).exists(), reason="prometheus-alertmanager not installed")
def test_alerts_reach_a_real_alertmanager_are_resent_and_end(tmp_path):
    (tmp_path / "am.yml").write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    manager = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.path={tmp_path / 'am-data'}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    am = f"http://127.0.0.1:{port}"
    import httpx

    def alerts() -> list[dict]:
        try:
            return list(httpx.get(f"{am}/api/v2/alerts", timeout=2).json())
        except httpx.HTTPError:
            return []

    recorder = FaultServer(am)  # forwards every post, keeping what the agent sent
    try:
        assert wait_for(lambda: _ready(am), 20)
        agent, log = agent_with_pack(
            tmp_path,
            PACK.replace('cooldown = "1h"', 'cooldown = "3s"'),
            {"echo.sh": ECHO},
            extra=f'\n[alertmanager]\nurl = "{recorder.url}"\nresend = "500ms"\n',
        )
        agent.start()
        append(log, "boom 42")
        [alert] = wait_len(alerts, 1)
        assert alert["labels"] == {
            "alertname": "logmend_boom",
            "pack": "ops",
            "pattern": "boom",
            "host": "test-host",
            "severity": "error",
            "owner": "team-test",
            "key": "42",
            "fingerprint": alert["labels"]["fingerprint"],
        }
        assert alert["annotations"]["summary"] == "ops/boom on test-host: no-remedy (1 line(s))"
        assert alert["status"]["state"] == "active"
        assert wait_for(lambda: len(recorder.bodies) >= 3)  # re-sent while it fires

        def ended() -> bool:  # a post whose endsAt is not in the future: the end, sent
            last = json.loads(recorder.bodies[-1])[0]
            return _seconds(last["endsAt"]) <= recorder.times[-1] + 0.01

        assert wait_for(ended, 15)  # the cooldown passed: the agent ended the alert
        assert alerts() == []
        firing = [json.loads(b)[0] for b in recorder.bodies[:-1]]
        assert all(_seconds(a["endsAt"]) > t for a, t in zip(firing, recorder.times, strict=False))
        assert json.loads(recorder.bodies[-1])[0]["labels"]["key"] == "42"
        assert agent.stop() == 0
    finally:
        recorder.stop()
        manager.terminate()
        manager.wait(10)


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _seconds(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339).timestamp()


def test_the_spool_is_bounded_in_bytes_too(tmp_path):
    port = free_port()
    receiver = make_receiver(tmp_path)
    receiver.port = port
    agent, log = setup_agent(
        tmp_path,
        receiver,
        url=f"http://127.0.0.1:{port}",
        escalation="spool_max_bytes = 65536\n",
    )
    agent.start()
    total = 60
    append(log, *(f"boom {n} " + "x" * 2000 for n in range(total)))  # ~2 KB an event

    def settled() -> bool:
        state = spool(agent.config)
        return state["queued"] + state["dropped"] == total and state["dropped"] > 0

    assert wait_for(settled), (spool(agent.config), agent.log())
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        kept, size = db.execute("SELECT count(*), sum(length(body)) FROM spool").fetchone()
    assert size <= 65536 and kept == spool(agent.config)["queued"]
    dropped = total - kept
    receiver.start()
    try:
        assert_once(booms(receiver, kept), [str(n) for n in range(dropped, total)])
        [report] = wait_len(lambda: receiver.escalations(pattern="spool-overflow"), 1)
        assert report["count"] == dropped
        assert agent.stop() == 0
    finally:
        receiver.stop()


def test_a_locked_state_database_is_reported_and_waited_out(tmp_path, receiver):
    agent, log = setup_agent(tmp_path, receiver)
    agent.start()
    append(log, "boom 0")
    assert wait_len(lambda: receiver.escalations(pattern="boom"), 1)
    holder = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process sits on the database
    try:
        append(log, *(f"boom {n}" for n in range(1, 20)))
        # the reader waits 10 s for a lock (busy_timeout), then reports and holds the pass
        # (the sender may say "database is locked" first: the reader's own words, then)
        assert wait_for(lambda: agent.saw("cannot write the state database"), 30), agent.log()
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert wait_for(lambda: agent.saw("the state database takes writes again"), 30), agent.log()
    assert_once(booms(receiver, 20), [str(n) for n in range(20)])
    assert agent.stop() == 0


def test_a_token_bound_to_one_owner_delivers_its_own_keeps_the_rest_until_rotated(
    tmp_path, receiver
):
    """An agent whose token may report for team-a only: team-a's escalation is stored,
    team-b's is refused (403 naming it) and kept in the spool. A replacement token of the
    same name that allows both, put in the token file and reloaded, delivers it."""
    from agent.receiver.scopes import Scope
    from agent.receiver.store import ReceiverStore
    from tests.helpers import write_config, write_pack

    packs = tmp_path / "packs"
    for team in ("a", "b"):
        write_pack(
            packs,
            f"pack-{team}",
            f"[[pattern]]\nid = 'broke'\nmatch = '''^{team} broke (?P<n>\\d+)'''\n"
            f"key = '{{n}}'\n\n[[pattern.example]]\nline = '{team} broke 1'\n",
            owner=f"team-{team}",
        )
    log = tmp_path / "app.log"
    log.touch()
    config = write_config(tmp_path, [(str(log), None)], packs, receiver)
    store = ReceiverStore(receiver.db)
    bound = store.create_token(Scope.INGEST, "fleet", ("team-a",), ("test-host",))
    (tmp_path / "token").write_text(bound)
    agent = AgentProc(config).start()
    try:
        append(log, "a broke 1", "b broke 2")
        assert wait_len(lambda: receiver.escalations(owner="team-a"), 1)[0]["key"] == "1"
        assert wait_for(lambda: agent.saw("may not report for owner 'team-b'")), agent.log()
        assert spool(config)["queued"] == 1 and receiver.escalations(owner="team-b") == []
        both = store.create_token(Scope.INGEST, "fleet", ("team-a", "team-b"), ("test-host",))
        (tmp_path / "token").write_text(both)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        [b] = wait_len(lambda: receiver.escalations(owner="team-b"), 1, timeout=30)
        assert (b["key"], b["submitted_by"]) == ("2", "fleet")
        assert wait_for(lambda: spool(config)["queued"] == 0)
        store.revoke(next(t["id"] for t in store.tokens() if t["owners"] == ["team-a"]))
        assert agent.stop() == 0
    finally:
        store.close()
        if agent.proc and agent.proc.poll() is None:
            agent.stop()
