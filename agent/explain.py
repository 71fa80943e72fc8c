"""`logmend explain`: what a log line means and what the agent would do about it.

The self-service half of tier 1: anyone who meets an error can ask the same
table of known errors the agent uses. For each pattern that matches a line it
says the fields and key, the severity and escalation policy, the threshold,
the fix and verify argv exactly as they would run (or why they would not: a
field its constraint refuses, the key cooling down, the fix budget spent) and
the knowledge article. Nothing runs; the state database is only read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.constraints import check_fields
from agent.match import Matcher
from agent.packs import Pack, Pattern
from agent.remedy import Identity, expand_argv
from agent.trigger import fingerprint_of


@dataclass(frozen=True, slots=True)
class History:
    """What the agent's state says about fingerprints: cooldowns and recent fix runs."""

    cooling: Mapping[str, float]  # fingerprint -> until
    runs: Mapping[str, list[float]]  # fingerprint -> fix starts

    @classmethod
    def read(cls, db: Path, now: float) -> History:
        """Read-only (a missing or unreadable database is an OSError or sqlite3.Error)."""
        if not db.is_file():
            raise FileNotFoundError(f"no state database at {db}")
        # a URI, percent-encoded: a ? # or % in the path is part of its name
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=2)
        try:
            cooling = dict(
                conn.execute("SELECT fingerprint, until FROM cooldowns WHERE until > ?", (now,))
            )
            runs: dict[str, list[float]] = {}
            for fp, started in conn.execute("SELECT fingerprint, started FROM fix_runs"):
                runs.setdefault(fp, []).append(started)
        finally:
            conn.close()
        return cls(cooling, runs)


def explain_line(
    line: str,
    matcher: Matcher,
    packs: Mapping[str, Pack],
    now: float,
    history: History | None = None,
    identities: Mapping[str, Identity | None] | None = None,
) -> dict[str, Any]:
    """One line, explained: {"line": ..., "matches": [...]} (see docs/packs.md)."""
    matches = []
    for pattern, fields in matcher.match(line):
        pack = packs[pattern.pack]
        key = pattern.key.expand(fields)
        who = (identities or {}).get(pack.name)
        matches.append(
            {
                "pack": pack.name,
                "pattern": pattern.id,
                "owner": pack.owner,
                "fields": fields,
                "key": key,
                "severity": pattern.severity,
                "escalate": pattern.escalate,
                "when": {"count": pattern.count, "within": pattern.within},
                "remedy": _remedy(pattern, pack, fields, key, now, history, who),
                "article": pattern.article or "",
                "article_text": pattern.article_text,
            }
        )
    return {"line": line, "matches": matches}


def _remedy(
    pattern: Pattern,
    pack: Pack,
    fields: dict[str, str],
    key: str,
    now: float,
    history: History | None,
    who: Identity | None,
) -> dict[str, Any] | None:
    remedy = pattern.remedy
    if remedy is None:
        return None
    allowed = {name: value for name, value in fields.items() if name in remedy.fields}
    out: dict[str, Any] = {
        "run": None,
        "verify": None,
        "runs_as": who.describe() if who is not None else "",
        "would_run": True,
        "why_not": "",
    }
    refused = check_fields(remedy.constraints, allowed)
    if refused is not None:
        out.update(would_run=False, why_not=f"a field is refused: {refused}")
        return out
    out["run"] = expand_argv(remedy.run, allowed, pack.dir)
    if remedy.verify is not None:
        out["verify"] = expand_argv(remedy.verify, allowed, pack.dir)
    if history is None:
        return out
    fp = fingerprint_of(pattern.pack, pattern.id, key)
    until = history.cooling.get(fp)
    recent = [t for t in history.runs.get(fp, []) if t > now - remedy.budget.within]
    if until is not None:
        out.update(would_run=False, why_not=f"the key is cooling down for {until - now:.0f}s more")
    elif len(recent) >= remedy.budget.runs:
        out.update(
            would_run=False,
            why_not=f"over its fix budget: {len(recent)} run(s) in the last "
            f"{remedy.budget.within:g}s (escalated as flapping instead)",
        )
    return out


def print_explained(explained: dict[str, Any], out: Any) -> None:
    """The text form: one block per line, one entry per matching pattern."""
    print(f"{explained['line']!r}", file=out)
    if not explained["matches"]:
        print("  no pattern knows this line", file=out)
    for m in explained["matches"]:
        print(
            f"  {m['pack']}/{m['pattern']} (owner {m['owner']}): severity {m['severity']},"
            f" escalate {m['escalate']}",
            file=out,
        )
        print(f"    fields: {m['fields']}", file=out)
        print(f"    key: {m['key']!r}", file=out)
        when = m["when"]
        if when["count"] > 1:
            print(
                f"    opens an incident at {when['count']} matches within {when['within']:g}s",
                file=out,
            )
        remedy = m["remedy"]
        if remedy is None:
            told = "recorded only" if m["escalate"] == "never" else "the owner is told"
            print(f"    fix: none ({told})", file=out)
        else:
            if remedy["run"] is not None:
                runs_as = f"  (as {remedy['runs_as']})" if remedy["runs_as"] else ""
                print(f"    fix: {remedy['run']}{runs_as}", file=out)
            if remedy["verify"] is not None:
                print(f"    verify: {remedy['verify']}", file=out)
            if not remedy["would_run"]:
                print(f"    would not run now: {remedy['why_not']}", file=out)
        if m["article"]:
            print(f"    article: {m['article']}", file=out)
        for text in m["article_text"].strip().splitlines()[:40]:
            print(f"      {text}", file=out)
