"""A pack is code that may run as root: lints, params, ownership and least privilege."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import ConfigErrors
from agent.packs import load_pack
from agent.packset import load_packs
from agent.params import HostParams
from agent.preflight import identities_for
from tests.attack import needs_root
from tests.helpers import agent_with_pack, append, status, wait_for, write_config, write_pack

FIX = {"fix.sh": "#!/bin/sh\n"}

ANCHORED = """\
[pack.params]
roots = ["/srv/a", "/srv/b"]
pid_file = "/run/app.pid"

[[pattern]]
id = "p"
match = '''^ERROR \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+) (?P<note>.*)$'''
article = "articles/a.md"
[pattern.fields]
dir = { type = "path", under = "roots" }
pid = { type = "pid" }
[pattern.remedy]
run = ["scripts/fix.sh", "{dir}", "{pid}", "{param.pid_file}"]

[[pattern.example]]
line = "ERROR [42] /srv/a/x it broke"
"""


def messages(tmp_path: Path, body: str, host: HostParams | None = None) -> list[str]:
    pack = write_pack(tmp_path, "p", body, FIX)
    with pytest.raises(ConfigErrors) as caught:
        load_pack(pack, host=host)
    return [f"{e.key}: {e.message}" for e in caught.value.errors]


def test_a_well_declared_pack_binds_params_and_keeps_only_constrained_fields(tmp_path):
    pack = load_pack(write_pack(tmp_path, "p", ANCHORED, FIX))
    [pattern] = pack.patterns
    remedy = pattern.remedy
    assert remedy is not None
    assert remedy.fields == {"dir", "pid"}  # `note` is captured but reaches no fix
    assert remedy.run[3].expand({}) == "/run/app.pid"
    assert remedy.env["LOGMEND_PARAM_ROOTS"] == "/srv/a\n/srv/b"


def test_the_host_overrides_a_param_and_the_constraint_follows(tmp_path):
    host = HostParams(Path("agent.toml"), {"p": {"roots": ("/data",)}}, {("p", "roots"): 7})
    pack = load_pack(write_pack(tmp_path, "p", ANCHORED, FIX), host=host)
    [constraint] = [c for c in pack.patterns[0].remedy.constraints if c.field == "dir"]  # type: ignore[union-attr]
    assert constraint.under == ("/data",)
    assert constraint.check("/srv/a/x") is not None and constraint.check("/data/x") is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("match = '''^ERROR", "match = '''ERROR"), "must be anchored"),
        (("match = '''^ERROR \\[", "match = '''^.*ERROR \\["), "unbounded wildcard"),
        (("(?P<dir>/\\S+)", "(?P<dir>/.+)"), ""),  # a wildcard *in* a field is its constraint's job
        (('pid = { type = "pid" }\n', ""), "uses {pid}, which has no constraint"),
        (('type = "path", under = "roots"', 'type = "path"'), "a path needs under"),
        (('under = "roots"', 'under = "nope"'), "names param 'nope'"),
        (('pid = { type = "pid" }', 'pid = { type = "pid", under = "roots" }'), "only a field of"),
        (('pid = { type = "pid" }', 'pid = { type = "number" }'), "must be one of"),
        (('pid = { type = "pid" }', "pid = {}"), "needs a type"),
        (('pid = { type = "pid" }', 'pid = { allow = "(" }'), "not a valid regex"),
        (
            ('pid = { type = "pid" }', 'nope = { type = "int" }\npid = { type = "pid" }'),
            "not a named group",
        ),
        (('"{param.pid_file}"', '"{param.roots}"'), "a list: lists reach scripts"),
        (('"{param.pid_file}"', '"{param.nope}"'), "has no param 'nope'"),
        (('roots = ["/srv/a", "/srv/b"]', 'roots = ["srv/a"]'), "not a normal absolute path"),
        (('pid_file = "/run/app.pid"', 'pid_file = "/run/\\napp.pid"'), "control characters"),
        (('pid_file = "/run/app.pid"', "pid_file = 3"), "a string or a list of strings"),
    ],
)
def test_each_lint_names_its_place_and_reason(tmp_path, change, expected):
    old, new = change
    assert old in ANCHORED
    body = ANCHORED.replace(old, new)
    if not expected:
        load_pack(write_pack(tmp_path, "p", body, FIX))  # loads
        return
    found = messages(tmp_path, body)
    assert any(expected in m for m in found), found


@pytest.mark.parametrize(
    "match",
    [
        "(?m)^ERROR \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",  # ^ at any line of an event
        "^ERROR (?P<pid>\\d+)|(?P<dir>/\\S+)",  # one alternative unanchored
        "^ERROR \\[(?=.*(?P<pid>\\d+))",  # a lookahead's wildcard
        "^ERROR [\\s\\S]*\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
        "^ERROR (.)*\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
        "^ERROR .{0,100000}\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
        "^ERROR (?>.*)\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
        "^ERROR \\p{L}+ \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",  # the lint cannot read it
        "^ERROR [^\\x00]*\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",  # a negated set is loose too
        "^ERROR \\D*\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
        "^ERROR .{0,255}\\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",  # 255 holds a forged field
        # `note` is captured before the fields and its .* comes before `dir`
        "^ERROR (?P<note>.*) \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
    ],
)
def test_ways_round_the_anchoring_lint_are_refused(tmp_path, match):
    body = ANCHORED.replace(
        "match = '''^ERROR \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+) (?P<note>.*)$'''",
        f"match = '''{match}'''",
    )
    assert match in body
    found = messages(tmp_path, body)
    assert any(m.startswith("pattern[0].match: ") for m in found), found


@pytest.mark.parametrize(
    "match",
    [
        "^ERROR \\S+ \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",  # \\S cannot cross a space
        "^ERROR [^ ]* \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
        "^ERROR \\w{1,64} \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+)",
    ],
)
def test_classes_that_cannot_cross_a_space_are_not_loose(tmp_path, match):
    body = ANCHORED.replace(
        "match = '''^ERROR \\[(?P<pid>\\d+)\\] (?P<dir>/\\S+) (?P<note>.*)$'''",
        f"match = '''{match}'''",
    ).replace('line = "ERROR [42] /srv/a/x it broke"', 'line = "ERROR web [42] /srv/a/x"')
    assert match in body
    load_pack(write_pack(tmp_path, "p", body, FIX))


def test_a_field_declared_for_the_env_only_is_protected_by_the_lint_too(tmp_path):
    """Every declared field reaches the fix's environment, so the lint guards them all."""
    body = ANCHORED.replace("(?P<pid>\\d+)\\] (?P<dir>", "(?P<pid>\\d+)\\] .* (?P<dir>")
    body = body.replace('"{dir}", "{pid}", ', '"{pid}", ')
    assert "] .* (?P<dir>" in body and '"{dir}"' not in body
    assert any("unbounded wildcard" in m for m in messages(tmp_path, body))


