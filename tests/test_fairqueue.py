"""The pool's waiting room: flows take turns, one item each."""

from __future__ import annotations

import pytest
from mtrd.engine.fairqueue import NO_FLOW, FairQueue, Flow


def queue_of(*items: tuple[str, int]) -> FairQueue[tuple[str, int]]:
    """A queue of (flow key, number) items, in the order given."""
    queue: FairQueue[tuple[str, int]] = FairQueue(lambda item: Flow(item[0], group="g"))
    for item in items:
        queue.append(item)
    return queue


def drained(queue: FairQueue[tuple[str, int]]) -> list[tuple[str, int]]:
    return [queue.popleft() for _ in range(len(queue))]


def test_flows_take_turns_one_item_each() -> None:
    """Items leave round robin between flows, each flow's in its own order."""
    queue = queue_of(("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2))
    assert drained(queue) == [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("a", 3)]


def test_items_put_back_go_first_again() -> None:
    """Items taken and put back are next, in their order, ahead of every other flow."""
    queue = queue_of(("a", 1), ("a", 2), ("b", 1), ("c", 1))
    taken = [queue.popleft(), queue.popleft()]
    queue.put_back(taken)
    assert drained(queue) == [("a", 1), ("b", 1), ("c", 1), ("a", 2)]


def test_removed_items_never_leave() -> None:
    """A removed item is gone, and a flow emptied by it loses its turn."""
    queue = queue_of(("a", 1), ("b", 1), ("a", 2))
    queue.remove(("b", 1))
    assert ("b", 1) not in queue
    assert drained(queue) == [("a", 1), ("a", 2)]
    with pytest.raises(ValueError, match="not queued"):
        queue.remove(("b", 1))


def test_waiting_items_are_counted_per_group() -> None:
    """waiting_in counts the items of every flow of a group, and forgets emptied groups."""
    queue = queue_of(("a", 1), ("b", 1))
    assert (queue.waiting_in("g"), queue.waiting_in(None), len(queue)) == (2, 0, 2)
    drained(queue)
    assert (queue.waiting_in("g"), bool(queue)) == (0, False)


def test_waiting_items_are_listed_per_named_group() -> None:
    """waiting_by_group counts each named group's items and leaves out flows of no group."""
    queue: FairQueue[tuple[str, int]] = FairQueue(
        lambda item: Flow(item[0], group=None if item[0] == "x" else item[0])
    )
    for item in [("a", 1), ("a", 2), ("b", 1), ("x", 1)]:
        queue.append(item)
    assert queue.waiting_by_group() == {"a": 2, "b": 1}


def test_an_empty_queue_has_nothing_to_take() -> None:
    """peek on an empty queue gives None; popleft raises IndexError, as a deque's would."""
    queue: FairQueue[int] = FairQueue(lambda _: NO_FLOW)
    assert queue.peek() is None
    with pytest.raises(IndexError):
        queue.popleft()


def test_flows_not_eligible_keep_their_turn() -> None:
    """Taking among eligible flows skips the others, which stay first in line."""
    queue = queue_of(("a", 1), ("a", 2), ("b", 1), ("b", 2))
    only_b = lambda flow: flow.key == "b"  # noqa: E731
    assert queue.peek(only_b) == ("b", 1)
    assert queue.popleft(only_b) == ("b", 1)
    assert queue.peek(lambda _: False) is None
    assert drained(queue) == [("a", 1), ("b", 2), ("a", 2)]
