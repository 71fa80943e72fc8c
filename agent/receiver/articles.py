"""The knowledge articles, served to teams and searchable by error text (issue 17).

A team publishes its pack's articles (`logmend pack publish`): each pattern's
regex and article. Anyone with a token of that team then asks with the error
line they met: an article is found when its pattern's regex matches the line
(the same answer the agent would give) or when the line's words are in it.
Every read is limited to the owners the token sees; the search is bounded in
rows, regex time and answers, so no query can wear the receiver down.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import regex

from agent.receiver.engine import Conn
from agent.receiver.limits import InvalidEvent, name, text
from agent.receiver.scopes import Forbidden, Identity, Scope
from agent.receiver.storebase import StoreBase, owned

MAX_PATTERNS = 2000  # articles of one pack in one publication
MAX_ARTICLE = 64 * 1024  # what a pack ships of one article
MAX_MATCH = 4096  # a pattern's regex
MAX_QUERY = 4096  # an error line asked about
MAX_SCANNED = 5000  # articles one search looks through
MAX_FOUND = 50
MAX_WORDS = 32  # of the line asked about, compared with each article
MAX_PER_OWNER = 10_000  # articles one team keeps, all its packs together
MAX_REPEAT = 10_000  # nested counted repeats of a published regex: `(?:\w{1000}){1000}` is
# a million, and compiling it alone takes seconds and hundreds of MiB
REGEX_TIMEOUT = 0.01  # one pattern against the line
BUDGET = 0.25  # one whole search: regexes, then words; past it, what was found so far


def validate_articles(doc: Any) -> dict[str, Any]:
    """A publication: {"pack", "version", "owner", "patterns": [{"pattern", "match",
    "article", "text"}]}; raises InvalidEvent naming the field."""
    if not isinstance(doc, dict):
        raise InvalidEvent('body must be an object with "pack" and a "patterns" list')
    out: dict[str, Any] = {
        "pack": name(doc.get("pack"), "pack"),
        "version": name(doc.get("version", "0"), "version"),
        "owner": name(doc.get("owner", ""), "owner", required=False),
    }
    patterns = doc.get("patterns")
    if not isinstance(patterns, list):
        raise InvalidEvent('body must have a "patterns" list')
    if len(patterns) > MAX_PATTERNS:
        raise InvalidEvent(f"at most {MAX_PATTERNS} patterns per pack")
    rows = []
    for index, row in enumerate(patterns):
        at = f"patterns[{index}]"
        if not isinstance(row, dict):
            raise InvalidEvent(f"{at} must be an object")
        checked = {
            "pattern": name(row.get("pattern"), f"{at}.pattern"),
            "match": text(row.get("match"), f"{at}.match", MAX_MATCH),
            "article": text(row.get("article", ""), f"{at}.article", 1024, False),
            "text": text(row.get("text", ""), f"{at}.text", MAX_ARTICLE, False),
        }
        for field in ("match", "article", "text"):
            if "\0" in checked[field]:  # PostgreSQL's text cannot hold one
                raise InvalidEvent(f"{at}.{field} holds a NUL character")
        if repeats(checked["match"]) > MAX_REPEAT:
            raise InvalidEvent(
                f"{at}.match repeats too deeply (nested counted repeats past {MAX_REPEAT}):"
                " it would cost the receiver too much to compile"
            )
        rows.append(checked)
    out["patterns"] = rows
    return out


def repeats(source: str) -> int:
    """The largest product of nested counted repeats (`{m,n}`) in a regex: what its
    compiled size grows with. Read as text (escapes and classes skipped), so any
    string gets an answer; an unclosed group counts as closed at the end."""
    stack: list[int] = [1]  # the worst product inside each open group
    last = 1  # the cost of the atom a quantifier would apply to
    worst = 1
    i = 0
    while i < len(source):
        char = source[i]
        if char == "\\":
            i += 2
            last = 1
            continue
        if char == "[":
            end = source.find("]", i + 2)
            i = end + 1 if end >= 0 else len(source)
            last = 1
            continue
        if char == "(":
            stack.append(1)
            i += 1
            continue
        if char == ")" and len(stack) > 1:
            last = stack.pop()
            stack[-1] = max(stack[-1], last)
            i += 1
            continue
        counted = COUNTED.match(source, i) if char == "{" else None
        if counted is not None:
            low, high = counted.group(1), counted.group(2)
            bound = int(high) if high else int(low or 0)
            last = last * max(bound, 1)
            stack[-1] = max(stack[-1], last)
            worst = max(worst, last)
            i = counted.end()
            continue
        last = 1
        i += 1
    return max(worst, *stack)


COUNTED = regex.compile(r"\{(\d{1,9})?(?:,(\d{1,9})?)?\}")


def article_owner(who: Identity, claimed: str) -> str:
    """Whose articles a publication replaces: a team's write token publishes its own
    team's (an agent's ingest token, on a host, publishes none); an admin names any."""
    if who.scope is Scope.ADMIN:
        if not claimed:
            raise Forbidden("owner: an admin's publication names the team it is for")
        return claimed
    if not claimed and who.single_owner():
        return who.owners[0]
    if claimed in who.owners:
        return claimed
    raise Forbidden(f"owner: token {who.name!r} may not publish for {claimed!r}")


class _Compiled:
    """Compiled regexes of published patterns, the most recently used kept."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._kept: OrderedDict[str, regex.Pattern[str] | None] = OrderedDict()
        self._lock = threading.Lock()  # searches run on the thread pool

    def get(self, source: str) -> regex.Pattern[str] | None:
        with self._lock:
            if source in self._kept:
                self._kept.move_to_end(source)
                return self._kept[source]
        try:
            compiled: regex.Pattern[str] | None = regex.compile(
                source, regex.VERSION0, cache_pattern=False
            )
        except Exception:  # published by a team; here it is only not a way to find it
            compiled = None
        with self._lock:
            self._kept[source] = compiled
            if len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return compiled


