"""Pattern packs: load, validate and compile; the pack schema lives here.

A pack is a folder with `pack.toml`, the fix scripts it runs and the articles
its patterns cite. Everything that can be checked is checked at load, so the
per-line path only runs compiled regexes and pre-parsed templates.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import regex

from agent.constraints import Constraint, parse_constraints
from agent.derived import Memo
from agent.errors import ConfigError, ConfigErrors
from agent.lint import remedy_pattern_problem
from agent.params import PLAIN_NAME, HostParams, ParamValue, param_env, parse_params
from agent.tomlsrc import Doc, Section
from agent.trust import trust_chain, untrusted

SEVERITIES = ("debug", "info", "warning", "error", "critical")
ESCALATE = ("unresolved", "always", "never")
ARTICLE_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Template:
    """A string with `{field}` holes, parsed once; expands to exactly one string."""

    text: str
    parts: tuple[tuple[str, str | None], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.parts if name is not None)

    def expand(self, fields: dict[str, str]) -> str:
        return "".join(lit + (fields.get(name, "") if name else "") for lit, name in self.parts)


def parse_template(text: str) -> Template:
    """Parse `{name}` and `{param.NAME}` holes; `{{` and `}}` are literal braces.

    Raises ValueError. `param.` holes are host facts, bound at load by `bind_params`.
    """
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conv in string.Formatter().parse(text):
        plain = name.removeprefix("param.") if name else name
        if name is not None and (spec or conv or not (plain and plain.isidentifier())):
            shown = name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
            raise ValueError(f"only plain {{field}} holes are allowed, not {{{shown}}}")
        parts.append((literal, name if name else None))
        if name == "":
            raise ValueError("empty {} hole")
    return Template(text, tuple(parts))


def bind_params(template: Template, params: Mapping[str, ParamValue]) -> Template:
    """Replace `{param.NAME}` holes by the host's value; raises ValueError if it cannot."""
    parts: list[tuple[str, str | None]] = []
    for literal, name in template.parts:
        if name is None or not name.startswith("param."):
            parts.append((literal, name))
            continue
        param = name.removeprefix("param.")
        if param not in params:
            raise ValueError(f"uses {{{name}}}, but the pack has no param {param!r}")
        value = params[param]
        if not isinstance(value, str):
            raise ValueError(
                f"uses {{{name}}}, a list: lists reach scripts as LOGMEND_PARAM_{param.upper()}"
            )
        parts.append((literal + value, None))
    return Template(template.text, tuple(parts))


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `runs` fixes per key within `within` seconds; past it the key is flapping."""

    runs: int = 5
    within: float = 3600.0


@dataclass(frozen=True, slots=True)
class Recovery:
    """A line that must appear in the incident's source within `within` after a fix."""

    source: str
    regex: regex.Pattern[str]
    within: float = 60.0


@dataclass(frozen=True, slots=True)
class Recurrence:
    """After a fix resolved: this many matches of its key within `within` seconds mean
    the fix does not hold (escalated as fix-not-holding)."""

    count: int = 1
    within: float = 600.0


