"""The ``mtrd`` command: ``mtrd serve`` runs the service, ``mtrd trace`` follows a trace."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: mtrd serve [--help] [options]     run the service
       mtrd trace TARGET [--help] [options]  run a trace on a server and follow it"""


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``mtrd`` with ``argv`` (default: the command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    # Each command imports only what it runs: the client needs none of the server.
    if command == "trace":
        from mtrd.client import main as trace_main  # noqa: PLC0415

        raise SystemExit(trace_main(rest))
    if command != "serve":
        print(f"mtrd: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    from mtrd.app import run  # noqa: PLC0415
    from mtrd.config import parse_serve_args  # noqa: PLC0415

    run(parse_serve_args(rest))
