"""HTTP problem details (RFC 9457): every error mtrd answers is one of these."""

from __future__ import annotations

import attrs


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
