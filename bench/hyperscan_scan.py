"""Baseline: a Hyperscan multi-pattern scan of each line, extracting no fields. Prints matched lines."""

import json
import sys

import hyperscan


def main() -> None:
    sources = [p.encode() for p in json.load(open(sys.argv[1]))]
    db = hyperscan.Database()
    flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
    db.compile(
        expressions=sources,
        ids=list(range(len(sources))),
        elements=len(sources),
        flags=[flags] * len(sources),
    )
    hit = [False]

    def on_match(*_: object) -> bool:
        hit[0] = True
        return True  # one match is enough for this line

    matched = 0
    with open(sys.argv[2], "rb") as handle:
        for raw in handle:
            hit[0] = False
            try:
                db.scan(raw.rstrip(b"\n"), match_event_handler=on_match)
            except hyperscan.ScanTerminated:
                pass
            matched += hit[0]
    print(matched)


if __name__ == "__main__":
    main()
