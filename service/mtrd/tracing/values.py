"""A frozen value with some fields changed: what ``attrs.evolve`` does, for less.

``attrs.evolve`` looks the class's fields up and passes every one by keyword, each time;
a trace is rebuilt this way a few times in its life, on the reactor's one core. Here each
class's fields are read once, and a new value is built from them by position, through
the class's own ``__init__`` (so validators, converters and ``__attrs_post_init__`` run
as they do for ``attrs.evolve``).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

import attrs

_V = TypeVar("_V")


@attrs.frozen
class _Plan:
    """How to rebuild values of one class: read its init fields, and where each goes."""

    read: Callable[[Any], tuple[Any, ...]]
    places: dict[str, int]  # init argument name -> position


# One plan per attrs class, made the first time one of its values is replaced.
_plans: dict[type, _Plan | None] = {}


def replace(value: _V, **changes: Any) -> _V:
    """``value`` with ``changes`` (by ``__init__`` argument name), like ``attrs.evolve``."""
    cls = type(value)
    plan = _plans[cls] if cls in _plans else _plan(cls)
    if plan is None:
        return attrs.evolve(value, **changes)  # type: ignore[misc]
    values = list(plan.read(value))
    places = plan.places
    for name, new in changes.items():
        if name not in places:
            raise TypeError(f"{cls.__name__} has no field {name!r} to replace")
        values[places[name]] = new
    return cls(*values)


def _plan(cls: type) -> _Plan | None:
    """The plan of ``cls``; None where arguments cannot all go by position (keyword-only
    fields): those values go through ``attrs.evolve``."""
    fields = [field for field in attrs.fields(cls) if field.init]
    plan: _Plan | None = None
    if fields and not any(field.kw_only for field in fields):
        names = [field.name for field in fields]
        getter = attrgetter(*names)
        read = getter if len(names) > 1 else lambda value: (getter(value),)
        plan = _Plan(read, {field.alias: i for i, field in enumerate(fields)})
    _plans[cls] = plan
    return plan
