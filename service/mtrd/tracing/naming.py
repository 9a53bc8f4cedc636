"""Who a run's responders are: each address looked up once, when first seen.

Shared by the classic run (:mod:`mtrd.tracing.rounds`) and the multipath run: what is known
at once goes into the hop with the reply; a name that comes later is handed to the run
(``named``) so it can publish the hop again, and ``settled`` says when no lookup is out
(the end of a run waits for that, within its grace). No probe ever waits for a name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.annotations.model import Annotation
from mtrd.tracing.stats import HopAccumulator


class Annotating(TypingProtocol):
    """What a run needs to say who responders are (mtrd.annotations.Annotator)."""

    def annotate(self, address: str) -> tuple[Annotation, Deferred[Annotation] | None]:
        """What is known of ``address`` now, and a Deferred for the rest if any."""
        ...


class HopNames:
    """One run's lookups: what is known of each address, and the lookups still out."""

    log = Logger()

    def __init__(
        self,
        annotator: Annotating,
        named: Callable[[str, Annotation], None],
        settled: Callable[[], None],
    ) -> None:
        self._annotator = annotator
        self._named_callback = named
        self._settled = settled
        self._known: dict[str, Annotation] = {}  # by address, once first seen
        self._lookups: set[Deferred[Annotation]] = set()

    @property
    def pending(self) -> bool:
        """Whether a lookup is still out."""
        return bool(self._lookups)

    def annotate(self, hop: HopAccumulator, address: str) -> None:
        """Say who ``address`` (which just answered at ``hop``) is, as far as known now;
        the first time, start its lookup."""
        annotation = self._known.get(address)
        if annotation is None:
            annotation, later = self._annotator.annotate(address)
            self._known[address] = annotation
            if later is not None:
                self._lookups.add(later)
                later.addCallback(self._named, address, later)
                later.addErrback(self._failed, address, later)
        if not annotation.empty:
            hop.annotate(address, annotation)

    def _named(self, annotation: Annotation, address: str, later: Deferred[Annotation]) -> None:
        self._lookups.discard(later)
        self._known[address] = annotation
        self._named_callback(address, annotation)
        if not self._lookups:
            self._settled()

    def _failed(self, failure: Failure, address: str, later: Deferred[Annotation]) -> None:
        self._lookups.discard(later)
        self.log.failure("annotating {address} failed", failure, address=address)
        if not self._lookups:
            self._settled()
