"""The polling routes, answered without Klein's per-request machinery.

Most of mtrd's requests take two routes: ``POST /traces``, then ``GET /traces/{id}``
until the trace is final. Klein answers each by binding its werkzeug map to the
request, adapting the request, two ``maybeDeferred`` and a chain of callbacks, and
writes the body chunked: a large share of such a request's CPU (bench/results/peers.md).
:class:`DirectRoutes` recognises exactly these two, as Klein's map matches them, calls
the same :class:`~mtrd.web.routes.Api` methods, answers what they raise through the
same handler (:meth:`~mtrd.web.routes.Api.failed`), and writes the body whole with its
``Content-Length``. Every other request, including any other form of these paths
(``HEAD``, a trailing slash, an escaped ``/`` in the id), goes to Klein as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

if TYPE_CHECKING:
    from mtrd.web.routes import Api

_log = Logger()
Answer = Callable[[], "bytes | Deferred[bytes]"]


class DirectRoutes(Resource):
    """Answers ``POST /traces`` and ``GET /traces/{id}`` itself; the rest goes to
    ``klein`` (the resource of ``api``'s Klein app)."""

    isLeaf = True

    def __init__(self, api: Api, klein: Any) -> None:
        super().__init__()
        self._api = api
        self._klein = klein

    def route(self, request: Any) -> Answer | None:
        """The route method that answers ``request``, or None when Klein must.

        ``postpath`` holds the path's segments, each unescaped, as Klein joins them
        for its map: ``/traces/{id}`` is two segments, the id not empty and free of ``/``.
        """
        method = request.method
        segments = request.postpath
        if method == b"GET" and len(segments) == 2 and segments[0] == b"traces":
            raw = segments[1]
            if not raw or b"/" in raw:
                return None
            try:
                trace_id = raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
            return lambda: self._api.show(request, trace_id)
        if method == b"POST" and segments == [b"traces"]:
            return lambda: self._api.create(request)
        return None

    def render(self, request: Any) -> Any:
        """Answer a polling route now (or when its Deferred fires); else let Klein."""
        answer = self.route(request)
        if answer is None:
            return self._klein.render(request)
        try:
            result = answer()
        except Exception:
            return self._failed(request, Failure())
        if isinstance(result, Deferred):
            return self._later(request, result)
        return _write(request, result)

    def _failed(self, request: Any, failure: Failure) -> object:
        try:
            body = self._api.failed(request, failure)
        except Exception:
            request.processingFailed(Failure())
            return NOT_DONE_YET
        return _write(request, body)

    def _later(self, request: Any, result: Deferred[bytes]) -> object:
        """As Klein does with a Deferred: answer when it fires, cancel it when the client
        goes first, and then say nothing more (a cancellation is no error)."""
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        request.notifyFinish().addErrback(lambda _: result.cancel())

        def answered(body: bytes) -> None:
            if not gone:
                _write(request, body)

        def failed(failure: Failure) -> None:
            if gone:
                if not failure.check(CancelledError):
                    _log.failure("unhandled error answering {uri}", failure, uri=request.uri)
                return
            self._failed(request, failure)

        result.addCallbacks(answered, failed).addErrback(
            lambda failure: _log.failure("unhandled error writing {uri}", failure, uri=request.uri)
        )
        return NOT_DONE_YET


def _write(request: Any, body: bytes) -> object:
    """Write a whole body with its length (none on a 204 or 304), and finish."""
    if request.code not in NO_BODY_CODES:
        request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()
    return NOT_DONE_YET
