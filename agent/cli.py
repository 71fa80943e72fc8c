"""The `logmend` command: run, check, test, status, spool, demo; `explain` and `pack`
(agent/packcommands.py) and `receiver` (agent/receiver/commands.py) are wired in here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from agent import __version__, derived
from agent.config import Config, load_config
from agent.derived import Memo
from agent.errors import ConfigErrors, LogmendError, unexpected
from agent.examples import ExampleFailure, check_examples
from agent.observe import from_environment
from agent.packcommands import add_pack_commands
from agent.packs import Pack
from agent.packset import BrokenPack, find_pack_dirs, load_packs, load_packs_apart
from agent.receiver.commands import add_receiver_commands

log = logging.getLogger("logmend")
T = TypeVar("T")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, with the terminal's width found as shutil would, without shutil: a
    parser is built on every start, and shutil brings bz2 and lzma (0.5 MiB resident)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


class Parser(argparse.ArgumentParser):
    """Every parser and subparser (add_subparsers makes them of this class) with the
    HelpFormatter above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _columns() -> int:
    """$COLUMNS, else the terminal's width, else 80 (shutil.get_terminal_size)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)


# and lone surrogates: a file name that is not UTF-8, which no stream could write
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape_controls(text: str, keep: str = "") -> str:
    """Control characters (C0, DEL, C1, line separators) as visible escapes like `\\x1b`.

    Log messages carry fields of attacker-written log lines: raw, an ESC or CR
    could move the terminal's cursor or clear it, a newline could forge a line.
    """

    def one(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        code = ord(char)
        return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _CONTROL.sub(one, text)


class TextFormatter(logging.Formatter):
    """The text log: one line a record, whatever its message holds."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep="\n")  # a traceback's lines

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep="\n")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": record.created,
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def guarded(where: Path | str, load: Callable[[], T]) -> T:
    """Run a loader; an exception nobody raised on purpose is an error naming `where`.

    So a hostile pack or config stops `run`, `check` or `status` with a line
    that names it, and exit status 1, not a traceback.
    """
    try:
        return load()
    except LogmendError:
        raise
    except Exception as exc:
        raise ConfigErrors([unexpected(where, exc)]) from exc


def _load_config(config_path: Path) -> Config:
    return guarded(config_path, lambda: load_config(config_path))


def admitted(
    config_path: Path, memo: Memo | None = None, prepare: bool = False
) -> tuple[Config, list[Pack], list[BrokenPack]]:
    """The config, the packs that would run and the broken ones (preflight.runnable_packs)."""
    from agent.preflight import runnable_packs

    config = _load_config(config_path)
    if prepare and config.sync is not None:
        from agent import packsync

        packsync.prepare(config)  # the synced packs' folders, nothing half-done in them
    memo = memo or Memo()
    memo.open(config.state_dir / derived.FILE)  # what earlier starts derived (agent.derived)
    where = "a pack under " + ", ".join(map(str, config.pack_roots))
    packs, broken = guarded(where, lambda: runnable_packs(config, memo))
    return config, packs, broken


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent

    setup_logging(args.log_format, args.log_level)
    memo = derived.Memo(apart=True)  # the agent lives long: compile apart (agent.hscompile)
    config, packs, broken = admitted(args.config, memo, prepare=not args.dry_run)
    if not args.dry_run:
        observer = from_environment(os.environ)
        return Agent(config, packs, observer=observer, memo=memo, broken=broken).run()
    import dataclasses
    import sqlite3
    import tempfile

    from agent.fixes import DryRunner
    from agent.statefile import check_state_file

    check_state_file(config.state_db)  # a foreign file is refused, not copied
    with tempfile.TemporaryDirectory(prefix="logmend-dry-run-") as scratch:
        if config.state_db.exists():
            with (
                sqlite3.connect(config.state_db) as real,
                sqlite3.connect(Path(scratch) / "state.db") as copy,
            ):
                real.backup(copy)
        config = dataclasses.replace(config, state_dir=Path(scratch), escalation=None)
        logging.getLogger("logmend").warning(
            "dry run: fixes are logged, not run; nothing is sent; state is a throwaway copy"
        )
        return Agent(
            config,
            packs,
            runner=DryRunner(),
            dry_run=True,
            observer=from_environment(os.environ),
            broken=broken,
        ).run()


