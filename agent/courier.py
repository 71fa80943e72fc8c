"""Delivery threads and their backoff: what the sender and the Alertmanager sink share.

A courier is a thread that delivers on its own: started, woken when there is
news, and stopped with a bounded last flush. Its backoff is a small policy
over an injected random source, so waits are tested without waiting.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

import httpx

RETRY_AFTER_MAX = 3600.0  # a server's Retry-After is honoured up to an hour, never for ever


@dataclass
class Backoff:
    """Exponential backoff with jitter: after the n-th failure in a row, a wait drawn
    between `initial` and min(`maximum`, `initial` * 2**n); a success starts over."""

    initial: float
    maximum: float
    uniform: Callable[[float, float], float] = random.uniform
    failures: int = 0

    def fail(self) -> None:
        self.failures += 1

    def wait(self) -> float:
        """The wait after the failures so far (at least one is assumed)."""
        ceiling = min(self.maximum, self.initial * 2 ** max(1, self.failures))
        return self.uniform(self.initial, max(self.initial, ceiling))

    def reset(self) -> None:
        self.failures = 0


def bounded_retry_after(seconds: float) -> float | None:
    """A server's Retry-After as a wait we honour: finite, not negative, at most an hour."""
    if not math.isfinite(seconds):
        return None
    return min(RETRY_AFTER_MAX, max(0.0, seconds))


class Courier:
    """A delivery thread. Subclasses set `client` and write `_loop`."""

    name = "courier"
    client: httpx.Client

    def __init__(self) -> None:
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, flush_seconds: float) -> None:
        """Stop after one last bounded attempt to deliver."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_seconds)
        self.client.close()

    def _loop(self) -> None:
        raise NotImplementedError
