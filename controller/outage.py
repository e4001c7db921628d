"""Outage episodes: one WARNING when a dependency starts failing, one INFO when it is back.

An apiserver restart or a Compute brown-out is expected, and retried everywhere it
is met; logging each failed call would bury the one line an operator needs. The
clients report every call here. The first failure of an episode logs its cause at
WARNING; later failures are only counted (DEBUG); the episode ends at the first
success that follows `quiet` seconds without a failure, with one INFO line that
gives the count and the length (said late, just before the next episode's WARNING,
when no call came in between). A dependency that fails one call in three stays in
one episode rather than flapping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

QUIET = 10.0  # seconds without a failure before a success ends the episode


class Outage:
    """The failure episodes of one dependency (e.g. "the apiserver", "Compute")."""

    def __init__(
        self,
        name: str,
        *,
        quiet: float = QUIET,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self._quiet = quiet
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._began: float | None = None
        self._last_failure = 0.0
        self._answered = False  # a success came after the last failure
        self._failures = 0
        self.episodes = 0  # how many began, for tests and metrics

    @property
    def ongoing(self) -> bool:
        with self._lock:
            return self._began is not None

    def failed(self, cause: object) -> None:
        """A call to the dependency failed in a way worth retrying."""
        now = self._clock()
        with self._lock:
            ended = self._ended(now)
            if self._began is not None and not ended:
                self._last_failure = now
                self._answered = False
                self._failures += 1
                self._log.debug("%s still failing (%d): %s", self.name, self._failures, cause)
                return
            self._answered = False
            self._began = self._last_failure = now
            self._failures = 1
            self.episodes += 1
        if ended:  # the last episode ended quietly, with no call since to say so
            self._say_answered(*ended)
        self._log.warning(
            "%s is failing: %s; retrying with backoff (further failures are counted, not logged)",
            self.name,
            cause,
        )

    def answered(self) -> None:
        """A call to the dependency got an answer that was not a failure of its own."""
        now = self._clock()
        with self._lock:
            if self._began is not None:
                self._answered = True
            ended = self._ended(now)
        if ended:
            self._say_answered(*ended)

    def _ended(self, now: float) -> tuple[int, float] | None:
        """Close the episode if a success came and `quiet` seconds passed since the last
        failure (caller holds the lock); its failure count and length."""
        if self._began is None or not self._answered or now - self._last_failure < self._quiet:
            return None
        ended = (self._failures, self._last_failure - self._began)
        self._began = None
        self._failures = 0
        return ended

    def _say_answered(self, failures: int, length: float) -> None:
        self._log.info(
            "%s answers again: %d failed call%s over %.1f s",
            self.name,
            failures,
            "" if failures == 1 else "s",
            length,
        )
