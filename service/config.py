"""Service settings: flags, MTRD_* environment variables and their defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import attrs

from service.pool import PoolConfig


@attrs.frozen
class ServeConfig:
    """Everything ``mtrd serve`` needs to start."""

    host: str = "127.0.0.1"
    port: int = 8080
    pool: PoolConfig = attrs.Factory(PoolConfig)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":8080" means all


def serve_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The ``serve`` flags; each defaults to its MTRD_* variable, then to the built-in.

    String defaults go through the flag's type, so a bad variable is reported like a bad flag.
    """
    parser = argparse.ArgumentParser(prog="mtrd serve", description="Run the mtrd service.")
    parser.add_argument(
        "--listen",
        type=_listen,
        default=env.get("MTRD_LISTEN", "127.0.0.1:8080"),
        help="HOST:PORT to listen on (MTRD_LISTEN, default 127.0.0.1:8080; "
        "0.0.0.0:8080 listens on all interfaces, as in a container)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=env.get("MTRD_POOL_SIZE", "2"),
        help="mtr-packet processes to keep running (MTRD_POOL_SIZE, default 2)",
    )
    parser.add_argument(
        "--mtr-packet",
        default=env.get("MTRD_MTR_PACKET", "mtr-packet"),
        help="command that starts mtr-packet, e.g. 'ip netns exec NS mtr-packet' "
        "(MTRD_MTR_PACKET, default mtr-packet from PATH)",
    )
    parser.add_argument(
        "--source-ipv4",
        default=env.get("MTRD_SOURCE_IPV4") or None,
        help="IPv4 source address for probes (MTRD_SOURCE_IPV4, default: the route's)",
    )
    parser.add_argument(
        "--source-ipv6",
        default=env.get("MTRD_SOURCE_IPV6") or None,
        help="IPv6 source address for probes (MTRD_SOURCE_IPV6, default: the route's)",
    )
    return parser


def parse_serve_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeConfig:
    """Build a :class:`ServeConfig` from command-line flags over the environment."""
    parser = serve_parser(os.environ if env is None else env)
    args = parser.parse_args(list(argv))
    try:
        pool = PoolConfig(
            size=args.pool_size,
            command=args.mtr_packet,
            source_ipv4=args.source_ipv4,
            source_ipv6=args.source_ipv6,
        )
    except ValueError as e:
        parser.error(str(e))
    host, port = args.listen
    return ServeConfig(host=host, port=port, pool=pool)