def cmd_check(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.escalate import read_token, tls_context, token_file_problem
    from agent.preflight import identities_for, unknown_packs, unrunnable

    if (args.config is None) == (not args.packs):
        raise LogmendError("check: give either -c CONFIG or PACK_DIR..., not both or neither")
    if args.config is None:
        return _check_packs(args.packs)
    config = _load_config(args.config)
    where = "a pack under " + ", ".join(map(str, config.pack_roots))
    packs, broken = guarded(where, lambda: load_packs_apart(config.pack_roots, host=config.params))
    packs, homeless = unrunnable(config, packs)
    broken += homeless
    missing = unknown_packs(config, [p.name for p in packs + broken])
    if missing:
        raise ConfigErrors(missing)
    identities = identities_for(config, packs, [b.name for b in broken])
    if config.escalation is not None:
        token = read_token(config.escalation)
        tls = tls_context(config.escalation)
        loose = config.escalation.token_file and token_file_problem(config.escalation.token_file)
        if loose:
            assert config.escalation.token_file is not None
            raise ConfigErrors(
                [ConfigError(config.escalation.token_file, "escalation.token_file", None, loose)]
            )
    if config.sync is not None:
        _check_sync(config)
    if args.online:
        if config.escalation is None:
            raise LogmendError(f"check --online: {args.config} has no [escalation] to try")
        _try_token(config.escalation.url, token, tls)
    packs, failing = _proven(packs)
    patterns = sum(len(p.patterns) for p in packs)
    print(
        f"{args.config}: {'BROKEN' if broken or failing else 'ok'}: "
        f"{len(config.sources)} source(s), {len(packs)} pack(s) would run, "
        f"{patterns} pattern(s); state in {config.state_db}"
    )
    for pack in packs:
        who = identities.get(pack.name)
        runs_as = "" if who is None or os.geteuid() != 0 else f", fixes run as {who.describe()}"
        print(
            f"  pack {pack.name} {pack.version} (owner {pack.owner}): "
            f"{len(pack.patterns)} pattern(s) from {pack.dir}{runs_as}"
        )
    _print_broken(broken, failing)
    print_matcher(packs, config.limits.matcher, f"; regex timeout {config.limits.regex_timeout:g}s")
    return 1 if broken or failing else 0


def _check_sync(config: Config) -> None:
    """[sync]: its token file readable, private and not empty, every trusted key file
    a key file (what the agent would refuse at start)."""
    from agent import packsync
    from agent.errors import ConfigError
    from agent.escalate import token_file_problem
    from agent.signing import trusted_keys

    sync = config.sync
    assert sync is not None and sync.token_file is not None
    packsync.read_token(sync)
    loose = token_file_problem(sync.token_file)
    if loose:
        raise ConfigErrors([ConfigError(sync.token_file, "sync.token_file", None, loose)])
    keys = trusted_keys(list(sync.trust))
    owners = sorted({key.owner for key in keys.values()})
    print(
        f"{config.file}: [sync] from {sync.url}: {len(keys)} trusted key(s) of {', '.join(owners)}"
    )


def _try_token(url: str, token: str, tls: Any) -> None:
    """Post an empty batch with the token: the receiver authenticates it and stores
    nothing. A refusal or no answer is an error naming what to do."""
    import httpx

    try:
        answer = httpx.post(
            url,
            json={"events": []},
            headers={"Authorization": f"Bearer {token}"} if token else {},
            verify=tls,
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        raise LogmendError(f"check --online: cannot reach the receiver at {url}: {exc}") from None
    if answer.status_code == 200:
        print(f"receiver: {url} accepts the token")
        return
    try:
        said = str(answer.json().get("error", ""))
    except ValueError:
        said = answer.text[:200]
    hint = {
        401: "the token is wrong, revoked or expired: ask the central team for a new one",
        403: "the token may not send escalations (its scope): use an ingest token",
    }.get(answer.status_code, "")
    raise LogmendError(
        f"check --online: the receiver at {url} answered {answer.status_code} ({said})"
        + (f": {hint}" if hint else "")
    )


def _check_packs(roots: list[Path]) -> int:
    """Pack folders as the agent would load them (ownership included), examples proven."""
    dirs = find_pack_dirs(tuple(roots))
    if not dirs:
        raise LogmendError(f"no pack.toml found in {', '.join(map(str, roots))}")
    where = "a pack under " + ", ".join(map(str, roots))
    packs, broken = guarded(where, lambda: load_packs_apart(tuple(dirs)))
    packs, failing = _proven(packs)
    for pack in packs:
        print(
            f"{pack.file}: ok: {pack.name} {pack.version} (owner {pack.owner}),"
            f" {len(pack.patterns)} pattern(s)"
        )
    _print_broken(broken, failing)
    if packs:
        print_matcher(packs, "auto")
    return 1 if broken or failing else 0


Failing = list[tuple[Pack, int, list[ExampleFailure]]]


def _proven(packs: list[Pack]) -> tuple[list[Pack], Failing]:
    """The packs whose examples all hold, and the others with their failures."""
    held, failing = [], []
    for pack in packs:
        checked, failures = check_examples(pack)
        if failures:
            failing.append((pack, checked, failures))
        else:
            held.append(pack)
    return held, failing


def _print_broken(broken: list[BrokenPack], failing: Failing) -> None:
    """Each pack that would not run, and why; the agent runs every other pack."""
    from agent.packtest import print_examples

    def head(file: Path, name: str, owner: str) -> None:
        owner = f" (owner {owner})" if owner else ""
        said = f"{file}: BROKEN: {name}{owner} would not run; the other packs would:"
        print(escape_controls(said))  # a folder's name may hold anything

    for pack in broken:
        head(pack.file, pack.name, pack.owner)
        for error in pack.errors:
            print(escape_controls(f"  {error}"))
    for failed, checked, failures in failing:
        head(failed.file, failed.name, failed.owner)
        print_examples(failed, checked, failures, sys.stdout)


def print_matcher(
    packs: list[Pack],
    choice: str,
    note: str = "",
    out: TextIO | None = None,
    memo: Memo | None = None,
) -> None:
    """Which engine runs, and a warning for each pattern it cannot keep off any line."""
    out = out or sys.stdout  # at call time: a default bound at import outlives a redirect
    engine = _engine(choice)
    unfiltered = ungated(packs, engine, memo)
    print(f"  matcher: {describe_engine(engine, unfiltered)}{note}", file=out)
    why = {
        "hyperscan": "no shape Hyperscan can prefilter",
        "python": "is not anchored (^ then fixed characters), so the pure-Python engine"
        " cannot gate it (with Hyperscan installed its shape may)",
    }
    for qualified in unfiltered:
        print(
            f"  warning: {qualified} has no required literal and {why[engine]}: its regex"
            " runs on every line (`logmend test PACK --log FILE` shows its cost)",
            file=out,
        )


def ungated(packs: list[Pack], engine: str, memo: Memo | None = None) -> list[str]:
    """The patterns no prefilter of `engine` gates: tried by regex on every line (no
    literal, and no shape Hyperscan takes or anchored prefix the pure-Python gate can
    use); the matcher itself says which."""
    from agent.match import Matcher

    patterns = [p for pack in packs for p in pack.patterns]
    return [p.qualified for p in Matcher(patterns, 1.0, engine, memo=memo).ungated]


def _engine(choice: str) -> str:
    from agent.match import available_engines

    engine = available_engines()[0] if choice == "auto" else choice
    if engine not in available_engines():
        raise LogmendError(f"matcher {engine!r} is configured but not installed here")
    return engine


def describe_engine(engine: str, unfiltered: list[str]) -> str:
    how = {
        "hyperscan": "Hyperscan prefilter (literals, and the shape of patterns with none)",
        "python": "pure-Python prefilter (literals, and the anchored prefix of patterns with none)",
    }
    text = f"{how[engine]} + regex confirm"
    if unfiltered:
        text += f" ({len(unfiltered)} pattern(s) no prefilter gates, tried on every line: "
        text += ", ".join(unfiltered[:5]) + (", ..." if len(unfiltered) > 5 else "") + ")"
    return text


def cmd_test(args: argparse.Namespace) -> int:
    from agent.packtest import JsonSink, Progress, TextSink, print_examples, scan_logs

    dirs = find_pack_dirs(tuple(args.packs))
    if not dirs:
        print(f"no pack.toml found in {', '.join(map(str, args.packs))}", file=sys.stderr)
        return 1
    packs = guarded(
        "a pack under " + ", ".join(map(str, args.packs)),
        lambda: load_packs(tuple(dirs), trust=False),
    )
    failed = False
    human = sys.stderr if args.json else sys.stdout
    for pack in packs:
        checked, failures = check_examples(pack)
        print_examples(pack, checked, failures, human)
        failed = failed or bool(failures)
    memo = Memo(apart=True)  # one build of the databases, its memory apart (agent.hscompile)
    print_matcher(packs, args.engine, out=human, memo=memo)
    if args.log:
        missing = [p for p in args.log if str(p) != "-" and not p.is_file()]
        if missing:
            print(f"{missing[0]}: no such file", file=sys.stderr)
            return 1
        sink = JsonSink(sys.stdout) if args.json else TextSink(sys.stdout)
        progress = Progress(sys.stderr) if sys.stderr.isatty() else None
        scan_logs(packs, args.log, args.timeout, sink, args.engine, memo, progress)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.statuscmd import show_status  # its own module: what status reads and prints

    return show_status(args)


def local_time(value: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def cmd_spool_retry(args: argparse.Namespace) -> int:
    from agent.state import Store

    config = _load_config(args.config)
    count = Store(config.state_db).unpark()
    print(f"{count} parked event(s) queued again; the running agent sends them next")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(args.packs, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="logmend", description=__doc__)
    parser.add_argument("--version", action="version", version=f"logmend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="follow the configured logs, fix and escalate")
    run.add_argument("-c", "--config", type=Path, required=True, help="the agent config")
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="the agent's own log on stderr: text (control characters escaped) or JSON lines",
    )
    run.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="log the fixes it would run and run none; send nothing; leave the state alone",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check",
        help="validate a config and every pack it loads, or pack folders alone",
        description="logmend check -c CONFIG | logmend check PACK_DIR...: everything the"
        " agent would load is loaded, and every pack's examples proven",
    )
    check.add_argument("-c", "--config", type=Path, help="an agent config")
    check.add_argument(
        "packs", nargs="*", type=Path, metavar="PACK_DIR", help="pack folders, without a config"
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also try the config's token against its receiver (an empty batch: nothing stored)",
    )
    check.set_defaults(func=cmd_check)

    test = sub.add_parser("test", help="prove packs with their examples, try them on logs")
    test.add_argument("packs", nargs="+", type=Path, metavar="PACK_DIR", help="pack folders")
    test.add_argument(
        "--log",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="logs to match every pattern against ('-': standard input)",
    )
    test.add_argument("--json", action="store_true", help="one JSON document on stdout")
    test.add_argument("--timeout", type=float, default=1.0, help="regex timeout per match")
    test.add_argument(
        "--engine",
        choices=("auto", "hyperscan", "python"),
        default="auto",
        help="prefilter engine (default: the fastest installed)",
    )
    test.set_defaults(func=cmd_test)

    status = sub.add_parser("status", help="open incidents, recent fixes, the spool")
    status.add_argument("-c", "--config", type=Path, required=True, help="the agent config")
    status.add_argument(
        "--limit", type=int, default=20, help="recent incidents and fixes listed (default 20)"
    )
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    status.set_defaults(func=cmd_status)

    spool = sub.add_parser("spool", help="manage the outbound spool")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    retry = spool_sub.add_parser("retry", help="send parked events again")
    retry.add_argument("-c", "--config", type=Path, required=True, help="the agent config")
    retry.set_defaults(func=cmd_spool_retry)

    add_pack_commands(sub)
    add_receiver_commands(sub)

    demo = sub.add_parser("demo", help="a receiver, an agent and a log that breaks, in 30s")
    demo.add_argument("--packs", type=Path, default=None, help="default: the shipped patterns/")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the receiver and its console running until Ctrl-C, and the temp directory",
    )
    demo.set_defaults(func=cmd_demo)
    service = sub.add_parser(
        "install-service",
        help="lay out the agent as a systemd service (and the receiver, with --receiver)",
        description="/etc/logmend (a starter agent.toml if there is none, packs.d, keys),"
        " /var/lib/logmend (0700) and /etc/systemd/system/logmend.service running this"
        " logmend; with --receiver also the logmend-receiver user, its folders and unit."
        " Idempotent; nothing is enabled or started (see docs/operations.md).",
    )
    service.add_argument(
        "--root", type=Path, default=Path("/"), help="lay it out under this folder (default: /)"
    )
    service.add_argument("--receiver", action="store_true", help="the receiver's service too")
    service.set_defaults(func=cmd_install_service)
    return parser


RECEIVER_EXTRA = frozenset(
    {"starlette", "uvicorn", "jinja2", "itsdangerous", "multipart", "python_multipart",
     "markdown_it", "nh3", "psycopg", "psycopg_pool"}
)  # fmt: skip


def cmd_install_service(args: argparse.Namespace) -> int:
    from agent.install import install

    if args.root == Path("/") and os.geteuid() != 0:
        raise LogmendError("install-service: run it as root (or give --root FOLDER)")
    for step in install(args.root, args.receiver):
        print(f"{step.what}: {step.done}")
    units = "logmend" + (" logmend-receiver" if args.receiver else "")
    print(f"next: edit /etc/logmend/agent.toml, logmend check -c /etc/logmend/agent.toml,"
          f" then systemctl enable --now {units}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `logmend status | head`: the reader left; so do we, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit either
        return 141  # as a shell reports a command ended by SIGPIPE
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in RECEIVER_EXTRA:
            raise
        print(
            f"error: this command needs the receiver's extra dependencies ({exc.name} is not"
            " installed): pip install 'logmend[receiver]'",
            file=sys.stderr,
        )
        return 1
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except LogmendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
