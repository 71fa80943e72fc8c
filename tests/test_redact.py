"""Redaction rules, and the fast path that skips them agreeing with running them all."""

from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.redact import MASK, Redactor, luhn_ok

FULL = Redactor(fast=False)
FAST = Redactor()

FRAGMENTS = [
    "Authorization: Bearer abc.def",
    "authorization=Basic Zm9vOmJhcg==",
    "Cookie: a=b; c=d",
    "Set-Cookie: sid=1",
    "https://u:p4ss@host/x",
    "password=hunter2",
    'db_password: "x y"',
    "api-key=zz9",
    "AKIAABCDEFGHIJKLMNOP",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "-----BEGIN EC PRIVATE KEY-----abc",
    "4111 1111 1111 1111",
    "4111-1111-1111-1112",
    "order 1234567890123",
    "token",
    "KEY",
    "://",
    " ",
    "=",
    ":",
    "\n",
]


@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=8))
@settings(max_examples=400, deadline=None)
def test_the_fast_path_gives_what_running_every_rule_gives(parts):
    text = "".join(parts)
    assert FAST(text) == FULL(text)


def test_each_kind_of_secret_is_masked_and_the_rest_kept():
    cases = {
        "GET / Authorization: Bearer abc.def-ghi next": "GET / Authorization: Bearer "
        + MASK
        + " next",
        "connect postgres://app:hunter2@db:5432/x": f"connect postgres://app:{MASK}@db:5432/x",
        "login password=hunter2 user=bob": f"login password={MASK} user=bob",
        "key AKIAIOSFODNN7EXAMPLE used": f"key {MASK} used",
        "card 4111 1111 1111 1111 ok, order 1234567890123": f"card {MASK} ok, order 1234567890123",
        "no secret here, 200 OK in 12 ms": "no secret here, 200 OK in 12 ms",
    }
    for line, expected in cases.items():
        assert FAST(line) == expected


def test_luhn_and_pack_rules():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    ssn = Redactor([regex.compile(r"\b\d{3}-\d{2}-(?P<secret>\d{4})\b")])
    assert ssn("customer 123-45-6789 gone") == f"customer 123-45-{MASK} gone"
