"""Grouping accuracy of the unknown-error miner (agent.drain) on labelled public logs.

Loghub's 2k samples (https://github.com/logpai/loghub: 16 systems, 2,000 lines each,
every line labelled with the template that printed it) are the field's benchmark for
log parsers. Grouping accuracy (Zhu et al., ICSE-SEIP 2019) is the share of lines whose
predicted group is exactly their true group: a line counts only if its template holds
every line of its true template and nothing else.

Each system is measured twice: on the message (the labelled `Content` column, as log
parsers are benchmarked) and on the whole line (header, time and level included: what
the agent groups). drain3, the reference implementation, runs on the same messages in
the same run when it can be imported (`--drain3 SITE`: a folder it was installed into
with `pip install --target`), with its defaults and with the same masks as ours.

    python -m bench.grouping --loghub DIR [--drain3 SITE]

DIR holds SYSTEM/SYSTEM_2k.log_structured.csv (and SYSTEM_2k.log) as loghub has them.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.drain import Drain


def grouping_accuracy(predicted: Sequence[object], truth: Sequence[str]) -> float:
    """The share of lines whose predicted group is exactly their true group."""
    by_truth: dict[str, int] = defaultdict(int)
    for label in truth:
        by_truth[label] += 1
    groups: dict[object, list[str]] = defaultdict(list)
    for group, label in zip(predicted, truth, strict=True):
        groups[group].append(label)
    correct = 0
    for labels in groups.values():
        if len(set(labels)) == 1 and by_truth[labels[0]] == len(labels):
            correct += len(labels)
    return correct / len(truth) if truth else 1.0


def ours(lines: Sequence[str]) -> list[object]:
    drain = Drain(max_templates=100_000)
    return [drain.add(line).id for line in lines]


def drain3_runner(site: Path, masked: bool) -> Callable[[Sequence[str]], list[object]] | None:
    sys.path.insert(0, str(site))
    try:
        from drain3 import TemplateMiner  # type: ignore[import-not-found]
        from drain3.masking import MaskingInstruction  # type: ignore[import-not-found]
        from drain3.template_miner_config import (  # type: ignore[import-not-found]
            TemplateMinerConfig,
        )
    except ImportError:
        return None
    finally:
        sys.path.remove(str(site))
    from agent.drain import _MASKS

    def run(lines: Sequence[str]) -> list[object]:
        config = TemplateMinerConfig()
        if masked:
            config.masking_instructions = [
                MaskingInstruction(regex, name.strip("<>")) for name, regex in _MASKS
            ]
        config.profiling_enabled = False
        miner = TemplateMiner(config=config)
        return [miner.add_log_message(line)["cluster_id"] for line in lines]

    return run


def load(root: Path, system: str) -> tuple[list[str], list[str], list[str]]:
    """(messages, whole lines, labels) of one system."""
    folder = root / system
    with (folder / f"{system}_2k.log_structured.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    raw = folder / f"{system}_2k.log"
    whole = raw.read_text(encoding="utf-8", errors="replace").splitlines() if raw.exists() else []
    if len(whole) != len(rows):
        whole = []
    return [r["Content"] for r in rows], whole, [r["EventId"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loghub", type=Path, required=True)
    parser.add_argument("--drain3", type=Path)
    args = parser.parse_args(argv)
    systems = sorted(p.name for p in args.loghub.iterdir() if p.is_dir())
    runners: list[tuple[str, Callable[[Sequence[str]], list[object]]]] = []
    if args.drain3 is not None:
        for name, masked in (("drain3", False), ("drain3 + our masks", True)):
            runner = drain3_runner(args.drain3, masked)
            if runner is not None:
                runners.append((name, runner))
    heads = ["system", "ours, message", "ours, whole line", *(n + ", message" for n, _ in runners)]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    columns: list[list[float]] = [[] for _ in heads[1:]]
    for system in systems:
        messages, whole, labels = load(args.loghub, system)
        found = [grouping_accuracy(ours(messages), labels)]
        found.append(grouping_accuracy(ours(whole), labels) if whole else float("nan"))
        found += [grouping_accuracy(run(messages), labels) for _, run in runners]
        for column, value in zip(columns, found, strict=True):
            column.append(value)
        print(f"| {system} | " + " | ".join(f"{v:.3f}" for v in found) + " |")
    means = [statistics.fmean(v for v in c if not math.isnan(v)) for c in columns]
    print("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
