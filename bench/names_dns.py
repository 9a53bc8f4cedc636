"""``python -m bench.names_dns JSON``: the tests' loopback DNS server, answering PTR for the
addresses in JSON (a mapping of address to name), until killed; prints its port first."""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor as global_reactor

from tests.dns_server import Zone, listen

reactor: Any = global_reactor


def main() -> None:
    """Serve the zone on a free loopback UDP port; the port goes to stdout."""
    pointers = json.loads(sys.argv[1])
    # An hour: the bench's cache stays warm for the whole run.
    _, port = listen(reactor, Zone({}, pointers=pointers, ttl=3600))
    print(port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
