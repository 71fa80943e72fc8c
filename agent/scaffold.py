"""`logmend pack new NAME`: a pack folder that passes `logmend test` from its first minute.

One commented pattern with its examples (one it must match, one look-alike it
must not), its article, a fix script stub that changes nothing, and a CI
snippet that proves the pack on every change. The team edits from there.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import LogmendError
from agent.packs import NAME

PACK_TOML = """\
# The errors of {name} that logmend knows, and what to do about each.
# Reference: docs/packs.md. Prove it after every change: logmend test {name}
[pack]
name = "{name}"
version = "0.1.0"
owner = "{owner}"          # the team that receives this pack's escalations

# One [[pattern]] per known error. Named groups of `match` become fields.
[[pattern]]
id = "example-error"
match = '''^ERROR example failure in (?P<component>[a-z]+)$'''
key = "{{component}}"        # one incident per component at a time
severity = "error"
escalate = "unresolved"    # the owner hears of it when there is no fix, or it failed
article = "articles/example-error.md"

# The fix, when scripts/fix.sh does something real. Every field a fix uses needs a
# constraint: whoever can make the program log text chooses the field.
# [pattern.fields]
# component = {{ type = "word" }}
# [pattern.remedy]
# run = ["scripts/fix.sh", "{{component}}"]
# attempts = 2

[[pattern.example]]
line = "ERROR example failure in cache"
fields = {{ component = "cache" }}

[[pattern.example]]          # a look-alike it must not match
line = "ERROR example failure in Cache!"
matches = false
"""

ARTICLE = """\
# Example failure in a component

What the user sees, what it means, and what to do about it: the agent sends
this text with every escalation of the pattern, and `logmend explain` shows it
to anyone who asks about the line.
"""

FIX_SCRIPT = """\
#!/bin/sh
# A fix: idempotent, quick, and acting only on what its arguments name (each one a
# field the pack's constraints checked). It runs with no shell around it, as the
# pack's user. This stub changes nothing.
set -eu
component="$1"
echo "would mend $component"
"""

CI_SNIPPET = """\
# Prove the pack on every change (GitHub Actions; any CI runs the same commands).
name: logmend pack {name}
on: [push, pull_request]
jobs:
  prove:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - run: pip install logmend
      - run: logmend test {name}
      - run: logmend check {name}
      - run: logmend pack build {name} -o {name}.lmpack
      # with the team's key in the CI's secrets (logmend pack keygen, docs/packs.md):
      # - run: logmend pack sign {name}.lmpack --key "$RUNNER_TEMP/team.key"
"""


def new_pack(name: str, where: Path, owner: str) -> Path:
    """Write the pack folder `where/name`; refuses a name that is not a plain name or a
    folder that is already there (nothing is overwritten)."""
    for what, value in (("name", name), ("owner", owner)):
        if not NAME.fullmatch(value):
            raise LogmendError(
                f"pack new: {what} {value!r} is not a plain name (letters, digits and . _ @ + -,"
                " starting with a letter or digit)"
            )
    folder = where / name
    if os.path.lexists(folder):  # a dangling symlink is there too
        raise LogmendError(f"pack new: {folder} is already there; nothing was written")
    try:
        folder.mkdir()  # not parents: --dir must be a folder that is there
        (folder / "articles").mkdir()
        (folder / "scripts").mkdir()
        (folder / "ci").mkdir()
    except OSError as exc:
        raise LogmendError(f"pack new: cannot make {folder}: {exc.strerror}") from None
    (folder / "pack.toml").write_text(PACK_TOML.format(name=name, owner=owner))
    (folder / "articles" / "example-error.md").write_text(ARTICLE)
    script = folder / "scripts" / "fix.sh"
    script.write_text(FIX_SCRIPT)
    script.chmod(0o755)
    (folder / "ci" / "logmend.yml").write_text(CI_SNIPPET.format(name=name))
    return folder
