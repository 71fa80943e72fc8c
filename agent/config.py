"""Agent config (TOML) into frozen dataclasses; every error names file, key and line."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import regex

from agent.errors import ConfigError, ConfigErrors
from agent.journal import PRIORITIES, JournalSpec
from agent.params import HostParams, ParamValue, param_value, valid_pack_name
from agent.tomlsrc import Doc, Section, read_bounded

EVERY_PACK = "*"
DEFAULT_FIX_USER = "nobody"


@dataclass(frozen=True, slots=True)
class Multiline:
    start: str | None = None
    continuation: str | None = None
    max_lines: int = 500
    max_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    path: str
    packs: tuple[str, ...] | None = None  # None: every pack (written as "*")
    start: str = "end"
    multiline: Multiline | None = None
    flush_after: float = 5.0
    owner: str = ""  # whose its unknown errors are (default: the one owner of its packs)
    discover: bool = True  # group its unmatched error lines into templates (agent.unknown)
    error_words: tuple[str, ...] | None = None  # what makes a line look like an error
    journal: JournalSpec | None = None  # the systemd journal instead of files (path is "")

    @property
    def name(self) -> str:
        """What logs and checkpoints call it: its path, or journal:UNITS."""
        return self.path or f"journal:{self.journal.name if self.journal else ''}"


@dataclass(frozen=True, slots=True)
class Escalation:
    url: str
    token_file: Path | None = None
    timeout: float = 10.0
    batch_size: int = 100
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    aggregate: float = 5.0
    spool_max_events: int = 100_000
    spool_max_bytes: int = 256 * 1024 * 1024
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_verify: bool = True
    stats_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Sync:
    """Packs this host takes from the receiver (agent/packsync.py)."""

    url: str  # the receiver's base URL
    token_file: Path | None  # an ingest token (default: [escalation]'s)
    packs: tuple[str, ...]  # pack names, or "owner:TEAM" for every pack of a team
    trust: tuple[Path, ...]  # public key files (logmend pack keygen): key and owner
    interval: float = 300.0
    timeout: float = 30.0
    ca_file: Path | None = None
    pin: tuple[tuple[str, str], ...] = ()  # (pack, version): this host stays on it

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p for p in self.packs if not p.startswith("owner:"))


METRICS_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class Metrics:
    listen: str = METRICS_LISTEN


@dataclass(frozen=True, slots=True)
class Alertmanager:
    url: str
    resend: float = 60.0
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int = 64 * 1024
    regex_timeout: float = 0.1
    read_chunk_bytes: int = 256 * 1024  # 2 MiB less at the peak than 1 MiB, as quick
    max_concurrent_fixes: int = 4
    sweep_interval: float = 1.0
    max_samples: int = 10
    output_tail_bytes: int = 4096
    matcher: str = "auto"
    max_regex_timeouts: int = 10
    file_events: bool = True
    max_queued_fixes: int = 1000


@dataclass(frozen=True, slots=True)
class Config:
    file: Path
    host: str
    state_dir: Path
    packs: tuple[Path, ...]
    sources: tuple[Source, ...]
    escalation: Escalation | None
    limits: Limits = field(default_factory=Limits)
    fix_user: str = DEFAULT_FIX_USER
    fix_group: str | None = None
    alertmanager: Alertmanager | None = None
    metrics: Metrics | None = None
    allow_root: tuple[str, ...] = ()
    params: HostParams = field(default_factory=HostParams)
    sync: Sync | None = None

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def synced_packs(self) -> Path:
        """Where synced packs are linked from (agent/packsync.py)."""
        return self.state_dir / "packs"

    @property
    def pack_roots(self) -> tuple[Path, ...]:
        """The configured pack folders, and the synced packs once there are any."""
        if self.sync is None or not self.synced_packs.is_dir():
            return self.packs
        return (*self.packs, self.synced_packs)


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _limits(section: Section | None) -> Limits:
    if section is None:
        return Limits()
    d = Limits()
    limits = Limits(
        max_line_bytes=section.integer("max_line_bytes", d.max_line_bytes, minimum=64),
        regex_timeout=section.duration("regex_timeout", d.regex_timeout),
        read_chunk_bytes=section.integer("read_chunk_bytes", d.read_chunk_bytes, minimum=4096),
        max_concurrent_fixes=section.integer(
            "max_concurrent_fixes", d.max_concurrent_fixes, minimum=1
        ),
        sweep_interval=section.duration("sweep_interval", d.sweep_interval),
        max_samples=section.integer("max_samples", d.max_samples, minimum=1),
        output_tail_bytes=section.integer("output_tail_bytes", d.output_tail_bytes, minimum=256),
        matcher=section.string("matcher", d.matcher, choices=("auto", "hyperscan", "python")),
        max_regex_timeouts=section.integer("max_regex_timeouts", d.max_regex_timeouts),
        file_events=section.boolean("file_events", d.file_events),
        max_queued_fixes=section.integer("max_queued_fixes", d.max_queued_fixes, minimum=1),
    )
    section.finish()
    return limits


def _url(section: Section) -> str | None:
    url = section.string("url")
    if isinstance(url, str) and not url.startswith(("http://", "https://")):
        section.error("url", f"must be an http:// or https:// URL, not {url!r}")
    return url if isinstance(url, str) else None


def _escalation(section: Section | None, base: Path) -> Escalation | None:
    if section is None:
        return None
    url = _url(section)
    token_file = section.string("token_file", None)
    d = Escalation(url="")

    def path(key: str) -> Path | None:
        value = section.string(key, None)
        return _path(base, value) if isinstance(value, str) else None

    esc = Escalation(
        url=url or "",
        token_file=_path(base, token_file) if isinstance(token_file, str) else None,
        timeout=section.duration("timeout", d.timeout),
        batch_size=section.integer("batch_size", d.batch_size, minimum=1),
        backoff_initial=section.duration("backoff_initial", d.backoff_initial),
        backoff_max=section.duration("backoff_max", d.backoff_max),
        aggregate=section.duration("aggregate", d.aggregate),
        spool_max_events=section.integer("spool_max_events", d.spool_max_events, minimum=10),
        spool_max_bytes=section.integer("spool_max_bytes", d.spool_max_bytes, minimum=65536),
        ca_file=path("ca_file"),
        client_cert=path("client_cert"),
        client_key=path("client_key"),
        tls_verify=section.boolean("tls_verify", d.tls_verify),
        stats_interval=section.duration("stats_interval", d.stats_interval),
    )
    if esc.client_key is not None and esc.client_cert is None:
        section.error("client_key", "needs client_cert")
    section.finish()
    return esc


def _sync(section: Section | None, base: Path, escalation: Escalation | None) -> Sync | None:
    if section is None:
        return None
    url = _url(section)
    token_file = section.string("token_file", None)
    packs = section.strings("packs") or ()
    for name in packs:
        if not valid_pack_name(name.removeprefix("owner:")):
            section.error("packs", f"{name!r} is not a pack name or owner:TEAM")
    trust = tuple(_path(base, p) for p in section.strings("trust") or ())
    if not trust:
        section.error("trust", "name the public key files of the teams whose packs it takes")
    pins = section.table("pin")
    pin: list[tuple[str, str]] = []
    if pins is not None:
        for name in sorted(pins.data):
            version = pins.string(name)
            if not (
                valid_pack_name(name) and isinstance(version, str) and valid_pack_name(version)
            ):
                pins.error(name, "a pack name and the version this host stays on")
            else:
                pin.append((name, version))
        pins.finish()
    d = Sync(url="", token_file=None, packs=(), trust=())
    sync = Sync(
        url=(url or "").rstrip("/"),
        token_file=_path(base, token_file)
        if isinstance(token_file, str)
        else (escalation.token_file if escalation else None),
        packs=tuple(packs),
        trust=trust,
        interval=section.duration("interval", d.interval),
        timeout=section.duration("timeout", d.timeout),
        ca_file=_path(base, ca) if isinstance(ca := section.string("ca_file", None), str) else None,
        pin=tuple(pin),
    )
    if sync.token_file is None:
        section.error("token_file", "an ingest token's file is needed (or [escalation]'s)")
    if not packs and not pin:
        section.error("packs", "name the packs (or owner:TEAM) this host takes")
    section.finish()
    return sync


def _metrics(section: Section | None) -> Metrics | None:
    if section is None:
        return None
    listen = section.string("listen", METRICS_LISTEN)
    if isinstance(listen, str):
        host, _, port = listen.rpartition(":")
        if not port.isdigit() or not host:
            section.error("listen", f"must be HOST:PORT, not {listen!r}")
    section.finish()
    return Metrics(listen if isinstance(listen, str) else METRICS_LISTEN)


def _alertmanager(section: Section | None) -> Alertmanager | None:
    if section is None:
        return None
    url = _url(section)
    d = Alertmanager(url="")
    sink = Alertmanager(
        url=(url or "").rstrip("/"),
        resend=section.duration("resend", d.resend),
        timeout=section.duration("timeout", d.timeout),
    )
    section.finish()
    return sink


def _regex(section: Section, key: str) -> str | None:
    source = section.string(key, None)
    if not isinstance(source, str):
        return None
    try:
        regex.compile(source, regex.VERSION0)
    except regex.error as exc:
        section.error(key, f"is not a valid regex: {exc}")
        return None
    return source


def _multiline(section: Section | None) -> Multiline | None:
    if section is None:
        return None
    d = Multiline()
    multiline = Multiline(
        start=_regex(section, "start"),
        continuation=_regex(section, "continuation"),
        max_lines=section.integer("max_lines", d.max_lines, minimum=1),
        max_bytes=section.integer("max_bytes", d.max_bytes, minimum=64),
    )
    if ("start" in section.data) == ("continuation" in section.data):
        section.error(None, "needs exactly one of start or continuation")
    section.finish()
    return multiline


def _journal(section: Section | None) -> JournalSpec | None:
    if section is None:
        return None
    units = section.strings("units", ())
    identifiers = section.strings("identifiers", ())
    priority = section.string("priority", None, choices=(*PRIORITIES, *map(str, range(8))))
    directory = section.string("directory", "")
    if directory and not Path(directory).is_absolute():
        section.error("directory", "must be an absolute path")
    section.finish()
    return JournalSpec(
        units=tuple(units or ()),
        identifiers=tuple(identifiers or ()),
        priority=priority or "",
        directory=Path(directory) if directory else None,
    )


def _distinct_journals(root: Section, sources: tuple[Source, ...]) -> None:
    """Two journal sources with the same settings would share one cursor (its name keys
    it): the second would skip what the first had read, or lose its held events."""
    seen: dict[str, int] = {}
    for index, source in enumerate(sources):
        if source.journal is None:
            continue
        first = seen.setdefault(source.name, index)
        if first != index:
            root.doc.error(
                ("source", index, "journal"),
                f"reads the same entries as source[{first}] ({source.name}): one source"
                " per set of units, identifiers, priority and directory",
            )


def _source(section: Section) -> Source | None:
    journal = _journal(section.table("journal"))
    if "journal" in section.data and "path" in section.data:
        section.error("journal", "a source reads files (path) or the journal, not both")
    if "journal" not in section.data and "path" not in section.data:
        section.error("path", "is required (the files to follow), or journal instead")
    path = section.string("path", "")
    packs = section.strings("packs", None, allow_str=True)
    if "packs" not in section.data:
        section.error(
            "packs", f'is required: name the packs for these files ("{EVERY_PACK}": every pack)'
        )
    elif packs == ():
        section.error("packs", f'names no pack (name them, or "{EVERY_PACK}" for every pack)')
    elif packs is not None and EVERY_PACK in packs:
        if len(packs) > 1:
            section.error("packs", f'"{EVERY_PACK}" stands alone: it already means every pack')
        packs = None
    start = section.string("start", "end", choices=("end", "beginning"))
    multiline = _multiline(section.table("multiline"))
    flush_after = section.duration("flush_after", 5.0)
    owner = section.string("owner", "")
    if owner and not valid_pack_name(owner):
        section.error("owner", f"{owner!r} is not a plain name (a team, as packs name owners)")
    discover = section.boolean("discover", True)
    words = section.strings("error_words", None)
    if words is not None and (not words or not all(w.strip() for w in words)):
        section.error("error_words", "a list of words (or leave it out for the built-in ones)")
    section.finish()
    if not isinstance(path, str):
        return None
    return Source(
        path=path,
        packs=packs,
        start=start or "end",
        multiline=multiline,
        flush_after=flush_after if flush_after is not None else 5.0,
        owner=owner or "",
        discover=bool(discover),
        error_words=tuple(words) if words else None,
        journal=journal,
    )


def _params(section: Section | None, file: Path) -> HostParams:
    """`[params.PACK]` tables: this host's values for packs' declared params."""
    if section is None:
        return HostParams(file)
    values: dict[str, dict[str, ParamValue]] = {}
    lines: dict[tuple[str, str], int | None] = {}
    for pack in list(section.data):
        table = section.table(pack)
        if table is None:
            continue
        for key, raw in table.data.items():
            table._used.add(key)
            value, problem = param_value(raw)
            if value is None:
                table.error(key, problem or "invalid")
                continue
            values.setdefault(pack, {})[key] = value
            lines[(pack, key)] = section.doc.keylines.line_of(("params", pack, key))
    return HostParams(file, values, lines)


def parse_config(file: Path, text: str) -> Config:
    """Parse config text; raises ConfigErrors with every problem found."""
    try:
        doc = Doc(file, text)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from exc
    root = doc.root()
    base = file.parent.resolve()
    agent = root.table("agent")
    host = os.uname().nodename  # what socket.gethostname() answers, without importing socket
    state_dir = base / "state"
    packs: tuple[Path, ...] = ()
    fix_user, fix_group = DEFAULT_FIX_USER, None
    allow_root: tuple[str, ...] = ()
    if agent:
        host = agent.string("host", host)
        state_dir = _path(base, agent.string("state_dir", str(state_dir)) or ".")
        packs = tuple(_path(base, p) for p in agent.strings("packs", (), allow_str=True) or ())
        fix_user = agent.string("fix_user", DEFAULT_FIX_USER) or DEFAULT_FIX_USER
        fix_group = agent.string("fix_group", None)
        allow_root = agent.strings("allow_root", (), allow_str=True) or ()
        agent.finish()
    sources = tuple(s for s in (_source(sec) for sec in root.tables("source")) if s)
    _distinct_journals(root, sources)
    if not sources and "source" not in root.data:
        root.error("source", "at least one [[source]] is needed")
    escalation = _escalation(root.table("escalation"), base)
    sync = _sync(root.table("sync"), base, escalation)
    alertmanager = _alertmanager(root.table("alertmanager"))
    metrics = _metrics(root.table("metrics"))
    limits = _limits(root.table("limits"))
    params = _params(root.table("params"), file)
    if sync is not None:
        wildcard = any(p.startswith("owner:") for p in sync.packs)
        pending = sync.names | {name for name, _ in sync.pin} | ({"*"} if wildcard else set())
        params = dataclasses.replace(params, pending=frozenset(pending))
    root.finish()
    for index, source in enumerate(sources):
        if source.path and not Path(source.path).is_absolute():
            doc.error(("source", index, "path"), "must be an absolute path or glob")
    if doc.errors:
        raise ConfigErrors(doc.errors)
    return Config(
        file=file,
        host=host,
        state_dir=state_dir,
        packs=packs,
        sources=sources,
        escalation=escalation,
        limits=limits,
        fix_user=fix_user,
        fix_group=fix_group,
        alertmanager=alertmanager,
        metrics=metrics,
        allow_root=allow_root,
        params=params,
        sync=sync,
    )


def load_config(file: Path) -> Config:
    """Read (bounded in size) and parse; raises ConfigErrors naming the file."""
    return parse_config(file, read_bounded(file))