@dataclass(frozen=True, slots=True)
class Remedy:
    run: tuple[Template, ...]
    timeout: float = 30.0
    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    verify: tuple[Template, ...] | None = None
    cooldown: float = 600.0
    deadline: float = 600.0
    budget: Budget = field(default_factory=Budget)
    recovery: Recovery | None = None
    constraints: tuple[Constraint, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> frozenset[str]:
        """The fields a fix may see: the constrained ones, and no other."""
        return frozenset(c.field for c in self.constraints)


@dataclass(frozen=True, slots=True)
class Example:
    line: str
    matches: bool = True
    fields: dict[str, str] | None = None
    at: int | None = None  # its line in pack.toml, for a failure to point at


class LazyRegex:
    """A pattern's `regex`, compiled when first asked for.

    Compiling is most of a pack's load (about 0.4 ms a pattern); on a warm start
    the memo already knows the pattern compiles and which groups it has, and most
    patterns never see a candidate line, so they are never compiled at all.
    """

    __slots__ = ("_compiled", "flags", "groups", "source")

    def __init__(
        self,
        source: str,
        flags: int,
        groups: tuple[str, ...],
        compiled: regex.Pattern[str] | None = None,
    ) -> None:
        self.source = source
        self.flags = flags
        self.groups = groups
        self._compiled = compiled

    def get(self) -> regex.Pattern[str]:
        compiled = self._compiled
        if compiled is None:
            compiled = regex.compile(self.source, regex.VERSION0, cache_pattern=False)
            self._compiled = compiled  # held here only: not also in regex's own cache
        return compiled

    def unheld(self) -> regex.Pattern[str]:
        """The compiled regex for one use, kept only if it was kept already."""
        held = self._compiled
        if held is not None:
            return held
        return regex.compile(self.source, regex.VERSION0, cache_pattern=False)

    @classmethod
    def checked(cls, source: str) -> LazyRegex:
        """Compiled once to learn that it compiles, its flags and groups (raises
        regex.error), and let go: a compiled regex holds about 5 KiB, and most patterns
        never see a candidate line."""
        compiled = regex.compile(source, regex.VERSION0, cache_pattern=False)
        return cls(source, compiled.flags, tuple(compiled.groupindex))


CompiledRegex = regex.Pattern[str]


@dataclass(frozen=True, slots=True)
class Pattern:
    pack: str
    id: str
    source: str
    lazy: LazyRegex
    severity: str
    key: Template
    count: int
    within: float
    escalate: str
    article: str | None
    article_text: str
    remedy: Remedy | None
    examples: tuple[Example, ...]
    cooldown: float = 600.0
    ignore: tuple[LazyRegex, ...] = ()  # a line any of these finds is not this pattern's
    recurrence: Recurrence = Recurrence()

    @property
    def qualified(self) -> str:
        return f"{self.pack}/{self.id}"

    @property
    def regex(self) -> CompiledRegex:
        return self.lazy.get()


@dataclass(frozen=True, slots=True)
class Pack:
    name: str
    version: str
    owner: str
    dir: Path
    file: Path
    patterns: tuple[Pattern, ...]
    user: str | None = None
    group: str | None = None
    max_concurrent_fixes: int | None = None
    redact: tuple[regex.Pattern[str], ...] = ()
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    redact_entropy: float | None = None
    units: tuple[str, ...] = ()  # journal entries of these units only (globs); () every unit

    def applies_to(self, unit: str) -> bool:
        """Whether a journal entry of `unit` (journald's `_SYSTEMD_UNIT`, which the
        logging program cannot set) is matched against this pack's patterns."""
        return not self.units or any(fnmatchcase(unit, glob) for glob in self.units)


class PackErrors(ConfigErrors):
    """A pack's errors, with what it could tell of itself before them."""

    def __init__(
        self, errors: list[ConfigError], name: str = "", owner: str = "", version: str = ""
    ) -> None:
        super().__init__(errors)
        self.name, self.owner, self.version = name, owner, version


def _templates(
    section: Section,
    key: str,
    groups: set[str],
    required: bool,
    params: Mapping[str, ParamValue],
) -> Any:
    items = section.strings(key) if required else section.strings(key, None)
    if not items:
        if items == ():
            section.error(key, "must name a command")
        return None
    out = []
    for item in items:
        try:
            template = bind_params(parse_template(item), params)
        except ValueError as exc:
            section.error(key, str(exc))
            return None
        unknown = [f for f in template.fields if f not in groups]
        if unknown:
            section.error(key, f"uses {{{unknown[0]}}}, which the pattern's regex does not capture")
        out.append(template)
    return tuple(out)


def _script_inside(
    section: Section, key: str, argv: tuple[Template, ...], pack_dir: Path, trust: bool
) -> None:
    """The program is a file inside the pack (symlinks resolved) that only its owner can change."""
    first = argv[0]
    if first.fields:
        section.error(key, "the program to run cannot come from a field")
        return
    root = pack_dir.resolve()
    program = (pack_dir / first.expand({})).resolve()
    try:
        inside = program.relative_to(root)
    except ValueError:
        section.error(key, f"{first.text!r} is outside the pack's folder")
        return
    if not program.is_file():
        section.error(key, f"{first.text!r} does not exist in {pack_dir}")
        return
    if not program.stat().st_mode & 0o111:  # the fix would fail to start: Permission denied
        section.error(key, f"{first.text!r} is not executable (chmod +x {program})")
        return
    if not trust:
        return
    for path in [root, *(root / parent for parent in reversed(inside.parents[:-1])), program]:
        problem = untrusted(path)
        if problem:
            section.error(key, f"refused: {problem}")
            return


def _recovery(section: Section | None) -> Recovery | None:
    if not section:
        return None
    source = section.string("match")
    within = section.duration("within", 60.0)
    section.finish()
    if not isinstance(source, str):
        return None
    try:
        compiled = regex.compile(source, regex.VERSION0 | regex.MULTILINE)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        section.error("match", f"is not a valid regex: {exc}")
        return None
    return Recovery(source, compiled, within if within is not None else 60.0)


def _remedy(
    section: Section,
    groups: set[str],
    pack_dir: Path,
    trust: bool,
    constraints: dict[str, Constraint],
    params: Mapping[str, ParamValue],
) -> Remedy | None:
    run = _templates(section, "run", groups, True, params)
    verify = _templates(section, "verify", groups, False, params)
    for key, argv in (("run", run), ("verify", verify)):
        if argv:
            _script_inside(section, key, argv, pack_dir, trust)
            for name in sorted({f for t in argv for f in t.fields} - set(constraints)):
                section.error(
                    key,
                    f"uses {{{name}}}, which has no constraint: a log line chooses it, so "
                    f'declare [pattern.fields] {name} = {{ type = "..." }} (or allow/one_of)',
                )
    backoff = Backoff()
    backoff_section = section.table("backoff")
    if backoff_section:
        backoff = Backoff(
            initial=backoff_section.duration("initial", 1.0),
            maximum=backoff_section.duration("max", 30.0),
        )
        backoff_section.finish()
    budget = Budget()
    budget_section = section.table("budget")
    if budget_section:
        budget = Budget(
            runs=budget_section.integer("runs", budget.runs, minimum=1) or budget.runs,
            within=budget_section.duration("within", budget.within) or budget.within,
        )
        budget_section.finish()
    recovery = _recovery(section.table("recovery"))
    remedy = Remedy(
        run=run or (),
        timeout=section.duration("timeout", 30.0),
        attempts=section.integer("attempts", 3, minimum=1),
        backoff=backoff,
        verify=verify,
        cooldown=section.duration("cooldown", 600.0),
        deadline=section.duration("deadline", 600.0),
        budget=budget,
        recovery=recovery,
        constraints=tuple(constraints.values()),
        env=param_env(params),
    )
    section.finish()
    return remedy if run else None


def _is_regex_fact(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], tuple)
        and all(isinstance(name, str) for name in value[1])
    )


