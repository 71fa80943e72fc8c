"""What the receiver accepts: bounded before decoding, strict after.

The receiver is shared by every team, so no value one client sends may break
it for the others: bodies are bounded before they are decoded (size, and the
decoder's own limits on arrays, maps and strings), and every field is checked
for type, range and size after, each refusal a 4xx that names the field.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from typing import Any

import msgpack

MAX_EVENTS = 5000
MAX_EVENT_BYTES = 1024 * 1024  # one event as stored (its lines, fields, fix output, article)
MAX_COUNT = 2**53  # exact in a double, well inside SQLite's 64-bit integers
MAX_NAME = 256  # host, owner, pack, pattern, status, severity, fingerprint
MAX_ID = 200
MAX_TEXT = 1024 * 1024
EARLIEST = 0.0  # the epoch: a negative time is no time
FUTURE_SLACK = 7 * 86400.0  # clocks drift; a week ahead is a broken clock, not a drift

NAMES = ("host", "pack", "pattern", "status", "fingerprint")
MAX_DEPTH = 16  # nesting anywhere in an event: attempts hold lists of maps, no more
MAX_INT = 2**63 - 1
STATS_FIELDS = ("matches", "incidents", "resolved", "failed", "escalated")


class InvalidEvent(ValueError):
    """A value the receiver will never accept: answered 4xx, naming the field."""


def decode(body: bytes, content_type: str) -> Any:
    """JSON or msgpack, with msgpack's own bounds so a small body cannot expand in memory."""
    if "json" in content_type:
        return json.loads(body)
    return msgpack.unpackb(
        body,
        raw=False,
        strict_map_key=True,
        max_str_len=MAX_TEXT,
        max_bin_len=MAX_TEXT,
        max_array_len=max(MAX_EVENTS, 10_000),
        max_map_len=10_000,
        max_ext_len=0,
    )


def text(value: Any, where: str, limit: int, required: bool = True) -> str:
    """A string that SQLite and the page can hold: valid UTF-8 (no lone surrogates), bounded."""
    if not isinstance(value, str) or (required and not value):
        raise InvalidEvent(
            f"{where} must be a non-empty string" if required else f"{where} must be a string"
        )
    if len(value) > limit:
        raise InvalidEvent(f"{where} is too long (at most {limit} characters)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(f"{where} is not valid UTF-8 (a lone surrogate)") from None
    return value


def name(value: Any, where: str, limit: int = MAX_NAME, required: bool = True) -> str:
    """A name (host, owner, pack, pattern, id ...): text, and no control or format
    character — a NUL would let two names join into one key, a direction mark would
    reorder what a page shows after it."""
    checked = text(value, where, limit, required)
    if not checked.isascii() and len(checked.encode()) > limit:  # keys must fit an index row
        raise InvalidEvent(f"{where} is too long (at most {limit} bytes as UTF-8)")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in checked):
        raise InvalidEvent(f"{where} has a control or format character")
    return checked


def count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidEvent(f"{where} must be an integer")
    if not 0 <= value <= MAX_COUNT:
        raise InvalidEvent(f"{where} must be between 0 and 2**53")
    return value


def moment(value: Any, where: str, now: float) -> float:
    """A Unix time that is finite and plausible: from the epoch to a week from now."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidEvent(f"{where} must be a number (Unix time)")
    # compared before any float conversion: a 400-digit integer is no time, not a 500
    if not EARLIEST <= value <= now + FUTURE_SLACK or not math.isfinite(value):
        raise InvalidEvent(f"{where} must be a Unix time between 0 and a week from now")
    return float(value)


def validate(event: Any, index: int, now: float | None = None) -> dict[str, Any]:
    """One escalation as it may be stored; raises InvalidEvent naming the field."""
    at = f"events[{index}]"
    if not isinstance(event, dict):
        raise InvalidEvent(f"{at} must be an object")
    now = time.time() if now is None else now
    name(event.get("id"), f"{at}.id", MAX_ID)
    for field in NAMES:
        name(event.get(field), f"{at}.{field}")
    # an event may leave its owner to the receiver (a token bound to one owner)
    event["owner"] = name(event.get("owner", ""), f"{at}.owner", required=False)
    if "severity" in event:
        name(event["severity"], f"{at}.severity")
    if "pack_version" in event:
        name(event["pack_version"], f"{at}.pack_version", required=False)
    for field in ("key", "source", "outcome", "article"):
        if field in event:
            text(event[field], f"{at}.{field}", MAX_TEXT, required=False)
    if "count" in event:
        count(event["count"], f"{at}.count")
    for field in ("first_seen", "last_seen"):
        if field in event:
            moment(event[field], f"{at}.{field}", now)
    if not isinstance(event.get("lines", []), list):
        raise InvalidEvent(f"{at}.lines must be a list")
    for n, line in enumerate(event.get("lines", [])):
        text(line, f"{at}.lines[{n}]", MAX_TEXT, required=False)
    fields = event.get("fields", {})
    if not isinstance(fields, dict):
        raise InvalidEvent(f"{at}.fields must be an object")
    for field, value in fields.items():
        text(value, f"{at}.fields.{text(field, f'{at}.fields', MAX_NAME)}", MAX_TEXT, False)
    if not isinstance(event.get("attempts", []), list):
        raise InvalidEvent(f"{at}.attempts must be a list")
    _everything(event, at, 0)
    try:
        size = len(json.dumps(event, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"{at} cannot be stored: {exc}") from None
    if size > MAX_EVENT_BYTES:
        raise InvalidEvent(f"{at} is larger than {MAX_EVENT_BYTES} bytes as stored")
    return event


def _everything(value: Any, where: str, depth: int) -> None:
    """Every value anywhere in an event, the keys no one checks by name included, is
    one that can be stored and answered again: bounded nesting, valid UTF-8 strings,
    finite numbers, 64-bit integers, string keys. One bad value would otherwise be a
    500 on every page that holds it, for every reader."""
    if isinstance(value, str):
        text(value, where, MAX_TEXT, required=False)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise InvalidEvent(f"{where} is an integer past 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent(f"{where} must be a finite number")
    elif isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            raise InvalidEvent(f"{where} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            for n, item in enumerate(value):
                _everything(item, f"{where}[{n}]", depth + 1)
        else:
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidEvent(f"{where} has a key that is not a string")
                label = text(key, f"{where} key", MAX_NAME, required=False)
                _everything(item, f"{where}.{label}", depth + 1)
    else:
        raise InvalidEvent(f"{where} has a value of type {type(value).__name__}")


def validate_stats(doc: Any) -> tuple[str, list[dict[str, Any]]]:
    """A host's cumulative per-pattern totals; raises InvalidEvent naming the field."""
    if not isinstance(doc, dict):
        raise InvalidEvent('body must be an object with a "host" string')
    host = name(doc.get("host"), "host")
    rows = doc.get("stats")
    if not isinstance(rows, list):
        raise InvalidEvent('body must have a "stats" list')
    if len(rows) > MAX_EVENTS:
        raise InvalidEvent(f"at most {MAX_EVENTS} stats rows per request")
    for index, row in enumerate(rows):
        at = f"stats[{index}]"
        if not isinstance(row, dict):
            raise InvalidEvent(f"{at} must be an object")
        for key in ("pack", "pattern"):
            name(row.get(key), f"{at}.{key}")
        row["owner"] = name(row.get("owner", ""), f"{at}.owner", required=False)
        for key in STATS_FIELDS:
            row[key] = count(row.get(key, 0), f"{at}.{key}")
    return host, rows
