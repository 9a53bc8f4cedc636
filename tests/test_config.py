"""Flags and MTRD_* environment variables of ``mtrd serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mtrd.config import OPTIONS, parse_serve_args
from mtrd.tracing.tenants import TenantLimits
from mtrd.web.auth import NamedToken


def test_defaults_listen_on_loopback() -> None:
    """Without flags or environment, mtrd listens on 127.0.0.1:8080 with 2 workers."""
    config = parse_serve_args([], env={})
    assert (config.host, config.port, config.pool.size) == ("127.0.0.1", 8080, 2)
    assert config.pool.command == ("mtr-packet",)


def test_environment_sets_defaults_and_flags_win() -> None:
    """MTRD_* variables set the defaults; flags override them."""
    env = {
        "MTRD_LISTEN": "0.0.0.0:9000",
        "MTRD_POOL_SIZE": "4",
        "MTRD_MTR_PACKET": "ip netns exec lab mtr-packet",
        "MTRD_SOURCE_IPV4": "198.51.100.2",
    }
    config = parse_serve_args(["--pool-size", "3"], env=env)
    assert (config.host, config.port, config.pool.size) == ("0.0.0.0", 9000, 3)
    assert config.pool.command == ("ip", "netns", "exec", "lab", "mtr-packet")
    assert config.pool.source_ipv4 == "198.51.100.2"


def test_ipv6_listen_address() -> None:
    """A bracketed IPv6 listen address is accepted."""
    config = parse_serve_args(["--listen", "[::1]:8080"], env={})
    assert (config.host, config.port) == ("::1", 8080)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "localhost"], "expected HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "is not 1-65535"),
        (["--pool-size", "0"], "--pool-size: expected a whole number from 1 to 16, got 0"),
        (["--mtr-packet", ""], "the mtr-packet command is empty"),
    ],
)
def test_bad_values_exit_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid settings stop mtrd with status 2 and say which value is wrong."""
    with pytest.raises(SystemExit) as exited:
        parse_serve_args(argv, env={})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed MTRD_* variable is blamed by its name, not by the flag's."""
    with pytest.raises(SystemExit):
        parse_serve_args([], env={"MTRD_POOL_SIZE": "many"})
    assert capsys.readouterr().err == (
        "mtrd serve: MTRD_POOL_SIZE: expected a whole number from 1 to 16, got 'many'\n"
    )


# One bad value per option, and the words its one-line message must contain.
BAD_VALUES = [
    ("--listen", "localhost", "expected HOST:PORT"),
    ("--listen", "127.0.0.1:0", "is not 1-65535"),
    ("--listen", "127.0.0.1:http", "is not 1-65535"),
    ("--listen", "example.org:8080", "HOST is an IP address"),
    ("--pool-size", "bogus", "expected a whole number from 1 to 16"),
    ("--pool-size", "17", "expected a whole number from 1 to 16, got 17"),
    ("--mtr-packet", " ", "the mtr-packet command is empty"),
    ("--source-ipv4", "bogus", "expected an IPv4 address, got 'bogus'"),
    ("--source-ipv4", "2001:db8::1", "expected an IPv4 address, got IPv6 address"),
    ("--source-ipv6", "198.51.100.2", "expected an IPv6 address, got IPv4 address"),
    ("--dns-servers", "127.0.0.1:99999", "the port of '127.0.0.1:99999' is not 1-65535"),
    ("--dns-servers", "[2001:db8::53]:x", "is not 1-65535"),
    ("--dns-servers", "[2001:db8::53", "expected ADDRESS or [IPv6]:PORT"),
    ("--dns-servers", "dns.example", "DNS servers are IP addresses"),
    ("--store-ttl", "soon", "expected seconds"),
    ("--store-ttl", "nan", "expected seconds"),
    ("--store-ttl", "-1", "expected seconds"),
    ("--store-max", "0", "expected a whole number >= 1, got 0"),
    ("--max-running", "1.5", "expected a whole number >= 1"),
    ("--max-queued", "-1", "expected a whole number >= 0"),
    ("--max-probes-waiting", "lots", "expected a whole number >= 1"),
    ("--max-subscribers", "0", "expected a whole number >= 1"),
    ("--max-subscribers-per-trace", "x", "expected a whole number >= 1"),
    ("--max-connections", "0", "expected a whole number >= 1"),
    ("--max-connections-per-client", "many", "expected a whole number >= 1"),
    ("--idle-timeout", "0", "expected seconds"),
    ("--header-timeout", "never", "expected seconds"),
    ("--body-timeout", "inf", "expected seconds"),
    ("--allow-targets", "198.51.100.0/33", "not a CIDR"),
    ("--deny-targets", "10.0.0.0/8,bogus", "not a CIDR: 'bogus'"),
    ("--auth-tokens-file", "/nonexistent/tokens", "cannot read '/nonexistent/tokens'"),
    ("--admin-tenants", "ops,bad name", "not a tenant name: 'bad name'"),
    ("--tenant-max-running", "0", "expected a whole number >= 1"),
    ("--tenant-max-queued", "-1", "expected a whole number >= 0"),
    ("--tenant-max-probes-waiting", "0", "expected a whole number >= 1"),
    ("--tenant-max-stored", "none", "expected a whole number >= 1"),
    ("--tenant-max-monitors", "0", "expected a whole number >= 1"),
    ("--log-format", "bogus", "expected json or text, got 'bogus'"),
    ("--shutdown-grace", "0", "expected seconds"),
    ("--store", "postgres://db", "the store is 'memory' or a redis:// or rediss:// URL"),
    ("--store", "redis://:hunter2@cache:99999/0", "bad host or port"),
    ("--vantage", "edge 1", "a vantage name is 1-63 letters"),
    ("--store-backlog", "0", "expected seconds"),
    ("--max-monitors", "-1", "expected a whole number >= 0"),
    ("--allow-webhooks", "10.0.0.0/33", "not a CIDR"),
    ("--deny-webhooks", "bogus", "not a CIDR: 'bogus'"),
    ("--monitors-file", "/nonexistent/monitors.yaml", "cannot read /nonexistent/monitors.yaml"),
    ("--reverse-dns", "maybe", "expected on or off, got 'maybe'"),
    ("--reverse-dns-cache", "0", "expected a whole number >= 1"),
    ("--reverse-dns-timeout", "0", "expected seconds"),
    ("--reverse-dns-verify", "yes please", "expected on or off"),
    ("--names-grace", "-1", "expected seconds"),
    ("--asn-db", "/nonexistent/asn.mmdb", "/nonexistent/asn.mmdb: no such file"),
    ("--geo-db", "/etc/passwd", "/etc/passwd: not a MaxMind DB file"),
]


