"""pytest fixtures for the network-namespace lab (loaded with ``pytest_plugins``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab.topology import Lab, lab_unavailable_reason


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0")


def require_lab() -> None:
    """Skip the calling test when the lab cannot run here; in CI, fail it instead."""
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"lab tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """One lab for the whole test session, torn down at its end.

    Tests that silence a router or turn ICMP rate limits on must restore them: use
    ``with lab.silent("r3"):`` and ``with lab.icmp_rate_limited():``.
    """
    require_lab()
    built = Lab()
    try:
        built.build()
        yield built
    finally:
        built.teardown()
