"""Alert conditions of one run and the transitions of a monitor's open alerts."""

from __future__ import annotations

import attrs

from mtrd.monitors.model import AlertKind, Alerts
from mtrd.tracing.model import Hop, HopEnd, Trace


def destination_hop(trace: Trace) -> Hop | None:
    """The hop where the destination answered, if it did."""
    return next((h for h in trace.hops if h.end is HopEnd.DESTINATION), None)


def firing(alerts: Alerts, trace: Trace, path_changed: bool) -> frozenset[AlertKind]:
    """The alert conditions a finished run meets."""
    hop = destination_hop(trace)
    found = set()
    if alerts.unreachable and hop is None:
        found.add(AlertKind.UNREACHABLE)
    if alerts.loss_pct is not None:
        # Not reaching the destination is all probes lost there.
        loss = 100.0 if hop is None else hop.loss_pct
        if loss > alerts.loss_pct:
            found.add(AlertKind.LOSS)
    if alerts.rtt_ms is not None and hop is not None:
        rtt = hop.rtt_ms.avg
        if rtt is not None and rtt > alerts.rtt_ms:
            found.add(AlertKind.RTT)
    if alerts.path_change and path_changed:
        found.add(AlertKind.PATH_CHANGE)
    return frozenset(found)


@attrs.frozen
class AlertTransitions:
    """What a run changed: the alerts that opened and those that closed."""

    fired: frozenset[AlertKind]
    resolved: frozenset[AlertKind]


def transitions(
    open_alerts: frozenset[AlertKind], now_firing: frozenset[AlertKind]
) -> AlertTransitions:
    """Alerts that fire now and were not open, and open ones that no longer fire."""
    return AlertTransitions(now_firing - open_alerts, open_alerts - now_firing)
