"""HTTP problem details (RFC 9457): every error mtrd answers is one of these.

One renderer writes every problem body, whoever answers: the Klein routes (through
the ``handle_errors`` of :class:`~mtrd.web.routes.Api`), the auth guard, the edge,
and the channel that refuses bad framing before there is a request at all.
"""

from __future__ import annotations

import json

import attrs
from twisted.web.iweb import IRequest

PROBLEM_JSON = b"application/problem+json"


@attrs.frozen
class Problem(Exception):
    """An error answer: status, a short title, a sentence, and optionally the fields at fault."""

    status: int
    name: str
    title: str
    detail: str
    errors: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, instance: str | None = None) -> dict[str, object]:
        """The application/problem+json document."""
        document: dict[str, object] = {
            "type": f"urn:mtrd:problem:{self.name}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            document["instance"] = instance
        if self.errors:
            document["errors"] = [{"field": f, "message": m} for f, m in self.errors]
        return document

    def render(self, instance: str | None = None) -> bytes:
        """The document as sent: compact JSON."""
        return json.dumps(self.body(instance), separators=(",", ":")).encode()


def write_problem(request: IRequest, problem: Problem, instance: str | None) -> bytes:
    """Set a problem answer's status, content type and headers; return its body."""
    request.setResponseCode(problem.status)
    request.setHeader(b"Content-Type", PROBLEM_JSON)
    for name, value in problem.headers:
        request.setHeader(name.encode(), value.encode())
    return problem.render(instance)


def not_found(what: str) -> Problem:
    """404 for an unknown or expired resource."""
    return Problem(404, "not-found", "Not found", f"{what} does not exist or has expired")


def no_route(path: str) -> Problem:
    """404 for a path mtrd does not serve at all."""
    return Problem(404, "not-found", "Not found", f"no route {path}")


def invalid_fields(errors: list[tuple[str, str]]) -> Problem:
    """422 naming every field at fault."""
    fields = ", ".join(sorted({f for f, _ in errors if f})) or "the body"
    return Problem(
        422, "invalid-fields", "Invalid fields", f"invalid: {fields}", errors=tuple(errors)
    )
