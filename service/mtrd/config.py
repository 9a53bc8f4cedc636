"""Service settings: flags, MTRD_* environment variables and their defaults."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from mtrd.engine.pool import PoolConfig
from mtrd.tracing.policy import TargetPolicy, parse_networks
from mtrd.tracing.redis.settings import store_option, vantage_option
from mtrd.tracing.store import StoreLimits
from mtrd.web.auth import OPEN_BY_DEFAULT, load_tokens
from mtrd.web.limits import EdgeLimits


@attrs.frozen
class ServeConfig:
    """Everything ``mtrd serve`` needs to start."""

    host: str = "127.0.0.1"
    port: int = 8080
    pool: PoolConfig = attrs.Factory(PoolConfig)
    dns_servers: tuple[tuple[str, int], ...] = ()
    store: StoreLimits = attrs.Factory(StoreLimits)
    max_running: int = 32
    log_format: str = "json"
    shutdown_grace: float = 10.0
    max_queued: int = 1000
    limits: EdgeLimits = attrs.Factory(EdgeLimits)
    policy: TargetPolicy = attrs.Factory(TargetPolicy)
    auth_tokens: tuple[bytes, ...] = ()
    auth_open_paths: frozenset[str] = OPEN_BY_DEFAULT


def _dns_servers(value: str) -> tuple[tuple[str, int], ...]:
    servers = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 53
        elif item.count(":") == 1:
            host, _, text = item.partition(":")
            if not text.isdigit():
                raise argparse.ArgumentTypeError(f"bad DNS server {item!r}")
            port = int(text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"DNS servers are IP addresses, not {host!r}"
            ) from None
        servers.append((host, port))
    return tuple(servers)


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return convert


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":8080" means all


def _non_negative(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _networks(text: str) -> tuple[Any, ...]:
    try:
        return parse_networks(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@attrs.frozen
class Option:
    """One ``serve`` flag: its MTRD_* variable is derived from its name."""

    flag: str
    default: str | None
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None

    @property
    def variable(self) -> str:
        """The environment variable, e.g. MTRD_STORE_TTL for --store-ttl."""
        return "MTRD_" + self.flag.removeprefix("--").replace("-", "_").upper()


OPTIONS = (
    Option("--listen", "127.0.0.1:8080", "HOST:PORT to listen on; 0.0.0.0:8080 listens on all "
           "interfaces, as in a container", _listen),
    Option("--pool-size", "2", "mtr-packet processes to keep running", int),
    Option("--mtr-packet", "mtr-packet", "command that starts mtr-packet, e.g. "
           "'ip netns exec NS mtr-packet'"),
    Option("--source-ipv4", None, "IPv4 source address for probes (default: the route's)"),
    Option("--source-ipv6", None, "IPv6 source address for probes (default: the route's)"),
    Option("--dns-servers", "", "comma-separated DNS servers for hostname targets, e.g. "
           "192.0.2.53,[2001:db8::53]:53 (default: /etc/resolv.conf's)", _dns_servers),
    Option("--store-ttl", "3600", "seconds a finished trace is kept", _positive(float)),
    Option("--store-max", "10000", "traces kept at most; the oldest finished go first",
           _positive(int)),
    Option("--max-running", "32", "traces probing at once; more wait as queued", _positive(int)),
    Option("--max-queued", "1000", "traces waiting to run at most; more get 429", _non_negative),
    Option("--max-probes-waiting", "5000", "probes waiting for a worker above which new "
           "traces get 429", _positive(int)),
    Option("--max-subscribers", "1000", "open event streams at most", _positive(int)),
    Option("--max-subscribers-per-trace", "100", "open event streams per trace at most",
           _positive(int)),
    Option("--allow-targets", "", "comma-separated CIDRs; when set, only these may be traced",
           _networks),
    Option("--deny-targets", "", "comma-separated CIDRs that may never be traced", _networks),
    Option("--auth-tokens-file", None, "file of bearer tokens, one per line; it and "
           "MTRD_AUTH_TOKENS (comma-separated) turn auth on (default: off)"),
    Option("--log-format", "json", "json: one object per line on stdout; text: for people",
           choices=("json", "text")),
    Option("--shutdown-grace", "10", "on SIGTERM, seconds running traces may finish before "
           "they are cancelled", _positive(float)),
    Option("--store", "memory", "where traces are kept: memory, or a shared Redis as "
           "redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS)", store_option),
    Option("--vantage", "default", "name of the place this replica's probes leave from; "
           "replicas with one vantage share its work", vantage_option),
)  # fmt: skip


def serve_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The ``serve`` flags; each defaults to its MTRD_* variable, then to the built-in.

    String defaults go through the flag's type, so a bad variable is reported like a bad flag.
    """
    parser = argparse.ArgumentParser(prog="mtrd serve", description="Run the mtrd service.")
    for option in OPTIONS:
        shown = "" if option.default is None else f", default {option.default or 'none'}"
        parser.add_argument(
            option.flag,
            type=option.type,
            choices=option.choices,
            default=env.get(option.variable) or option.default,
            help=f"{option.help} ({option.variable}{shown})",
        )
    parser.add_argument(
        "--auth-protect-ops",
        action="store_true",
        default=env.get("MTRD_AUTH_PROTECT_OPS", "") not in ("", "0", "false"),
        help="with auth on, also require a token for /healthz, /readyz and /metrics "
        "(MTRD_AUTH_PROTECT_OPS)",
    )
    return parser


def parse_serve_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeConfig:
    """Build a :class:`ServeConfig` from command-line flags over the environment."""
    environment = os.environ if env is None else env
    parser = serve_parser(environment)
    args = parser.parse_args(list(argv))
    try:
        tokens = load_tokens(
            file=args.auth_tokens_file, env_value=environment.get("MTRD_AUTH_TOKENS")
        )
    except (OSError, ValueError) as e:
        parser.error(f"auth tokens: {e}")
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
    return ServeConfig(
        host=host,
        port=port,
        pool=pool,
        dns_servers=args.dns_servers,
        store=StoreLimits(ttl=args.store_ttl, max_traces=int(args.store_max)),
        max_running=int(args.max_running),
        log_format=args.log_format,
        shutdown_grace=args.shutdown_grace,
        max_queued=args.max_queued,
        limits=EdgeLimits(
            max_subscribers=int(args.max_subscribers),
            max_subscribers_per_trace=int(args.max_subscribers_per_trace),
            max_probes_waiting=int(args.max_probes_waiting),
        ),
        policy=TargetPolicy(allow=args.allow_targets, deny=args.deny_targets),
        auth_tokens=tokens,
        auth_open_paths=frozenset() if args.auth_protect_ops else OPEN_BY_DEFAULT,
    )
