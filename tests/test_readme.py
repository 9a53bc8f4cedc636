"""The README's quick start, run as pasted against the real ``mtrd serve``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.mtrd_process import free_port
from tests.test_serve import require_mtr_packet

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start() -> str:
    """The first ``sh`` block under the Quick start heading."""
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_quick_start_works_as_pasted() -> None:
    """Every command of the quick start succeeds against a real server tracing 127.0.0.1;
    only the port differs, and the server starts as ``mtrd serve`` instead of ``make run``."""
    require_mtr_packet()
    port = free_port()
    script = quick_start()
    start, *rest = script.splitlines()
    assert start.startswith("make run &")
    serve = f"{sys.executable} -m mtrd serve --listen 127.0.0.1:{port} >/dev/null 2>&1 &"
    body = "\n".join(rest).replace("8080", str(port))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"{serve}\nserver=$!\ntrap 'kill $server' EXIT\n{body}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"http://127.0.0.1:{port}/traces/" in done.stdout
    assert "HOST: " in done.stdout
    assert "  1.|-- 127.0.0.1 " in done.stdout
    assert "event: done" in done.stdout