def test_every_option_has_a_bad_value_case() -> None:
    """The table below covers every serve option."""
    assert {flag for flag, _, _ in BAD_VALUES} == {option.flag for option in OPTIONS}


def _variable(flag: str) -> str:
    return "MTRD_" + flag.removeprefix("--").replace("-", "_").upper()


def _one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]
) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_serve_args(argv, env=env)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("\n")
    return err


@pytest.mark.parametrize(("flag", "value", "message"), BAD_VALUES)
def test_bad_flag_exits_2_with_one_line_naming_the_flag(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value exits 2 with one line: the flag, then what was expected."""
    err = _one_line_error(capsys, [flag, value], {})
    assert err.startswith(f"mtrd serve: {flag}: ")
    assert message in err


@pytest.mark.parametrize(("flag", "value", "message"), BAD_VALUES)
def test_bad_variable_exits_2_with_one_line_naming_the_variable(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same bad value in the MTRD_* variable names the variable, not the flag."""
    err = _one_line_error(capsys, [], {_variable(flag): value})
    assert err.startswith(f"mtrd serve: {_variable(flag)}: ")
    assert message in err


def test_a_good_flag_overrides_a_bad_variable() -> None:
    """The variable is not read when its flag is given: the flag wins."""
    config = parse_serve_args(["--pool-size", "3"], env={"MTRD_POOL_SIZE": "bogus"})
    assert config.pool.size == 3


def test_short_token_in_the_variable_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A too-short token in MTRD_AUTH_TOKENS names MTRD_AUTH_TOKENS."""
    err = _one_line_error(capsys, [], {"MTRD_AUTH_TOKENS": "ci:short"})
    assert err.startswith("mtrd serve: MTRD_AUTH_TOKENS: ")
    assert "at least 16 characters" in err


def test_short_token_in_the_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A too-short token in the tokens file names the flag and the file."""
    tokens = tmp_path / "tokens"
    tokens.write_text("ops:short\n")
    err = _one_line_error(capsys, ["--auth-tokens-file", str(tokens)], {})
    assert err.startswith(f"mtrd serve: --auth-tokens-file: {tokens}: ")


def test_tokens_from_the_file_and_the_variable_add_up(tmp_path: Path) -> None:
    """Tokens from the file and from MTRD_AUTH_TOKENS are all accepted."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops\nops:file-token-0123456789\n")
    config = parse_serve_args(
        ["--auth-tokens-file", str(tokens)], env={"MTRD_AUTH_TOKENS": "ci:env-token-0123456789"}
    )
    assert config.auth_tokens == (
        NamedToken("ops", b"file-token-0123456789"),
        NamedToken("ci", b"env-token-0123456789"),
    )


def test_admin_tenants_must_name_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    """An admin tenant that no token is named after stops mtrd (a typo would be silent)."""
    env = {"MTRD_AUTH_TOKENS": "ops:env-token-0123456789"}
    err = _one_line_error(capsys, ["--admin-tenants", "opps"], env)
    assert err.strip() == "mtrd serve: --admin-tenants: no token is named opps"
    assert parse_serve_args(["--admin-tenants", "ops"], env=env).admin_tenants == {"ops"}


def test_tenant_caps_come_from_flags() -> None:
    """Each per-tenant cap has its flag."""
    config = parse_serve_args(
        ["--tenant-max-running", "2", "--tenant-max-queued", "0"],
        env={"MTRD_TENANT_MAX_PROBES_WAITING": "50", "MTRD_TENANT_MAX_STORED": "9"},
    )
    assert config.tenant_limits == TenantLimits(
        max_running=2, max_queued=0, max_probes_waiting=50, max_stored=9
    )


def test_the_tenant_monitors_cap_comes_from_its_flag_or_variable() -> None:
    """--tenant-max-monitors and MTRD_TENANT_MAX_MONITORS set one tenant's monitors cap."""
    flag = parse_serve_args(["--tenant-max-monitors", "3"], env={})
    variable = parse_serve_args([], env={"MTRD_TENANT_MAX_MONITORS": "4"})
    assert (flag.tenant_limits.max_monitors, variable.tenant_limits.max_monitors) == (3, 4)


@pytest.mark.parametrize(("text", "protected"), [("1", True), ("Yes", True), ("off", False)])
def test_protect_ops_variable_reads_yes_and_no(text: str, protected: bool) -> None:
    """MTRD_AUTH_PROTECT_OPS takes 1/0, true/false, yes/no, on/off in any case."""
    config = parse_serve_args([], env={"MTRD_AUTH_PROTECT_OPS": text})
    assert (config.auth_open_paths == frozenset()) is protected


def test_protect_ops_variable_refuses_other_words(capsys: pytest.CaptureFixture[str]) -> None:
    """Any other MTRD_AUTH_PROTECT_OPS value is refused, naming the variable."""
    err = _one_line_error(capsys, [], {"MTRD_AUTH_PROTECT_OPS": "maybe"})
    assert err.startswith("mtrd serve: MTRD_AUTH_PROTECT_OPS: ")


def test_unknown_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag is reported in one line that points at --help."""
    err = _one_line_error(capsys, ["--pool"], {})
    assert "unrecognized arguments: --pool" in err
    assert "mtrd serve --help" in err


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--listen", "localhost:8081", ("127.0.0.1", 8081)),
        ("--listen", ":8081", ("0.0.0.0", 8081)),
        ("--listen", "[::]:8081", ("::", 8081)),
        (
            "--dns-servers",
            "192.0.2.53, [2001:db8::53]:5353",
            (("192.0.2.53", 53), ("2001:db8::53", 5353)),
        ),
        ("--source-ipv6", "2001:db8::2", "2001:db8::2"),
        ("--store-ttl", "1.5", 1.5),
        ("--max-queued", "0", 0),
        ("--log-format", "text", "text"),
        ("--store-backlog", "90", 90.0),
    ],
)
def test_good_values_are_read(flag: str, value: str, expected: object) -> None:
    """Good values, as flag and as variable, give the same setting."""
    read = {
        "--listen": lambda c: (c.host, c.port),
        "--dns-servers": lambda c: c.dns_servers,
        "--source-ipv6": lambda c: c.pool.source_ipv6,
        "--store-ttl": lambda c: c.store.ttl,
        "--max-queued": lambda c: c.max_queued,
        "--log-format": lambda c: c.log_format,
        "--store-backlog": lambda c: c.store_backlog,
    }[flag]
    assert read(parse_serve_args([flag, value], env={})) == expected
    assert read(parse_serve_args([], env={_variable(flag): value})) == expected


def test_serve_with_a_bad_variable_exits_2_with_one_line() -> None:
    """The real ``python -m mtrd serve`` with a bad MTRD_LOG_FORMAT: status 2, one line on
    stderr naming the variable, no traceback, nothing started."""
    env = {**os.environ, "MTRD_LOG_FORMAT": "bogus"}
    done = subprocess.run(
        [sys.executable, "-m", "mtrd", "serve", "--mtr-packet", "false"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "mtrd serve: MTRD_LOG_FORMAT: expected json or text, got 'bogus'\n"
    assert done.stdout == ""


def test_a_bad_store_url_never_shows_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    """The one-line error about a store URL names the part at fault, never the URL."""
    line = _one_line_error(capsys, ["--store", "redis://:hunter2@cache:99999/0"], {})
    assert "hunter2" not in line
    line = _one_line_error(capsys, [], {"MTRD_STORE": "redis://:hunter2@cache/x"})
    assert "hunter2" not in line
    assert line.startswith("mtrd serve: MTRD_STORE: ")


def test_store_and_vantage_reach_the_config() -> None:
    """--store and --vantage (or their variables) end up in the ServeConfig."""
    config = parse_serve_args(["--vantage", "edge-1"], env={"MTRD_STORE": "redis://cache:6380/2"})
    assert config.vantage == "edge-1"
    assert str(config.backend) == "redis://cache:6380/2"


def test_a_monitors_file_goes_with_the_redis_store(tmp_path: Path) -> None:
    """--monitors-file with --store redis is taken (each replica keeps the file in Redis)."""
    monitors = tmp_path / "monitors.yaml"
    monitors.write_text("monitors: []\n")
    argv = ["--monitors-file", str(monitors), "--store", "redis://127.0.0.1:6379/0"]
    assert parse_serve_args(argv, env={}).monitors_file == str(monitors)