def _compile(section: Section, source: str, memo: Memo, key: str = "match") -> LazyRegex | None:
    known = memo.get("regex", source, _is_regex_fact)
    if known is not None:  # compiled on an earlier start: its flags and groups were kept
        flags, groups = known
        return LazyRegex(source, flags, tuple(groups))
    try:
        compiled = LazyRegex.checked(source)
    except regex.error as exc:
        section.error(key, f"is not a valid regex: {exc}")
    except (OverflowError, RecursionError, ValueError) as exc:
        section.error(key, f"cannot be compiled: {exc}")
    else:
        memo.put("regex", source, (compiled.flags, compiled.groups))
        return compiled
    return None


def _examples(section: Section) -> tuple[Example, ...]:
    out = []
    for ex in section.tables("example"):
        line = ex.string("line")
        matches = ex.boolean("matches", True)
        fields = None
        if "fields" in ex.data:
            raw = ex.data["fields"]
            ex._used.add("fields")
            if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
                ex.error("fields", "must be a table of strings")
            else:
                fields = dict(raw)
        if fields and not matches:
            ex.error("fields", "an example that must not match cannot expect fields")
        ex.finish()
        if isinstance(line, str):
            at = ex.doc.keylines.line_of((*ex.path, "line"))
            out.append(Example(line=line, matches=matches is not False, fields=fields, at=at))
    return tuple(out)


def _article(section: Section, pack_dir: Path) -> tuple[str | None, str]:
    article = section.string("article", None)
    if not isinstance(article, str):
        return None, ""
    if article.startswith(("http://", "https://")):
        return article, ""
    path = (pack_dir / article).resolve()
    try:
        path.relative_to(pack_dir.resolve())
        with path.open("rb") as handle:
            return article, handle.read(ARTICLE_MAX_BYTES).decode("utf-8", "replace")
    except ValueError:
        section.error("article", f"{article!r} is outside the pack's folder")
    except OSError as exc:
        section.error("article", f"cannot read {article!r}: {exc.strerror}")
    return article, ""


