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
from agent.receiver.scopes import Identity
from agent.receiver.storebase import StoreBase, owned

MAX_PATTERNS = 2000  # articles of one pack in one publication
MAX_ARTICLE = 64 * 1024  # what a pack ships of one article
MAX_MATCH = 4096  # a pattern's regex
MAX_QUERY = 4096  # an error line asked about
MAX_SCANNED = 5000  # articles one search looks through
MAX_FOUND = 50
REGEX_TIMEOUT = 0.01  # one pattern against the line
REGEX_BUDGET = 0.25  # all the patterns of one search; past it, only words are compared


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
        rows.append(
            {
                "pattern": name(row.get("pattern"), f"{at}.pattern"),
                "match": text(row.get("match"), f"{at}.match", MAX_MATCH),
                "article": text(row.get("article", ""), f"{at}.article", 1024, False),
                "text": text(row.get("text", ""), f"{at}.text", MAX_ARTICLE, False),
            }
        )
    out["patterns"] = rows
    return out


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
    words = [w for w in query.casefold().split() if w]
    by_regex, by_words = [], []
    deadline = clock() + REGEX_BUDGET
    for row in rows:
        fields = None
        pattern = compiled.get(row["match"]) if clock() < deadline else None
        if pattern is not None:
            try:
                found = pattern.search(query, timeout=REGEX_TIMEOUT)
            except TimeoutError:
                found = None
            if found is not None:
                fields = {k: v for k, v in found.groupdict().items() if v is not None}
        if fields is not None:
            by_regex.append({**row, "found_by": "pattern", "fields": fields})
        elif words and all(
            w in f"{row['pack']} {row['pattern']} {row['text']}".casefold() for w in words
        ):
            by_words.append({**row, "found_by": "words", "fields": {}})
    return (by_regex + by_words)[:MAX_FOUND]


class ArticleStore(StoreBase):
    """The articles table: a pack's articles replaced whole at each publication."""

    def put_articles(self, who: Identity, doc: dict[str, Any]) -> int:
        owner = who.owner_for(doc["owner"], "owner")  # raises Forbidden
        now = time.time()

        def put(db: Conn) -> None:
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
        with self._engine.read() as db:
            rows = db.execute(
                "SELECT owner, pack, pattern, version, match, article, text FROM articles"  # noqa: S608
                f" {where} ORDER BY owner, pack, pattern LIMIT ?",
                (*args, MAX_SCANNED),
            ).fetchall()
        return search([dict(r) for r in rows], query, COMPILED)
