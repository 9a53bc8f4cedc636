"""Shared test set-up: the lab fixtures and a check for unhandled errors in Deferreds."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

pytest_plugins = ["tests.lab.fixtures", "tests.redis_server"]


@pytest.fixture(autouse=True)
def no_unhandled_deferred_errors() -> Iterator[None]:
    """Fail a test whose Deferreds dropped an error: collect garbage, then check the log."""
    failures: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_failure") is not None and "Unhandled error" in str(
            event.get("log_format", "")
        ):
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not failures, [str(event["log_failure"]) for event in failures]
