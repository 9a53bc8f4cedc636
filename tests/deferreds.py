"""A pytest plugin that fails a test whose Deferreds dropped an error (loaded by conftest).

A Deferred that is garbage-collected holding a failure logs "Unhandled error in
Deferred"; a test's garbage is collected at its end and the log checked. A full
collection scans every tracked object, and after the imports there are many: the heap
as it stands when the first test starts is collected once and frozen, so each test's
collection scans only the objects made since.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

DEFERRED_NAMESPACE = "twisted.internet.defer"


@pytest.fixture(scope="session", autouse=True)
def frozen_start_up_heap() -> Iterator[None]:
    """Collect the garbage of start-up once, then keep what remains out of later collections."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def no_unhandled_deferred_errors(frozen_start_up_heap: None) -> Iterator[None]:
    """Fail a test whose Deferreds dropped an error: collect garbage, then check the log."""
    failures: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        # Twisted logs a dropped error as two events: the line "Unhandled error in Deferred:",
        # without the failure, then the failure from the same namespace under another format.
        if event.get("log_failure") is not None and (
            event.get("log_namespace") == DEFERRED_NAMESPACE
            or "Unhandled error" in str(event.get("log_format", ""))
        ):
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not failures, [str(event["log_failure"]) for event in failures]
