"""The webhook poster over treq: connects to the address the policy checked.

The agent's endpoint factory ignores the URL's host for the connection and dials the
checked address instead; the URL's host still names the server in ``Host`` and in TLS
(SNI and the certificate check), so HTTPS receivers are verified as usual.
"""

from __future__ import annotations

from typing import Any

from treq import collect
from treq.client import HTTPClient
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


@implementer(IAgentEndpointFactory)
class _PinnedEndpoints:
    """Endpoints to one checked address, whatever host the URL names."""

    def __init__(self, reactor: Any, address: str, timeout: float) -> None:
        self._reactor = reactor
        self._address = address
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802  # Twisted's name
        """A TCP endpoint to the checked address, wrapped in TLS for https."""
        kind = (
            endpoints.TCP6ClientEndpoint if ":" in self._address else endpoints.TCP4ClientEndpoint
        )
        endpoint: IStreamClientEndpoint = kind(
            self._reactor, self._address, uri.port, timeout=self._timeout
        )
        if uri.scheme == b"https":
            host = uri.host.decode("idna").strip("[]")
            endpoint = endpoints.wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


class TreqPoster:
    """Sends webhook deliveries with treq, one connection per delivery."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def post(
        self, url: str, address: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Deferred[int]:
        """POST to ``url`` through ``address``; fires with the status code."""
        agent = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
            self._reactor, _PinnedEndpoints(self._reactor, address, timeout)
        )
        client = HTTPClient(agent)
        sent = Deferred.fromCoroutine(self._post(client, url, headers, body))
        sent.addTimeout(timeout, self._reactor)
        return sent

    async def _post(
        self, client: HTTPClient, url: str, headers: dict[str, str], body: bytes
    ) -> int:
        sent: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in headers.items()}
        response = await client.post(url, data=body, headers=sent)
        await collect(response, lambda _: None)  # the answer's body is read and dropped
        return int(response.code)
