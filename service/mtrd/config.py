"""Service settings: flags, MTRD_* environment variables and their defaults."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import attrs

from mtrd.annotations.networks import DatabaseError, Loaded, read_database
from mtrd.annotations.reverse import ReverseSettings
from mtrd.engine.pool import MAX_POOL_SIZE, PoolConfig
from mtrd.tracing.policy import Network, TargetPolicy, parse_networks
from mtrd.tracing.redis.settings import (
    BadStoreUrl,
    MemoryStore,
    StoreSetting,
    parse_store,
    parse_vantage,
)
from mtrd.tracing.store import StoreLimits
from mtrd.tracing.tenants import TenantLimits
from mtrd.web.auth import OPEN_BY_DEFAULT, TENANT_NAME, NamedToken, load_tokens
from mtrd.web.limits import EdgeLimits
from mtrd.web.monitors_file import MonitorsFileError, read_monitors_file
from mtrd.webhooks.policy import WebhookPolicy


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
    auth_tokens: tuple[NamedToken, ...] = ()
    auth_open_paths: frozenset[str] = OPEN_BY_DEFAULT
    admin_tenants: frozenset[str] = frozenset()
    tenant_limits: TenantLimits = attrs.Factory(TenantLimits)
    backend: StoreSetting = attrs.Factory(MemoryStore)
    vantage: str = "default"
    max_monitors: int = 200
    webhook_policy: WebhookPolicy = attrs.Factory(WebhookPolicy)
    monitors_file: str | None = None
    reverse_dns: ReverseSettings | None = attrs.Factory(ReverseSettings)  # None: off
    asn_db: Loaded | None = None
    geo_db: Loaded | None = None
    name_grace: float = 1.0
    store_backlog: float = 30.0  # Redis mode: see RedisRunner


class SettingError(ValueError):
    """A setting's value is unusable; the message says what was expected."""


def _dns_servers(value: str) -> tuple[tuple[str, int], ...]:
    servers = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        host, port = item, "53"
        if item.startswith("["):  # [v6] or [v6]:port
            host, closed, rest = item[1:].partition("]")
            if not closed or (rest and not rest.startswith(":")):
                raise SettingError(f"expected ADDRESS or [IPv6]:PORT, got {item!r}")
            port = rest[1:] or port
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise SettingError(f"DNS servers are IP addresses, not {host!r}") from None
        servers.append((host, _port(port, item)))
    return tuple(servers)


