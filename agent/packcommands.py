"""The `logmend` commands for pack authors and anyone who meets an error: `pack new`,
`pack publish` and `explain`; their modules are imported when one runs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import ConfigErrors, LogmendError
from agent.packs import Pack
from agent.packset import find_pack_dirs, load_packs, load_packs_apart


def add_pack_commands(sub: argparse._SubParsersAction[Any]) -> None:
    explain = sub.add_parser(
        "explain",
        help="what a log line means and what the agent would do about it",
        description="logmend explain (-c CONFIG | PACK_DIR...) [LINE...]: every pattern that"
        " matches each line, its fields, key, severity, escalation, the fix and verify as they"
        " would run (or why not) and the article. Lines from standard input when none given.",
    )
    explain.add_argument(
        "-c", "--config", type=Path, help="an agent config: its packs, params and state"
    )
    explain.add_argument(
        "words",
        nargs="*",
        metavar="PACK_DIR|LINE",
        help="without -c: pack folders first, then lines; with -c: lines",
    )
    explain.add_argument("--json", action="store_true", help="one JSON document on stdout")
    explain.set_defaults(func=cmd_explain)

    found = sub.add_parser(
        "discover",
        help="group a log's error lines into templates: what a pack could learn to know",
        description="logmend discover --log FILE... [--all] [--json]: the lines that look like"
        " errors (error words, without regard to case), their variable parts masked, grouped"
        " into templates with counts, line numbers and redacted samples, most frequent first",
    )
    found.add_argument(
        "--log", type=Path, action="append", required=True, metavar="FILE", help="a log (repeat)"
    )
    found.add_argument("--all", action="store_true", help="every line, not only error lines")
    found.add_argument(
        "--word",
        action="append",
        metavar="WORD",
        help="an error word instead of the built-in ones (repeat)",
    )
    found.add_argument(
        "--top", type=int, default=50, help="templates shown (text only; default 50)"
    )
    found.add_argument(
        "--draft",
        action="store_true",
        help="print a [[pattern]] block (anchored regex, samples as examples) for each of the"
        " --top templates, for a pack.toml; logmend test proves them as printed",
    )
    found.add_argument(
        "--json",
        action="store_true",
        help='{"templates": [{"template", "count", "lines", "samples"}]}, every template',
    )
    found.set_defaults(func=cmd_discover)

    pack = sub.add_parser("pack", help="write packs")
    pack_sub = pack.add_subparsers(dest="pack_command", required=True)
    new = pack_sub.add_parser(
        "new",
        help="scaffold a pack that passes `logmend test` at once",
        description="logmend pack new NAME --owner TEAM: a folder NAME with pack.toml (one"
        " commented pattern and its examples), an article, a fix script stub that changes"
        " nothing and a CI snippet (ci/logmend.yml) that runs logmend test and check",
    )
    new.add_argument("name", metavar="NAME", help="the pack's name (and its folder's)")
    new.add_argument("--owner", required=True, help="the team that receives the pack's escalations")
    new.add_argument(
        "--dir", type=Path, default=Path("."), help="where to make the folder (default: here)"
    )
    new.set_defaults(func=cmd_pack_new)
    publish = pack_sub.add_parser(
        "publish",
        help="send signed bundles (hosts sync them) or packs' articles to the receiver",
        description="logmend pack publish FILE.lmpack... --url URL --token-file F [--percent N]:"
        " signed bundles, current for every host or for N%% of them (a rollback is publishing"
        " the earlier bundle again); logmend pack publish PACK_DIR...: the packs' articles,"
        " searchable by error text",
    )
    publish.add_argument(
        "packs", nargs="+", type=Path, metavar="FILE|PACK_DIR", help="bundles, or pack folders"
    )
    publish.add_argument(
        "--percent",
        type=int,
        default=100,
        help="bundles: the share of hosts that take it (stable per host); 100: all (default)",
    )
    publish.add_argument("--url", required=True, help="the receiver, e.g. https://logmend.example")
    publish.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="a file holding a write token of the pack's team",
    )
    publish.set_defaults(func=cmd_pack_publish)
    build = pack_sub.add_parser(
        "build",
        help="prove a pack and write its bundle (to sign, publish and sync)",
        description="logmend pack build DIR -o FILE: the pack must load (lint included) and"
        " every example must hold; the bundle holds a manifest (name, version, owner, each"
        " file's SHA-256, the oldest agent it runs on) and the files. The same pack gives the"
        " same bytes.",
    )
    build.add_argument("dir", type=Path, metavar="DIR", help="the pack folder (with pack.toml)")
    build.add_argument("-o", "--output", type=Path, required=True, help="the bundle to write")
    build.add_argument(
        "--min-agent",
        default=__version__,
        metavar="VERSION",
        help=f"the oldest logmend that may run it (default: this one, {__version__})",
    )
    build.set_defaults(func=cmd_pack_build)
    keygen = pack_sub.add_parser(
        "keygen",
        help="make a team's Ed25519 signing key: PREFIX.key (secret) and PREFIX.pub",
        description="logmend pack keygen --owner TEAM -o PREFIX: PREFIX.key (mode 0600, keep"
        " it secret, e.g. in CI's secrets) and PREFIX.pub (one line: the key and TEAM), which"
        " hosts list as trusted for TEAM's packs. Existing files are never overwritten.",
    )
    keygen.add_argument("--owner", required=True, help="the team whose packs the key signs")
    keygen.add_argument(
        "-o", "--output", type=Path, required=True, metavar="PREFIX", help="PREFIX.key, PREFIX.pub"
    )
    keygen.set_defaults(func=cmd_pack_keygen)
    sign = pack_sub.add_parser("sign", help="sign a bundle (in place) with a team's key")
    sign.add_argument("bundle", type=Path, metavar="FILE", help="a bundle from pack build")
    sign.add_argument("--key", type=Path, required=True, help="the private key (PREFIX.key)")
    sign.set_defaults(func=cmd_pack_sign)
    verify = pack_sub.add_parser(
        "verify",
        help="check a bundle as a host would: signature, owner, hashes, examples",
        description="logmend pack verify FILE --trust KEYS...: signed by a trusted key of the"
        " pack's owner, every file as the manifest says, the pack loads and its examples hold",
    )
    verify.add_argument("bundle", type=Path, metavar="FILE", help="the bundle")
    verify.add_argument(
        "--trust",
        type=Path,
        action="append",
        required=True,
        metavar="KEYS",
        help="a public key file (PREFIX.pub); repeat for several",
    )
    verify.set_defaults(func=cmd_pack_verify)


def cmd_discover(args: argparse.Namespace) -> int:
    """Templates of a log's error lines (agent/discover.py)."""
    from agent.discover import ERROR_WORDS, discover

    for path in args.log:
        if not path.is_file():
            raise LogmendError(f"discover: {path} is not a file")
    words = tuple(args.word) if args.word else ERROR_WORDS
    mined, read, grouped = discover(args.log, every_line=args.all, words=words)
    if args.json:
        json.dump({"templates": [m.to_json() for m in mined]}, sys.stdout)
        print()
        return 0
    if args.draft:
        from agent.draft import draft_toml, pattern_id

        taken: set[str] = set()
        for m in mined[: args.top]:
            tokens = m.text.split()
            print(f"# seen {m.template.count} time(s)")
            print(draft_toml(tokens, m.template.samples, pattern_id(tokens, taken)))
        return 0
    what = "line(s)" if args.all else "that look like errors"
    print(f"{read} line(s) read, {grouped} {what}, {len(mined)} template(s)")
    from agent.cli import escape_controls

    for m in mined[: args.top]:
        t = m.template
        print(escape_controls(f"{t.count:>8}  {m.text}"))
        for sample in t.samples[:1]:
            print(escape_controls(f"          e.g. {sample}"))
        more = " ..." if t.count > min(len(m.lines), 8) else ""
        print(f"          lines {', '.join(map(str, m.lines[:8]))}{more}")
    if len(mined) > args.top:
        print(f"... and {len(mined) - args.top} more (--top N, or --json for all)")
    return 0


