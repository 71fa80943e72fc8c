"""Redaction rules, and the fast path that skips them agreeing with running them all."""

from __future__ import annotations

import time

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.redact import BUILTIN, MASK, TRIGGERS, Redactor, entropy, luhn_ok

FULL = Redactor(fast=False)
FAST = Redactor()
FULL_ENTROPY = Redactor(fast=False, entropy=4.0)
FAST_ENTROPY = Redactor(entropy=4.0)

GH = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)

# each listed format: the line, and the secret that must not survive
SECRETS = {
    "github-pat": (f"push https://{GH}@github.com/org/repo.git", GH),
    "github-oauth": (
        "token gho_0123456789abcdefghijABCDEFGHIJ012345 ok",
        "gho_0123456789abcdefghij",
    ),
    "github-user-to-server": ("ghu_0123456789abcdefghijABCDEFGHIJ012345", "0123456789abcdefghij"),
    "github-server-to-server": ("ghs_0123456789abcdefghijABCDEFGHIJ012345", "0123456789abcdefghij"),
    "github-refresh": ("ghr_0123456789abcdefghijABCDEFGHIJ012345", "0123456789abcdefghij"),
    "github-fine-grained": (
        "GH_TOKEN github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
        "abcdefghijklmnopqrstuvwxyz",
    ),
    "slack-bot": ("slack xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "AbCdEfGhIj"),
    "slack-user": (
        "xoxp-1234567890-1234567890-1234567890-0123456789abcdef01",
        "0123456789abcdef01",
    ),
    "slack-legacy": ("xoxa-2-abcdefghijklmnop", "abcdefghijklmnop"),
    "slack-app": (
        "app token xapp-1-A0123456789-1234567890123-abcdef0123456789",
        "abcdef0123456789",
    ),
    "google": ("maps key=AIzaSyD-0123456789abcdefghijklmnopqrstu,", "0123456789abcdefghij"),
    "google-bare": ("maps AIzaSyD-0123456789abcdefghijklmnopqrstu used", "0123456789abcdefghij"),
    "stripe-live": ("charge with sk_live_51H0123456789abcdefghijABCD", "51H0123456789abcdefghij"),
    "stripe-restricted": ("rk_live_51H0123456789abcdefghijABCD", "51H0123456789abcdefghij"),
    "stripe-test": ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc"),
    "openai-project": (
        "OPENAI sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56_-Qr78St90",
        "Ab12Cd34Ef56Gh78Ij90",
    ),
    "openai-legacy": ("sk-0123456789abcdefghijT3BlbkFJ0123456789abcdefghij", "T3BlbkFJ"),
    "npm": (
        "//registry.npmjs.org/ npm_0123456789abcdefghijABCDEFGHIJ012345",
        "abcdefghijABCDEFGHIJ",
    ),
    "sendgrid": (
        "mail SG.abcdefghijklmnopqrstuv.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq sent",
        "abcdefghijklmnopqrstuv",
    ),
    "bearer-bare": ("calling upstream with bearer abc123.def-456_ghi now", "abc123.def-456_ghi"),
    "bearer-json": ('{"bearer": "tok-8899-aabbcc"}', "tok-8899-aabbcc"),
    "cli-password": ("exec: deploy --password hunter2 --user bob", "hunter2"),
    "cli-password-eq": ("exec: deploy --db-password=hunter2", "hunter2"),
    "sshpass": ("running sshpass -p Sup3rPw ssh root@db1 uptime", "Sup3rPw"),
    "sshpass-quoted": ("sshpass -v -p 'pass word' ssh root@db1", "pass word"),
    "mysql": ("cron: mysqldump -u root -pS3cr3tPw --all-databases", "S3cr3tPw"),
    "azure-account-key": (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc+DEF/ghi012==;"
        "EndpointSuffix=core.windows.net",
        "abc+DEF/ghi012",
    ),
    "azure-sas": (
        "GET https://a.blob.core.windows.net/c/b?sv=2020-08-04&sig=AbC%2Bd3F%3D&se=1",
        "AbC%2Bd3F",
    ),
    "aws-secret-bare": (f"creds {AWS_SECRET} loaded", AWS_SECRET),
    "aws-secret-mixed": (
        "x 1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbC y",
        "1AbCdEfGhIjKlMnOpQrStUvWxYz",
    ),
    "pem-block": (
        f"loaded key:\n{PEM}\nthen",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    ),
    "pem-no-end": (PEM.rsplit("\n", 1)[0], "VTLw7onLRnrq0/IzW7yWR7Qkrm"),
    "pem-openssh": (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXktdjEAAAAA",
    ),
    "url-token-user": (
        "git clone https://AbCdEf0123456789ghijKLMN@dev.azure.com/o/p",
        "AbCdEf0123456789ghijKLMN",
    ),
    "url-password-at": ("GET https://user:p@ss@host/x", "p@ss"),
    "url-password-ats": ("redis://:a@b@c@cache:6379/0", "a@b@c"),
    "jwt-after-hyphen": (
        "x-jwt-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl",
        "eyJzdWIiOiJzZWNyZXQifQ",
    ),
    "long-s": ("paſſword=hunter2", "hunter2"),
    "cut-quote": ('config {"password": "hunter2', "hunter2"),
}

# look like a secret's neighbours, and must stay
KEPT = [
    "commit 3f786850e387550fdab836ed7e6dc881de23001b merged",
    "COMMIT 3F786850E387550FDAB836ED7E6DC881DE23001B",
    "request 550e8400-e29b-41d4-a716-446655440000 done",
    "task-runner started; disk-usage 80%; sk-learn model loaded",
    "password reset email sent to bob",
    "token refresh scheduled in 30s",
    "mysql -u root -p appdb -P 3306",
    "deploy --password-file /etc/app/pw --token-file /etc/app/tok",
    "mkdir -p /var/lib/app && ssh -p 2222 host",
    "ghp_short and xoxb- and AIza and sk_live_ and npm_config_cache",
    "SG.version.2 and sig=; and bearer",
    "GET https://example.com:8443/a@b HTTP/1.1",
    "git clone ssh://git@host/x; open https://first.last@example.com/",
    "/usr/local/lib/python3.11/site-packages/agent/redact.py",
    "order 1234567890123 shipped",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
]

FRAGMENTS = [
    "Authorization: Bearer abc.def",
    "authorization=Basic Zm9vOmJhcg==",
    "Cookie: a=b; c=d",
    "Set-Cookie: sid=1",
    "https://u:p4ss@host/x",
    "https://u:p@ss@host/x",
    "https://AbCdEf0123456789ghijKLMN@",
    "password=hunter2",
    'db_password: "x y"',
    "api-key=zz9",
    "AccountKey=abc+/=;",
    "AKIAABCDEFGHIJKLMNOP",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "-eyJhbGciOiJ9.eyJzdWIiOiIx.",
    "-----BEGIN EC PRIVATE KEY-----abc",
    "-----END EC PRIVATE KEY-----",
    "4111 1111 1111 1111",
    "4111-1111-1111-1112",
    "order 1234567890123",
    GH,
    "github_pat_11ABCDEFG0123456789_abcdefghij",
    "xoxb-1234567890-abcdefghij",
    "xapp-1-A0123-456",
    "hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXX",
    "AIzaSyD-0123456789abcdefghijklmnopqrstu",
    "sk_live_0123456789ab",
    "whsec_0123456789abcdefghijKLMN",
    "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl",
    "sk-0123456789abcdefghijABCDEFGHIJ01",
    "npm_0123456789abcdefghijABCDEFGHIJ01",
    "SG.abcdefghijklmnop.ABCDEFGHIJKLMNOP",
    "bearer tok",
    "--password x",
    "-pass y",
    "sshpass -p z",
    "mysql -u r -pq",
    "?sig=abc",
    AWS_SECRET,
    "3f786850e387550fdab836ed7e6dc881de23001b",
    "0123456789abcdefABCDEF0123456789abcdef+/",
    "task-runner",
    "sk-",
    "ghp_",
    "SG.",
    "token",
    "KEY",
    "ſ",
    "paſſword=z",
    "://",
    "@",
    " ",
    "=",
    ":",
    "-",
    "\n",
]

TEXTS = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(TRIGGERS), st.text(max_size=8)),
    max_size=8,
).map("".join)


