"""Check responses against openapi.yaml, so every answer a test sees is the documented one.

The document is loaded once. Schemas are validated with JSON Schema Draft 2020-12:
each is addressed by its JSON pointer inside the whole document, so the
``#/components/schemas/...`` references inside it resolve as the document means them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))

_BASE_URI = "urn:mtrd:openapi"
_REGISTRY: Registry[Any] = Registry().with_resource(_BASE_URI, DRAFT202012.create_resource(SPEC))
_FORMATS = FormatChecker()
# jsonschema skips a format silently when its helper package is missing; a date-time
# check that never runs would pass every timestamp.
assert "date-time" in _FORMATS.checkers, "install rfc3339-validator to check date-time"

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_JSON_MEDIA_TYPES = ("application/json", "application/problem+json")
_PARAMETER = re.compile(r"\{[^/{}]+\}")


class Example(NamedTuple):
    """An example in the document: where it is, the schema it illustrates, and its value."""

    location: str
    schema_pointer: str
    value: object


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _follow(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow OpenAPI ``$ref``s (responses, examples) to the object and its pointer."""
    while "$ref" in node:
        reference = node["$ref"]
        assert reference.startswith("#/"), f"only local references are supported: {reference}"
        pointer = reference[1:]
        node = SPEC
        for segment in pointer[1:].split("/"):
            node = node[segment.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def _path_regex(template: str) -> re.Pattern[str]:
    pieces = _PARAMETER.split(template)
    return re.compile("[^/]+".join(re.escape(piece) for piece in pieces))


# Fewest parameters first, so a literal path wins over a template that also matches it.
_PATHS = [
    (_path_regex(template), template)
    for template in sorted(SPEC["paths"], key=lambda t: (len(_PARAMETER.findall(t)), t))
]


def _template_for(path: str) -> str:
    concrete = path.split("?", 1)[0].split("#", 1)[0]
    for pattern, template in _PATHS:
        if pattern.fullmatch(concrete):
            return str(template)
    raise AssertionError(f"{concrete} matches no path in openapi.yaml")


def _response_for(status: int, responses: dict[str, Any], pointer: str) -> tuple[Any, str]:
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            return _follow(responses[key], f"{pointer}/{_escape(key)}")
    raise AssertionError(f"status {status} is not documented (documented: {sorted(responses)})")


@functools.cache
def _validator(schema_pointer: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{_BASE_URI}#{schema_pointer}"},
        registry=_REGISTRY,
        format_checker=_FORMATS,
    )


def validate_at(schema_pointer: str, instance: object, what: str = "value") -> None:
    """Validate ``instance`` against the schema at a JSON pointer into the document."""
    error = best_match(_validator(schema_pointer).iter_errors(instance))
    if error is not None:
        raise AssertionError(
            f"{what} does not match {schema_pointer}: {error.message}"
            f" (at {error.json_path}, schema {'/'.join(map(str, error.schema_path))})"
        )


def validate_schema(name: str, instance: object) -> None:
    """Validate ``instance`` against ``#/components/schemas/<name>``, e.g. SSE event data."""
    assert name in SPEC["components"]["schemas"], f"no schema {name} in openapi.yaml"
    validate_at(f"/components/schemas/{_escape(name)}", instance, what=name)


def _responses_for(method: str, template: str, status: int) -> tuple[dict[str, Any], str]:
    """The responses of an operation, and their pointer.

    OpenAPI cannot document the methods a path does not serve, so the 405 a path's
    operations document stands for the answer to any other method.
    """
    path_item = SPEC["paths"][template]
    base = f"/paths/{_escape(template)}"
    operation = path_item.get(method.lower())
    if operation is not None:
        return operation["responses"], f"{base}/{method.lower()}/responses"
    documented = [m for m in _METHODS if m in path_item]
    for other in documented if status == 405 else ():
        if "405" in path_item[other]["responses"]:
            return {"405": path_item[other]["responses"]["405"]}, f"{base}/{other}/responses"
    raise AssertionError(
        f"{method.upper()} {template} is not documented ({[m.upper() for m in documented]})"
    )


def validate_response(
    method: str, path: str, status: int, content_type: str | None, body: bytes
) -> None:
    """Assert that a response is one openapi.yaml documents, body and media type included."""
    template = _template_for(path)
    where = f"{method.upper()} {template} -> {status}"
    response, pointer = _response_for(status, *_responses_for(method, template, status))
    content: dict[str, Any] = response.get("content", {})
    if not content:
        assert body == b"", f"{where} documents no body, got {len(body)} bytes: {body[:200]!r}"
        return
    assert content_type is not None, f"{where} has no Content-Type (documented: {list(content)})"
    media_type = content_type.split(";", 1)[0].strip().lower()
    assert media_type in content, (
        f"{where}: media type {media_type} is not documented (documented: {list(content)})"
    )
    if media_type not in _JSON_MEDIA_TYPES:
        return
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise AssertionError(f"{where} {media_type}: body is not JSON ({e}): {body[:200]!r}") from e
    validate_at(
        f"{pointer}/content/{_escape(media_type)}/schema", document, what=f"{where} {media_type}"
    )


def examples() -> Iterator[Example]:
    """Every example of a request or response body, with the schema it should match."""
    for template, path_item in SPEC["paths"].items():
        for method in _METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            base = f"/paths/{_escape(template)}/{method}"
            bodies: list[tuple[str, dict[str, Any], str]] = []
            if "requestBody" in operation:
                request_body, pointer = _follow(operation["requestBody"], f"{base}/requestBody")
                bodies.append((f"{method.upper()} {template} request", request_body, pointer))
            for status, entry in operation["responses"].items():
                response, pointer = _follow(entry, f"{base}/responses/{_escape(status)}")
                bodies.append((f"{method.upper()} {template} {status}", response, pointer))
            for label, holder, pointer in bodies:
                yield from _media_examples(label, holder, pointer)


def _media_examples(label: str, holder: dict[str, Any], pointer: str) -> Iterator[Example]:
    for media_type, media in holder.get("content", {}).items():
        schema_pointer = f"{pointer}/content/{_escape(media_type)}/schema"
        if "example" in media:
            yield Example(f"{label} {media_type}", schema_pointer, media["example"])
        for name, entry in media.get("examples", {}).items():
            example, where = _follow(
                entry, f"{pointer}/content/{_escape(media_type)}/examples/{_escape(name)}"
            )
            yield Example(
                f"{label} {media_type} {name} ({where})", schema_pointer, example["value"]
            )
