"""Shares of a py-spy `--format raw` profile (collapsed stacks), per function.

Each line of the file is one stack (frames joined by ';', root first) and its sample count. A
function's inclusive share is the fraction of samples with it anywhere on the stack; its self
share, the fraction with it on top. Frames are named `function (file)`, lines dropped.

    .venv/bin/python scripts/pyspy_shares.py server.txt [TOP] [--thread MainThread]

With `--thread TEXT`, only the stacks of threads whose root frame (py-spy `--threads`: "thread
(TID): NAME") contains TEXT count, so shares are of that thread's samples.
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


def of_thread(lines: list[str], text: str) -> list[str]:
    """The stacks whose root frame names a thread containing `text`."""
    return [line for line in lines if line.startswith("thread (") and text in line.split(";", 1)[0]]


def main(argv: list[str]) -> int:
    thread = None
    if "--thread" in argv:
        at = argv.index("--thread")
        thread, argv = (argv[at + 1] if at + 1 < len(argv) else ""), argv[:at] + argv[at + 2 :]
    if not 1 <= len(argv) <= 2 or thread == "":
        print("usage: pyspy_shares.py PROFILE.txt [TOP] [--thread TEXT]", file=sys.stderr)
        return 2
    with open(argv[0]) as profile:
        lines = profile.readlines()
    if thread is not None:
        lines = of_thread(lines, thread)
        if not lines:
            print(f"pyspy_shares.py: no stack of a thread matching {thread!r} (record with --threads)",
                  file=sys.stderr)  # fmt: skip
            return 1
    total, inclusive, own = shares(lines)
    top = int(argv[1]) if len(argv) == 2 else 40
    print(f"{total} samples")
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title}")
        for name, samples in counts.most_common(top):
            print(f"{100 * samples / total:5.1f}% {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