def _port(text: str, whole: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise SettingError(f"the port of {whole!r} is not 1-65535")
    return int(text)


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    wanted = f"a whole number from {low} to {high}" if high else f"a whole number >= {low}"

    def convert(text: str) -> int:
        if not text.strip().isascii() or not text.strip().isdigit():
            raise SettingError(f"expected {wanted}, got {text!r}")
        value = int(text)
        if value < low or (high is not None and value > high):
            raise SettingError(f"expected {wanted}, got {value}")
        return value

    return convert


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"expected seconds (a number > 0), got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingError(f"expected seconds (a number > 0), got {text!r}")
    return value


def _store(text: str) -> StoreSetting:
    try:
        return parse_store(text)
    except BadStoreUrl as e:  # its message never repeats the URL: it may hold a password
        raise SettingError(str(e)) from None


def _vantage(text: str) -> str:
    try:
        return parse_vantage(text)
    except ValueError as e:
        raise SettingError(f"{e}, not {text!r}") from None


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise SettingError(f"expected on or off, got {text!r}")
    return value == "on"


def _database(path: str) -> Loaded:
    # Read at start so that a missing or corrupt file stops mtrd before it serves.
    try:
        return read_database(path)
    except DatabaseError as e:
        raise SettingError(str(e)) from None


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise SettingError(f"expected HOST:PORT, e.g. 127.0.0.1:8080, got {value!r}")
    port_number = _port(port, value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return "0.0.0.0", port_number  # noqa: S104 - ":8080" means all interfaces
    if host == "localhost":
        return "127.0.0.1", port_number
    try:
        return str(ipaddress.ip_address(host)), port_number
    except ValueError:
        raise SettingError(
            f"HOST is an IP address (or localhost), not {host!r}: e.g. 127.0.0.1:8080"
        ) from None


def _source(version: int) -> Callable[[str], str | None]:
    def convert(text: str) -> str | None:
        if not text.strip():
            return None
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise SettingError(f"expected an IPv{version} address, got {text!r}") from None
        if address.version != version:
            raise SettingError(
                f"expected an IPv{version} address, got IPv{address.version} address {text!r}"
            )
        return str(address)

    return convert


def _command(text: str) -> tuple[str, ...]:
    words = tuple(text.split())
    if not words:
        raise SettingError("the mtr-packet command is empty")
    return words


def _networks(text: str) -> tuple[Network, ...]:
    try:
        return parse_networks(text)
    except ValueError as e:
        raise SettingError(str(e)) from None


def _one_of(*names: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in names:
            raise SettingError(f"expected {' or '.join(names)}, got {text!r}")
        return text

    return convert


def _tenant_names(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not TENANT_NAME.fullmatch(name):
            raise SettingError(f"not a tenant name: {name!r}")
    return names


def _tokens_file(path: str) -> tuple[NamedToken, ...]:
    try:
        return load_tokens(file=path, env_value=None)
    except OSError as e:
        raise SettingError(f"cannot read {path!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise SettingError(f"{path}: {e}") from None


def _monitors_file(path: str) -> str:
    # Read once here so that a bad file stops mtrd at start with the reason; the service
    # reads it again when it starts, and on SIGHUP.
    try:
        read_monitors_file(path)
    except MonitorsFileError as e:
        raise SettingError(str(e)) from None
    return path


@attrs.frozen
class Option:
    """One ``serve`` flag: its MTRD_* variable is derived from its name."""

    flag: str
    default: str | None
    help: str
    type: Callable[[str], Any] = str

    @property
    def variable(self) -> str:
        """The environment variable, e.g. MTRD_STORE_TTL for --store-ttl."""
        return "MTRD_" + self.flag.removeprefix("--").replace("-", "_").upper()

    @property
    def dest(self) -> str:
        """The attribute argparse stores the flag under."""
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS = (
    Option("--listen", "127.0.0.1:8080", "HOST:PORT to listen on; 0.0.0.0:8080 listens on all "
           "interfaces, as in a container", _listen),
    Option("--pool-size", "2", f"mtr-packet processes to keep running (1-{MAX_POOL_SIZE})",
           _whole(1, MAX_POOL_SIZE)),
    Option("--mtr-packet", "mtr-packet", "command that starts mtr-packet, e.g. "
           "'ip netns exec NS mtr-packet'", _command),
    Option("--source-ipv4", None, "IPv4 source address for probes (default: the route's)",
           _source(4)),
    Option("--source-ipv6", None, "IPv6 source address for probes (default: the route's)",
           _source(6)),
    Option("--dns-servers", "", "comma-separated DNS servers for hostname targets, e.g. "
           "192.0.2.53,[2001:db8::53]:53 (default: /etc/resolv.conf's)", _dns_servers),
    Option("--store-ttl", "3600", "seconds a finished trace is kept", _seconds),
    Option("--store-max", "10000", "traces kept at most; the oldest finished go first",
           _whole(1)),
    Option("--max-running", "32", "traces probing at once; more wait as queued", _whole(1)),
    Option("--max-queued", "1000", "traces waiting to run at most; more get 429", _whole(0)),
    Option("--max-probes-waiting", "5000", "probes waiting for a worker above which new "
           "traces get 429", _whole(1)),
    Option("--max-subscribers", "1000", "open event streams at most", _whole(1)),
    Option("--max-subscribers-per-trace", "100", "open event streams per trace at most",
           _whole(1)),
    Option("--max-connections", "1024", "open HTTP connections at most; more are answered "
           "503 and closed", _whole(1)),
    Option("--max-connections-per-client", "256", "open HTTP connections from one client "
           "address (IPv6: one /64) at most; more are answered 503 and closed", _whole(1)),
    Option("--idle-timeout", "30", "seconds a connection may stay open without beginning a "
           "request", _seconds),
    Option("--header-timeout", "10", "seconds a request's headers may take from its first "
           "byte; later gets 408", _seconds),
    Option("--body-timeout", "10", "seconds a request's body may take after its headers; "
           "later gets 408", _seconds),
    Option("--allow-targets", "", "comma-separated CIDRs; when set, only these may be traced",
           _networks),
    Option("--deny-targets", "", "comma-separated CIDRs that may never be traced", _networks),
    Option("--auth-tokens-file", None, "file of named bearer tokens, name:token one per "
           "line; it and MTRD_AUTH_TOKENS (comma-separated) turn auth on (default: off)",
           _tokens_file),
    Option("--admin-tenants", "", "comma-separated tenant names (of tokens) that see and "
           "may cancel every tenant's traces", _tenant_names),
    Option("--tenant-max-running", "8", "with auth, traces of one tenant probing at once; "
           "more wait as queued", _whole(1)),
    Option("--tenant-max-queued", "100", "with auth, traces of one tenant waiting at most; "
           "more get 429", _whole(0)),
    Option("--tenant-max-probes-waiting", "1000", "with auth, probes of one tenant waiting "
           "for a worker above which its new traces get 429", _whole(1)),
    Option("--tenant-max-stored", "1000", "with auth, traces of one tenant kept at most; "
           "its own oldest finished go first", _whole(1)),
    Option("--tenant-max-monitors", "20", "with auth, monitors of one tenant at most; "
           "more get 429", _whole(1)),
    Option("--log-format", "json", "json: one object per line on stdout; text: for people",
           _one_of("json", "text")),
    Option("--shutdown-grace", "10", "on SIGTERM, seconds running traces may finish before "
           "they are cancelled", _seconds),
    Option("--store", "memory", "where traces are kept: memory, or a shared Redis as "
           "redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS)", _store),
    Option("--vantage", "default", "name of the place this replica's probes leave from; "
           "replicas with one vantage share its work", _vantage),
    Option("--store-backlog", "30", "with Redis, seconds a running trace's updates are held "
           "while Redis does not take them; past it the trace ends failed", _seconds),
    Option("--max-monitors", "200", "monitors at most (each re-runs a trace on a schedule)",
           _whole(0)),
    Option("--allow-webhooks", "", "comma-separated CIDRs; when set, webhooks may only be "
           "sent to these", _networks),
    Option("--deny-webhooks", "", "comma-separated CIDRs webhooks are never sent to", _networks),
    Option("--monitors-file", None, "YAML file of monitors (read-only through the API), "
           "loaded at start and on SIGHUP", _monitors_file),
    Option("--reverse-dns", "on", "on: look up each responder's name (PTR) through the DNS "
           "servers; off: addresses only", _on_off),
    Option("--reverse-dns-cache", "10000", "responder names kept in the cache at most",
           _whole(1)),
    Option("--reverse-dns-timeout", "2", "seconds a name lookup may take", _seconds),
    Option("--reverse-dns-verify", "off", "on: check that each name resolves back to its "
           "address (forward-confirmed reverse DNS) and say so as verified", _on_off),
    Option("--names-grace", "1", "seconds a finished trace waits for name lookups still out",
           _seconds),
    Option("--asn-db", None, "MaxMind DB file of AS numbers (GeoLite2-ASN, IPinfo Lite or "
           "compatible); reloaded on SIGHUP or change (default: none)", _database),
    Option("--geo-db", None, "MaxMind DB file of countries (GeoLite2-Country/City or "
           "compatible); reloaded on SIGHUP or change (default: none)", _database),
)  # fmt: skip

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class _ServeParser(argparse.ArgumentParser):
    """Reports a bad command line in one line, like a bad setting."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (mtrd serve --help lists the options)")


def _fail(message: str) -> NoReturn:
    print(f"mtrd serve: {message}", file=sys.stderr)
    raise SystemExit(2)


def serve_parser() -> argparse.ArgumentParser:
    """The ``serve`` flags; each one's value is checked by :func:`parse_serve_args`."""
    parser = _ServeParser(
        prog="mtrd serve", description="Run the mtrd service.", allow_abbrev=False
    )
    for option in OPTIONS:
        shown = "" if option.default is None else f", default {option.default or 'none'}"
        parser.add_argument(option.flag, help=f"{option.help} ({option.variable}{shown})")
    parser.add_argument(
        "--auth-protect-ops",
        action="store_true",
        default=None,
        help="with auth on, also require a token for /healthz, /readyz and /metrics "
        "(MTRD_AUTH_PROTECT_OPS)",
    )
    return parser


def _setting(option: Option, given: str | None, env: Mapping[str, str]) -> Any:
    """The option's value from its flag, else its variable, else its default; a bad value
    stops mtrd naming where it came from, the flag or the variable the user set."""
    if given is not None:
        raw, origin = given, option.flag
    elif env.get(option.variable):
        raw, origin = env[option.variable], option.variable
    elif option.default is None:
        return None
    else:
        raw, origin = option.default, option.flag
    try:
        return option.type(raw)
    except SettingError as e:
        _fail(f"{origin}: {e}")


def _switch(given: bool | None, env: Mapping[str, str], variable: str) -> bool:
    if given is not None:
        return given
    text = env.get(variable, "").strip().lower()
    if text not in _TRUE + _FALSE:
        _fail(f"{variable}: expected 1 or 0 (true/false, yes/no, on/off), got {text!r}")
    return text in _TRUE


def _known_admins(admins: frozenset[str], tokens: tuple[NamedToken, ...]) -> frozenset[str]:
    unknown = admins - {t.tenant for t in tokens}
    if unknown:
        _fail(f"--admin-tenants: no token is named {', '.join(sorted(unknown))}")
    return admins


def parse_serve_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeConfig:
    """Build a :class:`ServeConfig` from command-line flags over the environment.

    Every value is checked here, before anything starts: a bad one exits with status 2
    and one line on stderr naming the flag or the MTRD_* variable it came from.
    """
    environment = os.environ if env is None else env
    args = vars(serve_parser().parse_args(list(argv)))
    value = {option.dest: _setting(option, args[option.dest], environment) for option in OPTIONS}
    tokens: tuple[NamedToken, ...] = value["auth_tokens_file"] or ()
    try:
        tokens += load_tokens(file=None, env_value=environment.get("MTRD_AUTH_TOKENS"))
    except ValueError as e:
        _fail(f"MTRD_AUTH_TOKENS: {e}")
    protect_ops = _switch(args["auth_protect_ops"], environment, "MTRD_AUTH_PROTECT_OPS")
    try:
        pool = PoolConfig(
            size=value["pool_size"],
            command=value["mtr_packet"],
            source_ipv4=value["source_ipv4"],
            source_ipv6=value["source_ipv6"],
        )
    except ValueError as e:
        _fail(str(e))
    host, port = value["listen"]
    return ServeConfig(
        host=host,
        port=port,
        pool=pool,
        dns_servers=value["dns_servers"],
        store=StoreLimits(ttl=value["store_ttl"], max_traces=value["store_max"]),
        max_running=value["max_running"],
        log_format=value["log_format"],
        shutdown_grace=value["shutdown_grace"],
        max_queued=value["max_queued"],
        limits=EdgeLimits(
            max_subscribers=value["max_subscribers"],
            max_subscribers_per_trace=value["max_subscribers_per_trace"],
            max_probes_waiting=value["max_probes_waiting"],
            max_connections=value["max_connections"],
            max_connections_per_client=value["max_connections_per_client"],
            idle_timeout=value["idle_timeout"],
            header_timeout=value["header_timeout"],
            body_timeout=value["body_timeout"],
        ),
        policy=TargetPolicy(allow=value["allow_targets"], deny=value["deny_targets"]),
        auth_tokens=tokens,
        auth_open_paths=frozenset() if protect_ops else OPEN_BY_DEFAULT,
        admin_tenants=_known_admins(value["admin_tenants"], tokens),
        tenant_limits=TenantLimits(
            max_running=value["tenant_max_running"],
            max_queued=value["tenant_max_queued"],
            max_probes_waiting=value["tenant_max_probes_waiting"],
            max_stored=value["tenant_max_stored"],
            max_monitors=value["tenant_max_monitors"],
        ),
        backend=value["store"],
        vantage=value["vantage"],
        max_monitors=value["max_monitors"],
        webhook_policy=WebhookPolicy(allow=value["allow_webhooks"], deny=value["deny_webhooks"]),
        monitors_file=value["monitors_file"],
        reverse_dns=ReverseSettings(
            cache_size=value["reverse_dns_cache"],
            timeout=value["reverse_dns_timeout"],
            verify=value["reverse_dns_verify"],
        )
        if value["reverse_dns"]
        else None,
        asn_db=value["asn_db"],
        geo_db=value["geo_db"],
        name_grace=value["names_grace"],
        store_backlog=value["store_backlog"],
    )
