"""Redaction: secrets are masked before anything is stored or sent.

Applied to what leaves the line path — incident samples, fields and keys, and
the argv and output tails of fixes — never to every line, so the hot path
pays nothing for it. A rule's group named `secret`, when it has one, is the
part masked; otherwise the whole match is.

Cost and safety: each built-in rule names literals, one of which (case-folded)
every match of it contains, and a text holding none of them skips the rule
(`TRIGGERS`). Rules without such a literal (bare AWS secret keys, card
numbers, the opt-in entropy rule) are skipped by a cheap shape check instead.
Token rules start only where their alphabet starts or end at a fixed shape,
and their runs are possessive, so no input makes a rule backtrack over the
same run twice: a hostile 64 KiB line costs linear time, and every rule still
runs under `TIMEOUT`, a timeout masking the whole text.

The provider token formats (GitHub, Slack, Google, Stripe, OpenAI, npm,
SendGrid, AWS) follow the prefixes and lengths that gitleaks' default rules
document (config/gitleaks.toml, MIT licence; rule ids github-pat,
github-oauth, github-app-token, github-refresh-token, github-fine-grained-pat,
slack-bot-token, slack-user-token, slack-app-token, slack-legacy-*,
slack-webhook-url, gcp-api-key, stripe-access-token, openai-api-key,
npm-access-token, sendgrid-api-token, aws-access-token, jwt, private-key).
They are written here with looser lengths (a masked near-token costs a
sample some detail; a missed token leaks it) and in linear-time form.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import regex

MASK = "[REDACTED]"
TIMEOUT = 0.05


@dataclass(frozen=True, slots=True)
class Rule:
    """A built-in rule; `needs` are case-folded literals, one of which every match contains.

    An empty `needs` means the rule has no such literal and always runs.
    """

    name: str
    needs: tuple[str, ...]
    pattern: regex.Pattern[str]


_KEYWORD = (
    r"(?:password|passwd|passphrase|pwd|token|secret|credentials?|"
    r"(?:api|access|account|private)[_\-]?key)"
)
_KEYWORD_NEEDS = ("pass", "pwd", "token", "secret", "key", "credential")
# a quoted value whole; an unterminated quote (a cut line) still masks to the next separator
_VALUE = r"(?P<secret>\"[^\"]*\"|'[^']*'|[^\s&,;]++)"
_ARG = r"(?P<secret>\"[^\"]*\"|'[^']*'|\S++)"
_PEM_LINE = r"-----{0}[A-Z0-9 ]{{0,40}}PRIVATE KEY(?: BLOCK)?-----"

_SOURCES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        # the whole block, BEGIN to END, or to the end of the text when END is missing
        "private-key",
        ("private key",),
        r"(?s)" + _PEM_LINE.format("BEGIN") + r"(?:.*?" + _PEM_LINE.format("END") + r"|.*+)",
    ),
    (
        "authorization",
        ("authorization",),
        r"(?i)\b(?:proxy-)?authorization\s*[:=]\s*"
        r"(?:(?:bearer|basic|digest|token|negotiate)\s+)?"
        r"(?P<secret>\"[^\"]*\"|'[^']*'|[^\s,;\"']+)",
    ),
    # `bearer TOKEN` without a header name: in prose, curl arguments, JSON
    (
        "bearer",
        ("bearer",),
        r"(?i)\bbearer(?:[ \t]++|[\"']?[ \t]*+[:=][ \t]*+[\"']?)"
        r"(?P<secret>[A-Za-z0-9\-._~+/]++=*+)",
    ),
    ("cookie", ("cookie",), r"(?i)\b(?:set-)?cookie\s*[:=]\s*(?P<secret>[^\r\n]+)"),
    # the password runs to the last `@` before the path: `user:p@ss@host` masks `p@ss`
    (
        "url-password",
        ("://",),
        r"(?i)\b[a-z][a-z0-9+.\-]{0,30}+://[^/\s:@]*+:(?P<secret>[^\s/]+)@",
    ),
    # a token as the whole user part (`https://TOKEN@host`): no user name is that long
    (
        "url-token-user",
        ("://",),
        r"(?i)\b[a-z][a-z0-9+.\-]{0,30}+://(?P<secret>[^/\s:@]{20,}+)@",
    ),
    # `password=x`, `db_password: "x"`, `AccountKey=x;` (Azure connection strings)
    ("key-value", _KEYWORD_NEEDS, r"(?i)" + _KEYWORD + r"[\w.\-]{0,24}+\"?\s*[:=]\s*" + _VALUE),
    # `--password X`, `--db-password=X`, `-pass X` on logged command lines
    (
        "cli-flag",
        _KEYWORD_NEEDS,
        r"(?i)(?<![\w\-])--?[\w\-]{0,30}?" + _KEYWORD + r"(?:[ \t]++|=)" + _ARG,
    ),
    (
        "sshpass",
        ("sshpass",),
        r"\bsshpass(?:[ \t]++-(?:v|P[ \t]*+\S++))*+[ \t]++-p[ \t]*+" + _ARG,
    ),
    # `mysql -pSECRET`: the password is attached; `-p NAME` prompts and NAME is a database.
    # Found from its `-p` and looked back from there: scanning forward from every `mysql`
    # would cost a line of `mysql mysql ...` a rescan per word
    (
        "mysql-password",
        ("mysql", "mariadb"),
        r"[ \t]-p(?=\S)(?<=\b(?:mysql|mariadb)[\w\-]{0,8}(?:[ \t]+(?!-p)\S+){0,8}[ \t]+-p)" + _ARG,
    ),
    # Azure shared access signatures in URLs
    ("sas-signature", ("sig=",), r"(?i)[?&]sig=(?P<secret>[^&\s\"']++)"),
    (
        "aws-access-key",
        ("akia", "asia", "aida", "aroa", "abia", "acca"),
        r"\b(?:AKIA|ASIA|AIDA|AROA|ABIA|ACCA)[0-9A-Z]{16}\b",
    ),
    (
        "github",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}+|github_pat_[A-Za-z0-9_]{30,}+)",
    ),
    ("slack", ("xox", "xapp-"), r"\b(?:xox[abeoprs]|xapp)-[A-Za-z0-9\-]{10,}+"),
    (
        "slack-webhook",
        ("hooks.slack.com",),
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9+/]{20,}+)",
    ),
    ("google-api-key", ("aiza",), r"\bAIza[A-Za-z0-9_\-]{30,}+"),
    (
        "stripe",
        ("k_live_", "k_test_", "k_prod_", "whsec_"),
        r"\b(?:[rs]k_(?:live|test|prod)_[A-Za-z0-9]{10,}+|whsec_[A-Za-z0-9+/=]{20,}+)",
    ),
    (
        "openai",
        ("sk-",),
        r"\bsk-(?:(?:proj|svcacct|admin|ant-[a-z0-9]{1,20}+)-[A-Za-z0-9_\-]{20,}+"
        r"|[A-Za-z0-9]{32,}+)",
    ),
    ("npm", ("npm_",), r"\bnpm_[A-Za-z0-9]{30,}+"),
    ("sendgrid", ("sg.",), r"\bSG\.[A-Za-z0-9_\-]{16,}+\.[A-Za-z0-9_\-]{16,}+"),
    # the header is masked when it starts a token; claims and signature always are
    (
        "jwt",
        ("eyj",),
        r"(?:(?<![\w\-])eyJ[A-Za-z0-9_\-]{5,}+)?\.eyJ[A-Za-z0-9_\-]{5,}+\.[A-Za-z0-9_\-]*+",
    ),
    # a bare AWS secret access key: exactly 40 of [A-Za-z0-9/+] with upper and lower case
    # and a digit, `/` or `+`; a git sha (no upper case) or a UUID (hyphens) is not one
    (
        "aws-secret-key",
        (),
        r"(?<![A-Za-z0-9/+])(?=[a-z0-9/+]{0,39}+[A-Z])(?=[A-Z0-9/+]{0,39}+[a-z])"
        r"(?=[A-Za-z]{0,39}+[0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
    ),
)

BUILTIN: tuple[Rule, ...] = tuple(
    Rule(name, needs, regex.compile(source)) for name, needs, source in _SOURCES
)
# every literal some rule needs; most samples hold none, and an `in` test each is far
# cheaper than running the rules
TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(n for rule in BUILTIN for n in rule.needs))
CARD = regex.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d])")
DIGIT_RUN = regex.compile(r"\d[\d -]{11,}\d")
# the opt-in entropy rule: runs of a base64 or hex alphabet, 20 characters or more
ENTROPY_MIN = 20
ENTROPY_TOKEN = regex.compile(r"(?<![A-Za-z0-9+/_\-=])[A-Za-z0-9+/_\-]{20,}+=*+")
_HEX = regex.compile(r"[0-9a-fA-F]+")


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


def entropy(token: str) -> float:
    """Shannon entropy in bits per character."""
    size = len(token)
    return -sum(n / size * math.log2(n / size) for n in Counter(token).values())


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


def _longest_word(text: str) -> int:
    return max(map(len, text.split()), default=0)


class Redactor:
    """Built-in rules plus a pack's own; compiled once, at load.

    `entropy`, when set, also masks tokens of 20 or more base64 or hex characters
    whose Shannon entropy reaches it (bits per character): an opt-in net for
    secrets of no known shape, at the cost of masking some identifiers too.
    """

    def __init__(
        self,
        extra: Iterable[regex.Pattern[str]] = (),
        fast: bool = True,
        entropy: float | None = None,
    ) -> None:
        self.rules = BUILTIN
        self.extra = list(extra)
        self.fast = fast
        self.entropy = entropy

    def __call__(self, text: str) -> str:
        try:
            text = self._rules(text)
            if self.entropy is not None and (not self.fast or _longest_word(text) >= ENTROPY_MIN):
                text = ENTROPY_TOKEN.sub(self._mask_entropy, text, timeout=TIMEOUT)
            if self.fast and not DIGIT_RUN.search(text):
                return text
            return CARD.sub(_mask_card, text, timeout=TIMEOUT)
        except TimeoutError:
            return MASK  # cannot tell what is secret in time: keep nothing

    def _rules(self, text: str) -> str:
        if self.fast:
            # casefold, not lower: `(?i)` matches the long s (U+017F) as `s`, which lower() keeps
            folded = text.casefold()
            long_word = _longest_word(text) >= 40
            rules = [
                rule
                for rule in self.rules
                if (any(need in folded for need in rule.needs) if rule.needs else long_word)
            ]
        else:
            rules = list(self.rules)
        for rule in rules:
            text = rule.pattern.sub(_mask, text, timeout=TIMEOUT)
        for pattern in self.extra:
            text = pattern.sub(_mask, text, timeout=TIMEOUT)
        return text

    def _mask_entropy(self, match: regex.Match[str]) -> str:
        token = match.group().rstrip("=")
        if len(token) < ENTROPY_MIN or self.entropy is None:
            return match.group()
        if _HEX.fullmatch(token):
            # hex carries 4 bits a character at most, base64 6: judged one bit lower
            if token.isdigit() or entropy(token) < self.entropy - 1.0:
                return match.group()
        elif not any(ch.isdigit() for ch in token) or entropy(token) < self.entropy:
            # a token with no digit is a word, a path or an identifier far more often
            return match.group()
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
