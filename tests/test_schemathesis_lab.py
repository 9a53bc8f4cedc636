"""Schemathesis against the live service, from openapi.yaml: no 5xx, every answer conforms.

The service runs with its mtr-packet in the lab's client namespace, an allow list of
lab targets only, webhooks to loopback only and a DNS server that knows no name, so
generated targets and webhook URLs never leave the lab.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.mtrd_process import lab_mtrd

pytestmark = pytest.mark.lab
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
    ]
)
# Not run: positive_data_acceptance (max_ttl >= first_ttl cannot be said in JSON Schema, and
# the target policy refuses schema-valid targets with 403 on purpose) and use_after_free
# (DELETE of a running trace cancels it and keeps it, as documented).


def test_schemathesis_finds_no_server_error_or_nonconforming_answer(
    lab: Lab, tmp_path: Path
) -> None:
    """A bounded schemathesis run finds nothing."""
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        pytest.fail("schemathesis is not installed (it is in the dev extra)")
    silent_dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_dns.bind(("127.0.0.1", 0))
    flags = [
        "--dns-servers", f"127.0.0.1:{silent_dns.getsockname()[1]}",
        "--allow-targets", "203.0.113.0/25,2001:db8:ff::/64",
        "--allow-webhooks", "127.0.0.1/32",
        "--max-running", "64",
    ]  # fmt: skip
    try:
        with lab_mtrd(lab, tmp_path / "mtrd.log", *flags) as (url, _):
            result = subprocess.run(
                [
                    str(SCHEMATHESIS), "run", "openapi.yaml", "--url", url,
                    "--checks", CHECKS, "--workers", "1",
                    "--phases", "examples,fuzzing,stateful",
                    "--max-time", os.environ.get("MTRD_SCHEMATHESIS_SECONDS", "60"),
                    "--seed", "20261122", "--no-color",
                ],
                capture_output=True, text=True, timeout=400, check=False,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
    finally:
        silent_dns.close()
    log = (tmp_path / "mtrd.log").read_text()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "Traceback" not in log, log[-4000:]