def _pattern(
    section: Section,
    pack: str,
    pack_dir: Path,
    seen: set[str],
    trust: bool,
    params: Mapping[str, ParamValue],
    memo: Memo,
) -> Pattern | None:
    pid = section.string("id")
    if isinstance(pid, str):
        if pid in seen:
            section.error("id", f"{pid!r} is defined twice in this pack")
        seen.add(pid)
    source = section.string("match")
    compiled = _compile(section, source, memo) if isinstance(source, str) else None
    groups = set(compiled.groups) if compiled else set()
    severity = section.string("severity", "error", choices=SEVERITIES)
    key_text = section.string("key", "")
    key = Template("", ())
    try:
        key = parse_template(key_text if isinstance(key_text, str) else "")
        for name in key.fields:
            if compiled and name not in groups:
                section.error("key", f"uses {{{name}}}, which the pattern's regex does not capture")
    except ValueError as exc:
        section.error("key", str(exc))
    count, within = 1, 0.0
    when = section.table("when")
    if when:
        count = when.integer("count", 1, minimum=1)
        within = when.duration("within", 60.0)
        when.finish()
    escalate = section.string("escalate", "unresolved", choices=ESCALATE)
    article, article_text = _article(section, pack_dir)
    constraints = parse_constraints(section.table("fields"), groups, params)
    remedy_section = section.table("remedy")
    remedy = None
    if remedy_section:
        remedy = _remedy(remedy_section, groups, pack_dir, trust, constraints, params)
    if remedy is not None and compiled is not None:
        problem = remedy_pattern_problem(compiled.source, compiled.flags, set(remedy.fields))
        if problem:
            section.error("match", problem)
    default_cooldown = remedy.cooldown if remedy else 600.0
    cooldown = section.duration("cooldown", default_cooldown)
    recurrence = _recurrence(section, count or 1, remedy)
    examples = _examples(section)
    if not examples:
        section.error("example", "every pattern needs at least one example line that it matches")
    ignore = _ignore(section, memo, examples)
    section.finish()
    if not (isinstance(pid, str) and compiled):
        return None
    return Pattern(
        pack=pack,
        id=pid,
        source=source,
        lazy=compiled,
        severity=severity or "error",
        key=key,
        count=count or 1,
        within=within or 0.0,
        escalate=escalate or "unresolved",
        article=article,
        article_text=article_text,
        remedy=remedy,
        examples=examples,
        cooldown=cooldown if cooldown is not None else default_cooldown,
        ignore=ignore,
        recurrence=recurrence,
    )


def _recurrence(section: Section, count: int, remedy: Remedy | None) -> Recurrence:
    """`recurrence`: when a resolved fix counts as not holding. By default, as many matches
    as opened the incident (`when.count`), within the remedy's cooldown: after it, a match
    runs the fix again, so a longer window would never be reached."""
    cooldown = remedy.cooldown if remedy is not None else 0.0
    table = section.table("recurrence")
    if not table:
        return Recurrence(count, cooldown)
    if remedy is None:
        section.error("recurrence", "only a pattern with a remedy has a fix that can fail to hold")
    within = table.duration("within", cooldown)
    if within is not None and within > cooldown and remedy is not None:
        table.error(
            "within",
            f"is longer than the remedy's cooldown ({cooldown:g}s): after the cooldown a "
            "match runs the fix again, so the window would be cut short",
        )
    recurrence = Recurrence(
        table.integer("count", count, minimum=1) or count,
        min(within, cooldown) if within is not None else cooldown,
    )
    table.finish()
    return recurrence


MAX_IGNORE = 16


def _ignore(section: Section, memo: Memo, examples: tuple[Example, ...]) -> tuple[LazyRegex, ...]:
    """`ignore`: regexes that take a line back from the pattern (fail2ban's ignoreregex),
    tried only on lines the pattern matched; each must be proven by a `matches = false`
    example (agent.examples)."""
    sources = section.strings("ignore", (), allow_str=True)
    if not sources:
        return ()
    if len(sources) > MAX_IGNORE:
        section.error("ignore", f"at most {MAX_IGNORE} regexes")
        return ()
    if sources and not any(not e.matches for e in examples):
        section.error("ignore", "needs a `matches = false` example that it takes back")
    out = []
    for n, source in enumerate(sources):
        compiled = _compile(section, source, memo, f"ignore[{n}]")
        if compiled is not None:
            out.append(compiled)
    return tuple(out)


