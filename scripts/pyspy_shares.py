"""Shares of a py-spy `--format raw` profile (collapsed stacks), per function.

Each line of the file is one stack (frames joined by ';', root first) and its sample count. A
function's inclusive share is the fraction of samples with it anywhere on the stack; its self
share, the fraction with it on top. Frames are named `function (file)`, lines dropped.

    .venv/bin/python scripts/pyspy_shares.py server.txt [TOP]
"""

from __future__ import annotations

import sys
from collections import Counter


def frame_name(frame: str) -> str:
    function, _, where = frame.partition(" (")
    return f"{function} ({where.split(':')[0]})" if where else function


def shares(lines: list[str]) -> tuple[int, Counter, Counter]:
    total, inclusive, own = 0, Counter(), Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        samples = int(count)
        total += samples  # a sample whose thread py-spy could not name still counts
        if not stack:
            continue
        names = [frame_name(f) for f in stack.split(";")]
        for name in set(names):
            inclusive[name] += samples
        own[names[-1]] += samples
    return total, inclusive, own


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: pyspy_shares.py PROFILE.txt [TOP]", file=sys.stderr)
        return 2
    with open(argv[0]) as profile:
        total, inclusive, own = shares(profile.readlines())
    top = int(argv[1]) if len(argv) == 2 else 40
    print(f"{total} samples")
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title}")
        for name, samples in counts.most_common(top):
            print(f"{100 * samples / total:5.1f}% {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
