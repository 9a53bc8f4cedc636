"""The ``mtrd trace`` entry point: :func:`main` runs :func:`run` on the global reactor."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import react

from mtrd.client.display import LiveTable, display_for
from mtrd.client.options import TraceOptions, parse_args
from mtrd.client.outcome import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    Stop,
    exit_status,
    failure_reason,
    one_line,
)
from mtrd.client.session import FinalTrace, Session, Timing, http_client
from mtrd.web.report import HostDisplay

__all__ = ["main", "run"]


async def run(
    reactor: Any,
    options: TraceOptions,
    out: TextIO,
    err: TextIO,
    *,
    interrupt: Deferred[None] | None = None,
    live: bool | None = None,
    http: HTTPClient | None = None,
    timing: Timing = Timing(),
) -> int:
    """Run one trace on the server and show it; the exit status.

    When ``interrupt`` fires (Ctrl-C), the trace is cancelled on the server and the
    status is :data:`EXIT_INTERRUPTED`.
    """
    display = display_for(
        reactor, out, json=options.json, live=live, hosts=HostDisplay(options.hosts)
    )
    session = Session(reactor, options, display, http or http_client(reactor), timing)

    async def work() -> FinalTrace:
        await session.start()
        return await session.follow()

    running = Deferred.fromCoroutine(work())

    def on_interrupt(_: object) -> None:
        session.interrupted = True
        running.cancel()

    if interrupt is not None:
        interrupt.addCallback(on_interrupt)
    try:
        final = await running
    except Exception as e:
        if isinstance(display, LiveTable):
            display.stop()
        if session.interrupted:
            err.write(f"mtrd: interrupted; {await session.cancel()}\n")
            return EXIT_INTERRUPTED
        if isinstance(e, Stop):
            err.write(f"mtrd: {e.message}\n")
            return e.code
        err.write(f"mtrd: {one_line(str(e)) or type(e).__name__}\n")
        return EXIT_FAILED
    display.finished(final.trace, final.document)
    reason = failure_reason(final.trace)
    if reason is not None:
        err.write(f"mtrd: {reason}\n")
    return exit_status(final.trace)


async def _main(reactor: Any, options: TraceOptions) -> None:
    interrupt: Deferred[None] = Deferred()
    stopped: Deferred[None] = Deferred()

    def on_shutdown() -> Deferred[None] | None:
        # Ctrl-C stops the reactor; hold the shutdown until the trace is cancelled.
        if stopped.called:
            return None
        interrupt.callback(None)
        return stopped

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        code = await run(reactor, options, sys.stdout, sys.stderr, interrupt=interrupt)
    finally:
        stopped.callback(None)
    raise SystemExit(code)


def main(argv: Sequence[str]) -> int:
    """Run ``mtrd trace`` with ``argv`` (the arguments after ``trace``); the exit status."""
    try:
        options = parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad arguments (2)
        return e.code if isinstance(e.code, int) else EXIT_REFUSED
    try:
        react(lambda reactor: Deferred.fromCoroutine(_main(reactor, options)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_FAILED
    return EXIT_OK  # pragma: no cover - react always exits