def cmd_pack_new(args: argparse.Namespace) -> int:
    from agent.scaffold import new_pack

    folder = new_pack(args.name, args.dir, args.owner)
    print(f"{folder}: a pack with one pattern, its examples, an article and a fix stub")
    print(f"next: edit {folder / 'pack.toml'}, then: logmend test {folder}")
    return 0


def cmd_pack_publish(args: argparse.Namespace) -> int:
    """Each pack's articles to the receiver, where its team's tokens find them by error
    text (agent/receiver/articles.py); a pack with errors is published by no one."""
    import httpx

    from agent import cli

    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise LogmendError(f"pack publish: cannot read the token: {exc}") from None
    bundles = [path for path in args.packs if path.is_file()]
    if bundles:
        if len(bundles) != len(args.packs):
            raise LogmendError("pack publish: give bundles or pack folders, not both")
        return _publish_bundles(bundles, args.url, token, args.percent)
    dirs = find_pack_dirs(tuple(args.packs))
    if not dirs:
        raise LogmendError(f"no pack.toml found in {', '.join(map(str, args.packs))}")
    where = "a pack under " + ", ".join(map(str, args.packs))
    packs = cli.guarded(where, lambda: load_packs(tuple(dirs), trust=False))
    url = args.url.rstrip("/") + "/v1/articles"
    for pack in packs:
        body = {
            "pack": pack.name,
            "version": pack.version,
            "owner": pack.owner,
            "patterns": [
                {"pattern": p.id, "match": p.source, "article": p.article or "",
                 "text": p.article_text}
                for p in pack.patterns
            ],
        }  # fmt: skip
        _send(httpx.Request("PUT", url, json=body), token, pack.name)
        print(f"{pack.name} {pack.version}: {len(pack.patterns)} article(s) published to {url}")
    return 0


