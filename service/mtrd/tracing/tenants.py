"""Tenants: who asked for a trace, who may see it, and how much one tenant may hold.

A tenant is an opaque name (the web edge takes it from the bearer token). Each trace
records its owner; only the owner, or a tenant marked admin, sees it. Without auth
there is one nameless tenant that sees everything, and no per-tenant cap applies.
"""

from __future__ import annotations

import enum

import attrs

from mtrd.tracing.model import Trace


@attrs.frozen
class Tenant:
    """Who is asking: a name (None without auth) and whether it sees every tenant's traces."""

    name: str | None
    admin: bool = False

    def sees(self, trace: Trace) -> bool:
        """True when this tenant may see (and cancel, and delete) ``trace``."""
        return self.name is None or self.admin or trace.owner == self.name


ANYONE = Tenant(None)


class Cap(enum.Enum):
    """A per-tenant cap, by the setting that sets it."""

    RUNNING = "tenant-max-running"
    QUEUED = "tenant-max-queued"
    PROBES_WAITING = "tenant-max-probes-waiting"
    STORED = "tenant-max-stored"
    MONITORS = "tenant-max-monitors"


@attrs.frozen
class TenantLimits:
    """What one named tenant may hold at once (none of it applies without auth).

    ``max_running`` traces run; more wait, up to ``max_queued``. A new trace is refused
    while the tenant has ``max_probes_waiting`` probes waiting for a worker, or holds
    ``max_stored`` traces none of which has finished (a finished one of its own is
    evicted to make room: one tenant's traffic never pushes out another's results).
    It may keep ``max_monitors`` monitors.
    """

    max_running: int = 8
    max_queued: int = 100
    max_probes_waiting: int = 1000
    max_stored: int = 1000
    max_monitors: int = 20  # monitors of one tenant (each re-runs a trace on a schedule)

    def __attrs_post_init__(self) -> None:
        for cap, value in self.by_cap().items():
            low = 0 if cap is Cap.QUEUED else 1
            if value < low:
                raise ValueError(f"--{cap.value} must be at least {low}, got {value}")

    def by_cap(self) -> dict[Cap, int]:
        """Each cap's value."""
        return {
            Cap.RUNNING: self.max_running,
            Cap.QUEUED: self.max_queued,
            Cap.PROBES_WAITING: self.max_probes_waiting,
            Cap.STORED: self.max_stored,
            Cap.MONITORS: self.max_monitors,
        }


class TenantCapReached(Exception):
    """A tenant is at one of its caps; ``cap`` names it."""

    def __init__(self, cap: Cap, limit: int, retry_after: int, why: str) -> None:
        super().__init__(f"{why} (per-tenant cap --{cap.value} {limit}); retry in {retry_after} s")
        self.cap = cap
        self.limit = limit
        self.retry_after = retry_after


DEFAULT_TENANT_LIMITS = TenantLimits()
