"""Every kind of bad config input gets an error naming file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config, parse_config
from agent.errors import ConfigErrors

GOOD = """\
[agent]
host = "web-01"
state_dir = "/var/lib/logmend"
packs = ["/etc/logmend/packs.d"]

[[source]]
path = "/var/log/nginx/*.log"
packs = ["nginx"]
start = "end"

[escalation]
url = "https://escalations.example.com/v1/escalations"
token_file = "/etc/logmend/token"
"""


def errors_of(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigErrors) as caught:
        parse_config(Path("/etc/logmend/agent.toml"), text)
    for error in caught.value.errors:
        assert error.file == "/etc/logmend/agent.toml"
    return [(e.key, e.line, e.message) for e in caught.value.errors]


def test_the_design_sketch_parses():
    config = parse_config(Path("/etc/logmend/agent.toml"), GOOD)
    assert config.host == "web-01"
    assert config.state_db == Path("/var/lib/logmend/state.db")
    assert config.packs == (Path("/etc/logmend/packs.d"),)
    assert config.sources[0].packs == ("nginx",) and config.sources[0].start == "end"
    assert config.escalation is not None
    assert config.escalation.token_file == Path("/etc/logmend/token")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    file = tmp_path / "agent.toml"
    file.write_text(
        '[agent]\nstate_dir = "state"\npacks = "packs"\n[[source]]\npath = "/x.log"\npacks = "*"\n'
    )
    config = load_config(file)
    assert config.state_dir == tmp_path / "state"
    assert config.packs == (tmp_path / "packs",)


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        (GOOD + "bogus = 1\n", "escalation.bogus", 14, "unknown key"),
        (GOOD.replace('host = "web-01"', "host = 7"), "agent.host", 2, "must be a string"),
        (GOOD.replace('start = "end"', 'start = "middle"'), "source[0].start", 9, "must be one of"),
        (GOOD.replace('packs = ["nginx"]', "packs = [1]"), "source[0].packs", 8, "list of strings"),
        (GOOD.replace('"/var/log/nginx/*.log"', '"rel/*.log"'), "source[0].path", 7, "absolute"),
        (GOOD.replace('"https://escalations', '"ftp://escalations'), "escalation.url", 12, "http"),
        (GOOD + '[limits]\nregex_timeout = "soon"\n', "limits.regex_timeout", 15, "duration"),
        (
            GOOD + "[limits]\nmax_concurrent_fixes = 0\n",
            "limits.max_concurrent_fixes",
            15,
            "at least 1",
        ),
        (GOOD + '[[source]]\nstart = "end"\n', "source[1].path", 14, "is required"),
        (GOOD + "[surprise]\n", "surprise", 14, "unknown key"),
        ('limits = "big"\n' + GOOD, "limits", 1, "must be a table"),
        (GOOD.replace("[[source]]", "[source]"), "source", 6, "array of tables"),
    ],
)
def test_bad_input_names_key_and_line(text, key, line, message):
    errors = errors_of(text)
    assert any(k == key and ln == line and message.lower() in m.lower() for k, ln, m in errors), (
        errors
    )


def test_no_source_at_all_is_an_error():
    assert errors_of('[agent]\nhost = "x"\n') == [
        ("source", None, "at least one [[source]] is needed")
    ]


def test_toml_syntax_error_names_the_line():
    [(_, line, message)] = errors_of('[agent]\nhost = "x\n')
    assert line == 2 and "line 2" in message


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigErrors) as caught:
        load_config(tmp_path / "missing.toml")
    assert "cannot read" in str(caught.value) and "missing.toml" in str(caught.value)


def test_all_errors_are_reported_at_once():
    text = GOOD.replace('host = "web-01"', "host = 7").replace('start = "end"', 'start = "x"')
    assert len(errors_of(text)) == 2


def test_cli_check_exits_1_and_prints_file_key_line(tmp_path, capsys):
    from agent.cli import main

    file = tmp_path / "agent.toml"
    file.write_text(GOOD.replace('start = "end"', 'start = "middle"'))
    assert main(["check", "-c", str(file)]) == 1
    err = capsys.readouterr().err
    assert f"{file}:9: source[0].start: must be one of end, beginning" in err


def test_check_names_a_missing_pack_folder_and_an_unreadable_token(tmp_path, capsys):
    from agent.cli import main

    file = tmp_path / "agent.toml"
    file.write_text('[agent]\npacks = ["nope"]\n[[source]]\npath = "/x.log"\npacks = "*"\n')
    assert main(["check", "-c", str(file)]) == 1
    assert f"{tmp_path / 'nope'}: no such pack folder" in capsys.readouterr().err
    file.write_text(
        '[[source]]\npath = "/x.log"\npacks = "*"\n[escalation]\nurl = "http://127.0.0.1:9/"\n'
        'token_file = "token"\n'
    )
    assert main(["check", "-c", str(file)]) == 1
    assert "escalation.token_file: cannot read" in capsys.readouterr().err
    (tmp_path / "token").write_text("\n")
    assert main(["check", "-c", str(file)]) == 1
    assert "escalation.token_file: the file is empty" in capsys.readouterr().err
    (tmp_path / "token").write_text("secret\n")
    (tmp_path / "token").chmod(0o644)  # a secret others can read: check refuses it
    assert main(["check", "-c", str(file)]) == 1
    assert "the token is readable by others (mode 644): chmod 600" in capsys.readouterr().err
    (tmp_path / "token").chmod(0o600)
    assert main(["check", "-c", str(file)]) == 0
