"""Log lines that a client can trigger at will, bounded so a flood of bad calls cannot flood the log.

Each kind of line is written at most once per `interval_s`; the next line written says how many
were suppressed in between. Every value a client chose is cut to a bounded length first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

ECHO_CHARS = 64  # longest client-chosen string echoed whole into a message or a log line


def shown(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with the original length said, for echoing."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}… ({length} characters, cut)"


class RateLimitedLog:
    """At most one line per `key` every `interval_s`, with a count of the ones held back."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_s: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object, extra: dict | None = None) -> bool:
        """Log `message % args` unless `key` was logged less than `interval_s` ago; True if logged."""
        now = self._clock()
        with self._lock:
            if now < self._next_s.get(key, float("-inf")):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._next_s[key] = now + self._interval_s
            held_back = self._suppressed.pop(key, 0)
        if held_back:
            message += f" ({held_back} more like it in the last {self._interval_s:g} s not logged)"
        if held_back and extra is not None:
            extra = {**extra, "access": {**extra.get("access", {}), "held_back": held_back}}
        self._logger.warning(message, *args, extra=extra)
        return True
