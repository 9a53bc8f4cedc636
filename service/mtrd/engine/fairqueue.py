"""The pool's waiting room: probes wait per flow and leave round robin between flows.

A flow is whatever the caller names with :class:`Flow` (the trace service uses one per
trace): first come, first served would let a trace that queues thousands of probes
hold every other trace behind them; round robin lets each flow's next probe out in
turn, so a small trace beside a huge one waits for one probe per other flow, not for
the whole backlog. Probes without a flow share one. Flows also carry a ``group`` (the
trace service puts the tenant there), so the pool can say how many probes a group
has waiting, and pass over the flows of a group that holds its share of the slots.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")


@attrs.frozen
class Flow:
    """Names the queue a probe waits in (``key``) and whom it counts for (``group``)."""

    key: Hashable = None
    group: str | None = None


NO_FLOW = Flow()


class FairQueue(Generic[T]):
    """Items wait in per-flow queues; :meth:`popleft` takes one flow's head at a time."""

    def __init__(self, flow_of: Callable[[T], Flow]) -> None:
        self._flow_of = flow_of
        self._flows: dict[Flow, deque[T]] = {}  # insertion order is the turn order
        self._size = 0
        self._by_group: Counter[str | None] = Counter()

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for items in list(self._flows.values()):
            yield from list(items)

    def __contains__(self, item: T) -> bool:
        items = self._flows.get(self._flow_of(item))
        return items is not None and item in items

    def waiting_in(self, group: str | None) -> int:
        """How many items of flows in ``group`` wait."""
        return self._by_group[group]

    def waiting_by_group(self) -> dict[str, int]:
        """How many items wait, per named group (groups with none left out)."""
        return {group: n for group, n in self._by_group.items() if group is not None}

    def append(self, item: T) -> None:
        """Queue ``item`` at the end of its flow."""
        flow = self._flow_of(item)
        self._flows.setdefault(flow, deque()).append(item)
        self._counted(flow, 1)

    def peek(self, eligible: Callable[[Flow], bool] = lambda _: True) -> T | None:
        """The item whose turn it is among the ``eligible`` flows, or None."""
        for flow, items in self._flows.items():
            if eligible(flow):
                return items[0]
        return None

    def popleft(self, eligible: Callable[[Flow], bool] = lambda _: True) -> T:
        """Take the item whose turn it is among the ``eligible`` flows (IndexError if
        none); its flow's next item waits for every other flow's turn."""
        found = next(((f, i) for f, i in self._flows.items() if eligible(f)), None)
        if found is None:
            raise IndexError("no eligible flow waits")
        flow, items = found
        item = items.popleft()
        del self._flows[flow]
        if items:
            self._flows[flow] = items  # to the back of the turn order
        self._counted(flow, -1)
        return item

    def put_back(self, items: Iterable[T]) -> None:
        """Return items taken by :meth:`popleft` that could not be sent, at the head of
        their flows, and those flows at the head of the turn order."""
        returned: dict[Flow, deque[T]] = {}
        for item in items:
            flow = self._flow_of(item)
            returned.setdefault(flow, deque()).append(item)
            self._counted(flow, 1)
        if not returned:
            return
        for flow, front in returned.items():
            # The items go in front of the flow's own deque, which is not copied: the
            # pool puts back a few probes at a time in front of a queue of thousands.
            rest = self._flows.pop(flow, None)
            if rest is not None:
                rest.extendleft(reversed(front))
                returned[flow] = rest
        self._flows = {**returned, **self._flows}

    def remove(self, item: T) -> None:
        """Take ``item`` out wherever it waits (ValueError if it does not)."""
        flow = self._flow_of(item)
        items = self._flows.get(flow)
        if items is None:
            raise ValueError("not queued")
        items.remove(item)
        if not items:
            del self._flows[flow]
        self._counted(flow, -1)

    def _counted(self, flow: Flow, change: int) -> None:
        self._size += change
        self._by_group[flow.group] += change
        if not self._by_group[flow.group]:
            del self._by_group[flow.group]