def _send(request: Any, token: str, what: str) -> Any:
    """One request to the receiver with the team's token; its answer if 200, else an
    error naming `what` and the receiver's reason."""
    import httpx

    request.headers["Authorization"] = f"Bearer {token}"
    try:
        with httpx.Client(timeout=60.0) as client:
            answer = client.send(request)
    except httpx.HTTPError as exc:
        raise LogmendError(f"pack publish: cannot reach {request.url}: {exc}") from None
    if answer.status_code != 200:
        raise LogmendError(
            f"pack publish: {what}: the receiver answered {answer.status_code}"
            f" ({answer.text[:300]})"
        )
    return answer


def _publish_bundles(paths: list[Path], url: str, token: str, percent: int) -> int:
    """POST each bundle to /v1/packs (agent/receiver/packstore.py says what it checks)."""
    import httpx

    if not 1 <= percent <= 100:
        raise LogmendError("pack publish: --percent is 1 to 100")
    where = url.rstrip("/") + "/v1/packs"
    for path in paths:
        request = httpx.Request(
            "POST",
            where,
            params={"percent": str(percent)},
            content=_read_bundle(path),
            headers={"Content-Type": "application/gzip"},
        )
        done = _send(request, token, str(path)).json()
        share = "every host" if done["percent"] == 100 else f"{done['percent']}% of hosts"
        print(
            f"{path}: {done['pack']} {done['version']} (owner {done['owner']})"
            f" {'published' if done['new'] else 'already there'}; current for {share}"
        )
    return 0


def cmd_pack_build(args: argparse.Namespace) -> int:
    """A proven pack as a bundle (agent/bundle.py): nothing is written for a pack that
    fails to load or whose examples fail."""
    from agent import bundle, cli
    from agent.examples import check_examples

    if not (args.dir / "pack.toml").is_file():
        raise LogmendError(f"pack build: no pack.toml in {args.dir}")
    packs, broken = cli.guarded(args.dir, lambda: load_packs_apart((args.dir,), trust=False))
    if broken:
        raise ConfigErrors(list(broken[0].errors))
    pack = packs[0]
    _, failures = check_examples(pack)
    if failures:
        raise ConfigErrors([f.as_error(pack) for f in failures])
    data = bundle.build(pack.dir, pack.name, pack.version, pack.owner, args.min_agent)
    write_atomically(args.output, data)
    files = len(bundle.read(data, str(args.output)).files)
    print(
        f"{args.output}: {pack.name} {pack.version} (owner {pack.owner}), {files} file(s),"
        f" {len(data)} bytes, unsigned; next: logmend pack sign {args.output} --key KEY"
    )
    return 0


def cmd_pack_keygen(args: argparse.Namespace) -> int:
    from agent.signing import generate, load_public

    private, public = generate(args.owner, args.output)
    key = load_public(public)[0]
    print(f"{private}: the private key; keep it secret (CI secrets), never on hosts")
    print(f"{public}: key {key.key_id} for {args.owner}'s packs; hosts and the receiver trust it")
    return 0


def cmd_pack_sign(args: argparse.Namespace) -> int:
    from agent import bundle
    from agent.signing import load_private, sign

    key = load_private(args.key)
    found = bundle.read(_read_bundle(args.bundle), str(args.bundle))
    signature = sign(key, found.manifest_bytes)
    write_atomically(args.bundle, bundle.signed(found, signature))
    print(f"{args.bundle}: {found.manifest.label} signed by key {signature.key_id}")
    return 0


