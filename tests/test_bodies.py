"""The edge's cache of rendered trace bodies."""

from __future__ import annotations

import json

import attrs
from mtrd.tracing.model import Hop, TraceStatus
from mtrd.tracing.store import TraceStore
from mtrd.web.bodies import BodyCache
from twisted.internet.task import Clock

from tests.test_store import trace


def test_an_unchanged_trace_is_rendered_once() -> None:
    """Repeated reads of an unchanged trace reuse the rendered bytes."""
    store = TraceStore(Clock())
    record = store.add(trace(1), retry_after=lambda: 1)
    cache = BodyCache()
    first = cache.body(record)
    assert cache.body(record) is first


def test_any_change_renders_the_trace_again() -> None:
    """A hop event or a snapshot update gives a new body with the new figures."""
    store = TraceStore(Clock())
    record = store.add(trace(1), retry_after=lambda: 1)
    cache = BodyCache()
    cache.body(record)
    record.channel.publish_hop(Hop(ttl=1, sent=2, lost=2))
    assert [h["sent"] for h in json.loads(cache.body(record))["hops"]] == [2]
    store.update(record, attrs.evolve(record.trace, status=TraceStatus.RUNNING))
    assert json.loads(cache.body(record))["status"] == "running"


def test_the_cache_holds_at_most_its_size() -> None:
    """Past its size, the least recently read body goes first."""
    store = TraceStore(Clock())
    first, second, third = (store.add(trace(i), retry_after=lambda: 1) for i in range(1, 4))
    cache = BodyCache(size=2)
    kept = cache.body(first)
    dropped = cache.body(second)
    cache.body(first)  # read again: now the most recent
    cache.body(third)  # pushes out the least recently read: second
    assert len(cache) == 2
    assert cache.body(first) is kept
    assert cache.body(second) is not dropped
