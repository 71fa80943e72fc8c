"""The cost of redaction: logmend's rules against the old ones and two maintained rule sets.

Usage: python -m bench.redaction [--baseline REV] [--gitleaks PATH/gitleaks.toml]
                                 [--lines 2000] [--rounds 5]

Every option redacts the same texts in one run, rounds interleaved so a busy
machine slows them alike; each figure is the median round, per text, and the
report gives it as a multiple of the baseline (logmend's redactor at REV,
loaded from git). The texts:

- clean: ~200-byte sample lines with no secret; a third hold a word that wakes
  a rule (`token`, `key`, `://`, ...), as real samples do
- secret: ~200-byte lines, each with one planted secret of a listed format;
  the report also counts how many of them each option masked
- hostile: 64 KiB lines built to make rules rescan or backtrack (long random
  tokens, thousands of near-miss tokens, keywords with no value, a PEM block
  with no END)

Options measured when available: detect-secrets (`pip install detect-secrets`;
its plugins' `scan_line`, each reported secret then replaced), and gitleaks'
default rule list (`--gitleaks` names a copy of its config/gitleaks.toml;
each rule compiled with `regex`, gated by its keywords as gitleaks does).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import string
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import regex

from agent.redact import MASK, Redactor, entropy

Redact = Callable[[str], str]

SECRETS = [
    "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd",
    "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "xapp-1-A0123456789-1234567890123-abcdef0123456789abcdef",
    "AIzaSyD-0123456789abcdefghijklmnopqrstu",
    "sk_live_51H0123456789abcdefghijABCDEFGH",
    "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34Yz56Ab78Cd90Ef12Gh34T3BlbkFJAb12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34Yz56Ab78",
    "npm_0123456789abcdefghijABCDEFGHIJ012345",
    "SG.abcdefghijklmnopqrstuv.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAIOSFODNN7EXAMPLE",
]
# the secret, in a setting a log line gives it; {} is the secret
SETTINGS = [
    "request failed: {} rejected by upstream",
    "git clone https://{}@github.com/org/repo.git failed: exit 128",
    "env dump: TOKEN={} REGION=eu-west-1",
]
EXTRA_SECRET_LINES = [
    ("exec: deploy --password Hunter2Pw --user bob", "Hunter2Pw"),
    ("exec: sshpass -p Hunter2Pw ssh root@db1 uptime", "Hunter2Pw"),
    ("calling api with bearer abc123.def-456 now", "abc123.def-456"),
    ("GET https://user:p@ssw0rd@host/x 401", "ssw0rd"),
    ("AccountName=acct;AccountKey=abc+DEF/ghi012jkl==;EndpointSuffix=core.windows.net", "ghi012"),
    ("password=Sup3rS3cret! user=bob", "Sup3rS3cret!"),
    ("Authorization: Bearer SECRETTOKEN123abc", "SECRETTOKEN123abc"),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6\n"
        "-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHC",
    ),
]
WORDS = [
    "upstream",
    "timed",
    "out",
    "while",
    "reading",
    "response",
    "header",
    "from",
    "upstream",
    "client",
    "server",
    "request",
    "connection",
    "reset",
    "by",
    "peer",
    "worker",
    "exited",
    "with",
    "code",
    "pool",
    "exhausted",
    "retrying",
    "in",
    "checkpoint",
    "complete",
    "disk",
    "usage",
    "above",
    "threshold",
    "on",
    "volume",
    "failed",
    "to",
    "open",
    "file",
]
WAKERS = [
    "token refresh ok",
    "key rotation scheduled",
    "GET https://example.com/health",
    "sk-learn",
]


def clean_lines(count: int, rng: random.Random) -> list[str]:
    out = []
    for index in range(count):
        words = [rng.choice(WORDS) for _ in range(28)]
        if index % 3 == 0:
            words.insert(rng.randrange(len(words)), rng.choice(WAKERS))
        line = f"2026-11-27T10:{index % 60:02d}:00Z app[{1000 + index}]: " + " ".join(words)
        out.append(line[:200])
    return out


def secret_lines() -> list[tuple[str, str]]:
    lines = [(setting.format(secret), secret) for secret in SECRETS for setting in SETTINGS]
    return lines + EXTRA_SECRET_LINES


def hostile_lines(rng: random.Random) -> dict[str, str]:
    size = 64 * 1024
    b64 = string.ascii_letters + string.digits + "+/"

    def repeat(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    return {
        "random base64": "".join(rng.choice(b64) for _ in range(size)),
        "near-miss tokens": repeat("ghp_short sk-x xoxb- AIza SG.x. npm_ eyJ- task-runner "),
        "keywords, no value": repeat("password token secret key "),
        "dots then scheme": repeat("a.") + "://",
        "PEM, no END": "-----BEGIN RSA PRIVATE KEY-----\n" + repeat("MIIEowIBAAKCAQEAu1SU1Lf\n"),
        "jwt prefixes": repeat("eyJ-"),
        "mysql words": repeat("mysql "),
        "plain text": repeat("connection reset by peer "),
    }


def load_baseline(rev: str) -> ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:agent/redact.py"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("redact_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:agent/redact.py", "exec"), module.__dict__)
    return module


def detect_secrets_redactor() -> tuple[Redact, Callable[[], None]] | None:
    """Its default plugins and filters, as `detect-secrets scan` runs them on a file's lines.

    (`scan_line`, its ad-hoc entry point, searches eagerly and reports every word.)
    """
    try:
        from detect_secrets.core.scan import _process_line_based_plugins
        from detect_secrets.settings import default_settings
    except ImportError:
        return None
    context = default_settings()
    context.__enter__()

    def redact(text: str) -> str:
        lines = list(enumerate(text.splitlines(), 1))
        for found in _process_line_based_plugins(lines, "sample.log"):
            if found.secret_value:
                text = text.replace(found.secret_value, MASK)
        return text

    return redact, lambda: context.__exit__(None, None, None)


def gitleaks_redactor(path: Path) -> tuple[Redact, str]:
    """gitleaks' rules as logmend would run them: keyword gate, `regex`, the same timeout."""
    config = tomllib.loads(path.read_text())
    rules = []
    failed = 0
    for rule in config.get("rules", []):
        source = rule.get("regex")
        if not source:
            continue  # path-only rules
        try:
            compiled = regex.compile(source)
        except (regex.error, ValueError):
            failed += 1
            continue
        keywords = tuple(k.lower() for k in rule.get("keywords", ()))
        rules.append((compiled, keywords, rule.get("secretGroup", 0), rule.get("entropy")))

    def redact(text: str) -> str:
        lower = text.lower()
        for compiled, keywords, group, threshold in rules:
            if keywords and not any(k in lower for k in keywords):
                continue
            try:
                found = list(compiled.finditer(text, timeout=0.05))
            except TimeoutError:
                return MASK
            for match in found:
                index = group or (1 if compiled.groups else 0)
                value = match.group(index) if index <= compiled.groups else match.group()
                if value and (threshold is None or entropy(value) >= threshold):
                    text = text.replace(value, MASK)
        return text

    return redact, f"{len(rules)} rules compiled, {failed} not ({path})"


