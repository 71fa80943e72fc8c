"""Baseline: every pattern in turn with the regex module, on every line. Prints matched lines."""

import json
import sys

import regex


def main() -> None:
    patterns = [regex.compile(p, regex.VERSION0) for p in json.load(open(sys.argv[1]))]
    matched = 0
    with open(sys.argv[2], "rb") as handle:
        for raw in handle:
            line = raw.rstrip(b"\n").decode("utf-8", "replace")
            hit = False
            for pattern in patterns:
                if pattern.search(line, timeout=1.0) is not None:
                    hit = True
            matched += hit
    print(matched)


if __name__ == "__main__":
    main()
