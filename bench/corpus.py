"""A seeded, realistic benchmark corpus and pattern sets, in every tool's format.

Lines mix web server, database, auth, application and kernel logs. About 1%
of lines match one of the N patterns, about 5% are near misses (same shape,
an identifier no pattern names), the rest is background. Patterns are
mutually exclusive, so every tool's count of matched lines must be equal.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FAMILIES = [
    # (regex with {n}; line with {n}, {ip}, {r})
    (
        r"ERROR \[(?P<component>[\w.-]+)\] E{code}: payment gateway timeout \(client "
        r"(?P<client>\d{{1,3}}(?:\.\d{{1,3}}){{3}})\)",
        "{ts} ERROR [billing.worker-{r}] E{code}: payment gateway timeout (client {ip})",
    ),
    (
        r"\[error\] \d+#\d+: \*\d+ upstream (?P<upstream>svc-{n}) timed out \(110: Connection timed "
        r"out\), client: (?P<client>[\d.]+)",
        "{ngts} [error] 2471#2471: *{r} upstream svc-{n} timed out (110: Connection timed out), "
        "client: {ip}",
    ),
    (
        r"\[\d+\] FATAL:  could not open relation \"(?P<rel>t_{n}_\w+)\" for client (?P<client>[\d.]+)",
        '{ts} UTC [{r}] FATAL:  could not open relation "t_{n}_orders" for client {ip}',
    ),
    (
        r"sshd\[\d+\]: error: PAM: authentication failure for (?P<user>svc{n}) from "
        r"(?P<client>[\d.]+)",
        "{syslog} web-01 sshd[{r}]: error: PAM: authentication failure for svc{n} from {ip}",
    ),
    (
        r"kernel: \[\s*\d+\.\d+\] nfs: server (?P<client>[\d.]+) not responding, share{n} timed out",
        "{syslog} web-01 kernel: [{r}.{r}] nfs: server {ip} not responding, share{n} timed out",
    ),
    (
        r"Exception in thread \"(?P<thread>[\w-]+)\" com\.example\.svc{n}\.(?P<exc>\w+Exception): "
        r"request from (?P<client>[\d.]+) failed",
        '{ts} Exception in thread "pool-{r}" com.example.svc{n}.TimeoutException: '
        "request from {ip} failed",
    ),
]

BACKGROUND = [
    '{ip} - - [27/Nov/2026:12:00:{s:02d} +0000] "GET /api/v1/items/{r} HTTP/1.1" 200 {r} "-" '
    '"Mozilla/5.0 (X11; Linux x86_64)"',
    "{ts} UTC [{r}] LOG:  duration: {r}.{r} ms  statement: SELECT * FROM orders WHERE id = {r}",
    "{syslog} web-01 sshd[{r}]: Accepted publickey for deploy from {ip} port {r} ssh2",
    "{ts} INFO [orders.worker-{r}] processed order {r} in {r}ms (client {ip})",
    "{syslog} web-01 kernel: [{r}.{r}] eth0: link up, 1000Mbps, full-duplex",
    "{ngts} [notice] 2471#2471: *{r} client {ip} closed keepalive connection",
    "{syslog} web-01 CRON[{r}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)",
    "{ts} WARN [http-nio-8080-exec-{r}] o.a.c.c.C.[Tomcat].[localhost] slow request {r}ms",
]


def _fill(template: str, rng: random.Random, n: int) -> str:
    return template.format(
        ts=f"2026-11-27 12:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}",
        ngts=f"2026/11/27 12:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        syslog=f"Nov 27 12:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        r=rng.randrange(1, 99999),
        s=rng.randrange(60),
        n=n,
        code=10000 + n,
    )


def patterns(count: int) -> list[str]:
    return [FAMILIES[i % len(FAMILIES)][0].format(n=i, code=10000 + i) for i in range(count)]


def lines(count: int, pattern_count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.01:
            n = rng.randrange(pattern_count)
            out.append(_fill(FAMILIES[n % len(FAMILIES)][1], rng, n))
        elif roll < 0.06:  # near miss: a shape a pattern has, an id no pattern names
            n = pattern_count + rng.randrange(100000)
            out.append(_fill(FAMILIES[n % len(FAMILIES)][1], rng, n))
        else:
            out.append(_fill(rng.choice(BACKGROUND), rng, 0))
    return out


def write_all(out: Path, sizes: list[int], line_count: int, seed: int) -> dict[int, dict[str, str]]:
    """Corpus and pattern set per size, in logmend's, fail2ban's, SEC's and swatch's formats."""
    made: dict[int, dict[str, str]] = {}
    for size in sizes:
        base = out / f"p{size}"
        (base / "pack").mkdir(parents=True, exist_ok=True)
        regexes = patterns(size)
        corpus = base / "corpus.log"
        corpus.write_text("\n".join(lines(line_count, size, seed + size)) + "\n")
        (base / "patterns.json").write_text(json.dumps(regexes))
        pack = ['[pack]\nname = "bench"\nversion = "1"\nowner = "bench"\n']
        for i, regex in enumerate(regexes):
            example = _fill(FAMILIES[i % len(FAMILIES)][1], random.Random(i), i)
            pack.append(
                f"[[pattern]]\nid = \"p{i}\"\nmatch = '''{regex}'''\nescalate = \"never\"\n"
                f"key = \"\"\n[[pattern.example]]\nline = '''{example}'''\n"
            )
        (base / "pack" / "pack.toml").write_text("\n".join(pack))
        host = "(?P<client>[\\d.]+)"
        ipv4 = "(?P<client>\\d{1,3}(?:\\.\\d{1,3}){3})"
        f2b = [r.replace(host, "<HOST>").replace(ipv4, "<HOST>") for r in regexes]
        (base / "fail2ban.conf").write_text(
            "[Definition]\nfailregex = " + "\n            ".join(f2b) + "\nignoreregex =\n"
        )
        (base / "sec.rules").write_text(
            "".join(
                f"type=Single\nptype=RegExp\npattern={r}\ndesc=p{i}\naction=write - $0\n\n"
                for i, r in enumerate(regexes)
            )
        )
        slashed = [r.replace("/", "\\/") for r in regexes]
        (base / "swatch.rc").write_text("".join(f"watchfor /{r}/\n  echo\n\n" for r in slashed))
        made[size] = {"dir": str(base), "corpus": str(corpus)}
    return made


# -- issue 16: patterns with no required literal, matched by the shape of a structured line --
CODES = [a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
PATTERN_CODES = 400  # codes [0, 400) name patterns; the rest are for lines no pattern names
SHAPED_FAMILIES = [
    # (regex with {c}/{C}: the pattern's two-letter code; line with {c}/{C} and fields)
    (
        r"^(?P<ts>\d{{10}}) (?P<method>[A-Z]{{3,7}}) (?P<path>/\S*) (?P<status>5\d\d) "
        r"(?P<bytes>\d+)\s+(?P<upstream>{c}\d{{1,3}})$",
        "{epoch} GET /api/v1/items/{r} 50{d} {r} {c}{d}",
        "{epoch} GET /api/v1/items/{r} {ok} {r} {c}{d}",
    ),
    (
        r"^(?P<request>[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}) "
        r"(?P<level>[A-Z]{{4,5}})\s+(?P<code>{C}\d{{3}})\s+(?P<detail>.+)$",
        "{uuid} ERROR {C}5{d}{d} upstream timed out after {r}ms",
        "{uuid} INFO {C}2{d}{d} request served in {r}ms",
    ),
    (
        r"^(?P<ts>\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (?P<unit>[a-z]+)"
        r"\[(?P<pid>\d+)\]\s+(?P<code>{c}\d+)\s+(?P<detail>\S.*)$",
        "{iso} worker[{r}] {c}{r} lost connection to the broker",
        "{iso} worker[{r}] {c}{r} heartbeat",
    ),
    (
        r"\b(?P<metric>[a-z_]+)=(?P<value>\d+(?:\.\d+)?)\s+(?P<shard>{c}\d+)\s+"
        r"(?P<rate>\d+)/s$",
        "ts={epoch} queue_depth={r} {c}{d} {r}/s",
        "ts={epoch} queue_depth={r}.{d} {c}{d} {r}",
    ),
]


def _fill_shaped(template: str, rng: random.Random, code: int) -> str:
    c = CODES[code]
    return template.format(
        c=c,
        C=c.upper(),
        epoch=1767225600 + rng.randrange(86400),
        uuid="-".join(
            "".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4, 4, 12)
        ),
        iso=f"2026-11-29T12:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
        r=rng.randrange(1, 99999),
        d=rng.randrange(10),
        ok=rng.choice((200, 204, 304, 404)),
    )


def shaped_set(count: int, share: float) -> tuple[list[str], list[tuple[int, int] | None]]:
    """`count` patterns of which `share` have no required literal (spread over the
    structured families); with each, its (family, code) if literal-free, else None."""
    free = round(count * share)
    step = count / free if free else 0
    chosen = {int(i * step) for i in range(free)}
    regexes: list[str] = []
    kinds: list[tuple[int, int] | None] = []
    for i in range(count):
        if i in chosen:
            k = len([x for x in kinds if x is not None])
            family, code = k % len(SHAPED_FAMILIES), k // len(SHAPED_FAMILIES)
            c = CODES[code]
            regexes.append(SHAPED_FAMILIES[family][0].format(c=c, C=c.upper()))
            kinds.append((family, code))
        else:
            regexes.append(FAMILIES[i % len(FAMILIES)][0].format(n=i, code=10000 + i))
            kinds.append(None)
    return regexes, kinds


def shaped_lines(
    count: int, kinds: list[tuple[int, int] | None], seed: int, structured: float = 0.2
) -> list[str]:
    """Like `lines`, and a `structured` share of lines in the shaped formats that no
    pattern names (healthy statuses, codes past PATTERN_CODES): the lines a shape gate
    must let through to the confirm or keep away from it."""
    rng = random.Random(seed)
    out = []
    size = len(kinds)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.01:
            n = rng.randrange(size)
            kind = kinds[n]
            if kind is None:
                out.append(_fill(FAMILIES[n % len(FAMILIES)][1], rng, n))
            else:
                out.append(_fill_shaped(SHAPED_FAMILIES[kind[0]][1], rng, kind[1]))
        elif roll < 0.06:  # near miss: a shape a pattern has, an id no pattern names
            if rng.random() < 0.5:
                n = size + rng.randrange(100000)
                out.append(_fill(FAMILIES[n % len(FAMILIES)][1], rng, n))
            else:
                family = rng.randrange(len(SHAPED_FAMILIES))
                code = rng.randrange(PATTERN_CODES, len(CODES))
                out.append(_fill_shaped(SHAPED_FAMILIES[family][1], rng, code))
        elif roll < 0.06 + structured:
            family = rng.randrange(len(SHAPED_FAMILIES))
            code = rng.randrange(PATTERN_CODES, len(CODES))
            out.append(_fill_shaped(SHAPED_FAMILIES[family][2], rng, code))
        else:
            out.append(_fill(rng.choice(BACKGROUND), rng, 0))
    return out


def write_shaped(base: Path, count: int, share: float, line_count: int, seed: int) -> Path:
    """A pack, patterns.json and corpus.log for one share of literal-free patterns."""
    regexes, kinds = shaped_set(count, share)
    (base / "pack").mkdir(parents=True, exist_ok=True)
    (base / "patterns.json").write_text(json.dumps(regexes))
    (base / "corpus.log").write_text("\n".join(shaped_lines(line_count, kinds, seed)) + "\n")
    pack = ['[pack]\nname = "bench"\nversion = "1"\nowner = "bench"\n']
    for i, (regex, kind) in enumerate(zip(regexes, kinds, strict=True)):
        if kind is None:
            example = _fill(FAMILIES[i % len(FAMILIES)][1], random.Random(i), i)
        else:
            example = _fill_shaped(SHAPED_FAMILIES[kind[0]][1], random.Random(i), kind[1])
        pack.append(
            f"[[pattern]]\nid = \"p{i}\"\nmatch = '''{regex}'''\nescalate = \"never\"\n"
            f"key = \"\"\n[[pattern.example]]\nline = '''{example}'''\n"
        )
    (base / "pack" / "pack.toml").write_text("\n".join(pack))
    return base / "corpus.log"
