"""Redaction: secrets are masked before anything is stored or sent.

Applied to what leaves the line path — incident samples, fields and keys, and
the argv and output tails of fixes — never to every line, so the hot path
pays nothing for it. A rule's group named `secret`, when it has one, is the
part masked; otherwise the whole match is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import regex

MASK = "[REDACTED]"
TIMEOUT = 0.05

BUILTIN: tuple[tuple[str, str], ...] = (
    (
        "private-key",
        r"-----BEGIN[A-Z ]{0,30}PRIVATE KEY-----(?:.*?-----END[A-Z ]{0,30}PRIVATE KEY-----|.*)",
    ),
    (
        "authorization",
        r"(?i)\b(?:proxy-)?authorization\s*[:=]\s*(?:(?:bearer|basic|digest|token|negotiate)\s+)?"
        r"(?P<secret>[^\s,;\"']+)",
    ),
    ("cookie", r"(?i)\b(?:set-)?cookie\s*[:=]\s*(?P<secret>[^\r\n]+)"),
    ("url-password", r"(?i)\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:(?P<secret>[^@\s/]+)@"),
    (
        "key-value",
        r"(?i)\b[\w.\-]*(?:password|passwd|pwd|passphrase|token|secret|api[_\-]?key|"
        r"access[_\-]?key|private[_\-]?key|credentials?)[\w.\-]*\"?\s*[:=]\s*"
        r"(?P<secret>\"[^\"]*\"|'[^']*'|[^\s&,;]+)",
    ),
    ("aws-access-key", r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]+"),
)
CARD = regex.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d])")
# every built-in rule needs one of these (lower-cased) in the text; most log lines have
# none, and one `in` test each is far cheaper than running the rules
TRIGGERS = (
    "key",
    "pass",
    "pwd",
    "token",
    "secret",
    "credential",
    "authorization",
    "cookie",
    "://",
    "akia",
    "asia",
    "aida",
    "aroa",
    "eyj",
)
DIGIT_RUN = regex.compile(r"\d[\d -]{11,}\d")


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: regex.Match[str]) -> str:
    digits = "".join(ch for ch in match.group() if ch.isdigit())
    return MASK if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group()


def _mask(match: regex.Match[str]) -> str:
    if "secret" in match.re.groupindex and match.start("secret") >= 0:
        start, end = match.span("secret")
        whole_start = match.start()
        text = match.group()
        return text[: start - whole_start] + MASK + text[end - whole_start :]
    return MASK


class Redactor:
    """Built-in rules plus a pack's own; compiled once, at load."""

    def __init__(self, extra: Iterable[regex.Pattern[str]] = (), fast: bool = True) -> None:
        self.rules = [regex.compile(source, regex.DOTALL) for _, source in BUILTIN]
        self.extra = list(extra)
        self.fast = fast

    def __call__(self, text: str) -> str:
        lower = text.lower()
        rules = self.extra
        if not self.fast or any(trigger in lower for trigger in TRIGGERS):
            rules = self.rules + self.extra
        for rule in rules:
            try:
                text = rule.sub(_mask, text, timeout=TIMEOUT)
            except TimeoutError:
                return MASK  # cannot tell what is secret in time: keep nothing
        if self.fast and not DIGIT_RUN.search(text):
            return text
        try:
            return CARD.sub(_mask_card, text, timeout=TIMEOUT)
        except TimeoutError:
            return MASK

    def fields(self, fields: Mapping[str, str]) -> dict[str, str]:
        return {name: self(value) for name, value in fields.items()}

    def attempt(self, attempt: dict[str, Any]) -> dict[str, Any]:
        out = dict(attempt)
        out["argv"] = [self(item) for item in attempt["argv"]]
        out["stdout"] = self(attempt["stdout"])
        out["stderr"] = self(attempt["stderr"])
        return out


BUILTIN_REDACTOR = Redactor()