def test_host_params_that_the_pack_does_not_declare_are_errors_in_the_config(tmp_path):
    config = tmp_path / "agent.toml"
    host = HostParams(
        config,
        {"p": {"rots": ("/x",), "pid_file": ("/a", "/b")}, "ghost": {"x": "y"}},
        {("p", "rots"): 4, ("p", "pid_file"): 5, ("ghost", "x"): 9},
    )
    write_pack(tmp_path / "packs", "p", ANCHORED, FIX)
    with pytest.raises(ConfigErrors) as caught:
        load_packs((tmp_path / "packs",), host=host)
    found = {(e.file, e.key, e.line): e.message for e in caught.value.errors}
    assert "has no param 'rots'" in found[(str(config), "params.p.rots", 4)]
    assert "must be a string" in found[(str(config), "params.p.pid_file", 5)]
    assert "no such pack" in found[(str(config), "params.ghost", 9)]


def test_a_source_must_name_its_packs(tmp_path):
    config = write_config(tmp_path, [(str(tmp_path / "a.log"), None)], tmp_path)
    config.write_text(config.read_text().replace('packs = "*"\n', ""))
    with pytest.raises(ConfigErrors) as caught:
        load_config(config)
    assert 'is required: name the packs for these files ("*": every pack)' in str(caught.value)
    config.write_text(config.read_text().replace("[limits]", 'packs = ["*", "x"]\n[limits]'))
    with pytest.raises(ConfigErrors, match="stands alone"):
        load_config(config)


# -- ownership of everything that chooses what root runs -------------------------------


def test_a_pack_toml_anyone_can_write_is_refused(tmp_path):
    pack = write_pack(tmp_path, "p", ANCHORED, FIX)
    (pack / "pack.toml").chmod(0o666)
    with pytest.raises(ConfigErrors, match=r"pack.toml is writable by group or others"):
        load_pack(pack)
    load_pack(pack, trust=False)  # `logmend test` runs no fix: it can prove any checkout


def test_a_writable_folder_anywhere_above_the_pack_is_refused(tmp_path):
    shared = tmp_path / "shared"
    pack = write_pack(shared / "deeper", "p", ANCHORED, FIX)
    shared.chmod(0o777)  # no sticky bit: anyone could swap `deeper` for their own
    with pytest.raises(ConfigErrors, match=r"shared is writable by group or others"):
        load_pack(pack)
    shared.chmod(0o1777)  # sticky but owned by this user, not root
    if os.geteuid() != 0:
        with pytest.raises(ConfigErrors):
            load_pack(pack)
    shared.chmod(0o755)
    (pack / "scripts").chmod(0o775)
    with pytest.raises(ConfigErrors, match=r"scripts is writable by group or others"):
        load_pack(pack)


@needs_root
def test_a_pack_toml_owned_by_another_user_is_refused(tmp_path):
    pack = write_pack(tmp_path, "p", ANCHORED, FIX)
    nobody = pwd.getpwnam("nobody")
    os.chown(pack / "pack.toml", nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigErrors, match="is owned by uid"):
        load_pack(pack)


# -- least privilege --------------------------------------------------------------------

