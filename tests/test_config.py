"""Flags and MTRD_* environment variables of ``mtrd serve``."""

from __future__ import annotations

import pytest
from mtrd.config import parse_serve_args


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
        (["--listen", "127.0.0.1:70000"], "expected HOST:PORT"),
        (["--pool-size", "0"], "pool size must be between 1 and 16"),
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


def test_bad_environment_value_is_reported_like_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed MTRD_* variable gives the flag's error, not a traceback."""
    with pytest.raises(SystemExit):
        parse_serve_args([], env={"MTRD_POOL_SIZE": "many"})
    assert "--pool-size: invalid int value: 'many'" in capsys.readouterr().err
