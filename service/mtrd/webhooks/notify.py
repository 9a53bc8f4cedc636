"""The monitors' ``Notifier``, delivering their events as webhooks."""

from __future__ import annotations

from collections.abc import Callable

from mtrd.monitors.events import MonitorEvent
from mtrd.monitors.model import Delivery, WebhookTarget
from mtrd.webhooks.delivery import WebhookSender


class MonitorWebhooks:
    """Renders a monitor event with ``render`` and hands it to the sender."""

    def __init__(self, sender: WebhookSender, render: Callable[[MonitorEvent], bytes]) -> None:
        self._sender = sender
        self._render = render

    def notify(
        self, target: WebhookTarget, event: MonitorEvent, on_status: Callable[[Delivery], None]
    ) -> None:
        """Queue the event's delivery; its ``webhook-id`` is the event's stable key."""
        self._sender.deliver(
            target, event.key, f"monitor.{event.kind}", self._render(event), on_status
        )
