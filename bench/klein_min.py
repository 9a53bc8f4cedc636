"""The baseline for figure 6: a minimal Klein app with one route returning fixed JSON.

Run as ``python -m bench.klein_min PORT [BODY_FILE]``; it serves on 127.0.0.1 with a plain
``Site``. With ``BODY_FILE`` the route answers with those bytes (the bench passes the very
trace mtrd served, so both send the same body); without, with a small fixed object.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from klein import Klein
from twisted.internet import endpoints, reactor
from twisted.web.server import Site

app = Klein()
BODY = json.dumps({"id": "x" * 22, "status": "completed"}).encode()


@app.route("/traces/<trace_id>", methods=["GET"])
def show(request: Any, trace_id: str) -> bytes:  # noqa: ARG001
    """A fixed small JSON answer."""
    request.setHeader(b"Content-Type", b"application/json")
    return BODY


@app.route("/readyz", methods=["GET"])
def ready(request: Any) -> bytes:  # noqa: ARG001
    return b"{}"


if __name__ == "__main__":
    if len(sys.argv) > 2:
        with open(sys.argv[2], "rb") as body_file:
            BODY = body_file.read()
    site = Site(app.resource())
    site.noisy = False
    site.log = lambda _request: None  # type: ignore[method-assign]  # as mtrd: no access log
    endpoints.TCP4ServerEndpoint(reactor, int(sys.argv[1]), interface="127.0.0.1").listen(site)
    reactor.run()  # type: ignore[attr-defined]