WHOAMI = """\
[[pattern]]
id = "who"
match = '''^whoami (?P<tag>[a-z]+)$'''
article = "articles/a.md"
escalate = "never"
fields = { tag = { type = "word" } }
[pattern.remedy]
run = ["scripts/who.sh", "{tag}"]
attempts = 1

[[pattern.example]]
line = "whoami one"
"""


def ask_for_root(pack: Path) -> None:
    text = (pack / "pack.toml").read_text()
    (pack / "pack.toml").write_text(text.replace("\n\n", '\nuser = "root"\n\n', 1))


WHO_SCRIPT = '#!/bin/sh\nid -u > "$LOGMEND_PARAM_OUT/$1"\n'
FIX_WHO = {"who.sh": WHO_SCRIPT}


@needs_root
@pytest.mark.parametrize(
    ("allow", "expected"), [("", "nobody"), ('allow_root = ["ops"]\n', "root")]
)
def test_root_only_when_the_pack_asks_and_the_host_allows(allow, expected):
    # the fix writes into a folder anyone can write to, so it can report any uid
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        tmp.chmod(0o755)  # nobody must reach the pack's scripts, as under /etc/logmend
        out = tmp / "out"
        out.mkdir()
        out.chmod(0o1777)
        body = f'[pack.params]\nout = "{out}"\n\n' + WHOAMI
        agent, log = agent_with_pack(tmp, body, {"who.sh": WHO_SCRIPT}, agent_extra=allow)
        ask_for_root(tmp / "packs" / "ops")
        agent.start()
        try:
            append(log, "whoami one")
            # the shell makes the file before it writes the uid: wait for the uid
            written = lambda: (out / "one").exists() and (out / "one").read_text().strip()  # noqa: E731
            assert wait_for(written, 15), status(agent.config)["recent"]
            uid = int((out / "one").read_text())
        finally:
            agent.stop()
        assert uid == pwd.getpwnam(expected).pw_uid
        if not allow:
            assert agent.saw("pack ops asks to run its fixes as root") == 1
        shutil.rmtree(tmp, ignore_errors=True)


def identities(tmp: Path, agent_extra: str, pack_head: str = "") -> dict[str, Any]:
    """Who pack "ops" (WHOAMI, plus `pack_head` in its [pack]) runs as under this config."""
    pack = write_pack(tmp / "packs", "ops", "[pack.params]\nout = '/'\n" + WHOAMI, FIX_WHO)
    text = (pack / "pack.toml").read_text()
    (pack / "pack.toml").write_text(text.replace("\n\n", f"\n{pack_head}\n", 1))
    config = write_config(
        tmp, [(str(tmp / "a.log"), ["ops"])], tmp / "packs", agent_extra=agent_extra
    )
    loaded = load_config(config)
    return identities_for(loaded, load_packs(loaded.packs, host=loaded.params))


def test_fix_user_root_is_refused(tmp_path):
    with pytest.raises(ConfigErrors, match="must not be root"):
        identities(tmp_path, 'fix_user = "root"\n')


def test_allow_root_naming_no_pack_is_an_error(tmp_path):
    with pytest.raises(ConfigErrors, match="allow_root: no pack 'opps'"):
        identities(tmp_path, 'allow_root = ["opps"]\n')


@needs_root
@pytest.mark.parametrize("group", ["root", "shadow", "disk"])
def test_a_group_the_pack_chooses_needs_the_hosts_consent_too(tmp_path, group):
    for allow, expected in (("", "nogroup"), ('allow_root = ["ops"]\n', group)):
        who = identities(tmp_path / allow[:5], allow, f'group = "{group}"\n')["ops"]
        assert who is not None and who.describe() == f"nobody:{expected}", allow


def test_allow_regexes_are_ascii(tmp_path):
    body = ANCHORED.replace('pid = { type = "pid" }', "pid = { allow = '''\\d+''' }")
    [constraint] = [
        c
        for c in load_pack(write_pack(tmp_path, "p", body, FIX)).patterns[0].remedy.constraints  # type: ignore[union-attr]
        if c.field == "pid"
    ]
    assert constraint.check("42") is None
    assert constraint.check("\u0664\u0662") is not None  # Arabic-Indic digits


@needs_root
def test_a_pack_linked_from_a_folder_others_can_change_is_refused(tmp_path):
    """Whoever may change the folder holding a symlink to a pack may swap the pack."""
    real = write_pack(tmp_path / "real", "ops", ANCHORED, FIX)
    packs = tmp_path / "packs.d"
    packs.mkdir()
    (packs / "ops").symlink_to(real)
    assert load_pack(packs / "ops").dir == real  # fixes run from what was checked
    nobody = pwd.getpwnam("nobody")
    os.chown(packs, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigErrors, match=r"packs.d is owned by uid"):
        load_pack(packs / "ops")


def test_a_pack_toml_that_is_a_symlink_is_refused(tmp_path):
    pack = write_pack(tmp_path, "ops", ANCHORED, FIX)
    (pack / "pack.toml").rename(tmp_path / "elsewhere.toml")
    (pack / "pack.toml").symlink_to(tmp_path / "elsewhere.toml")
    with pytest.raises(ConfigErrors, match=r"pack.toml is a symbolic link"):
        load_pack(pack)
