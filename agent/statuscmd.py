"""`logmend status`: what the state file says of this host, for people and (--json)
tools: the spool, reloads, broken and synced packs with their versions and params,
incidents, cooldowns, fixes, and the errors no pack knows yet."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from agent.cli import _load_config, escape_controls, local_time
from agent.config import Config
from agent.packset import load_packs_apart
from agent.policy import Outcome


def show_status(args: argparse.Namespace) -> int:
    from agent.state import Store

    config = _load_config(args.config)
    if not config.state_db.exists():
        print(f"no state yet at {config.state_db}")
        return 0
    store = Store(config.state_db)
    spool = store.spool_summary()
    open_incidents = store.open_incidents()
    recent = store.recent_incidents(args.limit)
    fixes = store.recent_fixes(args.limit)
    cooling = store.cooling(time.time())
    reload_meta = store.meta("last_reload")
    last_reload = json.loads(reload_meta) if reload_meta else None
    broken = json.loads(store.meta("broken_packs") or "[]")
    synced = json.loads(store.meta("pack_sync") or "null")
    running = json.loads(store.meta("packs") or "{}")
    params = json.loads(store.meta("params") or "{}")
    unknown = _unknown_of(store)
    journals = json.loads(store.meta("journals") or "{}")
    articles = _articles_of(config)

    def shown(incident: Any) -> dict[str, Any]:
        return {**asdict(incident), "article": articles.get((incident.pack, incident.pattern))}

    if args.json:
        json.dump(
            {
                "spool": spool,
                "open": [shown(i) for i in open_incidents],
                "recent": [shown(i) for i in recent],
                "fixes": [shown(i) for i in fixes],
                "patterns": store.pattern_stats(),
                "cooldowns": cooling,
                "last_reload": last_reload,
                "broken_packs": broken,
                "pack_sync": synced,
                "packs": running,
                "params": params,
                "unknown": unknown,
                "journals": journals,
            },
            sys.stdout,
            default=str,
        )
        print()
        return 0
    print(
        f"spool: {spool['queued']} queued, {spool['parked']} parked"
        + (f" (last error: {spool['parked_error']})" if spool["parked"] else "")
    )
    if last_reload is not None:
        if last_reload["ok"]:
            print(f"last reload: {local_time(last_reload['at'])}, ok")
        else:
            when = local_time(last_reload["at"])
            print(f"last reload: {when}, REFUSED (the previous set still runs):")
            for error in last_reload["errors"]:
                print(f"  {error}")
    if broken:
        print(f"broken packs: {len(broken)} (they do not run; every other pack does)")
        for pack in broken:
            owner = f" (owner {pack['owner']})" if pack["owner"] else ""
            more = len(pack["errors"]) - 1
            said = f"  {pack['pack']}{owner} in {pack['dir']}: {pack['errors'][0]}"
            print(escape_controls(said))  # a folder's name may hold anything
            if more:
                print(escape_controls(f"    and {more} more: logmend check {pack['dir']}"))
    if running:
        print("packs: " + ", ".join(f"{name} {version}" for name, version in running.items()))
    for pack, values in params.items():  # the host facts its fixes act on
        facts = ", ".join(f"{k}={v!r}" for k, v in values.items())
        print(escape_controls(f"  {pack} params: {facts}"))
    if synced is not None:
        _print_sync(synced)
    if journals:
        _print_journals(journals)
    if unknown:
        print(f"errors no pack knows yet: {len(unknown)} template(s), most seen first")
        for row in unknown[:10]:
            owner = f" [{row['owner']}]" if row["owner"] else ""
            print(escape_controls(f"  {row['count']:>7}  {row['template']}{owner}"))
    print(f"open incidents: {len(open_incidents)}")
    for i in open_incidents:
        print(
            f"  {i.pack}/{i.pattern} key={i.key!r} {i.status} count={i.count}"
            f" since {local_time(i.first_seen)}"
        )
        _print_article(articles, i)
    print(f"in cooldown: {len(cooling)}")
    for row in cooling:
        flapping = row["outcome"] == Outcome.FLAPPING
        why = "OVER BUDGET (flapping)" if flapping else row["outcome"] or "-"
        print(
            f"  {row['pack']}/{row['pattern']} key={row['key']!r} until {local_time(row['until'])}:"
            f" {why}, {row['count']} line(s)"
        )
    print("recent fixes:")
    for i in fixes:
        print(f"  {local_time(i.last_seen)} {i.pack}/{i.pattern} key={i.key!r} {_how_it_went(i)}")
        _print_article(articles, i)
    stats = store.pattern_stats()
    if stats:
        print("patterns by regex time (matches, lines confirmed, timeouts, seconds):")
        for row in stats[:10]:
            flag = "  QUARANTINED" if row["quarantined"] else ""
            print(
                f"  {row['pack']}/{row['pattern']}: {row['matches']}  {row['confirms']}  "
                f"{row['timeouts']}  {row['seconds']:.6f}s{flag}"
            )
    print("recent incidents:")
    for i in recent:
        print(f"  {local_time(i.last_seen)} {i.pack}/{i.pattern} key={i.key!r} {_how_it_went(i)}")
    return 0


def _articles_of(config: Config) -> dict[tuple[str, str], str]:
    """(pack, pattern) -> its article, from the packs as they are on disk now; status
    shows what it can when a pack cannot be read (it is then only without articles)."""
    try:
        packs, _ = load_packs_apart(config.pack_roots, trust=False, host=config.params)
    except Exception:  # status reports the state; the packs are check's business
        return {}
    return {(p.pack, p.id): p.article for pack in packs for p in pack.patterns if p.article}


def _print_article(articles: dict[tuple[str, str], str], incident: Any) -> None:
    article = articles.get((incident.pack, incident.pattern))
    if article:
        pack_dir = "" if "://" in article else " (in the pack's folder)"
        print(escape_controls(f"    article: {article}{pack_dir}"))


def _how_it_went(incident: Any) -> str:
    """One wording for an incident wherever `status` lists it: its status, the outcome
    where it says more, the fix's tries (verify runs not counted) and its lines."""
    tries = sum(a.get("phase") == "fix" for a in incident.attempts)
    outcome = incident.outcome if incident.outcome not in (None, "", incident.status) else ""
    return (
        f"{incident.status}{f' ({outcome})' if outcome else ''}, "
        f"{tries} {'try' if tries == 1 else 'tries'}, {incident.count} line(s)"
    )


