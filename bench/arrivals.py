"""When an open-loop load generator sends each request: constant spacing or Poisson arrivals.

A schedule is fixed before any request goes out, so a slow server cannot slow the sender down:
latency is then measured from each request's scheduled time, and a request the client could
only send late (the server, or the client itself, was behind) still counts its wait. This is
what hides queueing in a closed loop (coordinated omission): a caller that waits for its answer
never sends the requests that would have queued.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cnnserve.bench.load_options import ARRIVALS


def schedule_ns(
    rate_per_s: float, arrivals: str, start_ns: int, end_ns: int, seed: int = 0, phase: float = 0.0
) -> Iterator[int]:
    """Send times in [start_ns, end_ns) for `rate_per_s` requests per second.

    `phase` (0 ≤ phase < 1) shifts a constant schedule by that fraction of one interval, so P
    client processes at rate R/P with phases i/P interleave into one even stream of rate R.
    Poisson arrivals draw exponential gaps from `seed`; give each process its own seed.
    """
    if rate_per_s <= 0:
        raise ValueError(f"rate must be > 0, received {rate_per_s}")
    if arrivals not in ARRIVALS:
        raise ValueError(f"unknown arrivals {arrivals!r}; expected one of {ARRIVALS}")
    gap_ns = 1e9 / rate_per_s
    if arrivals == "constant":
        index = 0
        while (at := start_ns + int((index + phase) * gap_ns)) < end_ns:
            yield at
            index += 1
        return
    rng = np.random.default_rng(seed)
    at_ns = float(start_ns)
    while True:
        # Draw gaps in blocks: one numpy call per 1,024 requests keeps the sender cheap.
        for gap in rng.exponential(gap_ns, 1024):
            at_ns += gap
            if at_ns >= end_ns:
                return
            yield int(at_ns)
