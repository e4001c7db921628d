"""Client-side rate limits for Compute, shared by every worker thread.

The Compute quotas are per project and shared with ingress-gce itself, so all
our writes go through one token bucket and all our reads through another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class WriteLimiter:
    """Thread-safe token bucket: `rate` writes per second, bursts of up to `burst`.

    `acquire()` takes a token at once and, when the bucket is in debt,
    sleeps (through the injected `sleep`) until that token is due. Taking
    the token before sleeping keeps the lock free while waiting and serves
    callers in the order they arrived.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """``on_wait(seconds)`` hears of every wait for a token (the metrics sum them)."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._on_wait = on_wait
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def acquire(self) -> None:
        """Block until one write is allowed."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._updated = now
            self._tokens -= 1.0
            delay = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if delay > 0:
            self._on_wait(delay)
            self._sleep(delay)

    def __repr__(self) -> str:
        return f"WriteLimiter(rate={self.rate}, burst={self.burst})"