def _unknown_of(store: Any) -> list[dict[str, Any]]:
    """The templates of unmatched error lines (agent.unknown), most seen first."""
    rows = []
    for owner, _, tokens, count, first, last, samples in store.unknown_templates():
        rows.append(
            {"owner": owner, "template": " ".join(json.loads(tokens)), "count": count,
             "first_seen": first, "last_seen": last, "samples": json.loads(samples)}
        )  # fmt: skip
    rows.sort(key=lambda r: (-r["count"], r["owner"], r["template"]))
    return rows


def _print_sync(synced: dict[str, Any]) -> None:
    """The last pack sync: when, what it installed or refused, or why it could not ask."""
    state = (
        f"FAILED ({synced['failed']}); the packs here keep running" if synced["failed"] else "ok"
    )
    print(f"last pack sync: {local_time(synced['at'])}, {state}")
    for line in synced["installed"]:
        print(f"  installed {line}")
    for refused in synced["refused"]:
        said = f"  REFUSED {refused['pack']} {refused['version']}: {refused['reason']}"
        print(escape_controls(said))


def _print_journals(journals: dict[str, Any]) -> None:
    """Each journal source as its last stats flush saw it."""
    at = journals.pop("at", None)
    print(f"journal sources (as of {local_time(at) if at else '?'}):")
    for name, s in journals.items():
        said = [
            "running" if s["running"] else "NOT RUNNING",
            f"{s['entries']} entries ({s['bytes']} bytes) read",
        ]
        if s["restarts"]:
            said.append(f"journalctl restarted {s['restarts']} time(s), last: {s['last_error']}")
        elif s["last_error"]:
            said.append(f"last error: {s['last_error']}")
        if s["lost"] or s["resumed_oldest"]:
            said.append(
                f"{s['lost']} entries lost to vacuuming (resumed at the oldest"
                f" {s['resumed_oldest']} time(s))"
            )
        if s["garbage"]:
            said.append(f"{s['garbage']} binary or oversized")
        if s["held"]:
            said.append(f"{s['held']} multiline event(s) held")
        print(escape_controls(f"  {name}: " + "; ".join(said)))
