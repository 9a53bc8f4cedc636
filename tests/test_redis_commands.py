"""``together``: calls run side by side, results in order, failures after all ended."""

from __future__ import annotations

from mtrd.tracing.redis.commands import together
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def test_calls_start_at_once_and_results_keep_their_order() -> None:
    """Both calls are under way before either answers; results come in call order."""
    first: Deferred[str] = Deferred()
    second: Deferred[str] = Deferred()
    started: list[str] = []

    async def call(name: str, answer: Deferred[str]) -> str:
        started.append(name)
        return await answer

    both = Deferred.fromCoroutine(together(call("a", first), call("b", second)))
    assert started == ["a", "b"]
    second.callback("B")
    first.callback("A")
    assert both.result == ["A", "B"]


def test_a_failure_is_raised_once_every_call_has_ended() -> None:
    """The first failure is raised only after the other calls finished too."""
    slow: Deferred[str] = Deferred()
    finished: list[str] = []

    async def failing() -> str:
        raise ValueError("refused")

    async def waiting() -> str:
        value = await slow
        finished.append(value)
        return value

    both = Deferred.fromCoroutine(together(failing(), waiting()))
    assert not both.called
    slow.callback("late")
    assert finished == ["late"]
    failures: list[Failure] = []
    both.addErrback(failures.append)
    assert [str(f.value) for f in failures if f.check(ValueError)] == ["refused"]