def per_text(redact: Redact, texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        redact(text)
    return (time.perf_counter() - started) / len(texts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="fbbc84a", help="git revision of the old redactor")
    parser.add_argument("--gitleaks", type=Path, help="a copy of gitleaks' config/gitleaks.toml")
    parser.add_argument("--lines", type=int, default=2000, help="clean lines per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(11)
    clean = clean_lines(args.lines, rng)
    planted = secret_lines()
    secrets = [line for line, _ in planted]
    hostile = hostile_lines(rng)

    options: dict[str, Redact] = {}
    notes: list[str] = []
    baseline = load_baseline(args.baseline)
    if baseline is not None:
        options[f"logmend at {args.baseline} (baseline)"] = baseline.Redactor()
    else:
        notes.append(f"no baseline: `git show {args.baseline}:agent/redact.py` failed")
    options["logmend"] = Redactor()
    options["logmend, every rule (no fast path)"] = Redactor(fast=False)
    options["logmend, entropy 4.0"] = Redactor(entropy=4.0)
    closers = []
    found = detect_secrets_redactor()
    if found is not None:
        from importlib.metadata import version

        options[f"detect-secrets {version('detect-secrets')}"] = found[0]
        closers.append(found[1])
    else:
        notes.append("detect-secrets not installed: not measured")
    if args.gitleaks:
        redact, note = gitleaks_redactor(args.gitleaks)
        options["gitleaks rules"] = redact
        notes.append("gitleaks: " + note)

    times: dict[str, dict[str, list[float]]] = {name: {} for name in options}
    for _ in range(args.rounds):
        for name, redact in options.items():
            row = times[name]
            row.setdefault("clean", []).append(per_text(redact, clean))
            row.setdefault("secret", []).append(per_text(redact, secrets * 20))
            for label, text in hostile.items():
                row.setdefault(label, []).append(per_text(redact, [text]))
    masked = {
        name: sum(secret not in redact(line) for line, secret in planted)
        for name, redact in options.items()
    }
    altered = {
        name: sum(redact(line) != line for line in clean) for name, redact in options.items()
    }
    # a hostile line that comes back as the bare mask timed out (or was all secret)
    whole = {
        name: {label for label, text in hostile.items() if redact(text) == MASK}
        for name, redact in options.items()
    }
    for close in closers:
        close()

    base = next(iter(options))
    median = {
        name: {k: statistics.median(v) for k, v in row.items()} for name, row in times.items()
    }
    print(f"clean: {len(clean)} lines; secret: {len(planted)} lines; hostile: 64 KiB each\n")
    print(
        "| option | clean µs/line | secret µs/line | hostile ms/line, worst (median) "
        f"| secrets masked of {len(planted)} | clean lines changed "
        "| clean, secret, hostile vs baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, row in median.items():
        hostile_times = [row[label] for label in hostile]
        ratios = (
            ", ".join(f"{row[key] / median[base][key]:.2f}×" for key in ("clean", "secret"))
            + f", {sum(hostile_times) / sum(median[base][label] for label in hostile):.2f}×"
        )
        print(
            f"| {name} | {row['clean'] * 1e6:.1f} | {row['secret'] * 1e6:.1f} "
            f"| {max(hostile_times) * 1e3:.1f} ({statistics.median(hostile_times) * 1e3:.1f}) "
            f"| {masked[name]} | {altered[name]} | {ratios} |"
        )
    print("\nhostile lines, ms each (median round); † came back as the bare mask:\n")
    print("| option | " + " | ".join(hostile) + " |")
    print("|---|" + "---:|" * len(hostile))
    for name, row in median.items():
        cells = [
            f"{row[label] * 1e3:.1f}{'†' if label in whole[name] else ''}" for label in hostile
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
