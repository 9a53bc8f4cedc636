"""One subscriber's server-sent event stream, with back-pressure.

The stream registers itself as the request's streaming producer, so the
transport tells it when the client stops reading (``pauseProducing``). While
paused, events wait in a backlog; a client whose backlog passes ``max_backlog``
bytes is disconnected, so a stalled reader costs a bounded amount of memory and
never slows the trace or the other subscribers. Comment heartbeats keep idle
streams open through proxies.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from mtrd.tracing.events import Event
from mtrd.web.render import hop_json, status_json, trace_json

log = Logger(namespace="mtrd.sse")


_ENCODED: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_ENCODED_MAX = 4096


def encode(trace_id: str, event: Event) -> bytes:
    """An event in the text/event-stream format, encoded once however many subscribers."""
    key = (trace_id, event.id)
    cached = _ENCODED.get(key)
    if cached is not None:
        return cached
    encoded = _encode(trace_id, event)
    _ENCODED[key] = encoded
    if len(_ENCODED) > _ENCODED_MAX:
        _ENCODED.popitem(last=False)
    return encoded


def _encode(trace_id: str, event: Event) -> bytes:
    value: Any = event.value
    if event.kind == "status":
        data = status_json(trace_id, value)
    elif event.kind == "hop":
        data = hop_json(value)
    else:
        data = trace_json(value)
    text = json.dumps(data, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {text}\n\n".encode()


@implementer(IPushProducer)
class EventStream:
    """Writes events to one request; see the module docstring."""

    def __init__(
        self,
        request: Any,
        *,
        trace_id: str,
        clock: IReactorTime,
        heartbeat: float,
        max_backlog: int,
        on_close: Callable[[], None],
        encoder: Callable[[Any], bytes] | None = None,
    ) -> None:
        """``encoder`` writes one event (default: a trace's, see :func:`encode`)."""
        self._request = request
        self._encoder = encoder
        self._trace_id = trace_id
        self._max_backlog = max_backlog
        self._on_close = on_close
        self._paused = False
        self._closed = False
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._heartbeat = LoopingCall(self._write, b": keep-alive\n\n")
        self._heartbeat.clock = clock
        request.registerProducer(self, True)
        self._write(b": stream of " + trace_id.encode() + b"\n\n")
        self._heartbeat.start(heartbeat, now=False)

    @property
    def closed(self) -> bool:
        """True once the stream ended, whichever way."""
        return self._closed

    def send(self, event: Any) -> None:
        """Write one event (or keep it while the client is not reading)."""
        self._write(
            encode(self._trace_id, event) if self._encoder is None else self._encoder(event)
        )

    def close(self) -> None:
        """Stop the heartbeat and let go of the request (the client left, or we end)."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._backlog.clear()
        self._on_close()
        if getattr(self._request, "channel", None) is not None:  # None once the client left
            self._request.unregisterProducer()

    # -- IPushProducer ---------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The client's socket is full: keep events back."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The client reads again: send what waited."""
        self._paused = False
        backlog, self._backlog, self._backlog_bytes = self._backlog, [], 0
        for data in backlog:
            self._write(data)

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._paused:
            self._request.write(data)
            return
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        if self._backlog_bytes > self._max_backlog:
            log.warn(
                "disconnecting a subscriber of {trace_id} that stopped reading "
                "({bytes} bytes waiting)",
                trace_id=self._trace_id,
                bytes=self._backlog_bytes,
            )
            self.close()
            transport = getattr(self._request, "transport", None)
            if transport is not None and hasattr(transport, "abortConnection"):
                transport.abortConnection()  # its buffer would never drain for a close
            else:
                self._request.loseConnection()
