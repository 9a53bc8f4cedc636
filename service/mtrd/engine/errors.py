"""Errors raised by the probe engine."""

from __future__ import annotations


class InvalidProbeRequest(ValueError):
    """A probe request has a value mtr-packet would misread: ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ProbeFailed(Exception):
    """A probe could not be completed; the message says why."""


class WorkerDied(ProbeFailed):
    """The mtr-packet process that held the probe exited or was killed."""


class WorkerUnresponsive(ProbeFailed):
    """mtr-packet did not answer a probe within its timeout plus a grace."""


class NoWorkerAvailable(ProbeFailed):
    """No mtr-packet process is running and none could be started."""


class PoolStopped(ProbeFailed):
    """The pool was stopped before the probe could complete."""


class EngineStartError(Exception):
    """mtr-packet could not be started (missing binary, failed version check, ...)."""
