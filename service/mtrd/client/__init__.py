"""``mtrd trace``: start a trace on a server, follow its event stream, and draw it as mtr does.

The client's rooms: :mod:`~mtrd.client.options` (arguments and environment),
:mod:`~mtrd.client.eventstream` (the ``text/event-stream`` parser),
:mod:`~mtrd.client.session` (the conversation with the server over treq: POST, events,
resumption, polling, cancel), :mod:`~mtrd.client.display` (live table, plain lines, JSON),
:mod:`~mtrd.client.outcome` (exit statuses and the one line that says why) and
:mod:`~mtrd.client.command` (the entry point, the only user of the global reactor here).
Of the server it reads only the trace values and how they render (``mtrd.tracing.model``,
``mtrd.web.render``, ``mtrd.web.report``).
"""

from mtrd.client.command import main, run
from mtrd.client.display import Display, JsonOnly, LiveTable, PlainLines, hop_line
from mtrd.client.eventstream import EventParser, ServerEvent
from mtrd.client.options import DEFAULT_SERVER, TraceOptions, parse_args, server_url
from mtrd.client.outcome import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Stop,
    exit_status,
    failure_reason,
)
from mtrd.client.session import (
    FinalTrace,
    Session,
    Timing,
    TraceView,
    http_client,
    network_reason,
    problem_line,
)
from mtrd.web.render import trace_from_json

__all__ = [
    "DEFAULT_SERVER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "Display",
    "EventParser",
    "FinalTrace",
    "JsonOnly",
    "LiveTable",
    "PlainLines",
    "ServerEvent",
    "Session",
    "Stop",
    "Timing",
    "TraceOptions",
    "TraceView",
    "exit_status",
    "failure_reason",
    "hop_line",
    "http_client",
    "main",
    "network_reason",
    "parse_args",
    "problem_line",
    "run",
    "server_url",
    "trace_from_json",
]
