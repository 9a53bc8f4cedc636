"""The HTTP edge: parses requests, calls the engine, renders answers.

Only this module knows Klein. Trace routes arrive with the trace runner; for
now it serves the liveness and readiness checks over the probe pool.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from service.pool import ProbePool


class Api:
    """The Klein application of one mtrd process."""

    app = Klein()

    def __init__(self, pool: ProbePool) -> None:
        self._pool = pool

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """The process serves HTTP."""
        return _json(request, 200, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        """Ready once at least one mtr-packet worker answered its version check."""
        ready = self._pool.ready_workers
        body: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "workers": {"ready": ready, "size": self._pool.size},
        }
        return _json(request, 200 if ready else 503, body)


def _json(request: IRequest, status: int, body: object) -> bytes:
    request.setResponseCode(status)  # type: ignore[no-untyped-call]
    request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
    return json.dumps(body).encode()