NAME = PLAIN_NAME
UNIT_GLOB = regex.compile(r"[A-Za-z0-9:_.@\\*?\[\]-]{1,256}")  # systemd's unit name characters
MAX_UNITS = 64


def _units(head: Section) -> tuple[str, ...]:
    """`[pack] units`: the systemd units whose journal entries the pack's patterns see."""
    units = head.strings("units", ())
    if units is None:
        return ()
    if len(units) > MAX_UNITS:
        head.error("units", f"names {len(units)} units; at most {MAX_UNITS}")
        return ()
    for glob in units:
        if not UNIT_GLOB.fullmatch(glob):
            head.error(
                "units",
                f"{glob[:80]!r} is not a unit name or glob (letters, digits, : _ . @ \\ - and"
                " the wildcards * ? [ ])",
            )
            return ()
    return tuple(units)


def _name(head: Section, key: str, value: Any) -> Any:
    """A pack's name, owner or version: it labels logs, metrics and the receiver's
    rows, so it is a plain name (None if it is not, so nothing shows it)."""
    if isinstance(value, str) and not NAME.fullmatch(value):
        head.error(
            key,
            f"{value[:80]!r} is not a name: 1 to 64 letters, digits and . _ @ + -, "
            "starting with a letter or digit",
        )
        return None
    return value


def load_pack(
    pack_dir: Path,
    trust: bool = True,
    host: HostParams | None = None,
    memo: Memo | None = None,
) -> Pack:
    """Load one pack folder; raises ConfigErrors listing every problem found.

    `trust` checks that pack.toml, every script it runs, and every folder from
    / down to them are owned by root or the agent's user and writable by
    nobody else; `logmend test`, which runs no script, skips it. `host` holds
    the agent config's values for the pack's params; `memo` what earlier starts
    derived from the same patterns.
    """
    problems = list(trust_chain(pack_dir)) if trust else []
    if trust:
        pack_dir = pack_dir.resolve()  # fixes run from what was checked, not a swappable link
    file = pack_dir / "pack.toml"
    try:
        doc = Doc.read(file)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from exc
    doc.errors.extend(ConfigError(file, "", None, f"refused: {p}") for p in problems)
    root = doc.root()
    head = root.table("pack", required=True)
    name = version = owner = user = group = limit = None
    units: tuple[str, ...] = ()
    params: dict[str, ParamValue] = {}
    entropy: float | None = None
    if head:
        name = _name(head, "name", head.string("name"))
        version = _name(head, "version", head.string("version", "0"))
        owner = _name(head, "owner", head.string("owner"))
        user = head.string("user", None)
        group = head.string("group", None)
        limit = head.integer("max_concurrent_fixes", None, minimum=1)
        params = parse_params(head.table("params"), name, host or HostParams(), doc, owner)
        entropy = head.number("redact_entropy", None, maximum=6.0)
        units = _units(head)
        head.finish()
    seen: set[str] = set()
    memo = memo or Memo()
    patterns = [
        _pattern(s, name or "?", pack_dir, seen, trust, params, memo)
        for s in root.tables("pattern")
    ]
    redact = []
    for section in root.tables("redact"):
        source = section.string("match")
        section.finish()
        if isinstance(source, str):
            try:
                redact.append(regex.compile(source, regex.VERSION0 | regex.DOTALL))
            except (regex.error, OverflowError, RecursionError, ValueError) as exc:
                section.error("match", f"is not a valid regex: {exc}")
    if not patterns and not doc.errors:
        root.error("pattern", "a pack needs at least one [[pattern]]")
    root.finish()
    if doc.errors:
        raise PackErrors(
            doc.errors,
            name if isinstance(name, str) else "",
            owner if isinstance(owner, str) else "",
            str(version) if isinstance(version, str) else "",
        )
    assert isinstance(name, str) and isinstance(owner, str)
    return Pack(
        name=name,
        version=str(version),
        owner=owner,
        dir=pack_dir,
        file=file,
        patterns=tuple(p for p in patterns if p is not None),
        user=user,
        group=group,
        max_concurrent_fixes=limit,
        redact=tuple(redact),
        params=params,
        redact_entropy=entropy,
        units=units,
    )
