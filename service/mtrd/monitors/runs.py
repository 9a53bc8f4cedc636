"""Memory mode's trace starter: a monitor's runs go through the trace jobs like any trace."""

from __future__ import annotations

from collections.abc import Callable

from mtrd.tracing.events import Event
from mtrd.tracing.jobs import QueueFull, StoreFull, TraceJobs
from mtrd.tracing.model import Trace, TraceRequest
from mtrd.tracing.tenants import TenantCapReached


class JobsStarter:
    """Starts runs as ordinary traces of the in-memory jobs and hears when they end."""

    def __init__(self, jobs: TraceJobs) -> None:
        self._jobs = jobs

    def start(
        self,
        request: TraceRequest,
        vantage: str | None,  # noqa: ARG002  # one vantage in memory mode: this process's
        on_done: Callable[[Trace], None],
        on_refused: Callable[[str], None],
        owner: str | None = None,
    ) -> None:
        """Submit the trace as ``owner``'s; ``on_done`` gets the final trace, ``on_refused``
        a full queue or store, or the owner's cap."""
        try:
            record = self._jobs.submit(request, owner=owner)
        except (QueueFull, StoreFull, TenantCapReached) as e:
            on_refused(str(e))
            return

        def heard(event: Event) -> None:
            if event.kind == "done":
                assert isinstance(event.value, Trace)
                on_done(event.value)

        # The channel replays the current status first; only "done" matters here.
        record.channel.subscribe(heard)
