"""Which addresses webhooks may be sent to: checked on the resolved address.

A webhook URL is a request mtrd makes into the network on someone's behalf. Some
addresses are never a webhook receiver and are always refused (link-local, where
cloud metadata endpoints live; multicast; unspecified; broadcast); beyond those a deny
list wins over an allow list, and an empty allow list allows every other address.
"""

from __future__ import annotations

import attrs

from mtrd.tracing.policy import Network, TargetPolicy, TargetRefused


class WebhookRefused(Exception):
    """The webhook policy refuses the address a URL resolved to; ``rule`` names the rule."""

    def __init__(self, url: str, address: str, rule: str) -> None:
        super().__init__(
            f"webhook {url} resolves to {address}, refused by the webhook policy: {rule}"
        )
        self.url = url
        self.address = address
        self.rule = rule


class WebhookUnresolved(Exception):
    """A webhook URL's host could not be resolved."""


@attrs.frozen
class WebhookPolicy:
    """Allow and deny lists of networks, on top of the built-in refusals."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    def check(self, url: str, address: str) -> None:
        """Raise :class:`WebhookRefused` naming the rule unless ``address`` may be called."""
        try:
            TargetPolicy(self.allow, self.deny).check(address)
        except TargetRefused as e:
            rule = e.rule.replace("is never a traceroute target", "is never a webhook receiver")
            raise WebhookRefused(url, address, rule) from None