@given(TEXTS)
@settings(max_examples=600, deadline=None)
def test_the_fast_path_gives_what_running_every_rule_gives(text):
    assert FAST(text) == FULL(text)
    assert FAST_ENTROPY(text) == FULL_ENTROPY(text)


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_each_listed_format_is_masked(name):
    line, secret = SECRETS[name]
    out = FAST(line)
    assert secret not in out and MASK in out, out
    assert FULL(line) == out


@pytest.mark.parametrize("line", KEPT)
def test_near_misses_are_kept(line):
    assert FAST(line) == line


def test_each_kind_of_secret_is_masked_and_the_rest_kept():
    cases = {
        "GET / Authorization: Bearer abc.def-ghi next": "GET / Authorization: Bearer "
        + MASK
        + " next",
        "connect postgres://app:hunter2@db:5432/x": f"connect postgres://app:{MASK}@db:5432/x",
        "GET https://user:p@ss@host/x": f"GET https://user:{MASK}@host/x",
        "login password=hunter2 user=bob": f"login password={MASK} user=bob",
        "key AKIAIOSFODNN7EXAMPLE used": f"key {MASK} used",
        "card 4111 1111 1111 1111 ok, order 1234567890123": f"card {MASK} ok, order 1234567890123",
        "no secret here, 200 OK in 12 ms": "no secret here, 200 OK in 12 ms",
        f"push https://{GH}@github.com/o/r.git": f"push https://{MASK}@github.com/o/r.git",
        "run --password hunter2 --user bob": f"run --password {MASK} --user bob",
        "sshpass -p s3cr3t ssh root@db1": f"sshpass -p {MASK} ssh root@db1",
        "mysql -u root -pS3cr3t app": f"mysql -u root -p{MASK} app",
        f"got {PEM} then": f"got {MASK} then",
        f"got {PEM}".replace("-----END RSA PRIVATE KEY-----", ""): f"got {MASK}",
    }
    for line, expected in cases.items():
        assert FAST(line) == expected