COMPILED = _Compiled()


def search(
    rows: list[dict[str, Any]],
    query: str,
    compiled: _Compiled,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """The articles whose pattern matches `query` (with its fields), then those that hold
    all of its words; each found once, at most MAX_FOUND."""
    words = list(dict.fromkeys(w for w in query.casefold().split() if w))[:MAX_WORDS]
    by_regex, by_words = [], []
    deadline = clock() + BUDGET
    for row in rows:
        if clock() >= deadline:  # what was found so far: no question takes a thread long
            break
        fields = None
        pattern = compiled.get(row["match"])
        if pattern is not None:
            try:
                found = pattern.search(query, timeout=REGEX_TIMEOUT)
            except TimeoutError:
                found = None
            if found is not None:
                fields = {k: v for k, v in found.groupdict().items() if v is not None}
        if fields is not None:
            by_regex.append({**row, "found_by": "pattern", "fields": fields})
        elif words:
            haystack = f"{row['pack']} {row['pattern']} {row['text']}".casefold()
            if all(w in haystack for w in words):
                by_words.append({**row, "found_by": "words", "fields": {}})
    return (by_regex + by_words)[:MAX_FOUND]


class ArticleStore(StoreBase):
    """The articles table: a pack's articles replaced whole at each publication."""

    def put_articles(self, who: Identity, doc: dict[str, Any]) -> int:
        """Replace a pack's articles; raises Forbidden (not the token's team) or
        InvalidEvent (the team would keep more than MAX_PER_OWNER)."""
        owner = article_owner(who, doc["owner"])
        now = time.time()

        def put(db: Conn) -> None:
            kept = db.execute(
                "SELECT count(*) AS n FROM articles WHERE owner=? AND pack<>?",
                (owner, doc["pack"]),
            ).fetchone()["n"]
            if kept + len(doc["patterns"]) > MAX_PER_OWNER:
                raise InvalidEvent(f"a team keeps at most {MAX_PER_OWNER} articles")
            db.execute("DELETE FROM articles WHERE owner=? AND pack=?", (owner, doc["pack"]))
            db.executemany(
                "INSERT INTO articles VALUES (?,?,?,?,?,?,?,?)",
                [
                    (owner, doc["pack"], r["pattern"], doc["version"], r["match"],
                     r["article"], r["text"], now)
                    for r in doc["patterns"]
                ],
            )  # fmt: skip

        self._engine.write(put)
        return len(doc["patterns"])

    def find_articles(self, owners: tuple[str, ...] | None, query: str) -> list[dict[str, Any]]:
        """The articles of `owners` (None: all) that answer `query` (see search)."""
        where, args = owned(owners)
        with self._engine.read() as db:  # every team in turn: none fills the scan alone
            rows = db.execute(
                "SELECT owner, pack, pattern, version, match, article, text FROM (SELECT *,"  # noqa: S608
                " row_number() OVER (PARTITION BY owner ORDER BY pack, pattern) AS turn"
                f" FROM articles {where}) a ORDER BY turn, owner LIMIT ?",
                (*args, MAX_SCANNED),
            ).fetchall()
        return search([dict(r) for r in rows], query, COMPILED)
