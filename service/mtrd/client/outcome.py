"""How ``mtrd trace`` ends: its exit statuses, and the one line that says why."""

from __future__ import annotations

from mtrd.tracing.model import Trace, TraceStatus

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "Stop",
    "exit_status",
    "failure_reason",
    "one_line",
]

EXIT_OK = 0  # the trace completed, whether or not it reached the destination
EXIT_FAILED = 1  # the trace failed or was cancelled
EXIT_REFUSED = 2  # bad arguments, or the server refused the request (4xx)
EXIT_UNREACHABLE = 3  # the server could not be reached, or answered with nonsense or a 5xx
EXIT_INTERRUPTED = 130  # Ctrl-C: the trace was cancelled on the server


class Stop(Exception):
    """End the command with this exit status and a one-line reason on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def exit_status(trace: Trace) -> int:
    """The exit status for a trace that ended: 0 completed, 1 otherwise."""
    return EXIT_OK if trace.status is TraceStatus.COMPLETED else EXIT_FAILED


def failure_reason(trace: Trace) -> str | None:
    """Why the trace did not complete, as one line; None when it completed."""
    if trace.status is TraceStatus.COMPLETED:
        return None
    if trace.status is TraceStatus.CANCELLED:
        return "trace cancelled"
    if trace.error is None:
        return f"trace {trace.status.value}"
    return f"trace failed: {one_line(trace.error.message)}"