def cmd_pack_verify(args: argparse.Namespace) -> int:
    """As a host would check it, before it runs anything of it."""
    import tempfile

    from agent import bundle
    from agent.signing import trusted_keys

    where = str(args.bundle)
    found = bundle.read(_read_bundle(args.bundle), where)
    key = bundle.verify(found, trusted_keys(args.trust), where)
    with tempfile.TemporaryDirectory(prefix="logmend-verify-") as scratch:
        pack = proven_copy(found, Path(scratch) / "pack", where)
    print(
        f"{where}: ok: {found.manifest.label}, {len(found.files)} file(s),"
        f" {sum(len(p.examples) for p in pack.patterns)} example(s) hold;"
        f" signed by key {key.key_id} of {key.owner}"
    )
    return 0


def proven_copy(found: Any, folder: Path, where: str) -> Pack:
    """Unpack a verified bundle into `folder` and load it as the agent would: it must
    load, and its examples must hold here."""
    from agent import bundle
    from agent.examples import check_examples

    bundle.unpack(found, folder)
    manifest = found.manifest
    packs, broken = load_packs_apart((folder,), trust=False)
    if broken:
        raise bundle.BundleError(f"{where}: {manifest.label} does not load: {broken[0].errors[0]}")
    pack = packs[0]  # the pack its manifest names: bundle.verify checked that first
    _, failures = check_examples(pack)
    if failures:
        raise bundle.BundleError(
            f"{where}: {manifest.label}: {len(failures)} example(s) fail here:"
            f" {failures[0].as_error(pack)}"
        )
    return pack


def _read_bundle(path: Path) -> bytes:
    from agent.bundle import MAX_BUNDLE

    try:
        with path.open("rb") as source:
            return source.read(MAX_BUNDLE + 1)
    except OSError as exc:
        raise LogmendError(f"{path}: cannot read the bundle: {exc.strerror}") from None


def write_atomically(path: Path, data: bytes) -> None:
    from agent import atomic

    try:
        atomic.write_atomically(path, data)
    except OSError as exc:
        raise LogmendError(f"{path}: cannot write: {exc.strerror}") from None


def cmd_explain(args: argparse.Namespace) -> int:
    """What each line means, from the packs of a config or of pack folders (agent.explain)."""
    import sqlite3

    from agent import cli
    from agent.explain import History, explain_line, print_explained
    from agent.match import Matcher
    from agent.preflight import identities_for

    words = list(args.words)
    history: History | None = None
    identities = None
    if args.config is not None:
        config, packs, broken = cli.admitted(args.config)
        timeout, engine = config.limits.regex_timeout, config.limits.matcher
        try:
            history = History.read(config.state_db, time.time())
        except (OSError, sqlite3.Error) as exc:
            print(f"note: cooldowns and fix budgets unknown ({exc})", file=sys.stderr)
        identities = cli.guarded(
            args.config, lambda: identities_for(config, packs, [b.name for b in broken])
        )
    else:
        dirs = []
        while words and Path(words[0]).is_dir():  # leading folders are packs, the rest lines
            dirs.append(Path(words.pop(0)))
        if not dirs:
            raise LogmendError("explain: give -c CONFIG or PACK_DIR..., then the lines")
        where = "a pack under " + ", ".join(map(str, dirs))
        found = find_pack_dirs(tuple(dirs))
        packs, broken = cli.guarded(where, lambda: load_packs_apart(tuple(found), trust=False))
        timeout, engine = 1.0, "auto"
    for pack in broken:
        print(f"note: pack {pack.name} does not run ({pack.errors[0]})", file=sys.stderr)
    by_name = {pack.name: pack for pack in packs}
    matcher = Matcher([p for pack in packs for p in pack.patterns], timeout, engine)
    lines = words or _stdin_lines()
    now = time.time()
    explained = (explain_line(line, matcher, by_name, now, history, identities) for line in lines)
    if args.json:
        json.dump({"lines": list(explained)}, sys.stdout)
        print()
    else:
        for one in explained:
            print_explained(one, sys.stdout)
    return 0


def _stdin_lines() -> Iterator[str]:
    """Standard input as lines, each cut at the agent's 64 KiB (never held whole)."""
    from agent.packtest import CHUNK, MAX_LINE
    from agent.records import LineSplitter

    splitter = LineSplitter(MAX_LINE)
    for chunk in iter(lambda: sys.stdin.buffer.read(CHUNK), b""):
        block = splitter.feed(chunk)
        yield from block.decode("utf-8", "replace").splitlines()
    yield from splitter.flush().decode("utf-8", "replace").splitlines()
