"""Preemption: SIGUSR1 (Slurm's `--signal=B:USR1@N`, forwarded by the batch script) or SIGTERM.

The handler only records the signal; the loop finishes the current step, agrees across ranks that
someone was signalled (the flag rides on the per-step loss all-reduce), writes a final checkpoint and
exits 0 so a chained or requeued job resumes from it.
"""

from __future__ import annotations

import logging
import signal
import sys

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    """Turns SIGUSR1/SIGTERM into a flag polled once per step."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionHandler":
        """Install the handlers (main thread only); returns self."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            # A plain write: logging from a signal handler can deadlock on the handler's lock.
            sys.stderr.write(f"[trainer] received {signal.Signals(signum).name}: finishing the step, "
                             "then writing a final checkpoint\n")
        self.received = signum

    @property
    def requested(self) -> bool:
        """True once a preemption signal arrived in this process."""
        return self.received is not None

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
