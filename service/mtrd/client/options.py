"""What ``mtrd trace`` is asked to do: its arguments and environment, as :class:`TraceOptions`."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = ["DEFAULT_SERVER", "TraceOptions", "parse_args", "server_url"]

DEFAULT_SERVER = "http://127.0.0.1:8080"


@attrs.frozen
class TraceOptions:
    """What ``mtrd trace`` was asked to do."""

    target: str
    server: str = DEFAULT_SERVER
    protocol: str | None = None
    port: int | None = None
    probes: int | None = None
    ip_version: int | None = None
    max_ttl: int | None = None
    interval: float | None = None
    timeout: int | None = None
    json: bool = False
    token: str | None = None
    hosts: str = "both"  # how the tables name responders: both, address (-n) or name
    mode: str | None = None  # classic, or multipath (every load-balanced path)
    confidence: int | None = None  # multipath only: 95 or 99

    def request_body(self) -> dict[str, Any]:
        """The POST /traces body: the target and only the fields that were given."""
        body: dict[str, Any] = {"target": self.target}
        fields = (
            "protocol",
            "port",
            "probes",
            "ip_version",
            "max_ttl",
            "interval",
            "timeout",
            "mode",
            "confidence",
        )
        for field in fields:
            value = getattr(self, field)
            if value is not None:
                body[field] = value
        return body


def server_url(text: str) -> str:
    """A server as a base URL: ``http[s]://HOST[:PORT]``, or ``HOST:PORT`` meaning http."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - read for its check: a port that is no number, or too big
    except ValueError:
        if _is_ipv6(text):
            raise argparse.ArgumentTypeError(
                f"an IPv6 address goes in brackets: [{text}]:PORT"
            ) from None
        raise argparse.ArgumentTypeError(f"not a port number in {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not HOST:PORT or an http:// or https:// URL: {text!r}")
    return url.rstrip("/")


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.strip()).version == 6
    except ValueError:
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtrd trace",
        description="Run a trace on an mtrd server and follow it as it runs.",
        epilog="Environment: MTRD_SERVER is the default --server; MTRD_TOKEN is the bearer "
        "token sent to a server with auth on (read only from the environment, so that it "
        "shows neither in ps nor in the shell history). "
        "Exit status: 0 completed, 1 failed or cancelled, 2 refused or bad arguments, "
        "3 server unreachable, 130 interrupted (the trace is cancelled).",
    )
    parser.add_argument("target", help="an IPv4 or IPv6 address, or a hostname")
    parser.add_argument(
        "--server",
        type=server_url,
        metavar="HOST:PORT|URL",
        help="the mtrd to ask, such as 127.0.0.1:8080, [::1]:8080 or https://mtrd.example "
        f"(default: $MTRD_SERVER, else {DEFAULT_SERVER})",
    )
    parser.add_argument("--protocol", choices=("icmp", "udp", "tcp"))
    parser.add_argument("--port", type=int, help="destination port (udp and tcp)")
    parser.add_argument("--probes", type=int, help="probes per hop")
    parser.add_argument("--ip-version", type=int, choices=(4, 6), dest="ip_version")
    parser.add_argument("--max-ttl", type=int, dest="max_ttl")
    parser.add_argument("--interval", type=float, help="seconds between rounds")
    parser.add_argument("--timeout", type=int, help="seconds each probe waits for its answer")
    parser.add_argument(
        "--mode",
        choices=("classic", "multipath"),
        help="multipath: find every load-balanced router at every TTL (IPv4 udp), and show "
        "each flow's path at the end",
    )
    parser.add_argument(
        "--confidence",
        type=int,
        choices=(95, 99),
        help="multipath only: the confidence, in percent, of finding each router (default 95)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print only the final trace resource as JSON"
    )
    parser.add_argument(
        "--hosts",
        choices=("both", "address", "name"),
        default="both",
        help="name responders as name (address), by address only, or by name (default both)",
    )
    parser.add_argument(
        "-n", "--numeric", action="store_const", const="address", dest="hosts",
        help="addresses only, as mtr -n (same as --hosts address)",
    )  # fmt: skip
    return parser


def parse_args(argv: Sequence[str]) -> TraceOptions:
    """The options of ``mtrd trace``; argparse exits with status 2 on bad arguments."""
    parser = _parser()
    ns = parser.parse_args(list(argv))
    server = ns.server
    if server is None:
        from_environment = os.environ.get("MTRD_SERVER")
        try:
            server = server_url(from_environment) if from_environment else DEFAULT_SERVER
        except argparse.ArgumentTypeError as e:
            parser.error(f"MTRD_SERVER: {e}")  # names the variable the user set, not --server
    return TraceOptions(
        target=ns.target,
        server=server,
        protocol=ns.protocol,
        port=ns.port,
        probes=ns.probes,
        ip_version=ns.ip_version,
        max_ttl=ns.max_ttl,
        interval=ns.interval,
        timeout=ns.timeout,
        json=ns.json,
        hosts=ns.hosts,
        mode=ns.mode,
        confidence=ns.confidence,
        # A bearer token for a server with auth on; kept off the command line on purpose.
        token=os.environ.get("MTRD_TOKEN") or None,
    )