def test_the_entropy_rule_is_opt_in_and_masks_random_tokens_only():
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
    line = (
        f"blob {body} sha 3f786850e387550fdab836ed7e6dc881de23001b "
        "name this_is_a_long_variable_name id 12345678901234567890123"
    )
    assert FAST(line) == line
    assert FAST_ENTROPY(line) == (
        f"blob {MASK} sha {MASK} name this_is_a_long_variable_name id 12345678901234567890123"
    )
    # a lone PEM body line holds no BEGIN: only the entropy rule can know it
    assert FAST_ENTROPY(PEM.splitlines()[1]) == MASK
    assert Redactor(entropy=4.5)(line) == line.replace(
        "3f786850e387550fdab836ed7e6dc881de23001b", MASK
    )
    assert entropy("aaaa") == 0 and entropy("abcd") == 2


def test_luhn_and_pack_rules():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    ssn = Redactor([regex.compile(r"\b\d{3}-\d{2}-(?P<secret>\d{4})\b")])
    assert ssn("customer 123-45-6789 gone") == f"customer 123-45-{MASK} gone"


def hostile_lines(need: str) -> list[str]:
    """64 KiB lines built to make a rule rescan: its literal repeated, near-miss runs."""
    size = 64 * 1024
    fills = ["a", "-", "A1b/", " ", '="', ".", "=", ":", "@", "_", " -p", "x" * 39, "\n"]
    fills += ["-----END RSA PRIVATE", "eyJ", "Ab1" * 13 + "A"]
    lines = []
    for fill in fills:
        unit = need + fill
        lines.append((unit * (size // len(unit) + 1))[:size])
        lines.append(need + (fill * (size // len(fill) + 1))[:size])
    return lines


SHAPED = {
    "aiza": "AIza",
    "eyj": "eyJ",
    "sg.": "SG.",
    "private key": "-----BEGIN RSA PRIVATE KEY-----",
}


@pytest.mark.parametrize("rule", BUILTIN, ids=lambda rule: rule.name)
def test_no_rule_backtracks_on_a_hostile_64_kib_line(rule):
    needs = {
        n for need in rule.needs or ("",) for n in (need, need.upper(), SHAPED.get(need, need))
    }
    worst = 0.0
    for need in needs:
        for line in hostile_lines(need):
            start = time.perf_counter()
            rule.pattern.sub("", line, timeout=2.0)  # a quadratic rule takes minutes here
            worst = max(worst, time.perf_counter() - start)
    assert worst < 2.0
